using Ddpm.Diffusion.Model;
using Ddpm.Tensors;

namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// The seed's DenoiseDiffusion: the forward process q(x_t | x_0), the reverse step p_theta(x_{t-1} | x_t) and
/// L_simple, written once against the tensor API. Per-sample coefficients (the seed's gather(consts, t)) are
/// taken from the double-precision schedule on the host and uploaded as [N, 1, 1, 1].
/// </summary>
public sealed class DenoiseDiffusion
{
    /// <param name="epsModel">The UNet being trained or sampled.</param>
    /// <param name="config">The forward and reverse process.</param>
    /// <param name="network">
    /// The function whose output the sampler reads as eps or v (per <see cref="DiffusionConfig.Prediction"/>);
    /// the UNet's forward pass when null. Another function (an analytic denoiser) is sampled with the same code.
    /// </param>
    public DenoiseDiffusion(UNet epsModel, DiffusionConfig config, NetworkFunction? network = null)
    {
        EpsModel = epsModel;
        Config = config;
        Schedule = new NoiseSchedule(config);
        _network = network;
    }

    /// <summary>The network's output for x_t at timesteps t: [N, C, H, W].</summary>
    public delegate Tensor NetworkFunction(Tensor xt, ReadOnlySpan<int> t);

    private readonly NetworkFunction? _network;

    public UNet EpsModel { get; }
    public DiffusionConfig Config { get; }
    public NoiseSchedule Schedule { get; }
    public int Steps => Schedule.Steps;
    private IBackend Backend => EpsModel.Backend;

    /// <summary>[N, 1, 1, 1] tensor of f(t_i) for each sample.</summary>
    public Tensor PerSample(ReadOnlySpan<int> t, Func<int, double> f)
    {
        var v = new float[t.Length];
        for (int i = 0; i < t.Length; i++)
        {
            if ((uint)t[i] >= (uint)Steps) throw new ArgumentOutOfRangeException(nameof(t), $"Timestep {t[i]} is outside [0, {Steps}).");
            v[i] = (float)f(t[i]);
        }
        return Tensor.FromArray(Backend, v, t.Length, 1, 1, 1);
    }

    /// <summary>q(x_t | x_0): mean sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t. x0: [N, C, H, W].</summary>
    public (Tensor Mean, Tensor Var) QXtX0(Tensor x0, ReadOnlySpan<int> t)
    {
        using var c = PerSample(t, i => Math.Sqrt(Schedule.AlphaBar[i]));
        var mean = c * x0;
        var variance = PerSample(t, i => 1 - Schedule.AlphaBar[i]);
        return (mean, variance);
    }

    /// <summary>x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.</summary>
    public Tensor QSample(Tensor x0, ReadOnlySpan<int> t, Tensor eps)
    {
        using var a = PerSample(t, i => Math.Sqrt(Schedule.AlphaBar[i]));
        using var b = PerSample(t, i => Math.Sqrt(1 - Schedule.AlphaBar[i]));
        using var ax = a * x0;
        using var be = b * eps;
        return ax + be;
    }

    /// <summary>x_0 predicted from x_t and eps: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).</summary>
    public Tensor PredictX0(Tensor xt, ReadOnlySpan<int> t, Tensor eps)
    {
        using var a = PerSample(t, i => 1 / Math.Sqrt(Schedule.AlphaBar[i]));
        using var b = PerSample(t, i => Math.Sqrt(1 - Schedule.AlphaBar[i]) / Math.Sqrt(Schedule.AlphaBar[i]));
        using var ax = a * xt;
        using var be = b * eps;
        return ax - be;
    }

    /// <summary>
    /// eps_theta(x_t, t): the network's output for an eps model; for a v model eps = sqrt(1 - alpha_bar) x_t +
    /// sqrt(alpha_bar) v. Every sampler goes through this, so the rest of the reverse process is written once.
    /// With a <paramref name="condition"/> (a class-conditional model), the output is guided: see <see cref="Guided"/>;
    /// without one a conditional model predicts for the null class.
    /// </summary>
    public Tensor PredictEps(Tensor xt, ReadOnlySpan<int> t, ClassCondition? condition = null)
    {
        var y = condition is not null ? Guided(xt, t, condition) : _network is null ? EpsModel.Forward(xt, t) : _network(xt, t);
        if (Config.Prediction == Prediction.Eps) return y;
        using (y) return EpsFromV(xt, t, y);
    }

    /// <summary>
    /// Classifier-free guidance on the network's output: y_u + w (y_c - y_u), y_u for the null class, y_c for the
    /// labels. w = 0 and w = 1 are one forward of N; otherwise the two halves go through one forward of 2N. The
    /// weights sum to 1, so guiding v and converting to eps equals guiding eps.
    /// </summary>
    public Tensor Guided(Tensor xt, ReadOnlySpan<int> t, ClassCondition condition)
    {
        var mc = EpsModel.Config;
        int n = xt.Shape[0];
        if (!mc.IsConditional) throw new InvalidOperationException("The model is unconditional; it cannot be sampled for a class.");
        if (condition.Labels.Length != n)
            throw new ArgumentException($"The condition has {condition.Labels.Length} labels for a batch of {n}.", nameof(condition));
        float w = condition.Guidance;
        var forward = ForwardOf(condition);
        if (forward == GuidedForward.NullClass) return EpsModel.Forward(xt, t);
        if (forward == GuidedForward.Labels) return EpsModel.Forward(xt, t, condition.Labels);
        using var x2 = Ops.Concat([xt, xt], 0);
        var t2 = new int[2 * n];
        var y2 = new int[2 * n];
        for (int i = 0; i < n; i++)
        {
            t2[i] = t2[n + i] = t[i];
            y2[i] = condition.Labels[i];
            y2[n + i] = mc.NullClass;
        }
        using var out2 = EpsModel.Forward(x2, t2, y2);
        using var cond = Ops.Narrow(out2, 0, 0, n);
        using var uncond = Ops.Narrow(out2, 0, n, n);
        using var diff = cond - uncond;
        using var scaled = diff * w;
        return uncond + scaled;
    }

    /// <summary>The forward passes <see cref="PredictEps"/> makes for <paramref name="condition"/>.</summary>
    internal static GuidedForward ForwardOf(ClassCondition? condition) =>
        condition is null ? GuidedForward.Unconditional
        : condition.Guidance == 0f ? GuidedForward.NullClass
        : condition.Guidance == 1f ? GuidedForward.Labels
        : GuidedForward.Both;

    /// <summary>eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v.</summary>
    public Tensor EpsFromV(Tensor xt, ReadOnlySpan<int> t, Tensor v)
    {
        using var a = PerSample(t, i => Math.Sqrt(1 - Schedule.AlphaBar[i]));
        using var b = PerSample(t, i => Math.Sqrt(Schedule.AlphaBar[i]));
        using var ax = a * xt;
        using var bv = b * v;
        return ax + bv;
    }

    /// <summary>The v target: sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0.</summary>
    public Tensor VTarget(Tensor x0, ReadOnlySpan<int> t, Tensor eps)
    {
        using var a = PerSample(t, i => Math.Sqrt(Schedule.AlphaBar[i]));
        using var b = PerSample(t, i => Math.Sqrt(1 - Schedule.AlphaBar[i]));
        using var ae = a * eps;
        using var bx = b * x0;
        return ae - bx;
    }

    /// <summary>
    /// One reverse step x_{t-1} ~ p_theta(x_{t-1} | x_t) given the model's eps and the noise z ([N, C, H, W]).
    /// Without clipping this is the seed's formula mu = (x_t - (beta_t / sqrt(1 - alpha_bar_t)) eps) / sqrt(alpha_t);
    /// with clipping, x_0 is predicted, clipped to the data range and put through the posterior mean
    /// mu~(x_t, x_0) (the two agree when nothing is clipped).
    /// </summary>
    public Tensor PSampleFromEps(Tensor xt, ReadOnlySpan<int> t, Tensor eps, Tensor? z)
    {
        Tensor mean;
        if (!Config.ClipX0)
        {
            using var c = PerSample(t, i => Schedule.Beta[i] / Math.Sqrt(1 - Schedule.AlphaBar[i]));
            using var r = PerSample(t, i => 1 / Math.Sqrt(Schedule.Alpha[i]));
            using var ce = c * eps;
            using var d = xt - ce;
            mean = r * d;
        }
        else
        {
            var (lo, hi) = Config.Range;
            using var x0Raw = PredictX0(xt, t, eps);
            using var x0 = Ops.Clamp(x0Raw, lo, hi);
            using var c1 = PerSample(t, i => Math.Sqrt(Schedule.AlphaBarPrev[i]) * Schedule.Beta[i] / (1 - Schedule.AlphaBar[i]));
            using var c2 = PerSample(t, i => Math.Sqrt(Schedule.Alpha[i]) * (1 - Schedule.AlphaBarPrev[i]) / (1 - Schedule.AlphaBar[i]));
            using var m1 = c1 * x0;
            using var m2 = c2 * xt;
            mean = m1 + m2;
        }
        if (z is null) return mean;
        using (mean)
        {
            using var sigma = PerSample(t, i => NoiseStd(i));
            using var sz = sigma * z;
            return mean + sz;
        }
    }

    /// <summary>sigma_t of the reverse step: sqrt(beta_t) or sqrt(beta~_t), and 0 at t = 0 when configured.</summary>
    public double NoiseStd(int t)
    {
        if (t == 0 && Config.NoNoiseAtLastStep) return 0;
        return Math.Sqrt(Config.Variance == VarianceType.FixedLarge ? Schedule.Beta[t] : Schedule.PosteriorVariance[t]);
    }

    /// <summary>p_sample(x_t, t) with fixed noise z: runs the model (eval mode, no grad) then one reverse step.</summary>
    public Tensor PSample(Tensor xt, ReadOnlySpan<int> t, Tensor z)
    {
        using var _ = GradMode.NoGrad();
        using var eps = PredictEps(xt, t);
        return PSampleFromEps(xt, t, eps, z);
    }

    /// <summary>
    /// L_simple = mean((eps - eps_theta(sqrt(ab) x0 + sqrt(1-ab) eps, t))^2), shape [1]; for a v model the
    /// same mean squared error against the v target. With <see cref="LossWeighting.MinSnr"/> each sample's mean
    /// squared error is multiplied by its <see cref="LossWeight"/> before the mean over the batch. A conditional
    /// model is trained on <paramref name="labels"/> (one class per sample, K for the null class; null: the null
    /// class for all).
    /// </summary>
    public Tensor Loss(Tensor x0, ReadOnlySpan<int> t, Tensor noise, int[]? labels = null)
    {
        using var xt = QSample(x0, t, noise);
        using var output = EpsModel.Forward(xt, t, labels);
        if (Config.Prediction == Prediction.Eps) return WeightedMse(noise, output, t);
        using var target = VTarget(x0, t, noise);
        return WeightedMse(target, output, t);
    }

    /// <summary>mean((target - output)^2), each sample's squared error times its <see cref="LossWeight"/> unless uniform.</summary>
    private Tensor WeightedMse(Tensor target, Tensor output, ReadOnlySpan<int> t)
    {
        if (Config.LossWeighting == LossWeighting.Uniform) return Ops.MseLoss(target, output);
        using var d = target - output;
        using var sq = Ops.Square(d);
        using var w = PerSample(t, LossWeight);
        using var weighted = w * sq;
        return Ops.Mean(weighted);
    }

    /// <summary>
    /// The loss weight of timestep t: 1 for uniform weighting; for Min-SNR-gamma, with SNR = alpha_bar / (1 -
    /// alpha_bar), min(SNR, gamma) / SNR (eps prediction) or min(SNR, gamma) / (SNR + 1) (v prediction).
    /// </summary>
    public double LossWeight(int t)
    {
        if (Config.LossWeighting == LossWeighting.Uniform) return 1;
        double ab = Schedule.AlphaBar[t], snr = ab / (1 - ab);
        return Math.Min(snr, Config.MinSnrGamma) / (Config.Prediction == Prediction.Eps ? snr : snr + 1);
    }

    /// <summary>L_simple with t ~ U{0..T-1} and eps ~ N(0, I) drawn from <paramref name="gen"/>.</summary>
    public Tensor Loss(Tensor x0, PhiloxGenerator gen, int[]? labels = null)
    {
        var t = gen.NextInts(x0.Shape[0], Steps);
        using var noise = Tensor.RandN(Backend, x0.Shape, gen);
        return Loss(x0, t, noise, labels);
    }
}

/// <summary>
/// The forward passes of one model evaluation (<see cref="DenoiseDiffusion.PredictEps"/>): without a condition; for
/// the null class only (guidance 0); for the labels only (guidance 1); or both halves in one forward of 2N.
/// </summary>
internal enum GuidedForward
{
    Unconditional,
    NullClass,
    Labels,
    Both,
}
