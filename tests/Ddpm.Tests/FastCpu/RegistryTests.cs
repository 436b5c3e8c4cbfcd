using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.FastCpu;

public sealed class RegistryTests
{
    [Fact]
    public void RegisterCpuCreatesTheFastBackendWithTheRequestedThreads()
    {
        var registry = new BackendRegistry().RegisterCpu();
        using var be = registry.Create("cpu", new BackendOptions { Threads = 3 });
        var cpu = Assert.IsType<CpuBackend>(be);
        Assert.Equal("cpu", cpu.Name);
        Assert.Equal(3, cpu.Threads);
        Assert.Contains("3 threads", cpu.Description);
        using var all = (CpuBackend)registry.Create("cpu");
        Assert.Equal(Environment.ProcessorCount, all.Threads);
    }

    [Fact]
    public void RejectsForeignSizesAndReleasedBuffers()
    {
        using var be = new CpuBackend(2);
        var small = be.Allocate(10);
        var big = be.Allocate(100);
        Assert.Throws<ArgumentException>(() => be.Unary(UnaryOp.Exp, small, 11, big));
        Assert.Throws<ArgumentException>(() => be.Gemm(false, false, small, 0, big, 0, 1, 4, 4, 4, 1f, 0f, big, 0));
        big.Release();
        Assert.Throws<ObjectDisposedException>(() => be.Fill(0f, big, 5));
        small.Release();
    }
}
