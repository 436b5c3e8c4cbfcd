namespace Ddpm.Tensors.Distributed;

/// <summary>
/// What the process's launcher says about the job, read from the variables MPI launchers set: MPICH's Hydra
/// and Slurm's PMI-2 (<c>PMI_RANK</c>, <c>PMI_SIZE</c>), Open MPI (<c>OMPI_COMM_WORLD_RANK/SIZE</c>), MVAPICH
/// (<c>MV2_COMM_WORLD_RANK/SIZE</c>) and a Slurm job step (<c>SLURM_PROCID</c>, <c>SLURM_STEP_NUM_TASKS</c>);
/// <see cref="LocalRank"/> (the rank among this host's ranks: <c>MPI_LOCALRANKID</c>,
/// <c>OMPI_COMM_WORLD_LOCAL_RANK</c>, <c>MV2_COMM_WORLD_LOCAL_RANK</c>, <c>SLURM_LOCALID</c>) is 0 when not set.
/// </summary>
public sealed record LaunchEnvironment(string Launcher, int Rank, int Size, int LocalRank = 0)
{
    private static readonly (string Launcher, string Rank, string Size, string LocalRank)[] Known =
    [
        ("MPICH/PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
        (OpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
        ("Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
    ];

    /// <summary>The <see cref="Launcher"/> name of Open MPI's mpirun/mpiexec.</summary>
    public const string OpenMpi = "Open MPI";

    /// <summary>Whether the launcher started more than one rank.</summary>
    public bool IsParallel => Size > 1;

    /// <summary>The launch this process sees in its environment variables, or null when no launcher is named.</summary>
    public static LaunchEnvironment? Detect() => Detect(Environment.GetEnvironmentVariable);

    /// <summary>
    /// The first launcher whose size variable is set, read through <paramref name="get"/>; null when none is.
    /// A set but malformed variable is an error naming it.
    /// </summary>
    public static LaunchEnvironment? Detect(Func<string, string?> get)
    {
        foreach (var (launcher, rankVar, sizeVar, localVar) in Known)
        {
            var sizeText = get(sizeVar);
            if (string.IsNullOrEmpty(sizeText)) continue;
            if (!int.TryParse(sizeText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int size) || size < 1)
                throw new FormatException($"Environment variable {sizeVar}='{sizeText}' is not a number of ranks.");
            int rank = 0;
            var rankText = get(rankVar);
            if (!string.IsNullOrEmpty(rankText)
                && (!int.TryParse(rankText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out rank) || rank >= size))
                throw new FormatException($"Environment variable {rankVar}='{rankText}' is not a rank of a job of {size} ({sizeVar}).");
            int local = 0;
            var localText = get(localVar);
            if (!string.IsNullOrEmpty(localText)
                && (!int.TryParse(localText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out local) || local >= size))
                throw new FormatException($"Environment variable {localVar}='{localText}' is not a rank of a job of {size} ({sizeVar}).");
            return new LaunchEnvironment(launcher, rank, size, local);
        }
        return null;
    }
}
