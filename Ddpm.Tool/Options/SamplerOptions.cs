using CommandLine;
using Ddpm.Diffusion.Diffusion;

namespace Ddpm.Tool;

/// <summary>How to run the reverse process; eval has them with an optional checkpoint.</summary>
public abstract class SamplerOptions : ModelOptions, IDiffusionOptions
{
    [Option("sampler", Default = SamplerKind.Ddim, HelpText = "ddim (few steps, fast) or ddpm (all T ancestral steps).")]
    public SamplerKind Sampler { get; set; } = SamplerKind.Ddim;

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

    /// <summary>"DDIM (50 steps, eta 0)" or "DDPM (1000 steps)".</summary>
    public string Describe(int diffusionSteps) =>
        $"{Sampler.ToString().ToUpperInvariant()} ({StepsFor(diffusionSteps)} steps{(Sampler == SamplerKind.Ddim ? $", eta {Eta}" : "")})";

    /// <summary>The sampler's values that need no model, checked before anything is loaded.</summary>
    public override void CheckCommon()
    {
        base.CheckCommon();
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
    [Option("checkpoint", Required = true, HelpText = "A training checkpoint or a labml-named weights .safetensors file.")]
    public string Checkpoint { get; set; } = "";
}
