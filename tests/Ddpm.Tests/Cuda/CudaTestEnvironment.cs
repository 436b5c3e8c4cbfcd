using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Native;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Whether this machine can run the CUDA tests, decided once per test run: a shared backend on device 0, or
/// the reason there is none (no libcuda, no device, ...), which becomes the skip reason.
/// </summary>
public static class CudaTestEnvironment
{
    /// <summary>
    /// Test classes that open CUDA backends share this collection so they run one after another: the
    /// out-of-memory test fills the device, which must not starve a backend another class is creating.
    /// </summary>
    public const string Collection = "cuda device";

    public static bool Available => Shared.Value.Backend is not null;

    public static string SkipReason => Shared.Value.Reason;

    /// <summary>The shared backend (TF32 off, so results compare with FP32 references).</summary>
    public static CudaBackend Backend => Shared.Value.Backend ?? throw new InvalidOperationException(SkipReason);

    /// <summary>The repository root: the nearest folder above the test binaries that holds Ddpm.sln.</summary>
    public static string? RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Ddpm.sln"))) return d.FullName;
        return null;
    }

    private static readonly Lazy<string> NvrtcReason = new(() =>
    {
        // The CI copy of Debian's NVRTC (.ci/fetch-nvrtc.sh) is searched after DDPM_CUDA_LIB_DIR.
        string? root = RepositoryRoot();
        if (root is not null) CudaLibraries.AddSearchDirectory(Path.Combine(root, ".ci-cache", "nvrtc", "usr", "lib", "x86_64-linux-gnu"));
        try
        {
            CudaLibraries.Load(CudaLibrary.Nvrtc);
            return "";
        }
        catch (CudaUnavailableException e)
        {
            return $"NVRTC is not available (run .ci/fetch-nvrtc.sh or set DDPM_CUDA_LIB_DIR): {e.Message}";
        }
    });

    private static readonly Lazy<(CudaBackend? Backend, string Reason)> Shared = new(() =>
    {
        // The CI copy of NVRTC must be on the search path before the backend compiles its kernels.
        _ = NvrtcReason.Value;
        var b = CudaBackend.TryCreate(out string reason);
        return (b, b is null ? $"No usable CUDA device: {reason}" : "");
    });

    public static bool NvrtcAvailable => NvrtcReason.Value.Length == 0;

    public static string NvrtcSkipReason => NvrtcReason.Value;
}

/// <summary>A test that needs a CUDA device; reported as skipped, with the reason, where there is none.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
    }
}

/// <summary>A test that needs NVRTC (no GPU); skipped with the reason where the library is absent.</summary>
public sealed class NvrtcFactAttribute : FactAttribute
{
    public NvrtcFactAttribute()
    {
        if (!CudaTestEnvironment.NvrtcAvailable) Skip = CudaTestEnvironment.NvrtcSkipReason;
    }
}

/// <summary>A theory that reports skipped, with the reason, when no CUDA device can be used.</summary>
public sealed class CudaTheoryAttribute : TheoryAttribute
{
    public CudaTheoryAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
    }
}

/// <summary>A theory that needs CUDA with cuDNN; skipped with the reason (what runs the convolutions instead) otherwise.</summary>
public sealed class CudnnTheoryAttribute : TheoryAttribute
{
    public CudnnTheoryAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
        else if (!CudaTestEnvironment.Backend.UsesCudnn) Skip = $"cuDNN is not used here: {CudaTestEnvironment.Backend.ConvolutionPath}";
    }
}

/// <summary>A test that needs CUDA with cuDNN; skipped with the reason otherwise.</summary>
public sealed class CudnnFactAttribute : FactAttribute
{
    public CudnnFactAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
        else if (!CudaTestEnvironment.Backend.UsesCudnn) Skip = $"cuDNN is not used here: {CudaTestEnvironment.Backend.ConvolutionPath}";
    }
}
