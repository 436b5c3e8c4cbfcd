using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.Cuda;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// Forward checks of the whole-model optimiser ops (SumOfSquaresTo, ClipScale) on a backend against
/// <c>cpu-reference</c> and against the formulas in double; shared by the CPU and CUDA test classes.
/// </summary>
public static class OptimOpsChecks
{
    private const float Sentinel = 777.25f;

    private static DeviceBuffer Up(IBackend be, float[] data)
    {
        var b = be.Allocate(data.Length);
        be.Upload(data, b, 0);
        return b;
    }

    private static float[] Down(IBackend be, DeviceBuffer b)
    {
        var r = new float[b.Length];
        be.Download(b, 0, r);
        return r;
    }

    /// <summary>
    /// The hi/lo pair is the backend's own SumOfSquares split exactly, agrees with the reference's double sum to
    /// float32 summation accuracy, and leaves the rest of the result buffer alone.
    /// </summary>
    public static void SumOfSquaresTo(IBackend be, IBackend rf, int n)
    {
        var x = TestData.Normal(n, 41);
        for (int i = 0; i < n; i++) x[i] *= 3f;
        double exact = 0;
        foreach (float v in x) exact += (double)v * v;

        var xb = Up(be, x);
        var result = Up(be, [Sentinel, Sentinel, Sentinel, Sentinel, Sentinel]);
        be.SumOfSquaresTo(xb, n, result, 2);
        var r = Down(be, result);
        double own = be.SumOfSquares(xb, n);
        xb.Release();
        result.Release();

        Assert.Equal([Sentinel, Sentinel], r[..2]);
        Assert.Equal(Sentinel, r[4]);
        var (hi, lo) = NormMath.Split(own);
        Assert.Equal(hi, r[2]);
        Assert.Equal(lo, r[3]);
        Assert.True(Math.Abs(NormMath.Join(r[2], r[3]) - own) <= 1e-13 * own, $"hi/lo {r[2]:R}/{r[3]:R} do not give {own:R} back");

        var xr = Up(rf, x);
        var rr = Up(rf, [0f, 0f]);
        rf.SumOfSquaresTo(xr, n, rr, 0);
        var refPair = Down(rf, rr);
        xr.Release();
        rr.Release();
        double reference = NormMath.Join(refPair[0], refPair[1]);
        Assert.True(Math.Abs(reference - exact) <= 1e-14 * exact, $"reference {reference:R} vs double sum {exact:R}");
        Assert.True(Math.Abs(NormMath.Join(r[2], r[3]) - exact) <= 1e-5 * exact,
            $"n={n}: {NormMath.Join(r[2], r[3]):R} vs {exact:R}");
    }

    /// <summary>
    /// ClipScale scales by (float)(maxNorm / (norm + 1e-6)) when that is below 1 and leaves x alone otherwise,
    /// to the bit, the norm coming from a hi/lo pair at a non-zero index; the same as the reference.
    /// </summary>
    public static void ClipScale(IBackend be, IBackend rf, int n, double maxNormOverNorm)
    {
        var x = TestData.Normal(n, 43);
        double sum = 0;
        foreach (float v in x) sum += (double)v * v;
        var (hi, lo) = NormMath.Split(sum);
        double norm = Math.Sqrt(NormMath.Join(hi, lo));
        double maxNorm = maxNormOverNorm * norm;
        double coef = maxNorm / (norm + 1e-6);
        var expected = coef < 1.0 ? x.Select(v => v * (float)coef).ToArray() : (float[])x.Clone();

        float[] Run(IBackend b)
        {
            var xb = Up(b, x);
            var s = Up(b, [Sentinel, hi, lo]);
            b.ClipScale(s, 1, maxNorm, xb, n);
            var r = Down(b, xb);
            Assert.Equal([Sentinel, hi, lo], Down(b, s));
            xb.Release();
            s.Release();
            return r;
        }

        Assert.Equal(expected, Run(rf));
        Assert.Equal(expected, Run(be));
    }

    public static IEnumerable<object[]> SumSizes => [[0], [1], [7], [4099], [100_003]];

    public static IEnumerable<object[]> ClipCases => [[1, 0.25], [1000, 0.5], [100_003, 0.999], [4099, 1.0], [4099, 3.0], [0, 0.5]];
}

public sealed class CpuOptimOpsTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly CpuReferenceBackend _ref = new();
    private readonly CpuReferenceBackend _refUnderTest = new();

    public static IEnumerable<object[]> SumSizes => OptimOpsChecks.SumSizes;
    public static IEnumerable<object[]> ClipCases => OptimOpsChecks.ClipCases;

    [Theory]
    [MemberData(nameof(SumSizes))]
    public void SumOfSquaresToOnCpu(int n) => OptimOpsChecks.SumOfSquaresTo(_cpu, _ref, n);

    [Theory]
    [MemberData(nameof(SumSizes))]
    public void SumOfSquaresToOnReference(int n) => OptimOpsChecks.SumOfSquaresTo(_refUnderTest, _ref, n);

    [Theory]
    [MemberData(nameof(ClipCases))]
    public void ClipScaleOnCpu(int n, double ratio) => OptimOpsChecks.ClipScale(_cpu, _ref, n, ratio);

    [Theory]
    [MemberData(nameof(ClipCases))]
    public void ClipScaleOnReference(int n, double ratio) => OptimOpsChecks.ClipScale(_refUnderTest, _ref, n, ratio);

    [Fact]
    public void ResultIndicesOutsideTheBufferAreRefused()
    {
        foreach (IBackend be in new IBackend[] { _cpu, _ref })
        {
            var x = be.Allocate(4);
            be.Fill(1f, x, 4);
            var r = be.Allocate(3);
            Assert.ThrowsAny<ArgumentException>(() => be.SumOfSquaresTo(x, 4, r, 2));
            Assert.ThrowsAny<ArgumentException>(() => be.ClipScale(r, 2, 1.0, x, 4));
            Assert.ThrowsAny<ArgumentException>(() => be.SumOfSquaresTo(x, 4, r, -1));
            x.Release();
            r.Release();
        }
    }

    public void Dispose()
    {
        _cpu.Dispose();
        _ref.Dispose();
        _refUnderTest.Dispose();
    }
}

/// <summary>The optimiser op checks on <c>cuda</c> (Kernels/optim.cu); skipped without a GPU.</summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaOptimOpsTests : IDisposable
{
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> SumSizes => OptimOpsChecks.SumSizes;
    public static IEnumerable<object[]> ClipCases => OptimOpsChecks.ClipCases;

    [CudaTheory]
    [MemberData(nameof(SumSizes))]
    public void SumOfSquaresToOnCuda(int n) => OptimOpsChecks.SumOfSquaresTo(CudaTestEnvironment.Backend, _ref, n);

    [CudaTheory]
    [MemberData(nameof(ClipCases))]
    public void ClipScaleOnCuda(int n, double ratio) => OptimOpsChecks.ClipScale(CudaTestEnvironment.Backend, _ref, n, ratio);

    public void Dispose() => _ref.Dispose();
}
