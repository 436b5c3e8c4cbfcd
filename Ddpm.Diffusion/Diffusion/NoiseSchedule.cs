namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s &lt;= t} alpha_s and the derived coefficients, in double
/// (t is 0-based: t = 0 is the first noising step). With <see cref="DiffusionConfig.Float32Schedule"/> the
/// base arrays are computed as PyTorch float32 code computes them and then widened.
/// </summary>
public sealed class NoiseSchedule
{
    public NoiseSchedule(DiffusionConfig config)
    {
        config.Validate();
        int T = config.NSteps;
        T_ = T;
        Beta = new double[T];
        AlphaBar = new double[T];
        switch (config.Schedule)
        {
            case BetaSchedule.Linear when config.Float32Schedule:
            {
                // torch.linspace(start, end, T) in float32: start + i * step for the first half, end - (T-1-i) * step after.
                float start = (float)config.BetaStart, end = (float)config.BetaEnd;
                float step = (end - start) / (T - 1);
                int half = T / 2;
                float ab = 1f;
                for (int i = 0; i < T; i++)
                {
                    float b = i < half ? start + step * i : end - step * (T - 1 - i);
                    Beta[i] = b;
                    ab *= 1f - b;
                    AlphaBar[i] = ab;
                }
                break;
            }
            case BetaSchedule.Linear:
            {
                double ab = 1;
                for (int i = 0; i < T; i++)
                {
                    Beta[i] = config.BetaStart + (config.BetaEnd - config.BetaStart) * i / (T - 1);
                    ab *= 1 - Beta[i];
                    AlphaBar[i] = ab;
                }
                break;
            }
            case BetaSchedule.Cosine:
            {
                const double s = 0.008;
                static double F(double u) { double c = Math.Cos((u + s) / (1 + s) * Math.PI / 2); return c * c; }
                double ab = 1;
                for (int i = 0; i < T; i++)
                {
                    Beta[i] = Math.Min(1 - F((i + 1.0) / T) / F((double)i / T), 0.999);
                    ab *= 1 - Beta[i];
                    AlphaBar[i] = ab;
                }
                break;
            }
            default:
                throw new ArgumentException($"Unknown schedule {config.Schedule}.");
        }
        Alpha = Beta.Select(b => 1 - b).ToArray();
        AlphaBarPrev = new double[T];
        PosteriorVariance = new double[T];
        for (int i = 0; i < T; i++)
        {
            AlphaBarPrev[i] = i == 0 ? 1.0 : AlphaBar[i - 1];
            PosteriorVariance[i] = Beta[i] * (1 - AlphaBarPrev[i]) / (1 - AlphaBar[i]);
        }
    }

    private int T_ { get; }
    public int Steps => T_;
    public double[] Beta { get; }
    public double[] Alpha { get; }
    public double[] AlphaBar { get; }
    /// <summary>alpha_bar_{t-1}, with alpha_bar_{-1} = 1.</summary>
    public double[] AlphaBarPrev { get; }
    /// <summary>beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); 0 at t = 0.</summary>
    public double[] PosteriorVariance { get; }
}
