using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Nccl;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Ddpm.Tensors.Distributed.Mpi;

namespace Ddpm.Tool;

/// <summary>How a run joins a data-parallel job (<c>--distributed</c>).</summary>
public enum DistributedMode
{
    /// <summary>One process, whatever the environment says.</summary>
    None,

    /// <summary>One rank of MPI_COMM_WORLD (MPICH); device buffers are all-reduced through host memory.</summary>
    Mpi,

    /// <summary>One rank of MPI_COMM_WORLD whose device all-reduce runs through NCCL (needs --backend cuda).</summary>
    Nccl,
}

/// <summary>
/// The collective chosen for a run before its backend exists: <see cref="Host"/> (MPI, or the single process)
/// carries the job, and on CUDA ranks <see cref="ForBackend"/> puts NCCL under the device all-reduce.
/// </summary>
/// <param name="Host">The launcher's collective; the caller disposes it.</param>
/// <param name="UseNccl">Whether the device all-reduce goes through NCCL.</param>
/// <param name="Warning">One line rank 0 prints, or null: why CUDA ranks fall back to MPI through host memory.</param>
/// <param name="LocalRank">This process's rank among the ranks of its host (0 when it runs alone).</param>
public sealed record CollectiveChoice(ICollective Host, bool UseNccl, string? Warning, int LocalRank = 0)
{
    /// <summary>
    /// The collective for the trainer on <paramref name="backend"/>: NCCL on its stream, or <see cref="Host"/>.
    /// Collective: every rank calls it. The caller disposes the result before the backend (disposing
    /// <see cref="Host"/> twice is harmless).
    /// </summary>
    public ICollective ForBackend(IBackend backend)
    {
        if (!UseNccl) return Host;
        if (backend is not CudaBackend cuda)
            throw new UsageError($"--distributed nccl needs --backend cuda (the backend is {backend.Name}).");
        try
        {
            return NcclCollective.Create(Host, cuda);
        }
        catch (Exception e) when (e is NcclException or CudaUnavailableException or EntryPointNotFoundException)
        {
            throw new UserError($"NCCL could not join the ranks: {e.Message}", e);
        }
    }

    /// <summary>How the ranks talk, for the header: "NCCL 2.21.5" or "MPI (MPICH Version: 4.0.2)".</summary>
    public static string Describe(ICollective collective) => collective switch
    {
        NcclCollective n => n.Version,
        MpiCollective m => $"MPI ({m.Library})",
        _ => collective.Name,
    };
}

/// <summary>The collective a run uses: chosen here, as backends are chosen by <see cref="ToolBackends"/>.</summary>
public static class ToolCollective
{
    /// <summary>
    /// <paramref name="mode"/>, or when null the launcher's word: a process that an MPI launcher started as one
    /// of several ranks joins MPI, any other runs alone; CUDA ranks use NCCL when libnccl.so.2 is found, else
    /// MPI through host memory with a warning. An explicit nccl needs --backend cuda and the library.
    /// </summary>
    public static CollectiveChoice Create(DistributedMode? mode, string backend)
    {
        LaunchEnvironment? launch;
        try { launch = LaunchEnvironment.Detect(); }
        catch (FormatException e) { throw new UserError(e.Message, e); }
        // Ranks whose tensors live in device memory all-reduce on the device (NCCL); host-memory ranks over MPI.
        bool device = !ToolBackends.IsHostMemory(backend);
        var chosen = mode ?? (launch is { IsParallel: true } ? (device ? DistributedMode.Nccl : DistributedMode.Mpi) : DistributedMode.None);
        if (chosen == DistributedMode.None) return new CollectiveChoice(SingleProcess.Instance, false, null);
        string? warning = null;
        if (chosen == DistributedMode.Nccl)
        {
            if (mode == DistributedMode.Nccl && !device)
                throw new UsageError($"--distributed nccl needs --backend cuda (got --backend {backend}); use --distributed mpi.");
            if (NcclCollective.Probe(out string reason) is null)
            {
                if (mode == DistributedMode.Nccl)
                    throw new UserError($"--distributed nccl: {reason} Or use --distributed mpi (through host memory).");
                warning = $"NCCL not found ({reason.TrimEnd('.')}): CUDA ranks all-reduce through host memory over MPI.";
                chosen = DistributedMode.Mpi;
            }
        }
        try
        {
            return new CollectiveChoice(MpiCollective.Initialize(launch), chosen == DistributedMode.Nccl, warning, launch?.LocalRank ?? 0);
        }
        catch (Exception e) when (e is DllNotFoundException or InvalidOperationException or EntryPointNotFoundException)
        {
            throw new UserError(e.Message, e);
        }
    }

    /// <summary>Whether an MPI launcher started this process as a rank other than 0 (which leaves printing to rank 0).</summary>
    public static bool LaunchedAsOtherRank() => LaunchedJob() is { Rank: > 0 };

    /// <summary>The launcher's word on this process (rank, ranks), or null outside a launched job of several ranks.</summary>
    public static LaunchEnvironment? LaunchedJob()
    {
        try { return LaunchEnvironment.Detect() is { IsParallel: true } job ? job : null; }
        catch (FormatException) { return null; }
    }

    /// <summary>The console of a rank other than 0: it prints nothing (rank 0 speaks for the job).</summary>
    public static ToolConsole Quiet(ToolConsole con) =>
        new(TextWriter.Null, TextWriter.Null, interactive: false) { Cancel = con.Cancel };
}
