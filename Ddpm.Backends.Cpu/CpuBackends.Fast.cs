using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>Registration of the CPU backends by name (this part: the fast one).</summary>
public static partial class CpuBackends
{
    /// <summary>Registers <c>cpu</c>: <see cref="CpuBackend"/> with <see cref="BackendOptions.Threads"/> workers.</summary>
    public static BackendRegistry RegisterCpu(this BackendRegistry r) =>
        r.Register("cpu", "CPU, SIMD (AVX-512/AVX2) and multi-threaded; the default", o => new CpuBackend(o.Threads), new BackendTraits
        {
            // The FMA peak of the backend's threads, measured now (median of 3): the machine's speed drifts.
            PeakGflops = b => b is CpuBackend cpu ? Enumerable.Range(0, 3).Select(_ => FmaPeak.Measure(cpu.Threads, 0.2)).Order().ElementAt(1) : null,
        });
}
