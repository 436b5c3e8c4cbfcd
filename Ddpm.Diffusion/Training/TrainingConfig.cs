using System.Text.Json.Serialization;

namespace Ddpm.Diffusion.Training;

/// <summary>Optimisation options. Defaults follow the original DDPM CIFAR-10 run where it fits a CPU.</summary>
public sealed record TrainingConfig
{
    [JsonPropertyName("batch_size")] public int BatchSize { get; init; } = 64;
    [JsonPropertyName("lr")] public float LearningRate { get; init; } = 2e-4f;
    [JsonPropertyName("beta1")] public float Beta1 { get; init; } = 0.9f;
    [JsonPropertyName("beta2")] public float Beta2 { get; init; } = 0.999f;
    [JsonPropertyName("adam_eps")] public float AdamEps { get; init; } = 1e-8f;
    [JsonPropertyName("weight_decay")] public float WeightDecay { get; init; }
    /// <summary>Linear warm-up of the learning rate over this many steps (0: none).</summary>
    [JsonPropertyName("warmup_steps")] public int WarmupSteps { get; init; }
    /// <summary>After the warm-up: constant, or a cosine decay from lr to <see cref="LrFinal"/> x lr at <see cref="DecaySteps"/>.</summary>
    [JsonPropertyName("lr_schedule")] public LrSchedule LrSchedule { get; init; } = LrSchedule.Constant;
    /// <summary>The step at which the cosine decay ends (the run's length); later steps keep the final rate.</summary>
    [JsonPropertyName("decay_steps")] public long DecaySteps { get; init; }
    /// <summary>The final learning rate of the cosine decay, as a fraction of <see cref="LearningRate"/>.</summary>
    [JsonPropertyName("lr_final")] public float LrFinal { get; init; }
    /// <summary>Global gradient-norm clip (0: off).</summary>
    [JsonPropertyName("grad_clip")] public float GradClip { get; init; } = 1f;
    /// <summary>EMA decay of the weights (0: no EMA).</summary>
    [JsonPropertyName("ema_decay")] public float EmaDecay { get; init; } = 0.999f;
    /// <summary>Use min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the random init.</summary>
    [JsonPropertyName("ema_warmup")] public bool EmaWarmup { get; init; } = true;
    [JsonPropertyName("seed")] public ulong Seed { get; init; }

    // The Philox keys of a run's random streams, one per stream so that no two streams draw the same words: the
    // data order and flips (the loader's key, the seed itself), the timesteps, noise and label drops, the dropout
    // masks, and the model's initial weights. Below MaxSeed, 4 s + k does not wrap and never equals s for k = 1, 2, 3.

    /// <summary>The most steps a run may have (its step counter and the end of its decay).</summary>
    public const long MaxSteps = 1_000_000_000;

    /// <summary>The largest batch a run may take.</summary>
    public const int MaxBatchSize = 1 << 16;

    /// <summary>The largest seed (2^62 - 1): the stream keys 4 s + k stay distinct 64-bit numbers.</summary>
    public const ulong MaxSeed = (1UL << 62) - 1;

    /// <summary>The key of the timestep, noise and label-drop stream.</summary>
    [JsonIgnore] public ulong NoiseKey => Seed * 4 + 1;
    /// <summary>The key of the dropout-mask stream.</summary>
    [JsonIgnore] public ulong DropoutKey => Seed * 4 + 2;
    /// <summary>The key the model's initial weights are drawn from.</summary>
    [JsonIgnore] public ulong InitKey => Seed * 4 + 3;
    [JsonPropertyName("hflip")] public bool HorizontalFlip { get; init; }
    /// <summary>
    /// The share of a class-conditional model's training samples whose label is replaced by the null class, so
    /// that one network learns both the conditional and the unconditional prediction (classifier-free guidance).
    /// </summary>
    [JsonPropertyName("class_dropout")] public float ClassDropout { get; init; } = 0.1f;

    /// <summary>Checks every setting; throws <see cref="ConfigValueException"/> naming the first that cannot work.</summary>
    public void Validate()
    {
        ValidateValues();
        if (LrSchedule == LrSchedule.Cosine && DecaySteps <= WarmupSteps) throw DecayEndsInWarmup();
    }

    /// <summary>The problem of a cosine decay that ends within the warm-up, under decay_steps.</summary>
    internal ConfigValueException DecayEndsInWarmup() =>
        new("decay_steps", $"{DecaySteps} does not end the cosine decay after the warm-up of {WarmupSteps} steps.");

    /// <summary>
    /// Checks each setting on its own (not yet that the cosine decay ends after the warm-up, which a run fits to its
    /// length); throws <see cref="ConfigValueException"/> naming the first that cannot work.
    /// </summary>
    public void ValidateValues()
    {
        if (BatchSize is <= 0 or > MaxBatchSize) throw new ConfigValueException("batch_size", $"{BatchSize} is not between 1 and {MaxBatchSize}.");
        if (Seed > MaxSeed) throw new ConfigValueException("seed", $"{Seed} is above {MaxSeed} (2^62 - 1).");
        if (!(LearningRate > 0 && float.IsFinite(LearningRate))) throw new ConfigValueException("lr", $"{LearningRate} is not a positive learning rate.");
        if (!(Beta1 >= 0 && Beta1 < 1)) throw new ConfigValueException("beta1", $"{Beta1} is not in [0, 1).");
        if (!(Beta2 >= 0 && Beta2 < 1)) throw new ConfigValueException("beta2", $"{Beta2} is not in [0, 1).");
        if (!(AdamEps > 0 && float.IsFinite(AdamEps))) throw new ConfigValueException("adam_eps", $"{AdamEps} is not a positive number.");
        if (!(WeightDecay >= 0 && float.IsFinite(WeightDecay))) throw new ConfigValueException("weight_decay", $"{WeightDecay} is not a number >= 0.");
        if (WarmupSteps < 0) throw new ConfigValueException("warmup_steps", $"{WarmupSteps} is not >= 0 (warm-up steps).");
        if (!(GradClip >= 0 && float.IsFinite(GradClip))) throw new ConfigValueException("grad_clip", $"{GradClip} is not a number >= 0 (0: no clipping).");
        if (!(EmaDecay >= 0 && EmaDecay < 1)) throw new ConfigValueException("ema_decay", $"{EmaDecay} is not in [0, 1) (EMA decay).");
        if (!Enum.IsDefined(LrSchedule)) throw new ConfigValueException("lr_schedule", $"{(int)LrSchedule} is not constant or cosine.");
        if (DecaySteps is < 0 or > MaxSteps) throw new ConfigValueException("decay_steps", $"{DecaySteps} is not between 0 and {MaxSteps}.");
        if (!(ClassDropout >= 0 && ClassDropout <= 1)) throw new ConfigValueException("class_dropout", $"{ClassDropout} is not in [0, 1] (the share of labels dropped to the null class).");
        if (!(LrFinal >= 0 && LrFinal <= 1)) throw new ConfigValueException("lr_final", $"{LrFinal} is not in [0, 1] (the final learning-rate fraction).");
    }

    /// <summary>The learning rate at a 1-based step.</summary>
    public float LearningRateAt(long step)
    {
        if (WarmupSteps > 0 && step < WarmupSteps) return (float)((double)LearningRate * step / WarmupSteps);
        if (LrSchedule == LrSchedule.Constant) return LearningRate;
        double p = Math.Clamp((double)(step - WarmupSteps) / (DecaySteps - WarmupSteps), 0, 1);
        double f = LrFinal + (1 - LrFinal) * 0.5 * (1 + Math.Cos(Math.PI * p));
        return (float)(LearningRate * f);
    }
}

[JsonConverter(typeof(JsonStringEnumConverter<LrSchedule>))]
public enum LrSchedule
{
    Constant,
    /// <summary>Half a cosine from the peak rate after the warm-up down to the final rate at the decay's end.</summary>
    Cosine,
}
