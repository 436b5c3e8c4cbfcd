using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Diffusion;

public enum SamplerKind
{
    /// <summary>Ancestral sampling through all T steps (the seed's p_sample loop).</summary>
    Ddpm,
    /// <summary>DDIM (Song et al.) on a uniform ("leading") subsequence of timesteps, with eta.</summary>
    Ddim,
    /// <summary>
    /// DPM-Solver++(2M) (Lu et al. 2022): deterministic multistep second-order solver of the probability-flow
    /// ODE in data prediction, on the same timesteps as DDIM, one model evaluation per step.
    /// </summary>
    DpmSolver,
}

/// <summary>
/// One DPM-Solver++(2M) step as x_next = X x + D0 d_cur + D1 d_prev, where d_cur and d_prev are the data
/// predictions at the current and the previous (noisier) timestep.
/// </summary>
public readonly record struct DpmSolverCoefficients(double X, double D0, double D1);

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
            return kind switch
            {
                SamplerKind.Ddpm => RunDdpm(ref x, gen, progress, onStep),
                SamplerKind.Ddim => RunDdim(ref x, gen, steps, eta, progress, onStep),
                SamplerKind.DpmSolver => RunDpmSolver(ref x, steps, progress, onStep),
                _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown sampler."),
            };
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
            var next = Step(x, t, gen, out var eps);
            RequireFinite(eps, next, tStart - t + 1, tStart + 1, t);
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
            RequireFinite(eps, next, T - t, T, t);
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
            RequireFinite(eps, next, seq.Length - i, seq.Length, t);
            onStep?.Invoke(t, next, x0);
            x.Dispose();
            x = scope.Keep(next);
            progress?.Invoke(new SampleProgress(seq.Length - i, seq.Length, t));
        }
        return x;
    }

    /// <summary>
    /// The coefficients of the DPM-Solver++(2M) step from alpha_bar <paramref name="abFrom"/> to
    /// <paramref name="abTo"/> (1 for the final step to the data), in double precision. With
    /// <paramref name="abBefore"/> (alpha_bar of the previous, noisier timestep, whose data prediction is d_prev)
    /// the step is the second-order midpoint update, otherwise first order (DDIM in data prediction). With
    /// alpha_t = sqrt(ab), sigma_t = sqrt(1 - ab), lambda = log(alpha / sigma) and h = lambda_to - lambda_from:
    /// x_to = (sigma_to / sigma_from) x - alpha_to (e^-h - 1) (d_cur + (d_cur - d_prev) / (2 r)),
    /// r = (lambda_from - lambda_before) / h. The final step (sigma_to = 0) returns d_cur.
    /// </summary>
    public static DpmSolverCoefficients DpmSolverStep(double abFrom, double abTo, double? abBefore)
    {
        if (!(abFrom > 0 && abFrom < 1)) throw new ArgumentOutOfRangeException(nameof(abFrom), $"alpha_bar {abFrom} is not in (0, 1).");
        if (!(abTo > abFrom && abTo <= 1)) throw new ArgumentOutOfRangeException(nameof(abTo), $"alpha_bar {abTo} is not in ({abFrom}, 1].");
        if (abTo == 1) return new DpmSolverCoefficients(0, 1, 0);
        static double Lambda(double ab) => 0.5 * (Math.Log(ab) - Math.Log(1 - ab));
        double alphaTo = Math.Sqrt(abTo), sigmaTo = Math.Sqrt(1 - abTo), sigmaFrom = Math.Sqrt(1 - abFrom);
        double h = Lambda(abTo) - Lambda(abFrom);
        double first = -alphaTo * (Math.Exp(-h) - 1);
        if (abBefore is not { } before) return new DpmSolverCoefficients(sigmaTo / sigmaFrom, first, 0);
        if (!(before > 0 && before < abFrom)) throw new ArgumentOutOfRangeException(nameof(abBefore), $"alpha_bar {before} is not in (0, {abFrom}).");
        double r = (Lambda(abFrom) - Lambda(before)) / h;
        return new DpmSolverCoefficients(sigmaTo / sigmaFrom, first * (1 + 0.5 / r), -first * 0.5 / r);
    }

    private Tensor RunDpmSolver(ref Tensor x, int steps, Action<SampleProgress>? progress, Action<int, Tensor, Tensor>? onStep)
    {
        var seq = DdimTimesteps(_d.Steps, steps);
        var ab = _d.Schedule.AlphaBar;
        var (lo, hi) = _d.Config.Range;
        Tensor? prevD = null;
        try
        {
            for (int i = seq.Length - 1; i >= 0; i--)
            {
                using var scope = new TensorScope();
                int t = seq[i];
                var ts = Fill(x.Shape[0], t);
                using var eps = _d.PredictEps(x, ts, _condition);
                using var x0Raw = _d.PredictX0(x, ts, eps);
                var d = _d.Config.ClipX0 ? Ops.Clamp(x0Raw, lo, hi) : x0Raw.Detach();
                Tensor next;
                // The last step lands on the data (alpha_bar 1): the result is the data prediction itself.
                if (i == 0) next = d.Detach();
                else
                {
                    // First order at the first step, which has no earlier prediction.
                    bool second = prevD is not null;
                    var c = DpmSolverStep(ab[t], ab[seq[i - 1]], second ? ab[seq[i + 1]] : null);
                    using var a = x * (float)c.X;
                    using var b = d * (float)c.D0;
                    next = a + b;
                    if (second)
                    {
                        using var e = prevD! * (float)c.D1;
                        using var sum = next;
                        next = sum + e;
                    }
                }
                RequireFinite(eps, next, seq.Length - i, seq.Length, t);
                onStep?.Invoke(t, next, d);
                x.Dispose();
                x = scope.Keep(next);
                prevD?.Dispose();
                prevD = scope.Keep(d);
                progress?.Invoke(new SampleProgress(seq.Length - i, seq.Length, t));
            }
        }
        finally
        {
            prevD?.Dispose();
        }
        return x;
    }

    /// <summary>
    /// After every step the model's output and the new x must be finite, or sampling stops there with
    /// <see cref="NonFiniteOutputException"/> naming the step and the image: clipping the predicted x0 would otherwise
    /// turn NaN and infinities into a plausible black or white picture. Each check is one reduction (the sum of
    /// squares, accumulated in double, is finite exactly when every value is); only a failure downloads.
    /// </summary>
    private static void RequireFinite(Tensor eps, Tensor next, int step, int of, int t)
    {
        RequireFinite(eps, "the model's output", step, of, t);
        RequireFinite(next, "x", step, of, t);
    }

    private static void RequireFinite(Tensor v, string what, int step, int of, int t)
    {
        if (double.IsFinite(v.Backend.SumOfSquares(v.Buffer, v.Size))) return;
        var host = v.ToArray();
        long bad = Finite.FirstNonFinite(host), per = host.Length / v.Shape[0];
        throw new NonFiniteOutputException(
            $"sampling step {step} of {of} (t = {t}): {what} is {host[bad]} in image {bad / per} (value {bad % per} of {per}); the values stopped being finite there, so no image was written");
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
