using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Ddpm.Tests.Golden;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Distributed;

/// <summary>
/// Data-parallel training on in-process ranks against one process with the whole batch: the same random
/// numbers exactly, and the same losses and weights up to float summation order.
/// </summary>
public sealed class DataParallelTrainingTests(ITestOutputHelper output)
{
    [Fact]
    public void AShardDrawsExactlyItsSamplesNumbersOfTheWholeBatch()
    {
        using var be = new CpuBackend(1);
        const int total = 6, per = 2 * 5 * 5;
        var whole = new PhiloxGenerator(11, 4);
        var t = whole.NextInts(total, 1000);
        using var noise = Tensor.RandN(be, new Shape(total, 2, 5, 5), whole);
        using var ones = Tensor.FromArray(be, Enumerable.Repeat(1f, total * per).ToArray(), total, 2, 5, 5);
        using var dropped = Ops.Dropout(ones, 0.3f, true, whole);
        var (wholeNoise, wholeDrop) = (noise.ToArray(), dropped.ToArray());

        foreach (var (start, count) in new[] { (0, 3), (3, 3), (2, 2), (5, 1) })
        {
            var g = new PhiloxGenerator(11, 4);
            int[] ts;
            float[] n, d;
            using (g.ShardBatch(start, count, total))
            {
                ts = g.NextInts(count, 1000);
                using var sn = Tensor.RandN(be, new Shape(count, 2, 5, 5), g);
                using var so = Tensor.FromArray(be, Enumerable.Repeat(1f, count * per).ToArray(), count, 2, 5, 5);
                using var sd = Ops.Dropout(so, 0.3f, true, g);
                (n, d) = (sn.ToArray(), sd.ToArray());
                if (count > 1) Assert.Throws<InvalidOperationException>(() => g.NextInt(5));
            }
            Assert.Null(g.Shard);
            Assert.Equal(whole.Offset, g.Offset);
            Assert.Equal(t.AsSpan(start, count).ToArray(), ts);
            Assert.Equal(wholeNoise.AsSpan(start * per, count * per).ToArray(), n);
            Assert.Equal(wholeDrop.AsSpan(start * per, count * per).ToArray(), d);
        }
    }

    private static TrainingConfig Config(int batch) =>
        new() { BatchSize = batch, LearningRate = 2e-3f, WarmupSteps = 2, EmaDecay = 0.9f, GradClip = 0.5f, Seed = 5, AdamEps = 1e-5f };

    private static (float[] Losses, double[] Norms, float[] Weights, float[] Ema, int[] BucketsStartedEarly) Train(ICollective coll, int batch, int steps,
        double bucketMb = 0, int microBatches = 1)
    {
        var cfg = GoldenTestsBase.TinyConfig;
        using var be = new CpuBackend(1);
        using var model = new UNet(be, cfg, new PhiloxGenerator(1));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, cfg.ImageSize, 2),
            Config(batch), new DataParallel(coll, ChecksumEvery: 2, BucketMegabytes: bucketMb)) { MicroBatches = microBatches };
        var losses = new float[steps];
        var norms = new double[steps];
        var early = new int[steps];
        for (int i = 0; i < steps; i++)
        {
            var s = trainer.Step();
            (losses[i], norms[i]) = (s.Loss, s.GradNorm);
            early[i] = trainer.GradientBuckets?.StartedEarly ?? 0;
            Assert.Equal(batch, s.Batch);
        }
        var w = new float[trainer.Store.Count];
        be.Download(trainer.Store.Parameters, 0, w);
        var ema = new float[trainer.Store.Count];
        be.Download(trainer.EmaWeights!, 0, ema);
        return (losses, norms, w, ema, early);
    }

    // Float summation order: the shards' losses and gradients are summed in another order than the whole
    // batch's (the mean of N shard means against one mean, and likewise for every weight gradient); every part
    // runs the convolutions the whole batch runs (the CPU backend picks by the global batch). Measured here, AVX-512
    // and AVX2 code: losses within 5.2e-7 relative, gradient norms within 1e-7 relative at the first step and 1.9e-6
    // at the fifth, weights within 1.2e-6 absolute after 5 steps (weights ~0.05, moved up to 9e-3). The 16x16
    // convolutions run as Winograd F(4x4, 3x3), whose weight gradient (summed over tiles in the transformed domain,
    // transformed back with coefficients up to 8) rounds more: with Winograd off, losses 2.6e-7, norms 4.4e-7,
    // weights 5.5e-7. Adam's eps is 1e-5 in this test: with the default 1e-8,
    // a gradient element that is zero up to rounding (~1e-9) gets a step of about lr whatever its sign, so
    // such elements differ by up to 5e-4 after 5 steps however exact the all-reduce is.
    private const double LossTolerance = 1e-6, NormTolerance = 2e-6, WeightTolerance = 2e-6;

    [Theory]
    [InlineData(2, 1)]
    [InlineData(4, 1)]
    [InlineData(1, 2)]
    [InlineData(1, 4)]
    [InlineData(2, 2)]
    public void NRanksWithShardsOfTheBatchTrainWhatOneRankWithTheWholeBatchTrains(int ranks, int microBatches)
    {
        // Micro-batches (gradient accumulation) split each rank's shard further: the same draws at the same
        // global positions, the gradients summed in another order.
        const int batch = 4, steps = 5;
        var one = Train(SingleProcess.Instance, batch, steps);
        var many = new InProcessRanks(ranks).Run(c => Train(c, batch, steps, microBatches: microBatches));
        for (int r = 1; r < ranks; r++)
        {
            // The ranks hold one model: bit for bit the same weights, losses and EMA on every rank.
            Assert.Equal(many[0].Weights, many[r].Weights);
            Assert.Equal(many[0].Losses, many[r].Losses);
            Assert.Equal(many[0].Ema, many[r].Ema);
        }
        var m = many[0];
        for (int i = 0; i < steps; i++)
        {
            output.WriteLine($"step {i + 1}: loss {one.Losses[i]:R} vs {m.Losses[i]:R}, norm {one.Norms[i]:R} vs {m.Norms[i]:R}");
            Assert.True(Math.Abs(one.Losses[i] - m.Losses[i]) <= LossTolerance * Math.Abs(one.Losses[i]), $"step {i + 1}: loss {one.Losses[i]:R} vs {m.Losses[i]:R}");
            Assert.True(Math.Abs(one.Norms[i] - m.Norms[i]) <= NormTolerance * one.Norms[i], $"step {i + 1}: norm {one.Norms[i]:R} vs {m.Norms[i]:R}");
        }
        double maxW = 0, maxE = 0, moved = 0;
        var start = Train(SingleProcess.Instance, batch, 0).Weights;
        for (int i = 0; i < one.Weights.Length; i++)
        {
            maxW = Math.Max(maxW, Math.Abs(one.Weights[i] - m.Weights[i]));
            maxE = Math.Max(maxE, Math.Abs(one.Ema[i] - m.Ema[i]));
            moved = Math.Max(moved, Math.Abs(one.Weights[i] - start[i]));
        }
        output.WriteLine($"{ranks} ranks: max |weight difference| {maxW:E3}, EMA {maxE:E3}; largest weight change in {steps} steps {moved:E3}");
        Assert.True(moved > 1e-3, "the weights should have moved");
        Assert.True(maxW <= WeightTolerance, $"weights differ by {maxW:E3}");
        Assert.True(maxE <= WeightTolerance, $"EMA weights differ by {maxE:E3}");
    }

    [Theory]
    [InlineData(2, 0.05, 1)]
    [InlineData(3, 0.3, 1)]
    [InlineData(2, 0.05, 3)]
    public void GradientsAveragedInBucketsDuringTheBackwardPassTrainBitForBitWhatOneAllReduceTrains(int ranks, double bucketMb, int microBatches)
    {
        // With micro-batches the buckets go out during the last micro-batch's backward pass, when the
        // accumulated gradients are final.
        int batch = 6 * (microBatches == 1 ? 1 : microBatches), steps = 3;
        var whole = new InProcessRanks(ranks).Run(c => Train(c, batch, steps, microBatches: microBatches));
        var bucketed = new InProcessRanks(ranks).Run(c => Train(c, batch, steps, bucketMb, microBatches));
        // The in-process ranks copy a bucket when it starts and sum it (in rank order, as the whole buffer) when
        // waited for: a bucket started before all its gradients were final would change the weights.
        for (int r = 0; r < ranks; r++)
        {
            Assert.Equal(whole[0].Losses, bucketed[r].Losses);
            Assert.Equal(whole[0].Norms, bucketed[r].Norms);
            Assert.Equal(whole[0].Weights, bucketed[r].Weights);
            Assert.Equal(whole[0].Ema, bucketed[r].Ema);
        }
        // The tiny UNet's gradients in buckets of 0.05 or 0.3 MB: many buckets, every one started while the
        // backward pass runs (the first layers' too: their last gradient is final before the walk ends).
        using var be = new CpuBackend(1);
        using var model = new UNet(be, GoldenTestsBase.TinyConfig, new PhiloxGenerator(1));
        using var store = Ddpm.Tensors.Nn.ParameterStore.Adopt(model);
        int buckets = GradientBuckets.Plan(store.Slots, (long)(bucketMb * 1e6)).Length;
        output.WriteLine($"{ranks} ranks, {bucketMb} MB: {buckets} buckets, started during the pass per step: {string.Join(", ", bucketed[0].BucketsStartedEarly)}");
        Assert.True(buckets >= 4, $"{buckets} buckets");
        Assert.All(bucketed[0].BucketsStartedEarly, n => Assert.Equal(buckets, n));
    }

    [Fact]
    public void MicroBatchesThatDoNotSplitTheShardAreRefused()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Train(SingleProcess.Instance, 6, 1, microBatches: 4));
        Assert.Contains("4 micro-batches do not split this batch of 6 images into equal parts", e.Message);
    }

    [Fact]
    public void ABatchThatDoesNotDivideOverTheRanksIsRefusedWithItsSizes()
    {
        var errors = new InProcessRanks(4).Run(c =>
            Record.Exception(() => Train(c, 6, 1)));
        foreach (var e in errors)
        {
            var ce = Assert.IsType<ConfigValueException>(e);
            Assert.Equal("batch_size 6 (the global batch) does not divide over 4 ranks; use a multiple of 4.", ce.Message);
        }
    }

    [Fact]
    public void RanksWhoseWeightsDifferStopTheRunNamingThem()
    {
        var cfg = GoldenTestsBase.TinyConfig;
        var errors = new InProcessRanks(3).Run(c =>
        {
            using var be = new CpuBackend(1);
            // Rank 2 builds its model from another seed.
            using var model = new UNet(be, cfg, new PhiloxGenerator(c.Rank == 2 ? 9ul : 1ul));
            using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, cfg.ImageSize, 2),
                Config(3), new DataParallel(c, ChecksumEvery: 10));
            return Record.Exception(() => trainer.Step());
        });
        foreach (var e in errors)
        {
            var m = Assert.IsType<ReplicaMismatchException>(e);
            Assert.Equal("At step 0 the weights of rank 2 differ from rank 0's (of 3 ranks): the replicas no longer hold the same model, so the run stops.", m.Message);
        }
    }
}
