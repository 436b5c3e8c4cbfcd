using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tests.Data;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Diffusion;

public class TrainingTests(ITestOutputHelper output)
{
    private static readonly string TrainImages = Path.Combine(TestFiles.RepoRoot, "data", "fashion-mnist", "train-images-idx3-ubyte.gz");

    // A CPU-sized model for tests: 32x32 after padding, 16/32 channels, GroupNorm(8).
    private static UNetConfig Small => new()
    {
        ImageChannels = 1, ImageSize = 32, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8,
    };

    private static Trainer NewTrainer(IBackend be, TrainingConfig tc, out UNet model)
    {
        var data = IdxDataset.Load(TrainImages);
        var loader = new DataLoader(data, new DataLoaderOptions
        {
            BatchSize = tc.BatchSize, Seed = tc.Seed, PadTo = 32, RandomHorizontalFlip = true, Range = DataRange.MinusOneToOne,
        });
        model = new UNet(be, Small, new PhiloxGenerator(tc.Seed));
        return new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new LoaderBatchSource(loader), tc);
    }

    [Fact]
    public void LearningRateWarmsUpThenFollowsHalfACosine()
    {
        var tc = new TrainingConfig { LearningRate = 1e-3f, WarmupSteps = 100, LrSchedule = LrSchedule.Cosine, DecaySteps = 1100, LrFinal = 0.1f };
        tc.Validate();
        // Against the closed form in double: lr (f + (1 - f) (1 + cos(pi p)) / 2), p = (step - warm-up) / (decay - warm-up).
        foreach (long step in new long[] { 1, 50, 99, 100, 101, 350, 600, 850, 1099, 1100, 1101, 5000 })
        {
            double expected = step < 100 ? 1e-3 * step / 100
                : 1e-3 * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1.0, (step - 100) / 1000.0))));
            Assert.Equal(expected, tc.LearningRateAt(step), 1e-3 * 1e-6);
        }
        Assert.Equal(1e-3 * (0.1 + 0.45), tc.LearningRateAt(600), 1e-9);
        var constant = tc with { LrSchedule = LrSchedule.Constant };
        Assert.Equal(1e-3f, constant.LearningRateAt(5000));
        Assert.Equal(5e-4f, constant.LearningRateAt(50));
        Assert.Equal("decay_steps", Assert.Throws<ConfigValueException>(() => (tc with { DecaySteps = 100 }).Validate()).Key);
        Assert.Equal("lr_final", Assert.Throws<ConfigValueException>(() => (tc with { LrFinal = 1.5f }).Validate()).Key);
    }

    [Fact]
    public void TrainingOnTheBundledDataLowersTheLoss()
    {
        using var be = new CpuBackend(2);
        var tc = new TrainingConfig { BatchSize = 8, LearningRate = 2e-3f, WarmupSteps = 20, Seed = 7 };
        using var trainer = NewTrainer(be, tc, out var model);
        using var _ = model;
        var losses = new List<float>();
        for (int i = 0; i < 120; i++) losses.Add(trainer.Step().Loss);
        double first = losses.Take(10).Average(), last = losses.Skip(100).Average();
        output.WriteLine($"mean loss, steps 1-10: {first:F4}; steps 101-120: {last:F4}");
        Assert.True(first > 0.5, $"an untrained model should predict noise poorly (loss {first})");
        Assert.True(last < 0.25, $"after 120 steps the loss should be clearly lower; it is {last:F4} (from {first:F4})");
        Assert.All(losses, l => Assert.True(float.IsFinite(l)));
    }

    [Fact]
    public void ResumeContinuesBitIdentically()
    {
        var tc = new TrainingConfig { BatchSize = 4, LearningRate = 1e-3f, WarmupSteps = 3, EmaDecay = 0.9f, Seed = 3 };
        using var dir = new TempDir();
        string ckpt = dir.File("ckpt.safetensors");

        List<float> straight;
        float[] straightEma;
        using (var be = new CpuBackend(2))
        using (var trainer = NewTrainer(be, tc, out var model))
        using (model)
        {
            straight = Enumerable.Range(0, 6).Select(_ => trainer.Step().Loss).ToList();
            straightEma = trainer.Parameters.First().Ema!.ToArray();
        }

        var resumed = new List<float>();
        float[] resumedEma;
        using (var be = new CpuBackend(2))
        {
            using (var trainer = NewTrainer(be, tc, out var model))
            using (model)
            {
                for (int i = 0; i < 3; i++) resumed.Add(trainer.Step().Loss);
                Checkpoint.Save(ckpt, trainer);
            }
            using (var trainer = NewTrainer(be, tc with { }, out var model))
            using (model)
            {
                // A fresh trainer has another initial state until the checkpoint is restored.
                Checkpoint.Load(ckpt).RestoreInto(trainer);
                Assert.Equal(3, trainer.StepCount);
                for (int i = 0; i < 3; i++) resumed.Add(trainer.Step().Loss);
                resumedEma = trainer.Parameters.First().Ema!.ToArray();
            }
        }
        Assert.Equal(straight, resumed);
        Assert.Equal(straightEma, resumedEma);
    }

    [Fact]
    public void CheckpointOfAnotherModelIsRejectedWithTheDifference()
    {
        using var be = new CpuBackend(2);
        using var dir = new TempDir();
        var tc = new TrainingConfig { BatchSize = 4, Seed = 1 };
        using (var trainer = NewTrainer(be, tc, out var model))
        using (model)
            Checkpoint.Save(dir.File("a.safetensors"), trainer);
        using var other = new UNet(be, Small with { NChannels = 24 }, new PhiloxGenerator(0));
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.File("a.safetensors")).LoadWeightsInto(other));
        Assert.Contains("image_proj.weight", e.Message);
        Assert.Contains("a.safetensors", e.Message);
        Assert.Contains("[24, 1, 3, 3]", e.Message);
    }
}
