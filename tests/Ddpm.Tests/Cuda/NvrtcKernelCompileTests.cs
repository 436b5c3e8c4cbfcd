using System.Text;
using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Native;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>Every embedded kernel source compiles with NVRTC for the GPUs we target; no GPU needed.</summary>
public sealed class NvrtcKernelCompileTests
{
    public static TheoryData<string, int> SourcesAndArchitectures()
    {
        var data = new TheoryData<string, int>();
        foreach (var s in KernelSources.Sources)
            foreach (int arch in new[] { 80, 90 })
                data.Add(s.FileName, arch);
        return data;
    }

    [Fact]
    public void EverySourceDeclaresKernels()
    {
        Assert.NotEmpty(KernelSources.Sources);
        foreach (var s in KernelSources.Sources) Assert.NotEmpty(s.Kernels);
        var names = KernelSources.Sources.SelectMany(s => s.Kernels).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("philox_fill", names);
        Assert.Contains("im2col", names);
    }

    [NvrtcTheory]
    [MemberData(nameof(SourcesAndArchitectures))]
    public void CompilesToCubin(string file, int arch)
    {
        var source = KernelSources.Sources.Single(s => s.FileName == file);
        var module = NvrtcCompiler.Compile(source, $"sm_{arch}", cubin: true);
        Assert.True(module.IsCubin);
        // A cubin is an ELF image whose symbol table names every extern "C" kernel.
        Assert.Equal([0x7F, (byte)'E', (byte)'L', (byte)'F'], module.Image.Take(4).ToArray());
        string image = Encoding.Latin1.GetString(module.Image);
        foreach (var kernel in source.Kernels) Assert.Contains(kernel, image);
    }

    [NvrtcFact]
    public void Sm90IsSupportedByThisNvrtc()
    {
        var archs = NvrtcCompiler.SupportedArchitectures();
        Assert.Contains(80, archs);
        Assert.Contains(90, archs);
    }

    [NvrtcFact]
    public void NewerDeviceFallsBackToPtx()
    {
        // A device newer than the NVRTC gets PTX for the newest architecture NVRTC knows, JIT-compiled by the driver.
        int newest = NvrtcCompiler.SupportedArchitectures().Max();
        var module = NvrtcCompiler.Compile(KernelSources.Sources[0], newest + 1);
        Assert.False(module.IsCubin);
        Assert.Equal($"compute_{newest}", module.Target);
        Assert.Contains(".entry", Encoding.UTF8.GetString(module.Image));
    }

    [NvrtcFact]
    public void CompileErrorCarriesTheLog()
    {
        var broken = new KernelSource("broken.cu", "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* y) { y[0] = undeclared_name; }\n",
            [], ["k"]);
        var e = Assert.Throws<CudaException>(() => NvrtcCompiler.Compile(broken, "sm_80", cubin: true));
        Assert.Contains("nvrtcCompileProgram failed for broken.cu", e.Message);
        Assert.Contains("undeclared_name", e.Message);
        Assert.Contains("--gpu-architecture=sm_80", e.Message);
    }
}

/// <summary>A theory that needs NVRTC; skipped with the reason where the library is absent.</summary>
public sealed class NvrtcTheoryAttribute : TheoryAttribute
{
    public NvrtcTheoryAttribute()
    {
        if (!CudaTestEnvironment.NvrtcAvailable) Skip = CudaTestEnvironment.NvrtcSkipReason;
    }
}
