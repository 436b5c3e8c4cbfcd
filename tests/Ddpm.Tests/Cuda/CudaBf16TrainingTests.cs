using System.Diagnostics;
using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// bf16 on whole models: a tiny model trained 300 steps in bf16 follows the loss curve of the same run in fp32 (same weights,
/// batches, noise and timesteps), and a checkpoint sampled in bf16 gives the images it gives in fp32, each within a
/// stated distance. On the simulator these runs go without the instrumented checks (race, bounds, init), as the tool
/// tests do; every kernel they launch runs instrumented in the per-op tests.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBf16TrainingTests(ITestOutputHelper output) : IDisposable
{
    private readonly IDisposable? _checks = SimulatorOptions.Open() is { } o ? o.Override("check", o.Get("check") + ",-race,-bounds,-init") : null;

    public void Dispose() => _checks?.Dispose();

    // The smallest model that still takes every bf16 path: one level of 8 channels (GroupNorm in 2 groups) with one
    // residual block down and two up, and the middle block's attention (its two products), on 4x4 images; convolutions
    // in all three passes, linear layers, attention. 300 steps in both precisions take about a minute of CPU time on
    // the simulated device (0.1 s a step).
    private static UNetConfig Small => new()
    {
        ImageChannels = 1, ImageSize = 4, NChannels = 8, ChMults = [1], IsAttn = [false], NBlocks = 1, NGroups = 2, Dropout = 0f,
    };

    private const int Steps = 300;

    /// <summary>The loss curves are compared as means over windows of this many steps (single steps' losses are noisy).</summary>
    private const int Window = 50;

    /// <summary>
    /// Largest relative difference between the windowed mean losses of the bf16 and fp32 runs. Each bf16 product is off
    /// by about 2^-8 relative (its operands' rounding, see CudaBf16Tests), which moves a loss of independent per-element
    /// errors by far less; the two runs see the same batches, noise and timesteps, so their difference grows only as the
    /// weights drift apart. Measured on the simulated device: 0.03 % at most over the six windows of 300 steps (0.01 %
    /// in the first). 0.25 % is eight times that.
    /// </summary>
    private const double LossTolerance = 0.0025;

    /// <summary>
    /// The fp32 run's last window must be below this share of its first: the model learns, so the curves compared are
    /// a descent and not a flat line (measured: 0.89 to 0.75, a share of 0.84).
    /// </summary>
    private const double Learned = 0.9;

    private static List<float> Train(Precision precision)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = precision });
        using var model = new UNet(be, Small, new PhiloxGenerator(1));
        var tc = new TrainingConfig { BatchSize = 4, LearningRate = 1e-3f, WarmupSteps = 1, GradClip = 1f, EmaDecay = 0.99f };
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 50 }), new SyntheticBatches(1, Small.ImageSize, 99), tc);
        return Enumerable.Range(0, Steps).Select(_ => trainer.Step().Loss).ToList();
    }

    private static double[] Windows(List<float> losses) =>
        Enumerable.Range(0, losses.Count / Window).Select(w => losses.Skip(w * Window).Take(Window).Average(v => (double)v)).ToArray();

    [CudaFact]
    public void ATinyModelTrainedInBf16TracksTheFp32LossCurve()
    {
        var clock = Stopwatch.StartNew();
        var fp32 = Windows(Train(Precision.Fp32));
        var bf16 = Windows(Train(Precision.Bf16));
        double worst = 0;
        for (int i = 0; i < fp32.Length; i++)
        {
            double rel = Math.Abs(bf16[i] - fp32[i]) / fp32[i];
            worst = Math.Max(worst, rel);
            output.WriteLine($"steps {i * Window + 1}-{(i + 1) * Window}: mean loss fp32 {fp32[i]:F5}, bf16 {bf16[i]:F5} ({rel:P2})");
        }
        output.WriteLine($"{Steps} steps in each precision, {clock.Elapsed.TotalSeconds:F0} s; largest difference {worst:P2} (tolerance {LossTolerance:P2})");
        // The loss falls (the model learns), and bf16 follows it.
        Assert.True(fp32[^1] < Learned * fp32[0], $"the fp32 run did not learn: mean loss {fp32[0]:F4} at first, {fp32[^1]:F4} at the end");
        Assert.True(worst <= LossTolerance, $"the bf16 loss curve leaves the fp32 one by {worst:P2}, more than {LossTolerance:P2}");
        Assert.True(worst > 0, "the bf16 run gave the fp32 losses exactly: the operands were not rounded");
    }

    /// <summary>
    /// RMS distance, in the data range [-1, 1], between images sampled from one checkpoint in bf16 and in fp32. A
    /// deterministic DDIM run maps the same noise through the model 10 times; each evaluation's output is off by about
    /// 2^-8 relative in bf16 and the x0 clipping bounds what accumulates (measured: 0.0012, with images of RMS 0.83).
    /// 0.01 is 1/200 of the range, eight times the measured distance.
    /// </summary>
    private const double SampleTolerance = 0.01;

    [CudaFact]
    public void ACheckpointSampledInBf16GivesTheFp32Images()
    {
        string checkpoint = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny", "model.safetensors");
        float[] Sample(Precision precision)
        {
            using var be = new CudaBackend(new BackendOptions { Precision = precision });
            using var model = new UNet(be, Golden.GoldenTestsBase.TinyConfig, new PhiloxGenerator(0));
            model.Eval();
            Checkpoint.Load(checkpoint).LoadWeightsInto(model);
            using var images = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 100 })).Sample(2, SamplerKind.Ddim, 10, 0f, 5);
            return images.ToArray();
        }
        var fp32 = Sample(Precision.Fp32);
        var bf16 = Sample(Precision.Bf16);
        double rms = Math.Sqrt(fp32.Zip(bf16, (a, b) => (double)(a - b) * (a - b)).Average());
        double spread = Math.Sqrt(fp32.Average(v => (double)v * v));
        output.WriteLine($"2 images, 10 DDIM steps: RMS distance bf16 - fp32 {rms:E3} (tolerance {SampleTolerance}); RMS of the fp32 images {spread:F3}");
        Assert.True(rms <= SampleTolerance, $"bf16 samples are {rms:E3} (RMS) from the fp32 ones, more than {SampleTolerance}");
        Assert.True(rms > 0, "bf16 sampled the fp32 images exactly: the operands were not rounded");
    }
}
