using Ddpm.Tensors.Distributed;
using Ddpm.Tensors.Distributed.Mpi;

namespace Ddpm.Tool;

/// <summary>How a run joins a data-parallel job (<c>--distributed</c>).</summary>
public enum DistributedMode
{
    /// <summary>One process, whatever the environment says.</summary>
    None,

    /// <summary>One rank of MPI_COMM_WORLD (MPICH).</summary>
    Mpi,
}

/// <summary>The collective a run uses: chosen here, as backends are chosen by <see cref="ToolBackends"/>.</summary>
public static class ToolCollective
{
    /// <summary>
    /// <paramref name="mode"/>, or when null the launcher's word: a process that an MPI launcher started as one
    /// of several ranks joins MPI, any other runs alone.
    /// </summary>
    public static ICollective Create(DistributedMode? mode)
    {
        LaunchEnvironment? launch;
        try { launch = LaunchEnvironment.Detect(); }
        catch (FormatException e) { throw new UserError(e.Message, e); }
        var chosen = mode ?? (launch is { IsParallel: true } ? DistributedMode.Mpi : DistributedMode.None);
        if (chosen == DistributedMode.None) return SingleProcess.Instance;
        try
        {
            return MpiCollective.Initialize(launch);
        }
        catch (Exception e) when (e is DllNotFoundException or InvalidOperationException or EntryPointNotFoundException)
        {
            throw new UserError(e.Message, e);
        }
    }

    /// <summary>The console of a rank other than 0: it prints nothing (rank 0 speaks for the job).</summary>
    public static ToolConsole Quiet(ToolConsole con) =>
        new(TextWriter.Null, TextWriter.Null, interactive: false) { Cancel = con.Cancel };
}
