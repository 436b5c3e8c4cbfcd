using System.Text.Json.Serialization;
using Ddpm.Diffusion.Data;

namespace Ddpm.Diffusion.Diffusion;

[JsonConverter(typeof(JsonStringEnumConverter<BetaSchedule>))]
public enum BetaSchedule
{
    /// <summary>beta = linspace(beta_start, beta_end, T) (Ho et al.; the seed).</summary>
    Linear,
    /// <summary>Nichol and Dhariwal's cosine alpha_bar with s = 0.008, betas clipped at 0.999.</summary>
    Cosine,
}

[JsonConverter(typeof(JsonStringEnumConverter<VarianceType>))]
public enum VarianceType
{
    /// <summary>sigma_t^2 = beta_t (the seed; "fixedlarge").</summary>
    FixedLarge,
    /// <summary>sigma_t^2 = posterior beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) ("fixedsmall").</summary>
    FixedSmall,
}

/// <summary>What the network is trained to output.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<Prediction>))]
public enum Prediction
{
    /// <summary>The noise eps (the seed's L_simple).</summary>
    Eps,
    /// <summary>
    /// v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans and Ho 2022): near t = T it is about -x0, so an
    /// imperfect network still gives a sensible x0 where an eps network's x0 = (x_t - sqrt(1 - alpha_bar) eps) /
    /// sqrt(alpha_bar) multiplies its error by up to 1 / sqrt(alpha_bar_T) = 158.
    /// </summary>
    V,
}

/// <summary>How the training loss weights each sample's squared error by its timestep.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<LossWeighting>))]
public enum LossWeighting
{
    /// <summary>Every sample counts the same (the seed's L_simple).</summary>
    Uniform,
    /// <summary>
    /// Min-SNR-gamma (Hang et al. 2023): with SNR_t = alpha_bar / (1 - alpha_bar), weight min(SNR, gamma) / SNR
    /// for eps prediction and min(SNR, gamma) / (SNR + 1) for v prediction, so the low-noise timesteps do not
    /// dominate the gradient.
    /// </summary>
    MinSnr,
}

/// <summary>The forward and reverse process options. <see cref="LabmlExact"/> reproduces the seed exactly.</summary>
public sealed record DiffusionConfig
{
    [JsonPropertyName("n_steps")] public int NSteps { get; init; } = 1000;
    [JsonPropertyName("beta_start")] public double BetaStart { get; init; } = 1e-4;
    [JsonPropertyName("beta_end")] public double BetaEnd { get; init; } = 0.02;
    [JsonPropertyName("schedule")] public BetaSchedule Schedule { get; init; } = BetaSchedule.Linear;
    [JsonPropertyName("variance")] public VarianceType Variance { get; init; } = VarianceType.FixedLarge;
    /// <summary>Clip the predicted x0 to the data range while sampling.</summary>
    [JsonPropertyName("clip_x0")] public bool ClipX0 { get; init; } = true;
    /// <summary>Add no noise at the last reverse step (t = 0).</summary>
    [JsonPropertyName("no_noise_last")] public bool NoNoiseAtLastStep { get; init; } = true;
    [JsonPropertyName("data_range"), JsonConverter(typeof(JsonStringEnumConverter<DataRange>))] public DataRange DataRange { get; init; } = DataRange.MinusOneToOne;
    /// <summary>
    /// Compute the schedule as PyTorch's float32 linspace and a sequential float32 cumprod, as labml does;
    /// otherwise everything is computed in double and rounded once.
    /// </summary>
    [JsonPropertyName("float32_schedule")] public bool Float32Schedule { get; init; }
    /// <summary>The network's target: eps (the seed) or v. Checkpoints without the field are eps models.</summary>
    [JsonPropertyName("prediction")] public Prediction Prediction { get; init; } = Prediction.Eps;
    /// <summary>The training loss's per-timestep weighting. Checkpoints without the field were trained uniformly.</summary>
    [JsonPropertyName("loss_weighting")] public LossWeighting LossWeighting { get; init; } = LossWeighting.Uniform;
    /// <summary>gamma of the Min-SNR weighting (used only with <see cref="LossWeighting.MinSnr"/>).</summary>
    [JsonPropertyName("min_snr_gamma")] public double MinSnrGamma { get; init; } = DefaultMinSnrGamma;

    /// <summary>The paper's gamma.</summary>
    public const double DefaultMinSnrGamma = 5;

    /// <summary>The seed's behaviour: linear float32 schedule, sigma^2 = beta, no clipping, noise at t = 0, data in [0, 1].</summary>
    public static DiffusionConfig LabmlExact => new()
    {
        Schedule = BetaSchedule.Linear,
        Variance = VarianceType.FixedLarge,
        ClipX0 = false,
        NoNoiseAtLastStep = false,
        DataRange = DataRange.ZeroToOne,
        Float32Schedule = true,
    };

    /// <summary>The paper's sampler with the usual fixes: data in [-1, 1], clip x0, no noise at the last step.</summary>
    public static DiffusionConfig Improved => new();

    [JsonIgnore] public (float Lo, float Hi) Range => DataRange == DataRange.MinusOneToOne ? (-1f, 1f) : (0f, 1f);

    /// <summary>Most diffusion steps; the schedules are arrays of this length.</summary>
    public const int MaxSteps = 1_000_000;

    /// <summary>Checks every setting; throws <see cref="ConfigValueException"/> naming the first that cannot work.</summary>
    public void Validate()
    {
        if (NSteps < 2 || NSteps > MaxSteps)
            throw new ConfigValueException("n_steps", $"{NSteps} is not between 2 and {MaxSteps}.");
        if (!(BetaStart > 0 && BetaStart < 1))
            throw new ConfigValueException("beta_start", $"{BetaStart} is not in (0, 1).");
        if (!(BetaEnd >= BetaStart && BetaEnd < 1))
            throw new ConfigValueException("beta_end", $"{BetaEnd} is not in [beta_start {BetaStart}, 1).");
        if (!Enum.IsDefined(Schedule)) throw new ConfigValueException("schedule", $"{(int)Schedule} is not linear or cosine.");
        if (!Enum.IsDefined(Variance)) throw new ConfigValueException("variance", $"{(int)Variance} is not FixedLarge or FixedSmall.");
        if (!Enum.IsDefined(DataRange)) throw new ConfigValueException("data_range", $"{(int)DataRange} is not MinusOneToOne or ZeroToOne.");
        if (!Enum.IsDefined(Prediction)) throw new ConfigValueException("prediction", $"{(int)Prediction} is not Eps or V.");
        if (!Enum.IsDefined(LossWeighting)) throw new ConfigValueException("loss_weighting", $"{(int)LossWeighting} is not Uniform or MinSnr.");
        if (!(MinSnrGamma > 0 && double.IsFinite(MinSnrGamma))) throw new ConfigValueException("min_snr_gamma", $"{MinSnrGamma} is not a positive number.");
    }
}
