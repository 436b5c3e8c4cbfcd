using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>Registers the CPU backends with a <see cref="BackendRegistry"/>.</summary>
public static partial class CpuBackends
{
    public static BackendRegistry RegisterCpuReference(this BackendRegistry r) =>
        r.Register("cpu-reference", "scalar single-threaded reference backend (the oracle for the others)",
            _ => new CpuReferenceBackend());
}
