using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;

namespace Ddpm.Tool;

/// <summary>The backends the tool can run on, by name; the one place the tool names backend assemblies.</summary>
public static class ToolBackends
{
    public static BackendRegistry Registry() => new BackendRegistry().RegisterCpu().RegisterCpuReference().RegisterCuda();

    public static IBackend Create(CommonOptions o) => Create(o.Backend, o);

    /// <summary>
    /// The backend of one rank of a data-parallel job: a CUDA rank takes device <paramref name="localRank"/> modulo
    /// the devices it sees, so the ranks of a host spread over its GPUs one each (and a launcher that gives each
    /// rank one GPU through CUDA_VISIBLE_DEVICES still works).
    /// </summary>
    public static IBackend Create(CommonOptions o, int localRank) =>
        Create(o.Backend, o, localRank > 0 && Traits(o.Backend).VisibleDevices is { } devices ? DeviceForRank(localRank, devices()) : 0);

    /// <summary>What backend <paramref name="name"/> is, from its registry entry; an unknown name is a usage error.</summary>
    public static BackendTraits Traits(string name)
    {
        var reg = Registry();
        if (!reg.Contains(name))
            throw new UsageError($"unknown backend '{name}'; known: {string.Join(", ", reg.Available.Select(a => a.Name))}.");
        return reg.Traits(name);
    }

    /// <summary>Whether backend <paramref name="name"/> keeps its tensors in host memory (so the machine's memory bounds a run).</summary>
    public static bool IsHostMemory(string name) => Traits(name).HostMemory;

    /// <summary>The device of the rank with <paramref name="localRank"/> on a host with <paramref name="devices"/> visible devices.</summary>
    public static int DeviceForRank(int localRank, int devices) => devices > 0 ? localRank % devices : 0;

    /// <summary>Backend <paramref name="name"/> with the thread and precision options of <paramref name="o"/>.</summary>
    public static IBackend Create(string name, CommonOptions o, int device = 0)
    {
        var reg = Registry();
        if (!reg.Contains(name))
            throw new UsageError($"unknown backend '{name}'; known: {string.Join(", ", reg.Available.Select(a => a.Name))}.");
        if (o.Threads < 0) throw new UsageError($"--threads must be >= 0, got {o.Threads}.");
        var precision = o.ResolvePrecision(reg, name);
        try
        {
            return reg.Create(name, new BackendOptions { Threads = o.Threads, Precision = precision, Device = device, StepGraphs = !o.NoCudaGraphs });
        }
        catch (Exception e) when (e is not UsageError)
        {
            throw new UserError($"backend '{name}' is not available: {e.Message}", e);
        }
    }
}
