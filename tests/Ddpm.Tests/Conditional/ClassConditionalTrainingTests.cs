using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Quality;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Ddpm.Tests.Data;
using Ddpm.Tests.Distributed;
using Ddpm.Tests.Golden;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Conditional;

/// <summary>Labels through the data path, the label drop, resume and data-parallel training of a conditional model.</summary>
public sealed class ClassConditionalTrainingTests(ITestOutputHelper output)
{
    private static UNetConfig Model => GoldenTestsBase.TinyConfig with { NumClasses = 3, ClassNames = ["x", "y", "z"] };

    private static TrainingConfig Config(int batch) =>
        new() { BatchSize = batch, LearningRate = 2e-3f, WarmupSteps = 2, EmaDecay = 0.9f, GradClip = 0.5f, Seed = 5, AdamEps = 1e-5f, ClassDropout = 0.3f };

    [Fact]
    public void AboutATenthOfTheLabelsAreDroppedAndTheOthersKept()
    {
        const int n = 100_000;
        const float p = 0.1f;
        var labels = Enumerable.Range(0, n).Select(i => i % 7).ToArray();
        var gen = new PhiloxGenerator(42);
        var dropped = Trainer.DropLabels(labels, p, 7, gen);
        int count = 0;
        for (int i = 0; i < n; i++)
        {
            if (dropped[i] == 7) count++;
            else Assert.Equal(labels[i], dropped[i]);
        }
        // Binomial(n, 0.1): mean 10,000, standard deviation 94.9; 5 deviations (474) fail by chance with p < 1e-6.
        output.WriteLine($"{count} of {n} labels dropped");
        Assert.InRange(count, 10_000 - 474, 10_000 + 474);
        Assert.Equal((ulong)n, gen.Offset);
        // p = 0 keeps every label, p = 1 drops every one.
        Assert.Equal(labels, Trainer.DropLabels(labels, 0f, 7, new PhiloxGenerator(1)));
        Assert.All(Trainer.DropLabels(labels, 1f, 7, new PhiloxGenerator(1)), l => Assert.Equal(7, l));
    }

    [Fact]
    public void AShardDropsExactlyTheLabelsItsSamplesGetInTheWholeBatch()
    {
        var labels = Enumerable.Range(0, 8).Select(i => i % 3).ToArray();
        var whole = Trainer.DropLabels(labels, 0.5f, 3, new PhiloxGenerator(9, 8));
        foreach (var (start, count) in new[] { (0, 4), (4, 4), (6, 2) })
        {
            var g = new PhiloxGenerator(9, 8);
            int[] part;
            using (g.ShardBatch(start, count, 8)) part = Trainer.DropLabels(labels.AsSpan(start, count), 0.5f, 3, g);
            Assert.Equal(whole.AsSpan(start, count).ToArray(), part);
            Assert.Equal(16ul, g.Offset);
        }
    }

    [Fact]
    public void TheLoaderDeliversEachImagesOwnLabel()
    {
        // Image i is filled with i / 100 and labelled i % 5: a label read beside the wrong image shows.
        const int n = 40;
        var images = new FilledImages(n);
        var labelled = new LabelledDataset(images, Enumerable.Range(0, n).Select(i => i % 5).ToArray(), 5);
        var loader = new DataLoader(labelled, new DataLoaderOptions { BatchSize = 8, Seed = 3, Range = DataRange.ZeroToOne });
        Assert.Equal(5, loader.NumClasses);
        var source = new LoaderBatchSource(loader);
        var x = new float[8 * 4];
        var y = new int[8];
        for (int b = 0; b < 7; b++)
        {
            source.NextBatch(8, x, y);
            for (int i = 0; i < 8; i++) Assert.Equal((int)MathF.Round(x[i * 4] * 100) % 5, y[i]);
        }
        Assert.Throws<InvalidOperationException>(() => new DataLoader(images, loader.Options).GetBatch(0, 0, x, y));
        Assert.Throws<ArgumentException>(() => new LabelledDataset(images, [1, 2], 5));
        Assert.Throws<ArgumentException>(() => new LabelledDataset(images, Enumerable.Repeat(5, n).ToArray(), 5));
    }

    [Fact]
    public void AnImageFolderWithOneSubFolderPerClassIsLabelledByFolder()
    {
        using var dir = new TempDir();
        var names = new[] { "cats", "dogs", "birds" };
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < 2; i++)
                ImageFolderTests.Save(Path.Combine(dir.Path, names[k], $"{i}.png"), Enumerable.Repeat((byte)(80 * k), 16).ToArray(), 4, 4, 1);
        var ds = ImageFolderDataset.Load(dir.Path, 4, 4, 1).ByFolder()!;
        Assert.Equal(new[] { "birds", "cats", "dogs" }, ds.ClassNames);
        var px = new float[16];
        for (int i = 0; i < ds.Count; i++)
        {
            ds.Get(i, px);
            // birds were written with 160, cats 0, dogs 80.
            Assert.Equal(new[] { 160, 0, 80 }[ds.LabelOf(i)], (int)MathF.Round(px[0] * 255));
        }
        // An image beside the sub-folders: not one class per folder.
        ImageFolderTests.Save(Path.Combine(dir.Path, "loose.png"), new byte[16], 4, 4, 1);
        Assert.Null(ImageFolderDataset.Load(dir.Path, 4, 4, 1).ByFolder());
    }

    [Fact]
    public void AConditionalModelNeedsLabelledDataOfItsClassCount()
    {
        using var be = new CpuBackend(1);
        using var model = new UNet(be, Model, new PhiloxGenerator(1));
        var d = new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 50 });
        Assert.Contains("no labels", Assert.Throws<ArgumentException>(() => new Trainer(d, new SyntheticBatches(1, 16, 2), Config(4))).Message);
        Assert.Contains("4 classes", Assert.Throws<ArgumentException>(() => new Trainer(d, new SyntheticBatches(1, 16, 2, 4), Config(4))).Message);
    }

    private static (float[] Losses, float[] Weights, float[] Ema) Train(ICollective coll, int batch, int steps, string? saveAt = null, int saveAfter = 0, string? resumeFrom = null)
    {
        using var be = new CpuBackend(1);
        using var model = new UNet(be, Model, new PhiloxGenerator(1));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 50 }), new SyntheticBatches(1, Model.ImageSize, 2, 3),
            Config(batch), new DataParallel(coll, ChecksumEvery: 2));
        if (resumeFrom is not null) Checkpoint.Load(resumeFrom).RestoreInto(trainer);
        var losses = new List<float>();
        while (trainer.StepCount < steps)
        {
            losses.Add(trainer.Step().Loss);
            if (saveAt is not null && trainer.StepCount == saveAfter) Checkpoint.Save(saveAt, trainer);
        }
        var w = new float[trainer.Store.Count];
        be.Download(trainer.Store.Parameters, 0, w);
        var ema = new float[trainer.Store.Count];
        be.Download(trainer.EmaWeights!, 0, ema);
        return (losses.ToArray(), w, ema);
    }

    [Fact]
    public void ResumingAConditionalRunEqualsTheUninterruptedRunBitForBit()
    {
        using var dir = new TempDir();
        string ckpt = dir.File("c.safetensors");
        var straight = Train(SingleProcess.Instance, 4, 6, ckpt, 3);
        var loaded = Checkpoint.Load(ckpt);
        Assert.Equal(3, loaded.Model!.NumClasses);
        Assert.Equal(new[] { "x", "y", "z" }, loaded.Model.ClassNames);
        Assert.Equal(0.3f, loaded.Training!.ClassDropout);
        var resumed = Train(SingleProcess.Instance, 4, 6, resumeFrom: ckpt);
        Assert.Equal(straight.Losses[3..], resumed.Losses);
        Assert.Equal(straight.Weights, resumed.Weights);
        Assert.Equal(straight.Ema, resumed.Ema);
        // The labels matter: the same run with every label dropped trains another model.
        using var be = new CpuBackend(1);
        using var model = new UNet(be, Model, new PhiloxGenerator(1));
        using var other = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 50 }), new SyntheticBatches(1, Model.ImageSize, 2, 3),
            Config(4) with { ClassDropout = 1f });
        Assert.NotEqual(straight.Losses[0], other.Step().Loss);
    }

    // As in DataParallelTrainingTests: shards sum in another order than the whole batch, so losses and weights
    // agree to float rounding (measured here: weights 7.7e-7 apart after 4 steps, 8.2e-7 with the AVX2 code).
    private const double LossTolerance = 1e-6, WeightTolerance = 2e-6;

    [Fact]
    public void TwoRanksTrainTheConditionalModelOneRankTrainsWithTheWholeBatch()
    {
        const int batch = 4, steps = 4;
        var one = Train(SingleProcess.Instance, batch, steps);
        var many = new InProcessRanks(2).Run(c => Train(c, batch, steps));
        Assert.Equal(many[0].Weights, many[1].Weights);
        for (int i = 0; i < steps; i++)
            Assert.True(Math.Abs(one.Losses[i] - many[0].Losses[i]) <= LossTolerance * Math.Abs(one.Losses[i]), $"step {i + 1}: {one.Losses[i]:R} vs {many[0].Losses[i]:R}");
        double maxW = one.Weights.Zip(many[0].Weights).Max(p => Math.Abs(p.First - p.Second));
        output.WriteLine($"max |weight difference| {maxW:E3}");
        Assert.True(maxW <= WeightTolerance, $"weights differ by {maxW:E3}");
    }

    [Fact]
    public void ClassAccuracyIsTheShareOfEachClassesSamplesPredictedAsIt()
    {
        int[] labels = [0, 0, 0, 0, 1, 1, 2, 2];
        int[] predicted = [0, 1, 0, 0, 1, 1, 0, 1];
        var acc = SampleQuality.ClassAccuracy(predicted, labels, 4);
        Assert.Equal(0.75, acc[0]);
        Assert.Equal(1.0, acc[1]);
        Assert.Equal(0.0, acc[2]);
        Assert.True(double.IsNaN(acc[3]));
    }

    /// <summary>Image i: 2x2 grey, every pixel i / 100.</summary>
    private sealed class FilledImages(int count) : IImageDataset
    {
        public int Count => count;
        public int Channels => 1;
        public int Height => 2;
        public int Width => 2;
        public void Get(int index, Span<float> dst) => dst.Fill(index / 100f);
    }
}
