using Ddpm.Diffusion.Diffusion;
using Ddpm.Tensors;

namespace Ddpm.Tests.Diffusion;

/// <summary>
/// The exact denoiser of data that is N(mu_j, s^2) independently per pixel j (s = 0: the data set of the one
/// image mu). Then x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and the posterior mean of the noise is linear in x_t:
/// eps*(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab). Computed in double on the host from the
/// float32 x_t; it answers eps or v = sqrt(ab) eps - sqrt(1 - ab) x0(eps) as the config's prediction asks.
/// </summary>
internal sealed class GaussianOracle(double[] mu, double s, DiffusionConfig config)
{
    private readonly NoiseSchedule _schedule = new(config);

    public double[] Mu => mu;

    /// <summary>The network function for <see cref="DenoiseDiffusion"/>: [N, C, H, W] with C H W = mu.Length.</summary>
    public Tensor Output(Tensor xt, ReadOnlySpan<int> t)
    {
        var x = xt.ToArray();
        int per = mu.Length;
        var y = new float[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double ab = _schedule.AlphaBar[t[i / per]], m = mu[i % per];
            double eps = Math.Sqrt(1 - ab) * (x[i] - Math.Sqrt(ab) * m) / (ab * s * s + 1 - ab);
            double x0 = (x[i] - Math.Sqrt(1 - ab) * eps) / Math.Sqrt(ab);
            y[i] = (float)(config.Prediction == Prediction.Eps ? eps : Math.Sqrt(ab) * eps - Math.Sqrt(1 - ab) * x0);
        }
        return Tensor.FromArray(xt.Backend, y, xt.Shape.ToArray());
    }

    /// <summary>
    /// Where the probability-flow ODE started at x (pixel j, alpha_bar abStart) ends at alpha_bar = 1: the ODE
    /// transports the Gaussian marginals monotonically, so (x - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab) is constant.
    /// </summary>
    public double ExactX0(double x, int j, double abStart) =>
        mu[j] + s * (x - Math.Sqrt(abStart) * mu[j]) / Math.Sqrt(abStart * s * s + 1 - abStart);
}
