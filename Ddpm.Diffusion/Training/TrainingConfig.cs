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
    [JsonPropertyName("hflip")] public bool HorizontalFlip { get; init; }

    public void Validate()
    {
        if (BatchSize <= 0) throw new ArgumentException($"batch size must be positive, got {BatchSize}.");
        if (!(LearningRate > 0)) throw new ArgumentException($"learning rate must be positive, got {LearningRate}.");
        if (WarmupSteps < 0) throw new ArgumentException($"warm-up steps must be >= 0, got {WarmupSteps}.");
        if (GradClip < 0) throw new ArgumentException($"grad clip must be >= 0, got {GradClip}.");
        if (EmaDecay < 0 || EmaDecay >= 1) throw new ArgumentException($"EMA decay must be in [0, 1), got {EmaDecay}.");
        if (LrSchedule == LrSchedule.Cosine && DecaySteps <= WarmupSteps)
            throw new ArgumentException($"the cosine decay must end after the warm-up: decay steps {DecaySteps}, warm-up {WarmupSteps}.");
        if (LrFinal < 0 || LrFinal > 1) throw new ArgumentException($"the final learning-rate fraction must be in [0, 1], got {LrFinal}.");
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
