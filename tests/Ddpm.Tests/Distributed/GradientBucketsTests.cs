using Ddpm.Tensors.Distributed;
using Ddpm.Tensors.Nn;
using Xunit;

namespace Ddpm.Tests.Distributed;

/// <summary>How a store's slots are cut into gradient buckets.</summary>
public sealed class GradientBucketsTests
{
    private static readonly int[] Sizes = [5, 100, 3, 250, 1, 7, 64, 1000, 2];

    private static ParameterSlot[] Slots()
    {
        var slots = new ParameterSlot[Sizes.Length];
        int offset = 0;
        for (int i = 0; i < Sizes.Length; i++)
        {
            // The plan reads only offsets and sizes.
            slots[i] = new ParameterSlot($"p{i}", null!, offset, Sizes[i]);
            offset += Sizes[i];
        }
        return slots;
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(1L)]
    [InlineData(40L)]
    [InlineData(401L)]
    [InlineData(1200L)]
    [InlineData(5000L)]
    [InlineData(1L << 40)]
    public void BucketsCoverEveryElementOnceInWholeSlotsFromTheEndBack(long bucketBytes)
    {
        var slots = Slots();
        int total = Sizes.Sum();
        var buckets = GradientBuckets.Plan(slots, bucketBytes);
        var hits = new int[total];
        int nextSlotEnd = slots.Length;
        for (int b = 0; b < buckets.Length; b++)
        {
            var k = buckets[b];
            // Adjacent whole slots, the buckets going from the last slot to the first.
            Assert.Equal(nextSlotEnd, k.FirstSlot + k.Slots);
            Assert.True(k.Slots >= 1);
            Assert.Equal(slots[k.FirstSlot].Offset, k.Offset);
            Assert.Equal(Enumerable.Range(k.FirstSlot, k.Slots).Sum(i => Sizes[i]), k.Count);
            for (int e = k.Offset; e < k.Offset + k.Count; e++) hits[e]++;
            nextSlotEnd = k.FirstSlot;
            long bytes = 4L * k.Count;
            if (b < buckets.Length - 1)
            {
                // At least the bucket size, and no larger than needed: without its last-taken (first) slot it is short.
                Assert.True(bytes >= bucketBytes, $"bucket {b}: {bytes} bytes");
                Assert.True(bucketBytes > 0 && bytes - 4L * Sizes[k.FirstSlot] < bucketBytes, $"bucket {b}: {bytes} bytes for {bucketBytes}");
            }
        }
        Assert.Equal(0, nextSlotEnd);
        Assert.All(hits, h => Assert.Equal(1, h));
        if (bucketBytes == 0 || bucketBytes >= 4L * total) Assert.Single(buckets);
        if (bucketBytes == 1) Assert.Equal(Sizes.Length, buckets.Length);
    }

    [Fact]
    public void ANegativeBucketSizeIsRefused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => GradientBuckets.Plan(Slots(), -1));
}
