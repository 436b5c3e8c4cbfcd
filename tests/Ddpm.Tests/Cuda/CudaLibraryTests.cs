using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>Library lookup, error messages and registration: no GPU needed.</summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaLibraryTests
{
    [Fact]
    public void SearchOrderPutsTheOverrideFirstAndWheelsLast()
    {
        var env = new Dictionary<string, string?> { ["DDPM_CUDA_LIB_DIR"] = "/opt/override", ["CUDA_PATH"] = "/opt/cuda" };
        var dirs = CudaLibraries.SearchDirectories(CudaLibrary.Cublas, k => env.GetValueOrDefault(k), ["/extra"],
            pattern => pattern == "/usr/local/lib/python3*/dist-packages/nvidia/*/lib"
                ? ["/usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib"] : []);
        Assert.Equal(
            new string?[] { "/opt/override", "/extra", "/opt/cuda/lib64", "/opt/cuda/lib", "/usr/local/cuda/lib64", null,
                "/usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib" },
            dirs);
    }

    [Fact]
    public void DriverIsNotLookedUpInPythonWheels()
    {
        var dirs = CudaLibraries.SearchDirectories(CudaLibrary.Driver, _ => null, [], _ => ["/wheel/lib"]);
        Assert.Equal(new string?[] { "/usr/local/cuda/lib64", "/usr/local/nvidia/lib64", null }, dirs);
    }

    [Fact]
    public void LibraryFileNamesAreNewestFirst()
    {
        Assert.Equal(["libcublas.so.13", "libcublas.so.12", "libcublas.so.11"], CudaLibraries.FileNames(CudaLibrary.Cublas));
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"], CudaLibraries.FileNames(CudaLibrary.Nvrtc));
        Assert.Equal("libcuda.so.1", CudaLibraries.FileNames(CudaLibrary.Driver)[0]);
        Assert.Equal(["libcudnn.so.9"], CudaLibraries.FileNames(CudaLibrary.Cudnn));
    }

    [Fact]
    public void CudnnIsLookedForInTheWheelsLikeCublas()
    {
        // nvidia-cudnn-cu13 and -cu12 put libcudnn.so.9 in nvidia/cudnn/lib, which the nvidia/*/lib pattern covers.
        var env = new Dictionary<string, string?> { ["DDPM_CUDA_LIB_DIR"] = "/sim", ["VIRTUAL_ENV"] = "/venv" };
        var patterns = new List<string>();
        var dirs = CudaLibraries.SearchDirectories(CudaLibrary.Cudnn, k => env.GetValueOrDefault(k), [], p =>
        {
            patterns.Add(p);
            return p.StartsWith("/venv", StringComparison.Ordinal) ? ["/venv/lib/python3.12/site-packages/nvidia/cudnn/lib"] : [];
        });
        Assert.Equal("/sim", dirs[0]);
        Assert.Contains("/usr/local/cuda/lib64", dirs);
        Assert.Contains("/venv/lib/python3.12/site-packages/nvidia/cudnn/lib", dirs);
        Assert.Contains("/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib", patterns);
        // cuDNN's soname carries its own major: any CUDA driver may try it (the library itself checks the runtime).
        Assert.Null(CudaLibraries.MajorOf("libcudnn.so.9"));
        Assert.Equal(["libcudnn.so.9"], CudaLibraries.CandidateFileNames(CudaLibrary.Cudnn, 12));
    }

    [Fact]
    public void WheelPatternExpandsOnlyExistingFolders()
    {
        string root = Path.Combine(Path.GetTempPath(), "ddpm-wheels-" + Guid.NewGuid().ToString("N"));
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "python3.11", "nvidia", "cublas", "lib"));
            Directory.CreateDirectory(Path.Combine(root, "python3.12", "nvidia"));
            var found = CudaLibraries.ExpandPattern($"{root}/python3*/nvidia/cublas/lib").ToList();
            Assert.Equal([Path.Combine(root, "python3.11", "nvidia", "cublas", "lib")], found);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void CudaErrorsNameTheCallAndTheError()
    {
        var e = new CudaException("cuMemAlloc_v2", CUresult.ErrorOutOfMemory);
        Assert.StartsWith("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY", e.Message);
        Assert.True(e.IsOutOfMemory);
        Assert.Contains("CUDA_ERROR_INVALID_VALUE", new CudaException("cuLaunchKernel(axpby)", CUresult.ErrorInvalidValue).Message);
        Assert.Contains("CUBLAS_STATUS_INVALID_VALUE", Assert.Throws<CudaException>(() => Cublas.Check(7, "cublasSgemmStridedBatched")).Message);
    }

    [Fact]
    public void AllocatorBucketsRoundUp()
    {
        Assert.Equal(512, CudaAllocator.BucketBytes(1));
        Assert.Equal(4096, CudaAllocator.BucketBytes(4000));
        Assert.Equal(1 << 20, CudaAllocator.BucketBytes(1 << 20));
        Assert.Equal(2 << 20, CudaAllocator.BucketBytes((1 << 20) + 1));
        Assert.Equal(6 << 20, CudaAllocator.BucketBytes((4 << 20) + 1));
    }

    [Fact]
    public void BroadcastDimensionsMerge()
    {
        // [N, C, H, W] + [1, C, 1, 1] is [N, C, H*W] with b's strides (0, 1, 0).
        var d = CudaBackend.CoalesceBroadcast([2, 3, 4, 5], [1, 3, 1, 1], [2, 3, 4, 5], "test");
        Assert.Equal(3, d.Rank);
        unsafe
        {
            Assert.Equal([2, 3, 20], new[] { d.Size[0], d.Size[1], d.Size[2] });
            Assert.Equal([60, 20, 1], new[] { d.StrideA[0], d.StrideA[1], d.StrideA[2] });
            Assert.Equal([0, 1, 0], new[] { d.StrideB[0], d.StrideB[1], d.StrideB[2] });
        }
        // Alternating broadcasts do not merge: 16 dimensions stay 16, the most a tensor has; 17 are refused.
        var alternating = Enumerable.Range(0, 16).Select(i => i % 2 == 0 ? 2 : 1).ToArray();
        var other = alternating.Select(v => v == 2 ? 1 : 2).ToArray();
        Assert.Equal(16, CudaBackend.CoalesceBroadcast(alternating, other, Enumerable.Repeat(2, 16).ToArray(), "test").Rank);
        var e = Assert.Throws<NotSupportedException>(() =>
            CudaBackend.CoalesceBroadcast([.. alternating, 2], [.. other, 1], Enumerable.Repeat(2, 17).ToArray(), "test"));
        Assert.Contains("tensors have at most 16", e.Message);
    }

    [Fact]
    public void KernelArgumentLayoutMatchesTheKernels()
    {
        // The same sizes are static_asserts in common.cuh and conv.cu, checked by the NVRTC compile tests.
        Assert.Equal(196, System.Runtime.CompilerServices.Unsafe.SizeOf<BroadcastDims>());
        Assert.Equal(264, System.Runtime.CompilerServices.Unsafe.SizeOf<ReduceDims>());
        Assert.Equal(52, System.Runtime.CompilerServices.Unsafe.SizeOf<ConvDims>());
        Assert.Equal(196, KernelArg.Struct(new BroadcastDims()).Size);
    }

    [Fact]
    public void RegistryKnowsCuda()
    {
        var registry = new BackendRegistry().RegisterCuda();
        Assert.True(registry.Contains("cuda"));
    }

    [Fact]
    public void WithoutCudaCreationFailsWithTheReason()
    {
        var probe = CudaProbe.Run();
        if (probe.Device is not null)
        {
            // A machine with a GPU: the probe describes it and the backend opens.
            Assert.False(string.IsNullOrEmpty(probe.Device.Name));
            Assert.True(probe.Device.ComputeCapability >= 30);
            using var backend = new BackendRegistry().RegisterCuda().Create("cuda");
            Assert.Equal("cuda", backend.Name);
            return;
        }
        Assert.False(probe.Available);
        Assert.Matches("libcuda\\.so\\.1 was not found|no CUDA device", probe.Reason);
        Assert.Contains("CUDA: unavailable", probe.ToString());
        var e = Assert.ThrowsAny<Exception>(() => new BackendRegistry().RegisterCuda().Create("cuda"));
        Assert.IsType<CudaUnavailableException>(e);
        Assert.Matches("libcuda\\.so\\.1 was not found|no CUDA device", e.Message);
        Assert.Null(CudaBackend.TryCreate(out string reason));
        Assert.Equal(e.Message, reason);
    }

    [Theory]
    [InlineData(34, "stub library")]
    [InlineData(46, "busy or unavailable")]
    [InlineData(100, "no CUDA device")]
    [InlineData(304, "operating-system call")]
    [InlineData(803, "does not match")]
    [InlineData(804, "forward-compatibility")]
    public void CuInitResultsThatMeanNoUsableCudaHaveAReason(int code, string reason)
    {
        Assert.Contains(reason, CudaProbe.UnavailableReason((CUresult)code, deviceNodesExist: true));
    }

    [Fact]
    public void CuInitFaultsAreNotMistakenForAMissingGpu()
    {
        // 999 is "no GPU" only where there is no /dev/nvidia*; 35 is a runtime-API code cuInit never returns.
        Assert.Contains("/dev/nvidia", CudaProbe.UnavailableReason(CUresult.ErrorUnknown, deviceNodesExist: false));
        Assert.Null(CudaProbe.UnavailableReason(CUresult.ErrorUnknown, deviceNodesExist: true));
        Assert.Null(CudaProbe.UnavailableReason((CUresult)35, deviceNodesExist: false));
        Assert.Null(CudaProbe.UnavailableReason(CUresult.ErrorInvalidValue, deviceNodesExist: false));
    }

    [Fact]
    public void LibraryMajorsFollowTheDriver()
    {
        Assert.Equal(13, CudaLibraries.MajorOf("libcublas.so.13"));
        Assert.Equal(11, CudaLibraries.MajorOf("libnvrtc.so.11.2"));
        Assert.Null(CudaLibraries.MajorOf("libcuda.so.1"));
        // A CUDA 12.8 driver cannot run cuBLAS 13; without a driver (NVRTC alone) every name is tried.
        Assert.Equal(["libcublas.so.12", "libcublas.so.11"], CudaLibraries.CandidateFileNames(CudaLibrary.Cublas, 12));
        Assert.Equal(["libnvrtc.so.12", "libnvrtc.so.11.2"], CudaLibraries.CandidateFileNames(CudaLibrary.Nvrtc, 12));
        Assert.Equal(CudaLibraries.FileNames(CudaLibrary.Nvrtc), CudaLibraries.CandidateFileNames(CudaLibrary.Nvrtc, null));
    }

    [Fact]
    public void SearchPathMayListSeveralFolders()
    {
        var env = new Dictionary<string, string?> { ["DDPM_CUDA_LIB_DIR"] = "/opt/sim:/opt/nvrtc" };
        var dirs = CudaLibraries.SearchDirectories(CudaLibrary.Nvrtc, k => env.GetValueOrDefault(k), [], _ => []);
        Assert.Equal(["/opt/sim", "/opt/nvrtc"], dirs.Take(2));
    }

    [Fact]
    public void KernelOpCodesHeaderIsGeneratedFromTheEnums()
    {
        string root = CudaTestEnvironment.RepositoryRoot() ?? throw new InvalidOperationException("repository root not found");
        string file = Path.Combine(root, "Ddpm.Backends.Cuda", "Kernels", KernelConstants.HeaderName);
        string expected = KernelConstants.Generate();
        Assert.True(File.ReadAllText(file) == expected,
            $"{file} is out of date with UnaryOp/BinaryOp; write this text into it:\n{expected}");
        Assert.Equal(expected, KernelSources.Headers.Single(h => h.Name == KernelConstants.HeaderName).Text);
    }
}
