using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// What the cuda backend does beyond the per-op parity cases (those are <see cref="Parity.CudaOpParityTests"/>):
/// raw Philox words, buffer checks, the allocator, staging, out-of-memory messages. Run on a GPU, or on the
/// simulated CUDA device in CI; skipped with the reason where neither is present.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBackendTests
{
    private static CudaBackend Be => CudaTestEnvironment.Backend;

    [CudaFact]
    public void PhiloxWordsAreBitIdenticalToTheCpu()
    {
        const ulong seed = 0x0123_4567_89AB_CDEFUL;
        foreach (var (offset, n) in new[] { (0UL, 4096), (6UL, 1001), ((1UL << 34) + 3, 9) })
        {
            var b = Be.Allocate(n);
            try
            {
                Be.FillPhiloxWords(b, n, seed, offset);
                var words = new float[n];
                Be.Download(b, 0, words);
                for (int i = 0; i < n; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(words[i]) == Philox.Word(seed, offset + (ulong)i),
                        $"Philox word {i} at offset {offset}: {BitConverter.SingleToUInt32Bits(words[i]):X8}, expected {Philox.Word(seed, offset + (ulong)i):X8}.");
            }
            finally
            {
                b.Release();
            }
        }
    }

    [CudaFact]
    public void DescriptionNamesDeviceAndLibraries()
    {
        Assert.Contains(Be.Device.Name, Be.Description);
        Assert.Contains("cuBLAS", Be.Description);
        Assert.Contains("precision fp32", Be.Description);
        Assert.Contains("kernel cache", Be.Description);
    }

    [CudaFact]
    public void ForeignAndOutOfRangeBuffersAreRefused()
    {
        var b = Be.Allocate(10);
        try
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => Be.Fill(0f, b, 11));
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
        // The caching allocator, whatever DDPM_CUDA_EXACT_ALLOC says for the shared backend.
        using var be = new CudaBackend(new BackendOptions(), ConvolutionEngine.Auto, new CudaMemoryChecks(ExactAllocation: false, Poison: false));
        var a = (CudaBuffer)be.Allocate(1000);
        ulong p = a.Pointer;
        a.Release();
        var b = (CudaBuffer)be.Allocate(900);
        try
        {
            Assert.Equal(p, b.Pointer);
            Assert.Equal(4096, b.BlockBytes);
        }
        finally
        {
            b.Release();
        }
    }

    [CudaFact]
    public void ExactAllocationGivesEachBufferItsOwnBlockAndFreesItOnRelease()
    {
        using var be = new CudaBackend(new BackendOptions(), ConvolutionEngine.Auto, new CudaMemoryChecks(ExactAllocation: true, Poison: false));
        Assert.Contains("DDPM_CUDA_EXACT_ALLOC=1", be.Description);
        var a = (CudaBuffer)be.Allocate(1000);
        Assert.Equal(4000, a.BlockBytes);
        Assert.Equal((4000L, 0L), be.MemoryUse);
        a.Release();
        Assert.Equal((0L, 0L), be.MemoryUse);
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
