using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;

namespace Ddpm.Tool;

/// <summary>The backends the tool can run on, by name; the one place the tool names backend assemblies.</summary>
public static class ToolBackends
{
    public static BackendRegistry Registry() => new BackendRegistry().RegisterCpu().RegisterCpuReference().RegisterCuda();

    public static IBackend Create(CommonOptions o) => Create(o.Backend, o);

    /// <summary>Backend <paramref name="name"/> with the thread and TF32 options of <paramref name="o"/>.</summary>
    public static IBackend Create(string name, CommonOptions o)
    {
        var reg = Registry();
        if (!reg.Contains(name))
            throw new UsageError($"unknown backend '{name}'; known: {string.Join(", ", reg.Available.Select(a => a.Name))}.");
        if (o.Threads < 0) throw new UsageError($"--threads must be >= 0, got {o.Threads}.");
        try
        {
            return reg.Create(name, new BackendOptions { Threads = o.Threads, AllowTf32 = o.Tf32 });
        }
        catch (Exception e) when (e is not UsageError)
        {
            throw new UserError($"backend '{name}' is not available: {e.Message}", e);
        }
    }
}
