using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Diffusion;

public class DiffusionTests
{
    internal static UNetConfig Tiny => new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8,
    };

    [Fact]
    public void QSampleAndPredictX0AreInverse()
    {
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        var d = new DenoiseDiffusion(model, new DiffusionConfig());
        var gen = new PhiloxGenerator(5);
        var x0 = Tensor.RandN(be, new Shape(3, 1, 8, 8), gen);
        var eps = Tensor.RandN(be, new Shape(3, 1, 8, 8), gen);
        int[] t = [0, 400, 999];
        var xt = d.QSample(x0, t, eps);
        var back = d.PredictX0(xt, t, eps).ToArray();
        var x0h = x0.ToArray();
        // float32 round trip; at t = 999, 1/sqrt(alpha_bar) = 157 amplifies x_t's rounding.
        for (int i = 0; i < back.Length; i++) Assert.True(Math.Abs(back[i] - x0h[i]) <= 2e-4, $"element {i}: {back[i]} vs {x0h[i]}");
        var (mean, variance) = d.QXtX0(x0, t);
        Assert.Equal((float)(1 - d.Schedule.AlphaBar[400]), variance.ToArray()[1]);
        Assert.Equal((float)Math.Sqrt(d.Schedule.AlphaBar[999]) * x0h[130], mean.ToArray()[130], 6);
    }

    [Fact]
    public void VTargetAndItsEpsConversionMatchTheClosedForms()
    {
        // v = sqrt(ab) eps - sqrt(1-ab) x0 and, back from v, eps = sqrt(1-ab) x_t + sqrt(ab) v recovers the noise
        // and x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab) the data, against double-precision arithmetic on the host.
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        var d = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = Prediction.V });
        var gen = new PhiloxGenerator(6);
        var x0 = Tensor.RandU(be, new Shape(4, 1, 8, 8), gen) * 2f - 1f;
        var eps = Tensor.RandN(be, new Shape(4, 1, 8, 8), gen);
        int[] t = [0, 250, 700, 999];
        var xt = d.QSample(x0, t, eps);
        var v = d.VTarget(x0, t, eps);
        float[] x0h = x0.ToArray(), epsh = eps.ToArray(), vh = v.ToArray();
        var epsBack = d.EpsFromV(xt, t, v).ToArray();
        var x0Back = d.PredictX0(xt, t, d.EpsFromV(xt, t, v)).ToArray();
        for (int i = 0; i < vh.Length; i++)
        {
            double ab = d.Schedule.AlphaBar[t[i / 64]];
            double vRef = Math.Sqrt(ab) * epsh[i] - Math.Sqrt(1 - ab) * x0h[i];
            Assert.True(Math.Abs(vh[i] - vRef) <= 1e-6 * (1 + Math.Abs(vRef)), $"v[{i}] {vh[i]} vs {vRef}");
            Assert.True(Math.Abs(epsBack[i] - epsh[i]) <= 1e-6 * (1 + Math.Abs(epsh[i])), $"eps[{i}] {epsBack[i]} vs {epsh[i]}");
            // x0 through eps divides by sqrt(alpha_bar) >= 1/158: float32 rounding of x_t grows by that much.
            Assert.True(Math.Abs(x0Back[i] - x0h[i]) <= 2e-4, $"x0[{i}] {x0Back[i]} vs {x0h[i]}");
        }
    }

    [Fact]
    public void VModelLossIsTheMeanSquaredErrorAgainstTheVTarget()
    {
        using var be = new CpuReferenceBackend();
        using var scope = new TensorScope();
        using var model = new UNet(be, Tiny, new PhiloxGenerator(2));
        model.Eval(); // dropout off: every forward pass below is the same function
        var dv = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = Prediction.V });
        var de = new DenoiseDiffusion(model, new DiffusionConfig());
        var gen = new PhiloxGenerator(8);
        var x0 = Tensor.RandU(be, new Shape(3, 1, 8, 8), gen) * 2f - 1f;
        var eps = Tensor.RandN(be, new Shape(3, 1, 8, 8), gen);
        int[] t = [3, 500, 990];
        var output = model.Forward(dv.QSample(x0, t, eps), t).ToArray();
        float[] x0h = x0.ToArray(), epsh = eps.ToArray();
        double sv = 0, se = 0;
        for (int i = 0; i < output.Length; i++)
        {
            double ab = dv.Schedule.AlphaBar[t[i / 64]];
            double vRef = Math.Sqrt(ab) * epsh[i] - Math.Sqrt(1 - ab) * x0h[i];
            sv += (output[i] - vRef) * (output[i] - vRef);
            se += (output[i] - epsh[i]) * (output[i] - epsh[i]);
        }
        Assert.Equal(sv / output.Length, dv.Loss(x0, t, eps).Item(), 5e-6 * sv / output.Length);
        Assert.Equal(se / output.Length, de.Loss(x0, t, eps).Item(), 5e-6 * se / output.Length);
        // The v model's eps (what the samplers use) is the conversion of its output.
        var xt = dv.QSample(x0, t, eps);
        var viaModel = dv.PredictEps(xt, t).ToArray();
        var direct = dv.EpsFromV(xt, t, model.Forward(xt, t)).ToArray();
        Assert.Equal(direct, viaModel);
        Assert.Equal(model.Forward(xt, t).ToArray(), de.PredictEps(xt, t).ToArray());
    }

    [Theory]
    [InlineData(Prediction.Eps)]
    [InlineData(Prediction.V)]
    public void ErrorByTimestepMeasuresTheModelAgainstTheNoiseAndTheData(Prediction prediction)
    {
        using var be = new CpuReferenceBackend();
        using var scope = new TensorScope();
        using var model = new UNet(be, Tiny, new PhiloxGenerator(4));
        model.Eval();
        var d = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = prediction });
        var x0 = Tensor.RandU(be, new Shape(2, 1, 8, 8), new PhiloxGenerator(11)) * 2f - 1f;
        int[] ts = [0, 300, 999];
        var rows = Evaluation.ErrorByTimestep(d, x0, ts, new PhiloxGenerator(12));
        // Again by hand from the same noise stream: the MSE against eps, and x0 through PredictX0.
        var gen = new PhiloxGenerator(12);
        float[] x0h = x0.ToArray();
        for (int k = 0; k < ts.Length; k++)
        {
            int[] t = [ts[k], ts[k]];
            var noise = Tensor.RandN(be, x0.Shape, gen);
            var xt = d.QSample(x0, t, noise);
            var eps = d.PredictEps(xt, t);
            float[] e = eps.ToArray(), z = noise.ToArray(), x0p = d.PredictX0(xt, t, eps).ToArray();
            double mse = 0, x0Err = 0;
            for (int i = 0; i < e.Length; i++)
            {
                mse += (e[i] - z[i]) * (double)(e[i] - z[i]);
                x0Err += (x0p[i] - x0h[i]) * (double)(x0p[i] - x0h[i]);
            }
            Assert.Equal(ts[k], rows[k].T);
            Assert.Equal(mse / e.Length, rows[k].EpsMse, 1e-9 * (1 + mse));
            // float32 x0 through 1/sqrt(alpha_bar) (158 at t = 999) against the double formula.
            double x0Rms = Math.Sqrt(x0Err / e.Length);
            Assert.True(Math.Abs(x0Rms - rows[k].X0Rms) <= 1e-4 * (1 + x0Rms), $"t {ts[k]}: x0 RMS {rows[k].X0Rms} vs {x0Rms}");
        }
    }

    [Fact]
    public void ClippedPosteriorMeanEqualsSeedMeanWhenNothingIsClipped()
    {
        // mu~(x_t, x0_hat(eps)) and the seed's (x_t - beta/sqrt(1-ab) eps)/sqrt(alpha) are the same function.
        using var be = new CpuReferenceBackend();
        using var scope = new TensorScope();
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        var seed = new DenoiseDiffusion(model, new DiffusionConfig { ClipX0 = false });
        var clip = new DenoiseDiffusion(model, new DiffusionConfig { ClipX0 = true, DataRange = DataRange.MinusOneToOne });
        var gen = new PhiloxGenerator(9);
        int[] t = [5, 50];
        var x0 = Tensor.RandU(be, new Shape(2, 1, 8, 8), gen) * 1.6f - 0.8f; // inside [-1, 1]: nothing is clipped
        var eps = Tensor.RandN(be, new Shape(2, 1, 8, 8), gen);
        var xt = seed.QSample(x0, t, eps);
        var a = seed.PSampleFromEps(xt, t, eps, null).ToArray();
        var b = clip.PSampleFromEps(xt, t, eps, null).ToArray();
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5, $"element {i}: {a[i]} vs {b[i]}");
    }

    [Fact]
    public void DdimWithEtaOneOverAllStepsIsDdpmWithPosteriorVariance()
    {
        // sigma_t(eta = 1) of DDIM is sqrt(beta~_t), so over all T steps DDIM(eta=1) and DDPM(fixed-small)
        // take the same steps and draw the same noise from the same Philox stream.
        using var be = new CpuBackend(2);
        using var model = new UNet(be, Tiny, new PhiloxGenerator(2));
        model.Eval();
        var cfg = new DiffusionConfig { NSteps = 20, Variance = VarianceType.FixedSmall, ClipX0 = false, NoNoiseAtLastStep = true };
        var sampler = new Sampler(new DenoiseDiffusion(model, cfg));
        using var ddpm = sampler.Sample(2, SamplerKind.Ddpm, 20, 0f, seed: 77);
        using var ddim = sampler.Sample(2, SamplerKind.Ddim, 20, 1f, seed: 77);
        var a = ddpm.ToArray(); var b = ddim.ToArray();
        var nmse = Closeness.Nmse(b, a);
        Assert.True(nmse.Value < 1e-9, nmse.Describe("DDPM and DDIM(eta=1) differ", "NMSE", 1e-9));
    }

    [Fact]
    public void SamplingIsDeterministicPerSeedAndBackend()
    {
        using var cpu = new CpuBackend(2);
        using var rf = new CpuReferenceBackend();
        float[] Run(IBackend be, ulong seed)
        {
            using var model = new UNet(be, Tiny, new PhiloxGenerator(3));
            model.Eval();
            var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 10 }));
            using var x = sampler.Sample(2, SamplerKind.Ddim, 5, 0.5f, seed);
            return x.ToArray();
        }
        var a = Run(cpu, 1); var a2 = Run(cpu, 1); var b = Run(cpu, 2); var r = Run(rf, 1);
        Assert.Equal(a, a2);
        Assert.NotEqual(a, b);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - r[i]) <= 1e-4, $"cpu vs cpu-reference element {i}: {a[i]} vs {r[i]}");
        Assert.All(a, v => Assert.InRange(v, -1f, 1f)); // clipped x0 keeps samples in the data range
    }
}
