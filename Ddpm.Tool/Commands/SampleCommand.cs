using System.Diagnostics;
using CommandLine;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

/// <summary>Options of the verbs that sample from a trained model.</summary>
public abstract class SamplingOptions : SamplerOptions
{
    [Option("checkpoint", Required = true, HelpText = "A training checkpoint or a labml-named weights .safetensors file.")]
    public string Checkpoint { get; set; } = "";
}

/// <summary>How to run the reverse process; eval has them with an optional checkpoint.</summary>
public abstract class SamplerOptions : ModelOptions, IDiffusionOptions
{
    [Option("sampler", Default = "ddim", HelpText = "ddim (few steps, fast) or ddpm (all T ancestral steps).")]
    public string Sampler { get; set; } = "ddim";

    [Option("steps", Default = 50, HelpText = "DDIM steps (ddpm always takes T).")]
    public int Steps { get; set; }

    [Option("eta", Default = 0f, HelpText = "DDIM eta: 0 deterministic, 1 like DDPM.")]
    public float Eta { get; set; }

    [Option("seed", Default = 0UL, HelpText = "Seed of the starting noise and every step's noise.")]
    public ulong Seed { get; set; }

    [Option("ema", HelpText = "Use the EMA weights (default when the checkpoint has them).")]
    public bool Ema { get; set; }

    [Option("no-ema", HelpText = "Use the raw weights even when EMA weights exist.")]
    public bool NoEma { get; set; }

    [Option("labml-exact", Default = false, HelpText = "The seed's reverse process: sigma^2 = beta, no clipping, noise at t=0, data in [0,1].")]
    public bool LabmlExact { get; set; }

    [Option("no-clip", Default = false, HelpText = "Do not clip the predicted x0 to the data range (the checkpoint's setting otherwise).")]
    public bool NoClip { get; set; }

    [Option("schedule", HelpText = "Override the beta schedule (linear or cosine).")]
    public string? Schedule { get; set; }

    [Option("variance", HelpText = "Reverse-step variance: large (beta) or small (posterior).")]
    public string? Variance { get; set; }

    [Option("diffusion-steps", HelpText = "T, when a weights file has no config.")]
    public int? DiffusionSteps { get; set; }

    public SamplerKind Kind => Sampler.ToLowerInvariant() switch
    {
        "ddim" => SamplerKind.Ddim,
        "ddpm" => SamplerKind.Ddpm,
        _ => throw new UsageError($"--sampler is ddim or ddpm, not '{Sampler}'."),
    };

    public bool? EmaChoice
    {
        get
        {
            if (Ema && NoEma) throw new UsageError("give --ema or --no-ema, not both.");
            return Ema ? true : NoEma ? false : null;
        }
    }

    public void Check(int steps)
    {
        _ = Kind;
        if (Steps <= 0 || Steps > steps) throw new UsageError($"--steps must be in [1, {steps}], got {Steps}.");
        if (Eta < 0) throw new UsageError($"--eta must be >= 0, got {Eta}.");
    }
}

[Verb("sample", HelpText = "Draw images from a trained model into a PNG grid (and optionally one PNG each).")]
public sealed class SampleOptions : SamplingOptions
{
    [Option('n', "count", Default = 16, HelpText = "Number of images (also --n).")]
    public int N { get; set; }

    [Option("out", Default = "samples.png", HelpText = "The grid PNG to write.")]
    public string Out { get; set; } = "samples.png";

    [Option("nrow", HelpText = "Images per grid row (default: square).")]
    public int? NRow { get; set; }

    [Option("each", HelpText = "Also write every image as its own PNG into this folder.")]
    public string? Each { get; set; }
}

public static class SampleCommand
{
    public static int Run(SampleOptions o, Console2 con)
    {
        if (o.N <= 0) throw new UsageError($"-n must be positive, got {o.N}.");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = Cli.CreateBackend(o);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        int steps = o.Kind == SamplerKind.Ddpm ? diffusion.Steps : o.Steps;
        con.Out.WriteLine($"sampling {o.N} images with {o.Kind.ToString().ToUpperInvariant()} ({steps} steps{(o.Kind == SamplerKind.Ddim ? $", eta {o.Eta}" : "")}) from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}");
        var sw = Stopwatch.StartNew();
        using var scope = new TensorScope();
        var x = new Sampler(diffusion).Sample(o.N, o.Kind, o.Steps, o.Eta, o.Seed, p => ProgressBar.Draw(con, p.Step, p.Of, sw));
        ProgressBar.Done(con);
        var data = x.ToArray();
        string? dir = Path.GetDirectoryName(Path.GetFullPath(o.Out));
        if (dir is not null) Directory.CreateDirectory(dir);
        var (w, h) = ImageGrid.SavePng(o.Out, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
            o.NRow ?? (int)Math.Ceiling(Math.Sqrt(o.N)), diffusion.Config.DataRange, 2);
        con.Out.WriteLine($"wrote {o.Out} ({w}x{h}) in {sw.Elapsed.TotalSeconds:F1}s");
        if (o.Each is not null)
        {
            Directory.CreateDirectory(o.Each);
            var paths = ImageGrid.SaveEach(o.Each, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize, diffusion.Config.DataRange);
            con.Out.WriteLine($"wrote {paths.Length} images to {o.Each}");
        }
        return 0;
    }
}

/// <summary>A simple progress line for sampling verbs (terminal only).</summary>
internal static class ProgressBar
{
    private static DateTime _last = DateTime.MinValue;

    public static void Draw(Console2 con, int step, int of, Stopwatch sw)
    {
        if (!con.Interactive) return;
        if ((DateTime.UtcNow - _last).TotalMilliseconds < 150 && step != of) return;
        _last = DateTime.UtcNow;
        int width = 30, filled = (int)((long)width * step / Math.Max(of, 1));
        double eta = sw.Elapsed.TotalSeconds / Math.Max(step, 1) * (of - step);
        con.Out.Write($"\r  [{new string('#', filled)}{new string('.', width - filled)}] step {step}/{of}  {Cli.Seconds(sw.Elapsed.TotalSeconds)} elapsed, ETA {Cli.Seconds(eta)}   ");
    }

    public static void Done(Console2 con)
    {
        if (con.Interactive) con.Out.WriteLine();
    }
}
