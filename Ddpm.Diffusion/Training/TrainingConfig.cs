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
    }

    /// <summary>The learning rate at a 1-based step.</summary>
    public float LearningRateAt(long step) =>
        WarmupSteps > 0 && step < WarmupSteps ? LearningRate * step / WarmupSteps : LearningRate;
}
