using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>Registration of the CPU backends by name (this part: the fast one).</summary>
public static partial class CpuBackends
{
    /// <summary>Registers <c>cpu</c>: <see cref="CpuBackend"/> with <see cref="BackendOptions.Threads"/> workers.</summary>
    public static BackendRegistry RegisterCpu(this BackendRegistry r) =>
        r.Register("cpu", "CPU, SIMD (AVX-512/AVX2) and multi-threaded; the default", o => new CpuBackend(o.Threads));
}
