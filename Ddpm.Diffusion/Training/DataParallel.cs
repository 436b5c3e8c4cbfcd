using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// How a <see cref="Trainer"/> takes part in a data-parallel job: the collective of the job's ranks, and how
/// often the ranks compare their weights.
/// </summary>
/// <param name="Collective">The ranks; <see cref="SingleProcess.Instance"/> for a job of one.</param>
/// <param name="ChecksumEvery">Compare the weights of all ranks before every this many steps (and before the
/// first step this trainer takes); 0 never.</param>
/// <param name="BucketMegabytes">The gradients are averaged in buckets of at least this many MB (10^6 bytes),
/// each started as soon as the backward pass has finished its gradients (<see cref="GradientBuckets"/>); 0
/// averages the whole gradient in one all-reduce after the backward pass.</param>
public sealed record DataParallel(ICollective Collective, int ChecksumEvery = 100, double BucketMegabytes = DataParallel.DefaultBucketMegabytes)
{
    /// <summary>The default bucket size in MB.</summary>
    public const double DefaultBucketMegabytes = 4;

    /// <summary>The largest bucket size accepted, in MB.</summary>
    public const double MaxBucketMegabytes = 1024;

    /// <summary>A job of one process: no communication at all.</summary>
    public static DataParallel None { get; } = new(SingleProcess.Instance, 0);

    public int Rank => Collective.Rank;
    public int Size => Collective.Size;

    /// <summary>Rank 0 writes checkpoints, samples, logs and the console; the others stay quiet.</summary>
    public bool IsRoot => Collective.Rank == 0;

    /// <summary>
    /// Whether <paramref name="flag"/> is set on any rank (a stop request seen by one rank, from Ctrl-C or a
    /// signal, so that all ranks stop after the same step). Collective: all ranks must call it.
    /// </summary>
    public bool AnyRank(bool flag)
    {
        if (Size == 1) return flag;
        Span<float> f = [flag ? 1f : 0f];
        Collective.AllReduce(f, ReduceOp.Sum);
        return f[0] > 0f;
    }

    /// <summary>
    /// Every rank's <paramref name="code"/> (an exit code, 0 for success), on every rank, indexed by rank: how the
    /// ranks agree on whether each of them can go on. Collective: all ranks must call it.
    /// </summary>
    public int[] GatherCodes(int code)
    {
        if (Size == 1) return [code];
        // One slot per rank, zero but for this rank's: the sum is every rank's code, exact for small integers.
        var slots = new float[Size];
        slots[Rank] = code;
        Collective.AllReduce(slots, ReduceOp.Sum);
        return [.. slots.Select(f => (int)f)];
    }

    /// <summary>The shard [start, start + count) of a global batch that this rank trains on.</summary>
    public (int Start, int Count) ShardOf(int globalBatch)
    {
        if (globalBatch % Size != 0)
            throw new ConfigValueException("batch_size",
                $"{globalBatch} (the global batch) does not divide over {Size} ranks; use a multiple of {Size}.");
        int per = globalBatch / Size;
        return (Rank * per, per);
    }
}

/// <summary>Raised on every rank when the ranks' weights differ: they no longer train one model.</summary>
public sealed class ReplicaMismatchException(string message) : Exception(message);

/// <summary>Compares the parameters of all ranks by a SHA-256 of their bytes.</summary>
public sealed class ReplicaCheck
{
    private float[] _host = [];

    /// <summary>
    /// Every rank hashes its parameters, rank 0's hash is broadcast, and the ranks whose hash differs are
    /// gathered by a sum all-reduce of one flag per rank; then every rank throws the same
    /// <see cref="ReplicaMismatchException"/> naming them, or returns. Collective: all ranks must call it.
    /// </summary>
    public void Verify(ICollective collective, ParameterStore store, long step)
    {
        if (collective.Size == 1) return;
        if (_host.Length != store.Count) _host = new float[store.Count];
        store.Backend.Download(store.Parameters, 0, _host);
        var mine = SHA256.HashData(MemoryMarshal.AsBytes(_host.AsSpan()));
        var root = (byte[])mine.Clone();
        collective.Broadcast(root, 0);
        var flags = new float[collective.Size];
        if (!mine.AsSpan().SequenceEqual(root)) flags[collective.Rank] = 1f;
        collective.AllReduce(flags, ReduceOp.Sum);
        var differing = Enumerable.Range(0, flags.Length).Where(r => flags[r] != 0f).ToList();
        if (differing.Count > 0)
            throw new ReplicaMismatchException(
                $"At step {step} the weights of rank{(differing.Count > 1 ? "s" : "")} {string.Join(", ", differing)} differ from rank 0's " +
                $"(of {collective.Size} ranks): the replicas no longer hold the same model, so the run stops.");
    }
}
