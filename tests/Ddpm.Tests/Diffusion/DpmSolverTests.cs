using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Diffusion;

public class DpmSolverTests
{
    private const int Pixels = 64; // DiffusionTests.Tiny: 1 x 8 x 8

    /// <summary>Samples n images with the oracle as the network; returns them and the starting noise x_T.</summary>
    private static (float[] Images, float[] XT) Run(GaussianOracle oracle, DiffusionConfig cfg, SamplerKind kind, int steps, int n, ulong seed)
    {
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(1));
        var sampler = new Sampler(new DenoiseDiffusion(model, cfg, oracle.Output));
        using var x = sampler.Sample(n, kind, steps, 0f, seed);
        // The sampler draws x_T first from the seed's Philox stream.
        var xT = Tensor.RandN(be, x.Shape, new PhiloxGenerator(seed)).ToArray();
        return (x.ToArray(), xT);
    }

    [Theory]
    [InlineData(Prediction.Eps, true)]
    [InlineData(Prediction.Eps, false)]
    [InlineData(Prediction.V, true)]
    [InlineData(Prediction.V, false)]
    public void WithTheExactDenoiserOfOneImageEveryStepCountReturnsThatImage(Prediction prediction, bool clip)
    {
        // For a data set of one image x*, the data prediction is x* at every step and the update maps
        // alpha_s x* + sigma_s e to alpha_t x* + sigma_t e exactly, whatever the step sizes.
        var cfg = new DiffusionConfig { Prediction = prediction, ClipX0 = clip };
        var image = TestData.Uniform(Pixels, 21, -0.9f, 0.9f).Select(v => (double)v).ToArray();
        var oracle = new GaussianOracle(image, 0, cfg);
        foreach (int steps in new[] { 1, 2, 10, 50 })
        {
            var (x, _) = Run(oracle, cfg, SamplerKind.DpmSolver, steps, 2, 5);
            // The result is the last data prediction (at t = 0, where 1 / sqrt(alpha_bar) = 1.00005): float32
            // rounding of the oracle's output and of PredictX0, a few ulps of values below 1 (measured 1.8e-7).
            var expected = Enumerable.Range(0, x.Length).Select(i => image[i % Pixels]).ToArray();
            Closeness.AssertElementwise($"{prediction}, clip {clip}, {steps} steps", x, expected, 1e-6, 0);
        }
    }

    [Fact]
    public void CoefficientsMatchTheRatioFormsAndTheEndCases()
    {
        // Written with ratios of alpha and sigma instead of exponentials of log-SNR differences:
        // alpha_t e^-h = alpha_s sigma_t / sigma_s, and r = log(SNR_s / SNR_before) / log(SNR_t / SNR_s).
        var s = new NoiseSchedule(new DiffusionConfig());
        var seq = Sampler.DdimTimesteps(1000, 20);
        for (int i = seq.Length - 1; i >= 1; i--)
        {
            double abS = s.AlphaBar[seq[i]], abT = s.AlphaBar[seq[i - 1]];
            double aS = Math.Sqrt(abS), sS = Math.Sqrt(1 - abS), aT = Math.Sqrt(abT), sT = Math.Sqrt(1 - abT);
            double firstRef = aT - aS * sT / sS;
            var c1 = Sampler.DpmSolverStep(abS, abT, null);
            AssertClose(sT / sS, c1.X, $"X at {seq[i]}");
            AssertClose(firstRef, c1.D0, $"first-order D0 at {seq[i]}");
            Assert.Equal(0, c1.D1);
            // Noise-free x = alpha_s x* with d = x* goes to alpha_t x* (data kept), noise sigma_s e to sigma_t e.
            AssertClose(aT, c1.X * aS + c1.D0, $"data at {seq[i]}");
            if (i == seq.Length - 1) continue;
            double abB = s.AlphaBar[seq[i + 1]];
            double Snr(double ab) => ab / (1 - ab);
            double r = Math.Log(Snr(abS) / Snr(abB)) / Math.Log(Snr(abT) / Snr(abS));
            var c2 = Sampler.DpmSolverStep(abS, abT, abB);
            AssertClose(sT / sS, c2.X, $"2M X at {seq[i]}");
            AssertClose(firstRef * (1 + 1 / (2 * r)), c2.D0, $"2M D0 at {seq[i]}");
            AssertClose(-firstRef / (2 * r), c2.D1, $"2M D1 at {seq[i]}");
            // A constant data prediction makes the multistep step the first-order one.
            AssertClose(c1.D0, c2.D0 + c2.D1, $"2M on constant d at {seq[i]}");
        }
        Assert.Equal(new DpmSolverCoefficients(0, 1, 0), Sampler.DpmSolverStep(s.AlphaBar[0], 1, s.AlphaBar[50]));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.DpmSolverStep(0.5, 0.4, null));
    }

    private static void AssertClose(double expected, double actual, string what) =>
        Assert.True(Math.Abs(actual - expected) <= 1e-12 * (1 + Math.Abs(expected)), $"{what}: {actual:R} vs {expected:R}");

    [Fact]
    public void TheMultistepStepIsThirdOrderLocallyOnALinearDataPrediction()
    {
        // With d(lambda) = P + Q lambda the ODE x' = ... has the closed form
        // x_t = (sigma_t / sigma_s) x_s + sigma_t [e^lambda (P + Q (lambda - 1))] from lambda_s to lambda_t.
        // One 2M step (steps h, h) then errs by O(h^3) and one first-order step by O(h^2): halving h divides
        // the errors by about 8 and 4.
        const double P = 0.3, Q = -0.7, Xs = 0.4;
        double Ab(double lambda) => 1 / (1 + Math.Exp(-2 * lambda));
        double D(double lambda) => P + Q * lambda;
        (double Second, double First) Errors(double h)
        {
            double ls = 0.5, lt = ls + h, lb = ls - h;
            double sS = Math.Sqrt(1 - Ab(ls)), sT = Math.Sqrt(1 - Ab(lt));
            double F(double l) => Math.Exp(l) * (P + Q * (l - 1));
            double exact = sT / sS * Xs + sT * (F(lt) - F(ls));
            var c2 = Sampler.DpmSolverStep(Ab(ls), Ab(lt), Ab(lb));
            var c1 = Sampler.DpmSolverStep(Ab(ls), Ab(lt), null);
            return (Math.Abs(c2.X * Xs + c2.D0 * D(ls) + c2.D1 * D(lb) - exact), Math.Abs(c1.X * Xs + c1.D0 * D(ls) - exact));
        }
        var (e2, e1) = Errors(0.1);
        var (h2, h1) = Errors(0.05);
        Assert.InRange(e2 / h2, 7.0, 9.0);
        Assert.InRange(e1 / h1, 3.5, 4.5);
    }

    [Fact]
    public void OnGaussianDataItFollowsTheExactOdeSolutionToSecondOrder()
    {
        // Data N(mu_j, 3^2): the variance puts the change of the data prediction where the "leading" steps are
        // even in log-SNR (for s near 0.5 it falls in the last two coarse steps, t 100 -> 50 -> 0, where neither
        // solver is in its asymptotic regime at 10 to 20 steps).
        var cfg = new DiffusionConfig { ClipX0 = false };
        var mu = TestData.Uniform(Pixels, 31, -0.5f, 0.5f).Select(v => (double)v).ToArray();
        var oracle = new GaussianOracle(mu, 3, cfg);
        var schedule = new NoiseSchedule(cfg);
        double Rms(SamplerKind kind, int steps, out float[] x, out float[] xT)
        {
            (x, xT) = Run(oracle, cfg, kind, steps, 2, 9);
            double abStart = schedule.AlphaBar[Sampler.DdimTimesteps(1000, steps)[^1]];
            double sum = 0;
            for (int i = 0; i < x.Length; i++)
            {
                double d = x[i] - oracle.ExactX0(xT[i], i % Pixels, abStart);
                sum += d * d;
            }
            return Math.Sqrt(sum / x.Length);
        }
        double dpm10 = Rms(SamplerKind.DpmSolver, 10, out _, out _);
        double dpm20 = Rms(SamplerKind.DpmSolver, 20, out var x20, out var xT20);
        double ddim20 = Rms(SamplerKind.Ddim, 20, out _, out _);
        Assert.True(dpm20 < ddim20 / 2, $"DPM-Solver++ 20 steps RMS error {dpm20} vs DDIM 20 steps {ddim20}");
        Assert.True(dpm10 / dpm20 > 3, $"error(10) {dpm10} / error(20) {dpm20} is not second order");
        // The truncation error of 2M at 20 leading steps: measured 0.050 RMS (DDIM 0.209; 2M at 10 steps 0.229).
        Assert.True(dpm20 < 0.06, $"DPM-Solver++ 20 steps RMS error {dpm20}");

        // The float32 sampler against the same recursion in double on the host, written with alpha/sigma ratios.
        var seq = Sampler.DdimTimesteps(1000, 20);
        var expected = new double[x20.Length];
        for (int i = 0; i < x20.Length; i++)
        {
            int j = i % Pixels;
            double x = xT20[i], dPrev = 0, hPrev = 0;
            double Lambda(double ab) => 0.5 * Math.Log(ab / (1 - ab));
            for (int k = seq.Length - 1; k >= 0; k--)
            {
                double ab = schedule.AlphaBar[seq[k]];
                double eps = Math.Sqrt(1 - ab) * (x - Math.Sqrt(ab) * mu[j]) / (ab * 9 + 1 - ab);
                double d = (x - Math.Sqrt(1 - ab) * eps) / Math.Sqrt(ab);
                if (k == 0) { x = d; break; }
                double abT = schedule.AlphaBar[seq[k - 1]];
                double h = Lambda(abT) - Lambda(ab);
                double lin = Math.Sqrt(abT) - Math.Sqrt(ab) * Math.Sqrt(1 - abT) / Math.Sqrt(1 - ab);
                double slope = k == seq.Length - 1 ? 0 : (d - dPrev) * h / hPrev;
                x = Math.Sqrt((1 - abT) / (1 - ab)) * x + lin * (d + 0.5 * slope);
                dPrev = d; hPrev = h;
            }
            expected[i] = x;
        }
        // float32 steps: x_T's rounding grows through 1 / sqrt(alpha_bar_950) = 128 in the first data prediction.
        Closeness.AssertElementwise("DPM-Solver++ 20 steps vs double recursion", x20, expected, 1e-4, 1e-4);
    }

    [Fact]
    public void ProgressAndStepCallbacksSeeEveryStep()
    {
        var cfg = new DiffusionConfig();
        var oracle = new GaussianOracle(new double[Pixels], 0.5, cfg);
        using var be = new CpuBackend(2);
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(1));
        var sampler = new Sampler(new DenoiseDiffusion(model, cfg, oracle.Output));
        var seen = new List<SampleProgress>();
        var ts = new List<int>();
        using var x = sampler.Sample(1, SamplerKind.DpmSolver, 4, 0f, 3, seen.Add, (t, xt, x0) => ts.Add(t));
        Assert.Equal(new[] { 750, 500, 250, 0 }, ts);
        Assert.Equal(new[] { 1, 2, 3, 4 }, seen.Select(p => p.Step));
        Assert.All(seen, p => Assert.Equal(4, p.Of));
    }
}
