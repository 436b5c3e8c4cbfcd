using CommandLine;
using Ddpm.Diffusion.Training;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("info", HelpText = "What a checkpoint holds, the presets, and which backends this machine can run.")]
public sealed class InfoOptions : CommonOptions
{
    [Option("checkpoint", HelpText = "A training checkpoint or weights file to describe.")]
    public string? Checkpoint { get; set; }
}

public static class InfoCommand
{
    public static int Run(InfoOptions o, ToolConsole con)
    {
        if (o.Checkpoint is not null)
        {
            var c = ModelLoading.OpenCheckpoint(o.Checkpoint);
            con.Out.WriteLine($"{o.Checkpoint}: {(c.IsTrainingCheckpoint ? "training checkpoint" : "weights file")}, {c.File.Entries.Count} tensors");
            if (c.Model is not null)
            {
                con.Out.WriteLine($"  model     {c.Model}");
                // Counted from the config (as the header was checked against the file), nothing built.
                con.Out.WriteLine($"  parameters {c.Model.ParameterCount():N0}");
                con.Out.WriteLine(c.Model.IsConditional
                    ? $"  classes   {c.Model.NumClasses}, class-conditional (sample --class NAME|INDEX|all --guidance W): {ModelLoading.ClassList(c.Model)}"
                    : "  classes   none (unconditional)");
            }
            else
            {
                long n = c.File.Entries.Where(e => !e.Name.StartsWith("ema.") && !e.Name.StartsWith("adam.")).Sum(e => e.Count);
                con.Out.WriteLine($"  no model config in the header; {n:N0} values");
            }
            if (c.Diffusion is not null) con.Out.WriteLine($"  diffusion T={c.Diffusion.NSteps} {c.Diffusion.Schedule} variance={c.Diffusion.Variance} clip_x0={c.Diffusion.ClipX0} range={c.Diffusion.DataRange} prediction={c.Diffusion.Prediction}{(c.Diffusion.LossWeighting == LossWeighting.MinSnr ? $" loss=min-snr(gamma {c.Diffusion.MinSnrGamma})" : "")}");
            if (c.Run is { } run) con.Out.WriteLine($"  run       {run.Steps:N0} steps (preset {run.Preset}), checkpoint every {run.CheckpointEvery}, keep {run.Keep}{(run.GradAccum > 1 ? $", {run.GradAccum} micro-batches" : "")}");
            if (c.Training is not null) con.Out.WriteLine($"  training  batch {c.Training.BatchSize}, lr {c.Training.LearningRate:G3}, EMA {c.Training.EmaDecay:G4}, seed {c.Training.Seed}");
            if (c.IsTrainingCheckpoint) con.Out.WriteLine($"  step      {c.Step:N0}; EMA weights: {(c.HasEma ? "yes" : "no")}");
            con.Out.WriteLine();
        }
        con.Out.WriteLine(BundledModelLine());
        con.Out.WriteLine();
        con.Out.WriteLine("presets:");
        foreach (var p in Presets.All) con.Out.WriteLine($"  {p.Name,-13} batch {p.Batch,4}  {p.Summary}");
        con.Out.WriteLine();
        con.Out.WriteLine("backends:");
        var registry = ToolBackends.Registry();
        foreach (var (name, summary) in registry.Available)
        {
            string status = registry.Traits(name).Probe is { } probe ? probe() : "available";
            con.Out.WriteLine($"  {name,-13} {summary}");
            con.Out.WriteLine($"  {"",-13} {status}");
        }
        con.Out.WriteLine($"  this machine: {Environment.ProcessorCount} cores, AVX-512 {(System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "yes" : "no")}, AVX2 {(System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "yes" : "no")}, .NET {Environment.Version}");
        return 0;
    }

    /// <summary>What the bundled model is (sample, animate, interpolate and eval use it without --checkpoint), and its FID.</summary>
    internal static string BundledModelLine()
    {
        if (BundledFiles.TryModel(BundledFiles.DdpmModelFile) is not { } path)
            return $"bundled model: none in this build (models/{BundledFiles.DdpmModelFile}; 'train --bundle FILE' makes one); the sampling verbs need --checkpoint";
        var c = ModelLoading.OpenCheckpoint(path);
        var meta = c.File.Metadata;
        string what = meta.TryGetValue("description", out var d) ? d : c.Model?.ToString() ?? "weights";
        string fid = meta.TryGetValue("fid", out var f) ? $"; FID {f} ({(meta.TryGetValue("fid_measure", out var how) ? how : "measured while training")})" : "";
        return $"bundled model: {path}: {what}{fid}. The sampling verbs use it without --checkpoint, e.g. 'ddpm-tool sample --class Sneaker'.";
    }
}
