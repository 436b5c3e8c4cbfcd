using Ddpm.Tensors;

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
    /// toward its labels (one per sample, so the sampler then draws exactly that many images). With
    /// <paramref name="recordings"/> (owned by the caller) the steps a backend records are kept there for later runs
    /// of the same shapes; without, each run records its own and releases them when it ends.
    /// </summary>
    public Sampler(DenoiseDiffusion diffusion, ClassCondition? condition = null, SamplingRecordings? recordings = null)
    {
        _d = diffusion;
        _condition = condition;
        Recordings = recordings;
    }

    public DenoiseDiffusion Diffusion => _d;
    public ClassCondition? Condition => _condition;

    /// <summary>Where recorded sampling steps are kept between runs (null: each run keeps its own until it ends).</summary>
    public SamplingRecordings? Recordings { get; }

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
        CheckBatch(n);
        var gen = new PhiloxGenerator(seed);
        var shape = new Shape(n, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize);
        using var _ = GradMode.NoGrad();
        using var run = new ReverseSteps(this, kind, steps, eta);
        var x = Tensor.RandN(_d.EpsModel.Backend, shape, gen);
        return run.Run(x, run.Timesteps.Length - 1, gen, progress, onStep);
    }

    /// <summary>
    /// SDEdit (Meng et al. 2022), image-to-image: <paramref name="init"/> ([n, C, H, W] in the data range) is
    /// noised to the timestep at <paramref name="strength"/> of the way through the sampler's timesteps and
    /// denoised from there. Of the sampler's steps (T for DDPM) the last round(strength x steps) run, from the
    /// image put through q(x_t | x_0) at the first of them (t about strength x T); strength 0 returns the image,
    /// 1 starts from t = T - 1 (almost pure noise). With a condition the result is steered toward its classes.
    /// </summary>
    public Tensor Edit(Tensor init, float strength, SamplerKind kind, int steps, float eta, ulong seed,
        Action<SampleProgress>? progress = null, Action<int, Tensor, Tensor>? onStep = null)
    {
        var cfg = _d.EpsModel.Config;
        if (init.Rank != 4 || init.Shape[1] != cfg.ImageChannels || init.Shape[2] != cfg.ImageSize || init.Shape[3] != cfg.ImageSize)
            throw new ArgumentException($"The image to edit must be [N, {cfg.ImageChannels}, {cfg.ImageSize}, {cfg.ImageSize}]; got {init.Describe()}.", nameof(init));
        if (!(strength >= 0 && strength <= 1)) throw new ArgumentOutOfRangeException(nameof(strength), $"The strength must be in [0, 1], got {strength}.");
        int n = init.Shape[0];
        CheckBatch(n);
        var gen = new PhiloxGenerator(seed);
        using var _ = GradMode.NoGrad();
        using var run = new ReverseSteps(this, kind, steps, eta);
        int count = EditSteps(run.Timesteps.Length, strength);
        if (count == 0) return init.Detach();
        int start = count - 1;
        using var noise = Tensor.RandN(init.Backend, init.Shape, gen);
        var x = _d.QSample(init, Fill(n, run.Timesteps[start]), noise);
        return run.Run(x, start, gen, progress, onStep);
    }

    /// <summary>The steps SDEdit runs of a sampler's <paramref name="steps"/> at <paramref name="strength"/>: round(strength x steps).</summary>
    public static int EditSteps(int steps, float strength) => (int)Math.Round(strength * (double)steps, MidpointRounding.AwayFromZero);

    private void CheckBatch(int n)
    {
        if (_condition is not null && _condition.Labels.Length != n)
            throw new ArgumentException($"The sampler's condition has {_condition.Labels.Length} labels; it cannot draw {n} images.", nameof(n));
    }

    /// <summary>Continues the reverse process from x_t at <paramref name="tStart"/> down to 0 (interpolation).</summary>
    public Tensor Denoise(Tensor xt, int tStart, PhiloxGenerator gen)
    {
        using var noGrad = GradMode.NoGrad();
        using var run = new ReverseSteps(this, SamplerKind.Ddpm, _d.Steps, 0f);
        return run.Run(xt.Detach(), tStart, gen, null, null);
    }

    /// <summary>One DDPM step from x_t: x_{t-1} ~ p_theta(x_{t-1} | x_t), its noise drawn from <paramref name="gen"/> where sigma_t &gt; 0.</summary>
    internal Tensor DdpmStep(Tensor x, int t, PhiloxGenerator gen, Action<int, Tensor, Tensor>? onStep, StepPosition at)
    {
        var ts = Fill(x.Shape[0], t);
        using var eps = _d.PredictEps(x, ts, _condition);
        Tensor next;
        using (var z = _d.NoiseStd(t) == 0 ? null : Tensor.RandN(x.Backend, x.Shape, gen))
            next = _d.PSampleFromEps(x, ts, eps, z);
        at.RequireFinite(eps, next);
        if (onStep is not null)
        {
            using var x0 = _d.PredictX0(x, ts, eps);
            onStep(t, next, x0);
        }
        return next;
    }

    /// <summary>
    /// One DDIM step from timestep <paramref name="t"/> to <paramref name="tPrev"/> (-1: the data, alpha_bar 1),
    /// with noise sigma = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)) drawn from <paramref name="gen"/>
    /// when positive and not at the last step.
    /// </summary>
    internal Tensor DdimStep(Tensor x, int t, int tPrev, float eta, PhiloxGenerator gen, Action<int, Tensor, Tensor>? onStep, StepPosition at)
    {
        var s = _d.Schedule;
        var (lo, hi) = _d.Config.Range;
        double ab = s.AlphaBar[t];
        double abPrev = tPrev >= 0 ? s.AlphaBar[tPrev] : 1.0;
        var ts = Fill(x.Shape[0], t);
        using var eps = _d.PredictEps(x, ts, _condition);
        using var x0Raw = _d.PredictX0(x, ts, eps);
        using var x0 = _d.Config.ClipX0 ? Ops.Clamp(x0Raw, lo, hi) : x0Raw.Detach();
        // With a clipped x0, eps is re-derived from it so the step stays on the DDIM path.
        using var epsUsed = _d.Config.ClipX0 ? EpsFromX0(x, x0, ab) : eps.Detach();
        double sigma = DdimSigma(t, tPrev, eta);
        double dirCoef = Math.Sqrt(Math.Max(0, 1 - abPrev - sigma * sigma));
        using var a = x0 * (float)Math.Sqrt(abPrev);
        using var b = epsUsed * (float)dirCoef;
        var next = a + b;
        if (DdimDrawsNoise(t, tPrev, eta))
        {
            using var z = Tensor.RandN(x.Backend, x.Shape, gen);
            using var sz = z * (float)sigma;
            using var prev = next;
            next = prev + sz;
        }
        at.RequireFinite(eps, next);
        onStep?.Invoke(t, next, x0);
        return next;
    }

    /// <summary>DDIM's noise scale from timestep <paramref name="t"/> to <paramref name="tPrev"/> (-1: the data).</summary>
    internal double DdimSigma(int t, int tPrev, float eta)
    {
        var ab = _d.Schedule.AlphaBar;
        double abT = ab[t], abPrev = tPrev >= 0 ? ab[tPrev] : 1.0;
        return eta * Math.Sqrt((1 - abPrev) / (1 - abT) * (1 - abT / abPrev));
    }

    /// <summary>Whether the DDIM step from <paramref name="t"/> to <paramref name="tPrev"/> draws noise.</summary>
    internal bool DdimDrawsNoise(int t, int tPrev, float eta) => tPrev >= 0 && DdimSigma(t, tPrev, eta) > 0;

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

    internal static Tensor EpsFromX0(Tensor xt, Tensor x0, double ab)
    {
        // eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
        using var sx = x0 * (float)Math.Sqrt(ab);
        using var d = xt - sx;
        return d * (float)(1 / Math.Sqrt(1 - ab));
    }

    internal static int[] Fill(int n, int t)
    {
        var r = new int[n];
        Array.Fill(r, t);
        return r;
    }
}
