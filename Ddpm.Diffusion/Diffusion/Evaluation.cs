using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Diffusion;

/// <summary>The helpers of labml's evaluate.py: predicted-x0 frames over the reverse process, and interpolation.</summary>
public static class Evaluation
{
    /// <summary>The model's error at one timestep: eps MSE and the RMS error of the x0 it implies.</summary>
    public readonly record struct TimestepError(int T, double EpsMse, double X0Rms);

    /// <summary>
    /// For each t: x_t = q_sample(x0, t, eps) with fresh noise, eps_theta through <see cref="DenoiseDiffusion.PredictEps"/>
    /// (eval mode, no grad), the MSE against eps and the RMS error of x0 = (x_t - sqrt(1 - ab) eps_theta) / sqrt(ab),
    /// which is sqrt(MSE (1 - ab) / ab): where a sampler that goes through x0 (DDIM) is hurt by the model's error.
    /// </summary>
    public static List<TimestepError> ErrorByTimestep(DenoiseDiffusion d, Tensor x0, IReadOnlyList<int> timesteps, PhiloxGenerator gen)
    {
        using var noGrad = GradMode.NoGrad();
        int n = x0.Shape[0];
        var result = new List<TimestepError>();
        foreach (int t in timesteps)
        {
            using var scope = new TensorScope();
            var ts = Enumerable.Repeat(t, n).ToArray();
            var noise = Tensor.RandN(x0.Backend, x0.Shape, gen);
            var eps = d.PredictEps(d.QSample(x0, ts, noise), ts);
            float[] e = eps.ToArray(), z = noise.ToArray();
            long bad = Finite.FirstNonFinite(e);
            if (bad >= 0)
                throw new NonFiniteOutputException($"the model's output at t = {t} is {e[bad]} for image {bad / (e.Length / n)}; its error cannot be measured");
            double sum = 0;
            for (int i = 0; i < e.Length; i++) sum += ((double)e[i] - z[i]) * ((double)e[i] - z[i]);
            double mse = sum / e.Length, ab = d.Schedule.AlphaBar[t];
            result.Add(new TimestepError(t, mse, Math.Sqrt(mse * (1 - ab) / ab)));
        }
        return result;
    }

    /// <summary>
    /// Samples n images and records the predicted x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) at
    /// <paramref name="frames"/> - 1 evenly spaced steps, then the final sample: a list of [n, C, H, W] arrays.
    /// </summary>
    public static List<float[]> PredictedX0Frames(Sampler sampler, int n, SamplerKind kind, int steps, float eta, ulong seed, int frames,
        Action<SampleProgress>? progress = null)
    {
        if (frames < 2) throw new ArgumentOutOfRangeException(nameof(frames), "At least two frames.");
        int total = kind == SamplerKind.Ddpm ? sampler.Diffusion.Steps : steps;
        int every = Math.Max(1, total / frames);
        var result = new List<float[]>();
        int seen = 0;
        using var scope = new TensorScope();
        var x = sampler.Sample(n, kind, steps, eta, seed, progress, (_, _, x0) =>
        {
            if (++seen % every == 0 && result.Count < frames - 1) result.Add(x0.ToArray());
        });
        result.Add(x.ToArray());
        return result;
    }

    /// <summary>
    /// labml's interpolate: x_t = (1 - lambda) q_sample(x1, t, eps) + lambda q_sample(x2, t, eps) with one shared
    /// noise draw, then the reverse process from t to 0, for every lambda at once. x1, x2: [C, H, W] in the data
    /// range; returns [lambdas.Length, C, H, W].
    /// </summary>
    public static float[] Interpolate(Sampler sampler, float[] x1, float[] x2, IReadOnlyList<float> lambdas, int t, PhiloxGenerator gen)
    {
        var d = sampler.Diffusion;
        var cfg = d.EpsModel.Config;
        int c = cfg.ImageChannels, s = cfg.ImageSize, per = c * s * s, f = lambdas.Count;
        if (x1.Length != per || x2.Length != per) throw new ArgumentException($"Interpolation images must be [{c}, {s}, {s}].");
        if (t < 0 || t >= d.Steps) throw new ArgumentOutOfRangeException(nameof(t), $"t must be in [0, {d.Steps}), got {t}.");
        var be = d.EpsModel.Backend;
        using var scope = new TensorScope();
        using var noGrad = GradMode.NoGrad();
        var a = Tensor.FromArray(be, Repeat(x1, f), f, c, s, s);
        var b = Tensor.FromArray(be, Repeat(x2, f), f, c, s, s);
        var eps = Ops.Expand(Tensor.RandN(be, new Shape(1, c, s, s), gen), new Shape(f, c, s, s));
        var ts = Enumerable.Repeat(t, f).ToArray();
        var q1 = d.QSample(a, ts, eps);
        var q2 = d.QSample(b, ts, eps);
        var lam = Tensor.FromArray(be, lambdas.ToArray(), f, 1, 1, 1);
        var mix = q1 + lam * (q2 - q1);
        return sampler.Denoise(mix, t, gen).ToArray();
    }

    private static float[] Repeat(float[] x, int n)
    {
        var r = new float[x.Length * n];
        for (int i = 0; i < n; i++) x.CopyTo(r, i * x.Length);
        return r;
    }
}
