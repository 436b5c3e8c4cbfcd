using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Ddpm.Tests.Core;
using Ddpm.Tests.Golden;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Diffusion;

/// <summary>
/// The trainer's step on flat storage: one wait for the device per step, a handful of whole-model launches,
/// and the same arithmetic as the per-tensor loop (loss, torch's clip_grad_norm_, Adam, EMA) written out here.
/// </summary>
public sealed class TrainerStepTests(ITestOutputHelper output)
{
    private static readonly UNetConfig Tiny = GoldenTestsBase.TinyConfig;

    private static TrainingConfig Config(float clip) =>
        new() { BatchSize = 3, LearningRate = 2e-3f, WarmupSteps = 2, EmaDecay = 0.9f, GradClip = clip, Seed = 5 };

    [Theory]
    [InlineData(1f)]
    [InlineData(0f)]
    public void AStepWaitsForTheDeviceOnceAndUpdatesInAFewLaunches(float clip)
    {
        using var cpu = new CpuBackend(2);
        var be = new ForwardingBackend(cpu);
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        var tc = Config(clip);
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Tiny.ImageSize, 2), tc);
        trainer.Step();
        be.ResetCounts();
        const int steps = 3;
        for (int i = 0; i < steps; i++) trainer.Step();
        var c = be.Calls;
        output.WriteLine($"per step: synchronising {be.Synchronizing / (double)steps} (Download {be.CallsOf("Download") / (double)steps}), " +
            $"AdamStep {be.CallsOf("AdamStep") / (double)steps}, SumOfSquares {be.CallsOf("SumOfSquares") / (double)steps}, " +
            $"SumOfSquaresTo {be.CallsOf("SumOfSquaresTo") / (double)steps}, ClipScale {be.CallsOf("ClipScale") / (double)steps}, " +
            $"Fill {be.CallsOf("Fill") / (double)steps}, all calls {c.Values.Sum() / (double)steps}");
        Assert.Equal(steps, be.Synchronizing);
        Assert.Equal(steps, be.CallsOf(nameof(IBackend.Download)));
        Assert.Equal(steps, be.CallsOf(nameof(IBackend.SumOfSquaresTo)));
        Assert.Equal(clip > 0 ? steps : 0, be.CallsOf(nameof(IBackend.ClipScale)));
        // One AdamStep per run of trainable parameters: the unused attention norm (kept for labml's names)
        // splits the store once per attention block.
        int attentionBlocks = trainer.Store.Slots.Count(s => s.Name.EndsWith(".norm.weight", StringComparison.Ordinal) && !s.Parameter.RequiresGrad);
        Assert.True(attentionBlocks > 0);
        Assert.Equal(steps * (attentionBlocks + 1), be.CallsOf(nameof(IBackend.AdamStep)));
    }

    [Fact]
    public void EveryRandomStreamOfARunHasItsOwnKey()
    {
        // The data loader draws with the seed itself; the noise, dropout and initial-weight streams must never
        // reuse its words (or each other's), within a run, for any seed.
        foreach (ulong seed in new ulong[] { 0, 1, 2, 3, 7, 1000, TrainingConfig.MaxSeed / 3, TrainingConfig.MaxSeed })
        {
            var c = new TrainingConfig { Seed = seed };
            Assert.Equal(4, new[] { c.Seed, c.NoiseKey, c.DropoutKey, c.InitKey }.Distinct().Count());
        }
        // Above 2^62 - 1 the keys would wrap (4 s + 3 = s at s = 2^64 - 1): such a seed is refused.
        Assert.Equal("seed", Assert.Throws<ConfigValueException>(() => new TrainingConfig { Seed = TrainingConfig.MaxSeed + 1 }.Validate()).Key);
    }

    [Fact]
    public void TheFlatStepComputesWhatThePerTensorLoopDoes()
    {
        using var be = new CpuBackend(2);
        var tc = Config(0.05f);
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Tiny.ImageSize, 2), tc);

        // The loop written per tensor, on a twin model that has no store.
        using var twin = new UNet(be, Tiny, new PhiloxGenerator(1));
        var diffusion = new DenoiseDiffusion(twin, new DiffusionConfig());
        var data = new SyntheticBatches(1, Tiny.ImageSize, 2);
        var noise = new PhiloxGenerator(tc.NoiseKey);
        twin.SetDropoutGenerator(new PhiloxGenerator(tc.DropoutKey));
        var named = twin.NamedParameters().ToList();
        using var adam = new Adam(named.Where(p => p.Param.RequiresGrad), tc.LearningRate, tc.Beta1, tc.Beta2, tc.AdamEps, tc.WeightDecay);
        Assert.Null(adam.Store);
        var ema = named.Select(p => p.Param.ToArray()).ToList();
        var batch = new float[tc.BatchSize * Tiny.ImageSize * Tiny.ImageSize];

        bool clipped = false;
        for (int step = 1; step <= 4; step++)
        {
            var s = trainer.Step();

            float lr = tc.LearningRateAt(step);
            data.NextBatch(tc.BatchSize, batch);
            float loss;
            double norm;
            using (var scope = new TensorScope())
            {
                var x0 = Tensor.FromArray(be, batch, tc.BatchSize, 1, Tiny.ImageSize, Tiny.ImageSize);
                var l = diffusion.Loss(x0, noise);
                twin.ZeroGrad();
                l.Backward();
                loss = l.Item();
                norm = GradClip.ClipGradNorm(twin.Parameters(), tc.GradClip);
                adam.LearningRate = lr;
                adam.Step();
            }
            double d = Math.Min(tc.EmaDecay, (1.0 + step) / (10.0 + step));
            for (int i = 0; i < named.Count; i++)
            {
                var p = named[i].Param.ToArray();
                for (int j = 0; j < p.Length; j++) ema[i][j] = (float)(1 - d) * p[j] + (float)d * ema[i][j];
            }

            clipped |= norm > tc.GradClip;
            output.WriteLine($"step {step}: loss {s.Loss:R} / {loss:R}, norm {s.GradNorm:R} / {norm:R}");
            Assert.Equal(loss, s.Loss);
            // The norm is summed in another order (over the flat buffer rather than tensor by tensor), in double.
            Assert.True(Math.Abs(s.GradNorm - norm) <= 1e-13 * norm, $"step {step}: norm {s.GradNorm:R} vs {norm:R}");
            Assert.Equal(lr, s.LearningRate);
        }
        Assert.True(clipped, "the clip should have acted in some step");

        var flat = trainer.Parameters.ToList();
        for (int i = 0; i < named.Count; i++)
        {
            Assert.Equal(named[i].Name, flat[i].Name);
            AssertSame(named[i].Param.ToArray(), flat[i].Param.ToArray(), named[i].Name);
            AssertSame(ema[i], flat[i].Ema!.ToArray(), "ema." + named[i].Name);
        }
        foreach (var (a, b) in adam.State.Zip(trainer.Optimizer.State))
        {
            Assert.Equal(a.Name, b.Name);
            AssertSame(a.M.ToArray(), b.M.ToArray(), "adam.m." + a.Name);
            AssertSame(a.V.ToArray(), b.V.ToArray(), "adam.v." + a.Name);
        }
    }

    // The norm's double sums differ in order only, far below the float clip coefficient's rounding, so the
    // same kernels give the same bits.
    private static void AssertSame(float[] expected, float[] actual, string what) =>
        Assert.True(expected.SequenceEqual(actual), $"{what} differs from the per-tensor loop");
}
