using Ddpm.Backends.Cuda;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// How the cuda backend splits a sum with few outputs into segments: by the shapes alone (so a result does not
/// depend on the device), never an empty or (but for a whole short sum) a short segment. No GPU needed.
/// </summary>
public sealed class ReductionSplitTests
{
    [Theory]
    [InlineData(32, 65536, 4096, 64, 1024)]  // a bias gradient at 32x32, batch 64: 64 segments of 1024
    [InlineData(32, 8192, 4096, 8, 1024)]    // the same at batch 8: no segment below the minimum length
    [InlineData(10000, 100, 4096, 1, 100)]   // many outputs: one pass over each sum
    [InlineData(3, 300000, 4096, 293, 1024)]
    [InlineData(7, 0, 512, 1, 1)]
    public void SplitsByShapeAlone(long outputs, long reduced, int workers, int segments, int length) =>
        Assert.Equal((segments, length), CudaBackend.SplitReduction(outputs, reduced, workers));

    [Fact]
    public void SegmentsCoverTheSumWithoutEmptyOnes()
    {
        var rng = new Random(5);
        for (int i = 0; i < 2000; i++)
        {
            long outputs = rng.Next(1, 5000), reduced = rng.Next(1, 3_000_000);
            var (segments, length) = CudaBackend.SplitReduction(outputs, reduced, 4096);
            Assert.True(segments >= 1 && (long)segments * length >= reduced && (long)(segments - 1) * length < reduced,
                $"{outputs} outputs of {reduced}: {segments} segments of {length}");
        }
    }
}
