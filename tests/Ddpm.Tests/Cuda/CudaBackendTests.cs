using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The cuda backend against plain double-precision references, op by op. Needs a GPU: skipped with the
/// reason elsewhere. The lead's abstract contract suite will be subclassed for cuda next to these.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBackendTests
{
    private static CudaBackend Be => CudaTestEnvironment.Backend;

    [CudaFact] public void FillsAndCopies() => CudaParityChecks.FillsAndCopies(Be);
    [CudaFact] public void PhiloxIsBitIdenticalToTheCpu() => CudaParityChecks.PhiloxStreams(Be);
    [CudaFact] public void UnaryOps() => CudaParityChecks.UnaryOps(Be);
    [CudaFact] public void BinaryBroadcast() => CudaParityChecks.BinaryBroadcast(Be);
    [CudaFact] public void SumToShape() => CudaParityChecks.SumToShape(Be);
    [CudaFact] public void SumOfSquares() => CudaParityChecks.SumOfSquares(Be);
    [CudaFact] public void Layout() => CudaParityChecks.Layout(Be);
    [CudaFact] public void Gemm() => CudaParityChecks.Gemm(Be);
    [CudaFact] public void Conv2d() => CudaParityChecks.Conv2d(Be);
    [CudaFact] public void GroupNorm() => CudaParityChecks.GroupNorm(Be);
    [CudaFact] public void Softmax() => CudaParityChecks.Softmax(Be);
    [CudaFact] public void Adam() => CudaParityChecks.Adam(Be);

    [CudaFact]
    public void DescriptionNamesDeviceAndLibraries()
    {
        Assert.Contains(Be.Device.Name, Be.Description);
        Assert.Contains("cuBLAS", Be.Description);
        Assert.Contains("TF32 off", Be.Description);
    }

    [CudaFact]
    public void ForeignAndOutOfRangeBuffersAreRefused()
    {
        var b = Be.Allocate(10);
        try
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => Be.Fill(b, 11, 0f));
            Assert.Throws<ArgumentOutOfRangeException>(() => Be.IndexSelect(b, 5, 2, [5], b));
        }
        finally
        {
            b.Release();
        }
    }

    [CudaFact]
    public void ReleasedMemoryIsReused()
    {
        var a = (CudaBuffer)Be.Allocate(1000);
        ulong p = a.Pointer;
        a.Release();
        var b = (CudaBuffer)Be.Allocate(900);
        try
        {
            Assert.Equal(p, b.Pointer);
        }
        finally
        {
            b.Release();
        }
    }

    [CudaFact]
    public void UploadsLargerThanTheStagingRingRoundTrip()
    {
        int n = 5_000_000;
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = i * 0.5f;
        var b = Be.Allocate(n);
        try
        {
            Be.Upload(x, b, 0);
            var back = new float[n];
            Be.Download(b, 0, back);
            Assert.Equal(x, back);
        }
        finally
        {
            b.Release();
        }
    }

    [CudaFact]
    public void OutOfMemoryNamesTheSizes()
    {
        // More than any device has: the error must say what was asked and what the device has free.
        using var be = new CudaBackend();
        var e = Assert.Throws<Ddpm.Backends.Cuda.CudaException>(() =>
        {
            var bufs = new List<DeviceBuffer>();
            try
            {
                for (int i = 0; i < 1000; i++) bufs.Add(be.Allocate(int.MaxValue / 2));
            }
            finally
            {
                foreach (var x in bufs) x.Release();
            }
        });
        Assert.Contains("CUDA_ERROR_OUT_OF_MEMORY", e.Message);
        Assert.Contains("Asked for", e.Message);
        Assert.Contains("free", e.Message);
    }
}
