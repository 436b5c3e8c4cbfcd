using Ddpm.Diffusion.Data;
using Xunit;

namespace Ddpm.Tests.Data;

public class DataLoaderTests
{
    /// <summary>Image i, [C, H, W]: value (i + 1) / 1000 + x / 100 + c / 10, so index, column and channel are all readable.</summary>
    private sealed class Synthetic(int count, int channels, int height, int width) : IImageDataset
    {
        public int Count => count;
        public int Channels => channels;
        public int Height => height;
        public int Width => width;

        public void Get(int index, Span<float> dst)
        {
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < height; y++)
                    for (int x = 0; x < width; x++)
                        dst[(c * height + y) * width + x] = Value(index, c, x);
        }

        public static float Value(int index, int c, int x) => (index + 1) / 1000f + x / 100f + c / 10f;
    }

    /// <summary>The dataset index a [0, 1]-range sample came from (column 0 when unflipped).</summary>
    private static int IndexOf(float[] batch, int sample, int sampleSize, int width, bool flipped) =>
        (int)MathF.Round((batch[sample * sampleSize + (flipped ? width - 1 : 0)] - (flipped ? (width - 1) / 100f : 0f)) * 1000f) - 1;

    [Fact]
    public void EachEpochVisitsEverySampleOnceInASeededOrder()
    {
        var ds = new Synthetic(50, 1, 2, 3);
        var loader = new DataLoader(ds, new DataLoaderOptions { BatchSize = 8, Seed = 7, Range = DataRange.ZeroToOne });
        Assert.Equal(6, loader.BatchesPerEpoch);

        var o0 = loader.Order(0);
        var o1 = loader.Order(1);
        Assert.Equal(Enumerable.Range(0, 50), o0.Order());
        Assert.Equal(Enumerable.Range(0, 50), o1.Order());
        Assert.NotEqual(o0, o1);
        Assert.NotEqual(Enumerable.Range(0, 50), o0);
        Assert.Equal(o0, new DataLoader(ds, loader.Options).Order(0));
        Assert.NotEqual(o0, new DataLoader(ds, loader.Options with { Seed = 8 }).Order(0));

        var batches = loader.Epoch(1).ToList();
        Assert.Equal(6, batches.Count);
        var seen = batches.SelectMany(b => Enumerable.Range(0, 8).Select(i => IndexOf(b, i, 6, 3, false))).ToList();
        Assert.Equal(o1[..48], seen);
    }

    [Fact]
    public void BatchesDependOnlyOnSeedEpochAndIndex()
    {
        var ds = new Synthetic(30, 1, 4, 4);
        var options = new DataLoaderOptions { BatchSize = 4, Seed = 123, RandomHorizontalFlip = true };
        var a = new DataLoader(ds, options);
        var fromIteration = Enumerable.Range(0, 4).SelectMany(a.Epoch).ToList();

        // A fresh loader reading step 3 * 7 + 2 directly (as a resumed run would) gets the same batch.
        var b = new DataLoader(ds, options);
        Assert.Equal(fromIteration[3 * 7 + 2], b.GetBatchForStep(3 * 7 + 2));
        Assert.Equal(fromIteration[5], b.GetBatchForStep(5));
        var again = new float[4 * 16];
        b.GetBatch(2, 6, again);
        Assert.Equal(fromIteration[2 * 7 + 6], again);
    }

    [Fact]
    public void FlipsMirrorAboutHalfTheSamples()
    {
        var ds = new Synthetic(400, 2, 2, 5);
        var loader = new DataLoader(ds, new DataLoaderOptions { BatchSize = 400, Seed = 3, RandomHorizontalFlip = true, Range = DataRange.ZeroToOne });
        var batch = loader.GetBatchForStep(0);
        var order = loader.Order(0);
        int flipped = 0;
        for (int i = 0; i < 400; i++)
        {
            bool f = loader.IsFlipped(0, i);
            flipped += f ? 1 : 0;
            for (int c = 0; c < 2; c++)
                for (int x = 0; x < 5; x++)
                    Assert.Equal(Synthetic.Value(order[i], c, f ? 4 - x : x), batch[i * 20 + c * 10 + 5 + x]);
        }
        Assert.InRange(flipped, 160, 240);

        var plain = new DataLoader(ds, loader.Options with { RandomHorizontalFlip = false });
        Assert.DoesNotContain(Enumerable.Range(0, 400), i => plain.IsFlipped(0, i));
    }

    [Fact]
    public void PaddingUsesTheBackgroundAndRangeMapsValues()
    {
        var ds = new Synthetic(4, 1, 28, 28);
        var loader = new DataLoader(ds, new DataLoaderOptions { BatchSize = 2, Shuffle = false, PadTo = 32 });
        Assert.Equal((1, 32, 32), (loader.Channels, loader.Height, loader.Width));
        var batch = loader.GetBatchForStep(1);
        Assert.Equal(2 * 32 * 32, batch.Length);
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
            {
                float v = batch[y * 32 + x];
                bool inside = y is >= 2 and < 30 && x is >= 2 and < 30;
                Assert.Equal(inside ? 2f * Synthetic.Value(2, 0, x - 2) - 1f : -1f, v, 6);
            }

        var unit = new DataLoader(ds, loader.Options with { Range = DataRange.ZeroToOne });
        var u = unit.GetBatchForStep(0);
        Assert.Equal(0f, u[0]);
        Assert.Equal(Synthetic.Value(0, 0, 0), u[2 * 32 + 2]);
    }

    [Fact]
    public void ShortLastBatchOnlyWhenAsked()
    {
        var ds = new Synthetic(10, 1, 1, 1);
        var keep = new DataLoader(ds, new DataLoaderOptions { BatchSize = 4, DropLast = false, Shuffle = false, Range = DataRange.ZeroToOne });
        Assert.Equal(3, keep.BatchesPerEpoch);
        Assert.Equal([4, 4, 2], keep.Epoch(0).Select(b => b.Length));
        Assert.Equal(2, new DataLoader(ds, keep.Options with { DropLast = true }).BatchesPerEpoch);

        Assert.Throws<ArgumentException>(() => new DataLoader(ds, new DataLoaderOptions { BatchSize = 11 }));
        Assert.Throws<ArgumentException>(() => new DataLoader(new Synthetic(10, 1, 28, 28), new DataLoaderOptions { BatchSize = 2, PadTo = 16 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => keep.BatchCount(3));
    }
}
