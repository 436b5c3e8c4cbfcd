using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Diffusion;

public class MinSnrLossTests
{
    private const int Pixels = 64; // DiffusionTests.Tiny: 1 x 8 x 8

    /// <summary>Min-SNR-gamma's weight in double: min(SNR, gamma) / SNR for eps, / (SNR + 1) for v.</summary>
    private static double Weight(double ab, double gamma, Prediction prediction)
    {
        double snr = ab / (1 - ab);
        return Math.Min(snr, gamma) / (prediction == Prediction.Eps ? snr : snr + 1);
    }

    [Theory]
    [InlineData(Prediction.Eps, 5.0)]
    [InlineData(Prediction.V, 5.0)]
    [InlineData(Prediction.Eps, 0.5)]
    [InlineData(Prediction.V, 2.5)]
    public void WeightedLossIsTheBatchMeanOfWeightedPerSampleErrors(Prediction prediction, double gamma)
    {
        using var be = new CpuReferenceBackend();
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(2));
        model.Eval(); // dropout off: the forward pass below is the loss's own
        var d = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = prediction, LossWeighting = LossWeighting.MinSnr, MinSnrGamma = gamma });
        var gen = new PhiloxGenerator(8);
        var x0 = Tensor.RandU(be, new Shape(4, 1, 8, 8), gen) * 2f - 1f;
        var eps = Tensor.RandN(be, new Shape(4, 1, 8, 8), gen);
        int[] t = [0, 40, 500, 990]; // SNR from 1e4 down to 5e-5: both sides of gamma
        var output = model.Forward(d.QSample(x0, t, eps), t).ToArray();
        float[] x0h = x0.ToArray(), epsh = eps.ToArray();
        double total = 0;
        for (int n = 0; n < t.Length; n++)
        {
            double ab = d.Schedule.AlphaBar[t[n]], sum = 0;
            for (int j = 0; j < Pixels; j++)
            {
                int i = n * Pixels + j;
                double target = prediction == Prediction.Eps ? epsh[i] : Math.Sqrt(ab) * epsh[i] - Math.Sqrt(1 - ab) * x0h[i];
                sum += (output[i] - target) * (output[i] - target);
            }
            Assert.Equal(Weight(ab, gamma, prediction), d.LossWeight(t[n]), 1e-15);
            total += Weight(ab, gamma, prediction) * sum / Pixels;
        }
        double expected = total / t.Length;
        // float32 squares, weights and a float32 sum of 256 terms.
        Assert.Equal(expected, d.Loss(x0, t, eps).Item(), 5e-6 * expected);
    }

    [Theory]
    [InlineData(Prediction.Eps)]
    [InlineData(Prediction.V)]
    public void UniformWeightingIsTheMeanSquaredErrorBitForBit(Prediction prediction)
    {
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(3));
        model.Eval();
        var d = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = prediction, MinSnrGamma = 0.5 });
        var gen = new PhiloxGenerator(4);
        var x0 = Tensor.RandU(be, new Shape(3, 1, 8, 8), gen) * 2f - 1f;
        var eps = Tensor.RandN(be, new Shape(3, 1, 8, 8), gen);
        int[] t = [1, 300, 999];
        var output = model.Forward(d.QSample(x0, t, eps), t);
        var target = prediction == Prediction.Eps ? eps : d.VTarget(x0, t, eps);
        Assert.Equal(Ops.MseLoss(target, output).Item(), d.Loss(x0, t, eps).Item());
        Assert.All(t, step => Assert.Equal(1.0, d.LossWeight(step)));
    }

    [Theory]
    [InlineData(Prediction.Eps, 30)]
    [InlineData(Prediction.V, 700)]
    public void TheGradientOfOneSampleIsItsWeightTimesTheUniformGradient(Prediction prediction, int step)
    {
        // For a batch of one, d(w L)/d theta = w dL/d theta: the weight reaches every parameter's gradient.
        using var be = new CpuReferenceBackend();
        float[][] Gradients(LossWeighting weighting)
        {
            using var scope = new TensorScope();
            using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(5));
            model.Eval();
            var d = new DenoiseDiffusion(model, new DiffusionConfig { Prediction = prediction, LossWeighting = weighting });
            var gen = new PhiloxGenerator(6);
            var x0 = Tensor.RandU(be, new Shape(1, 1, 8, 8), gen) * 2f - 1f;
            var eps = Tensor.RandN(be, new Shape(1, 1, 8, 8), gen);
            d.Loss(x0, [step], eps).Backward();
            // A parameter off the path of this input (none reached it) has no gradient: zero.
            return model.NamedParameters().Select(p => p.Param.Grad?.ToArray() ?? new float[p.Param.Size]).ToArray();
        }
        var uniform = Gradients(LossWeighting.Uniform);
        var weighted = Gradients(LossWeighting.MinSnr);
        double ab = new NoiseSchedule(new DiffusionConfig()).AlphaBar[step];
        double w = Weight(ab, DiffusionConfig.DefaultMinSnrGamma, prediction);
        Assert.True(w < 0.9, $"weight {w} at t {step} does not tell the two apart");
        double scale = uniform.SelectMany(g => g).Max(v => Math.Abs(v));
        Assert.True(uniform.Count(g => g.Any(v => v != 0)) > uniform.Length / 2, "most parameters received no gradient");
        for (int k = 0; k < uniform.Length; k++)
            for (int i = 0; i < uniform[k].Length; i++)
            {
                // Same float32 backward pass with the loss's scale folded in at another place: rounding only.
                double expected = w * uniform[k][i];
                Assert.True(Math.Abs(weighted[k][i] - expected) <= 1e-5 * scale, $"parameter {k} element {i}: {weighted[k][i]} vs {expected}");
            }
    }

    [Fact]
    public void CheckpointsKeepTheWeightingAndRefuseABadGamma()
    {
        using var be = new CpuBackend(2);
        using var dir = new TempDir();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(7));
        var cfg = new DiffusionConfig { Prediction = Prediction.V, LossWeighting = LossWeighting.MinSnr, MinSnrGamma = 3.5 };
        var trainer = new Trainer(new DenoiseDiffusion(model, cfg), new SyntheticBatches(1, 8, 1), new TrainingConfig { BatchSize = 2 });
        trainer.Step();
        string path = dir.File("c.safetensors");
        Checkpoint.Save(path, trainer);
        var loaded = Checkpoint.Load(path);
        Assert.Equal(cfg, loaded.Diffusion);
        loaded.RestoreInto(trainer); // the same configs: accepted

        // A checkpoint written without the keys was trained uniformly.
        var file = SafeTensorsFile.Read(path);
        var meta = file.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
        meta["diffusion"] = meta["diffusion"].Replace(",\"loss_weighting\":\"MinSnr\",\"min_snr_gamma\":3.5", "");
        Assert.DoesNotContain("snr", meta["diffusion"]);
        SafeTensorsFile.Write(dir.File("old.safetensors"), file.Entries, meta);
        var old = Checkpoint.Load(dir.File("old.safetensors")).Diffusion!;
        Assert.Equal((LossWeighting.Uniform, DiffusionConfig.DefaultMinSnrGamma), (old.LossWeighting, old.MinSnrGamma));

        meta["diffusion"] = file.Metadata["diffusion"].Replace("\"min_snr_gamma\":3.5", "\"min_snr_gamma\":-1");
        SafeTensorsFile.Write(dir.File("bad.safetensors"), file.Entries, meta);
        var e = Assert.Throws<SafeTensorsFormatException>(() => Checkpoint.Load(dir.File("bad.safetensors")));
        Assert.Contains("diffusion.min_snr_gamma", e.Message);
    }
}
