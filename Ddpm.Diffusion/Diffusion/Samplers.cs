using Ddpm.Tensors;

namespace Ddpm.Diffusion.Diffusion;

public enum SamplerKind
{
    /// <summary>Ancestral sampling through all T steps (the seed's p_sample loop).</summary>
    Ddpm,
    /// <summary>DDIM (Song et al.) on a uniform ("leading") subsequence of timesteps, with eta.</summary>
    Ddim,
}

/// <summary>Progress of a sampling run: the step being done, out of how many.</summary>
public readonly record struct SampleProgress(int Step, int Of, int T);

/// <summary>
/// The reverse process. Deterministic given a seed: x_T and every step's noise come from one Philox stream in
/// a fixed order, so the same seed gives the same images on every backend and thread count.
/// </summary>
public sealed class Sampler
{
    private readonly DenoiseDiffusion _d;
    private readonly ClassCondition? _condition;

    /// <summary>
    /// A sampler of <paramref name="diffusion"/>; with a <paramref name="condition"/> every model call is guided
    /// toward its labels (one per sample, so the sampler then draws exactly that many images).
    /// </summary>
    public Sampler(DenoiseDiffusion diffusion, ClassCondition? condition = null)
    {
        _d = diffusion;
        _condition = condition;
    }

    public DenoiseDiffusion Diffusion => _d;
    public ClassCondition? Condition => _condition;

    /// <summary>The DDIM timesteps for <paramref name="steps"/> steps: 0, c, 2c, ... with c = T / steps (descending order of use).</summary>
    public static int[] DdimTimesteps(int T, int steps)
    {
        if (steps <= 0 || steps > T) throw new ArgumentOutOfRangeException(nameof(steps), $"DDIM steps must be in [1, {T}], got {steps}.");
        int c = T / steps;
        return Enumerable.Range(0, steps).Select(i => i * c).ToArray();
    }

    /// <summary>
    /// Draws n images. <paramref name="onStep"/> sees each step's x_t and predicted x0 (for animations) when
    /// given; both are disposed after the call. Returns [n, C, H, W] in the data range of the config.
    /// </summary>
    public Tensor Sample(int n, SamplerKind kind, int steps, float eta, ulong seed,
        Action<SampleProgress>? progress = null, Action<int, Tensor, Tensor>? onStep = null)
    {
        var cfg = _d.EpsModel.Config;
        var be = _d.EpsModel.Backend;
        if (_condition is not null && _condition.Labels.Length != n)
            throw new ArgumentException($"The sampler's condition has {_condition.Labels.Length} labels; it cannot draw {n} images.", nameof(n));
        var gen = new PhiloxGenerator(seed);
        var shape = new Shape(n, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize);
        using var _ = GradMode.NoGrad();
        var x = Tensor.RandN(be, shape, gen);
        try
        {
            return kind == SamplerKind.Ddpm ? RunDdpm(ref x, gen, progress, onStep) : RunDdim(ref x, gen, steps, eta, progress, onStep);
        }
        catch
        {
            x.Dispose();
            throw;
        }
    }

    /// <summary>Continues the reverse process from x_t at <paramref name="tStart"/> down to 0 (interpolation).</summary>
    public Tensor Denoise(Tensor xt, int tStart, PhiloxGenerator gen)
    {
        using var noGrad = GradMode.NoGrad();
        var x = xt.Detach();
        for (int t = tStart; t >= 0; t--)
        {
            using var scope = new TensorScope();
            var next = Step(x, t, gen, out _);
            x.Dispose();
            x = scope.Keep(next);
        }
        return x;
    }

    private Tensor RunDdpm(ref Tensor x, PhiloxGenerator gen, Action<SampleProgress>? progress, Action<int, Tensor, Tensor>? onStep)
    {
        int T = _d.Steps;
        for (int t = T - 1; t >= 0; t--)
        {
            using var scope = new TensorScope();
            var next = Step(x, t, gen, out var eps);
            if (onStep is not null)
            {
                using var x0 = _d.PredictX0(x, Fill(x.Shape[0], t), eps);
                onStep(t, next, x0);
            }
            x.Dispose();
            x = scope.Keep(next);
            progress?.Invoke(new SampleProgress(T - t, T, t));
        }
        return x;
    }

    private Tensor Step(Tensor x, int t, PhiloxGenerator gen, out Tensor eps)
    {
        var ts = Fill(x.Shape[0], t);
        eps = _d.PredictEps(x, ts, _condition);
        using var z = _d.NoiseStd(t) == 0 ? null : Tensor.RandN(x.Backend, x.Shape, gen);
        return _d.PSampleFromEps(x, ts, eps, z);
    }

    private Tensor RunDdim(ref Tensor x, PhiloxGenerator gen, int steps, float eta, Action<SampleProgress>? progress, Action<int, Tensor, Tensor>? onStep)
    {
        var seq = DdimTimesteps(_d.Steps, steps);
        var s = _d.Schedule;
        var (lo, hi) = _d.Config.Range;
        for (int i = seq.Length - 1; i >= 0; i--)
        {
            using var scope = new TensorScope();
            int t = seq[i];
            double ab = s.AlphaBar[t];
            double abPrev = i > 0 ? s.AlphaBar[seq[i - 1]] : 1.0;
            var ts = Fill(x.Shape[0], t);
            using var eps = _d.PredictEps(x, ts, _condition);
            using var x0Raw = _d.PredictX0(x, ts, eps);
            using var x0 = _d.Config.ClipX0 ? Ops.Clamp(x0Raw, lo, hi) : x0Raw.Detach();
            // With a clipped x0, eps is re-derived from it so the step stays on the DDIM path.
            using var epsUsed = _d.Config.ClipX0 ? EpsFromX0(x, x0, ab) : eps.Detach();
            double sigma = eta * Math.Sqrt((1 - abPrev) / (1 - ab) * (1 - ab / abPrev));
            double dirCoef = Math.Sqrt(Math.Max(0, 1 - abPrev - sigma * sigma));
            using var a = x0 * (float)Math.Sqrt(abPrev);
            using var b = epsUsed * (float)dirCoef;
            var next = a + b;
            if (sigma > 0 && i > 0)
            {
                using var z = Tensor.RandN(x.Backend, x.Shape, gen);
                using var sz = z * (float)sigma;
                using var prev = next;
                next = prev + sz;
            }
            onStep?.Invoke(t, next, x0);
            x.Dispose();
            x = scope.Keep(next);
            progress?.Invoke(new SampleProgress(seq.Length - i, seq.Length, t));
        }
        return x;
    }

    private static Tensor EpsFromX0(Tensor xt, Tensor x0, double ab)
    {
        // eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
        using var sx = x0 * (float)Math.Sqrt(ab);
        using var d = xt - sx;
        return d * (float)(1 / Math.Sqrt(1 - ab));
    }

    private static int[] Fill(int n, int t)
    {
        var r = new int[n];
        Array.Fill(r, t);
        return r;
    }
}
