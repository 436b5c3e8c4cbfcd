using System.Text.Json.Serialization;
using Ddpm.Diffusion.Diffusion;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// The "run" section of a run's configuration: what it trains on, how long, and what it writes when. With the
/// model, diffusion and training configs it is everything a run needs; <c>config.json</c> and the checkpoints'
/// metadata hold it under the key <c>run</c>.
/// </summary>
public sealed record RunSettings
{
    /// <summary>The preset the model starts from before the model section's values (see <see cref="Presets"/>).</summary>
    [JsonPropertyName("preset")] public string Preset { get; init; } = Presets.Default;

    /// <summary>labml's DDPM exactly: its model (no attention norm), its diffusion (<see cref="Diffusion.DiffusionConfig.LabmlExact"/>), eps prediction, no classes.</summary>
    [JsonPropertyName("labml_exact")] public bool LabmlExact { get; init; }

    /// <summary>The training images (a path the caller opens); null: the caller's default data.</summary>
    [JsonPropertyName("data"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Data { get; init; }

    /// <summary>Use only the first N images of the data (null: all).</summary>
    [JsonPropertyName("max_images"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? MaxImages { get; init; }

    /// <summary>Train a class-conditional model on the data's labels; null: when the data has labels (not for labml's model).</summary>
    [JsonPropertyName("classes"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public bool? Classes { get; init; }

    /// <summary>Optimisation steps of the whole run.</summary>
    [JsonPropertyName("steps")] public long Steps { get; init; } = DefaultSteps;

    /// <summary>Instead of <see cref="Steps"/>: this many passes over the data (resolved into steps once the data is open).</summary>
    [JsonPropertyName("epochs"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? Epochs { get; init; }

    /// <summary>Micro-batches each step's batch is run as (gradients accumulated; the same step as one batch).</summary>
    [JsonPropertyName("grad_accum")] public int GradAccum { get; init; } = 1;

    /// <summary>Write a step-numbered checkpoint every N steps (0: only at the end).</summary>
    [JsonPropertyName("checkpoint_every")] public int CheckpointEvery { get; init; } = 500;

    /// <summary>Step-numbered checkpoints kept in the run folder (the oldest are removed), at least 1.</summary>
    [JsonPropertyName("keep")] public int Keep { get; init; } = 3;

    /// <summary>Write a sample grid every N steps (0: only at the end).</summary>
    [JsonPropertyName("sample_every")] public int SampleEvery { get; init; } = 1000;

    /// <summary>Images in a sample grid: per class (one row each) for a class-conditional model; null: 8 per class, or 16.</summary>
    [JsonPropertyName("samples"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? Samples { get; init; }

    /// <summary>Sampler of the sample grids: DPM-Solver++ (the default), DDIM (eta 0) or DDPM (all T steps).</summary>
    [JsonPropertyName("sample_sampler")] public SamplerKind SampleSampler { get; init; } = SamplerKind.DpmSolver;

    /// <summary>
    /// Steps of the sample grids' sampler (DDPM takes all T). 10: on the main job's model DPM-Solver++ at 10 steps put as
    /// many guided samples in their class as at 20 and scored a lower FID at guidance 3, for half the grid's time.
    /// </summary>
    [JsonPropertyName("sample_steps")] public int SampleSteps { get; init; } = 10;

    /// <summary>Measure sample quality (FID, IS, class accuracy) every N steps and at the run's last step (0: never).</summary>
    [JsonPropertyName("eval_every")] public int EvalEvery { get; init; }

    /// <summary>
    /// Samples each measurement draws: 300 keeps two measurements of the main job under 10 % of its time (more than
    /// the classifier's 128 features, so the covariance has full rank; FIDs of so few samples compare with each
    /// other, not with eval's 1,000-sample figures).
    /// </summary>
    [JsonPropertyName("eval_samples")] public int EvalSamples { get; init; } = 300;

    /// <summary>The length of a run that sets neither steps nor epochs: the main job's.</summary>
    public const long DefaultSteps = 2000;

    /// <summary>Upper bounds of the size-like settings (the memory a run needs is checked separately, from the model).</summary>
    public const long MaxSteps = TrainingConfig.MaxSteps;
    public const int MaxSamples = 1024, MaxKeep = 1_000_000, MaxEvalSamples = 100_000;

    /// <summary>Images per row of a conditional model's grid when <see cref="Samples"/> is not set, and an unconditional grid's size.</summary>
    public const int DefaultSamplesPerClass = 8, DefaultUnconditionalSamples = 16;

    /// <summary>Checks every setting; throws <see cref="ConfigValueException"/> naming the first that cannot work.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Preset)) throw new ConfigValueException("preset", "is empty.");
        Presets.Get(Preset);
        if (Data is { Length: 0 }) throw new ConfigValueException("data", "is empty; give a path.");
        if (MaxImages is <= 0) throw new ConfigValueException("max_images", $"{MaxImages} is not positive.");
        if (Steps <= 0 || Steps > MaxSteps) throw new ConfigValueException("steps", $"{Steps} is not between 1 and {MaxSteps:N0}.");
        if (Epochs is <= 0) throw new ConfigValueException("epochs", $"{Epochs} is not positive.");
        if (GradAccum <= 0) throw new ConfigValueException("grad_accum", $"{GradAccum} is not a positive number of micro-batches.");
        if (CheckpointEvery < 0) throw new ConfigValueException("checkpoint_every", $"{CheckpointEvery} is not >= 0 (0: only at the end).");
        if (Keep <= 0 || Keep > MaxKeep) throw new ConfigValueException("keep", $"{Keep} is not between 1 and {MaxKeep:N0} checkpoints.");
        if (SampleEvery < 0) throw new ConfigValueException("sample_every", $"{SampleEvery} is not >= 0 (0: only at the end).");
        if (Samples is <= 0 or > MaxSamples) throw new ConfigValueException("samples", $"{Samples} is not between 1 and {MaxSamples}.");
        if (!Enum.IsDefined(SampleSampler)) throw new ConfigValueException("sample_sampler", $"{(int)SampleSampler} is not a sampler (DpmSolver, Ddim or Ddpm).");
        if (SampleSteps <= 0) throw new ConfigValueException("sample_steps", $"{SampleSteps} is not positive.");
        if (EvalEvery < 0) throw new ConfigValueException("eval_every", $"{EvalEvery} is not >= 0 (0: never).");
        if (EvalSamples < 2 || EvalSamples > MaxEvalSamples) throw new ConfigValueException("eval_samples", $"{EvalSamples} is not between 2 and {MaxEvalSamples:N0}.");
    }
}
