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
                var b32 = TorchLinspaceF32((float)config.BetaStart, (float)config.BetaEnd, T, TorchVectorWidth);
                float ab = 1f;
                for (int i = 0; i < T; i++)
                {
                    Beta[i] = b32[i];
                    ab *= 1f - b32[i];
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

    /// <summary>Floats per SIMD vector in the PyTorch build whose linspace is reproduced (AVX2: 8).</summary>
    public const int TorchVectorWidth = 8;

    /// <summary>
    /// torch.linspace(start, end, n) in float32 as PyTorch's CPU kernel computes it: step = (end - start) / (n - 1)
    /// in float; the first half counts up from start, the second half down from end, each element's base as one
    /// fused multiply-add (the compiler contracts it); whole SIMD vectors of <paramref name="width"/> lanes take
    /// base + i * step from the vector's first element (rounded twice), and the tail after the last pair of
    /// vectors is computed element by element. Matches the golden schedule bit for bit.
    /// </summary>
    public static float[] TorchLinspaceF32(float start, float end, int n, int width)
    {
        var r = new float[n];
        float step = (end - start) / (n - 1);
        int half = n / 2;
        int vectorised = n / (2 * width) * (2 * width);
        float Base(int i) => i < half ? MathF.FusedMultiplyAdd(step, i, start) : MathF.FusedMultiplyAdd(-step, n - i - 1, end);
        int idx = 0;
        for (; idx < vectorised; idx += width)
        {
            float b = Base(idx);
            for (int i = 0; i < width; i++) r[idx + i] = b + i * step;
        }
        for (; idx < n; idx++) r[idx] = Base(idx);
        return r;
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
