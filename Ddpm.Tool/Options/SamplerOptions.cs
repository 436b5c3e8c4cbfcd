using CommandLine;
using Ddpm.Diffusion.Diffusion;

namespace Ddpm.Tool;

/// <summary>How to run the reverse process; eval has them with an optional checkpoint.</summary>
public abstract class SamplerOptions : ModelOptions, IDiffusionOptions
{
    /// <summary>Sampling runs in the backend's default precision (tf32 on cuda).</summary>
    protected override bool UsesBackendDefaultPrecision => true;

    [Option("sampler", Default = "ddim", HelpText = "ddim (few steps, fast; the default), dpm++ (DPM-Solver++(2M): deterministic, second order, the same steps as ddim) or ddpm (all T ancestral steps).")]
    public string SamplerText { get; set; } = "ddim";

    [Option("steps", Default = 50, HelpText = "DDIM or DPM-Solver++ steps (= model evaluations), 1 to T; ddpm always takes T.")]
    public int Steps { get; set; }

    /// <summary>The sampler --sampler names.</summary>
    public SamplerKind Sampler => ParseSampler(SamplerText);

    /// <summary>"ddpm", "ddim", "dpm++" or "dpmpp", in any case; anything else is a usage error naming <paramref name="option"/>.</summary>
    public static SamplerKind ParseSampler(string text, string option = "--sampler") => text.Trim().ToLowerInvariant() switch
    {
        "ddpm" => SamplerKind.Ddpm,
        "ddim" => SamplerKind.Ddim,
        "dpm++" or "dpmpp" => SamplerKind.DpmSolver,
        _ => throw new UsageError($"{option} is ddim, dpm++ or ddpm, not '{text}'."),
    };

    [Option("eta", Default = 0f, HelpText = "DDIM eta: 0 deterministic (the default), 1 like DDPM; ddim only.")]
    public float Eta { get; set; }

    [Option("seed", Default = 0UL, HelpText = "Seed of the starting noise and every step's noise.")]
    public ulong Seed { get; set; }

    [Option("ema", HelpText = "Use the EMA weights (default when the checkpoint has them).")]
    public bool Ema { get; set; }

    [Option("no-ema", HelpText = "Use the raw weights even when EMA weights exist.")]
    public bool NoEma { get; set; }

    [Option("labml-exact", Default = false, HelpText = "labml's DDPM reverse process exactly: sigma^2 = beta, no clipping, noise at t=0, data in [0,1].")]
    public bool LabmlExact { get; set; }

    [Option("no-clip", Default = false, HelpText = "Do not clip the predicted x0 to the data range (the checkpoint's setting otherwise).")]
    public bool NoClip { get; set; }

    [Option("schedule", HelpText = "Override the beta schedule: linear or cosine.")]
    public BetaSchedule? Schedule { get; set; }

    [Option("variance", HelpText = "Reverse-step variance: large (beta) or small (posterior).")]
    public ReverseVariance? Variance { get; set; }

    [Option("diffusion-steps", HelpText = "T, when a weights file has no config.")]
    public int? DiffusionSteps { get; set; }

    public bool? EmaChoice
    {
        get
        {
            if (Ema && NoEma) throw new UsageError("give --ema or --no-ema, not both.");
            return Ema ? true : NoEma ? false : null;
        }
    }

    /// <summary>Steps the chosen sampler takes on a model with <paramref name="diffusionSteps"/> = T.</summary>
    public int StepsFor(int diffusionSteps) => Sampler == SamplerKind.Ddpm ? diffusionSteps : Steps;

    /// <summary>"DDIM (50 steps, eta 0)", "DPM-Solver++ (20 steps)" or "DDPM (1000 steps)".</summary>
    public string Describe(int diffusionSteps) => Sampler switch
    {
        SamplerKind.Ddim => $"{Name(Sampler)} ({Steps} steps, eta {Eta})",
        SamplerKind.DpmSolver => $"{Name(Sampler)} ({Steps} steps)",
        _ => $"{Name(Sampler)} ({diffusionSteps} steps)",
    };

    /// <summary>"DDIM", "DPM-Solver++" or "DDPM".</summary>
    public static string Name(SamplerKind kind) => kind switch
    {
        SamplerKind.Ddim => "DDIM",
        SamplerKind.DpmSolver => "DPM-Solver++",
        _ => "DDPM",
    };

    /// <summary>The sampler's values that need no model, checked before anything is loaded.</summary>
    public override void CheckCommon()
    {
        base.CheckCommon();
        // An unknown --sampler is refused before anything is loaded.
        if (ParseSampler(SamplerText) == SamplerKind.DpmSolver && Eta != 0)
            throw new UsageError($"--eta {Eta} is DDIM's noise; --sampler dpm++ is deterministic (drop --eta).");
        if (Steps <= 0) throw new UsageError($"--steps must be positive, got {Steps}.");
        if (!(Eta >= 0 && float.IsFinite(Eta))) throw new UsageError($"--eta must be a number >= 0, got {Eta}.");
    }

    /// <summary>The values that depend on the model's T.</summary>
    public void Check(int diffusionSteps)
    {
        CheckCommon();
        if (Steps > diffusionSteps) throw new UsageError($"--steps must be in [1, {diffusionSteps}], got {Steps}.");
    }
}

/// <summary>Options of the verbs that sample from a trained model.</summary>
public abstract class SamplingOptions : SamplerOptions
{
    [Option("checkpoint", HelpText = "A training checkpoint, a labml-named weights .safetensors file, or a run folder (its latest checkpoint). " +
        "Default: the bundled model, the EMA weights of 'train --preset small' (the main job with 2 blocks per level: class-conditional UNet on Fashion-MNIST, fp16; 'ddpm-tool info' gives its FID).")]
    public string? CheckpointOption { get; set; }

    /// <summary>--checkpoint, or the bundled model when it is not given.</summary>
    public string Checkpoint => CheckpointOption ?? BundledFiles.DdpmModel();
}
