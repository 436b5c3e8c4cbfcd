using System.Diagnostics;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;

namespace Ddpm.Tool;

/// <summary>
/// A collective that forwards every call and adds up the wall time of the device-buffer all-reduces (the
/// gradient average of a training step) since the last <see cref="Reset"/>: what <c>bench</c> reports as the
/// all-reduce's share of a step. For reductions started during the backward pass that is the time the step
/// spends on them (copies, posting, waiting), not the part that overlaps computation.
/// </summary>
public sealed class TimedCollective(ICollective inner) : ICollective
{
    private long _ticks;

    /// <summary>The collective whose calls are timed.</summary>
    public ICollective Inner => inner;

    /// <summary>Seconds spent in <see cref="AllReduce(DeviceBuffer, int, int, ReduceOp)"/> and in starting, testing and waiting for
    /// <see cref="StartAllReduce"/>'s reductions since <see cref="Reset"/>.</summary>
    public double BufferSeconds => (double)_ticks / Stopwatch.Frequency;

    public void Reset() => _ticks = 0;

    public string Name => inner.Name;
    public int Rank => inner.Rank;
    public int Size => inner.Size;

    public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op) =>
        Timed(() => { inner.AllReduce(buffer, offset, count, op); return true; });

    /// <summary>Forwards; the time counted is that of starting, testing and waiting: what the caller spends, not what overlaps.</summary>
    public IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op) =>
        new TimedPending(this, Timed(() => inner.StartAllReduce(buffer, offset, count, op)));

    /// <summary>Runs <paramref name="call"/> and adds its wall time to the count.</summary>
    private T Timed<T>(Func<T> call)
    {
        long start = Stopwatch.GetTimestamp();
        try { return call(); }
        finally { _ticks += Stopwatch.GetTimestamp() - start; }
    }

    public void AllReduce(Span<float> data, ReduceOp op) => inner.AllReduce(data, op);
    public void AllReduce(Span<double> data, ReduceOp op) => inner.AllReduce(data, op);
    public void Broadcast(Span<byte> data, int root) => inner.Broadcast(data, root);
    public void Broadcast(Span<float> data, int root) => inner.Broadcast(data, root);
    public void Barrier() => inner.Barrier();
    public void Abort(int exitCode) => inner.Abort(exitCode);
    public void Dispose() => inner.Dispose();

    private sealed class TimedPending(TimedCollective owner, IPendingReduce inner) : IPendingReduce
    {
        public bool Test() => owner.Timed(inner.Test);

        public void Wait() => owner.Timed(() => { inner.Wait(); return true; });
    }
}
