namespace Ddpm.Tensors.Distributed;

/// <summary>How an all-reduce combines the ranks' values.</summary>
public enum ReduceOp
{
    /// <summary>The element-wise sum over ranks.</summary>
    Sum,

    /// <summary>The element-wise sum over ranks divided by the number of ranks.</summary>
    Average,
}

/// <summary>
/// The collective operations data-parallel training needs, over the ranks of one job: every rank calls each
/// operation in the same order with the same sizes. Implementations wrap an existing collective engine (MPI);
/// <see cref="SingleProcess"/> is the job of one rank and does nothing.
/// </summary>
public interface ICollective : IDisposable
{
    /// <summary>Short name for logs: <c>none</c>, <c>mpi</c>, <c>nccl</c>.</summary>
    string Name { get; }

    /// <summary>This process's rank, 0 .. <see cref="Size"/> - 1.</summary>
    int Rank { get; }

    /// <summary>The number of ranks.</summary>
    int Size { get; }

    /// <summary>
    /// Replaces <paramref name="buffer"/>[offset, offset + count) on every rank by the reduction of that range
    /// over all ranks, after the device work already queued on the buffer: a host collective waits for that work;
    /// one that runs on the backend's own stream (NCCL) is queued behind it, and later work on the backend runs after it.
    /// </summary>
    void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op);

    /// <summary>
    /// Starts the all-reduce of <paramref name="buffer"/>[offset, offset + count) and returns while it runs, so
    /// that the caller can compute meanwhile; the range holds the reduction once <see cref="IPendingReduce.Wait"/>
    /// has returned. The range must not be written until then. Every rank starts its reductions in the same
    /// order, and may wait for them in any order. This default reduces at once (an engine without non-blocking
    /// collectives) and returns a completed reduction.
    /// </summary>
    IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        AllReduce(buffer, offset, count, op);
        return PendingReduce.Completed;
    }

    /// <summary>Host all-reduce of floats, in place.</summary>
    void AllReduce(Span<float> data, ReduceOp op);

    /// <summary>Host all-reduce of doubles, in place.</summary>
    void AllReduce(Span<double> data, ReduceOp op);

    /// <summary>Every rank's <paramref name="data"/> becomes rank <paramref name="root"/>'s.</summary>
    void Broadcast(Span<byte> data, int root);

    /// <summary>Every rank's <paramref name="data"/> becomes rank <paramref name="root"/>'s.</summary>
    void Broadcast(Span<float> data, int root);

    /// <summary>Returns when every rank has called it.</summary>
    void Barrier();

    /// <summary>
    /// Ends the whole job now with <paramref name="exitCode"/> (after this rank's failure, so that the other
    /// ranks do not wait forever in a collective). Does not return.
    /// </summary>
    void Abort(int exitCode);
}

/// <summary>An all-reduce started by <see cref="ICollective.StartAllReduce"/>.</summary>
public interface IPendingReduce
{
    /// <summary>
    /// Lets the reduction advance without blocking (engines such as MPICH progress non-blocking collectives
    /// only inside their calls) and says whether it is complete; the result is in place only after <see cref="Wait"/>.
    /// </summary>
    bool Test();

    /// <summary>Blocks until the reduction is complete and its result is in the buffer. Idempotent.</summary>
    void Wait();
}

/// <summary>Pending reductions that need no more work.</summary>
public static class PendingReduce
{
    /// <summary>A reduction that finished when it was started.</summary>
    public static IPendingReduce Completed { get; } = new Done();

    private sealed class Done : IPendingReduce
    {
        public bool Test() => true;
        public void Wait() { }
    }
}

/// <summary>The collective of a job of one rank: every operation is the identity and costs nothing.</summary>
public sealed class SingleProcess : ICollective
{
    public static SingleProcess Instance { get; } = new();

    private SingleProcess() { }

    public string Name => "none";
    public int Rank => 0;
    public int Size => 1;

    public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op) =>
        Collective.CheckRange(buffer, offset, count);

    public IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        Collective.CheckRange(buffer, offset, count);
        return PendingReduce.Completed;
    }

    public void AllReduce(Span<float> data, ReduceOp op) { }
    public void AllReduce(Span<double> data, ReduceOp op) { }

    public void Broadcast(Span<byte> data, int root) => Collective.CheckRoot(root, 1);
    public void Broadcast(Span<float> data, int root) => Collective.CheckRoot(root, 1);
    public void Barrier() { }

    public void Abort(int exitCode) => Environment.Exit(exitCode);

    public void Dispose() { }
}

/// <summary>Argument checks shared by the implementations.</summary>
public static class Collective
{
    public static void CheckRange(DeviceBuffer buffer, int offset, int count)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (offset < 0 || count < 0 || offset > buffer.Length - count)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"All-reduce range [{offset}, {offset} + {count}) is outside a buffer of {buffer.Length} floats.");
    }

    public static void CheckRoot(int root, int size)
    {
        if (root < 0 || root >= size)
            throw new ArgumentOutOfRangeException(nameof(root), $"Broadcast root {root} is not a rank of a job of {size}.");
    }
}
