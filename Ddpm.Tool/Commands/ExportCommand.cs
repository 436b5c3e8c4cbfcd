using System.Diagnostics;
using System.Text.Json;
using CommandLine;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Export;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("export", HelpText = "Write the model as an ONNX graph (opset 17) for ONNX Runtime and other ONNX engines.")]
public sealed class ExportOptions : ModelOptions, IDiffusionOptions
{
    [Option("checkpoint", HelpText = "The training checkpoint or weights file to export. Without it: a --preset (or the model options) with random weights from --seed, for speed measurements.")]
    public string? Checkpoint { get; set; }

    [Option("format", Default = "onnx", HelpText = "The format: onnx.")]
    public string Format { get; set; } = "onnx";

    [Option("out", Default = "model.onnx", HelpText = "The file to write.")]
    public string Out { get; set; } = "model.onnx";

    [Option("batch", HelpText = "A fixed batch size for the graph's inputs (default: a dynamic batch dimension N).")]
    public int? Batch { get; set; }

    [Option("seed", Default = 0UL, HelpText = "Seed of the random weights when there is no --checkpoint.")]
    public ulong Seed { get; set; }

    [Option("ema", HelpText = "Export the EMA weights (default when the checkpoint has them).")]
    public bool Ema { get; set; }

    [Option("no-ema", HelpText = "Export the raw weights even when EMA weights exist.")]
    public bool NoEma { get; set; }

    BetaSchedule? IDiffusionOptions.Schedule => null;
    ReverseVariance? IDiffusionOptions.Variance => null;
    bool IDiffusionOptions.LabmlExact => false;
    bool IDiffusionOptions.NoClip => false;
    int? IDiffusionOptions.DiffusionSteps => null;
}

public static class ExportCommand
{
    /// <summary>Most images a fixed --batch may declare.</summary>
    public const int MaxBatch = 65_536;

    public static int Run(ExportOptions o, ToolConsole con)
    {
        if (!string.Equals(o.Format.Trim(), "onnx", StringComparison.OrdinalIgnoreCase)) throw new UsageError($"--format is onnx, not '{o.Format}'.");
        if (o.Batch is <= 0 or > MaxBatch) throw new UsageError($"--batch must be between 1 and {MaxBatch:N0}, got {o.Batch}.");
        if (o.Ema && o.NoEma) throw new UsageError("give --ema or --no-ema, not both.");
        if (o.Checkpoint is null && (o.Ema || o.NoEma)) throw new UsageError("--ema and --no-ema choose a --checkpoint's weights.");
        OutputFiles.CheckFile(o.Out, "--out");
        var sw = Stopwatch.StartNew();
        using var be = ToolBackends.Create(o);
        UNet model;
        string source;
        var metadata = new Dictionary<string, string>();
        string output = "eps";
        if (o.Checkpoint is not null)
        {
            var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
            var (m, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.Ema ? true : o.NoEma ? false : null);
            model = m;
            source = $"{o.Checkpoint}{(ema ? " (EMA weights)" : "")}";
            if (ckpt.Diffusion is not null)
            {
                output = diffusion.Config.Prediction == Prediction.V ? "v" : "eps";
                metadata["ddpm.diffusion"] = JsonSerializer.Serialize(diffusion.Config);
                metadata["ddpm.prediction"] = output;
            }
        }
        else
        {
            model = new UNet(be, o.ResolveModel(Presets.Get("small").Model), new PhiloxGenerator(o.Seed));
            source = $"random weights (seed {o.Seed}; for speed measurements)";
        }
        using var _m = model;
        model.Eval();
        var mc = model.Config;
        MemoryEstimate.Require(3 * 4 * mc.ParameterCount(), $"exporting {mc.ParameterCount():N0} parameters");
        metadata["ddpm.source"] = Path.GetFileName(o.Checkpoint ?? "random");
        OnnxExport.Save(model, o.Out, new OnnxExportOptions { Batch = o.Batch, OutputName = output, Metadata = metadata, ProducerVersion = Program.Version });
        string inputs = $"x [{o.Batch?.ToString() ?? "N"}, {mc.ImageChannels}, {mc.ImageSize}, {mc.ImageSize}] float32, t [{o.Batch?.ToString() ?? "N"}] int64"
            + (mc.IsConditional ? $", y [{o.Batch?.ToString() ?? "N"}] int64 (0..{mc.NumClasses - 1}, {mc.NullClass} the null class)" : "");
        con.Out.WriteLine($"wrote {o.Out} ({new FileInfo(o.Out).Length / 1e6:F1} MB): ONNX opset {OnnxExport.Opset}, {mc} with {mc.ParameterCount():N0} parameters from {source}; "
            + $"inputs {inputs}; output {output} ({sw.Elapsed.TotalSeconds:F1}s)");
        return 0;
    }
}
