using System.Diagnostics;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;

namespace Ddpm.Tool;

/// <summary>
/// A collective that forwards every call and adds up the wall time of the device-buffer all-reduces (the
/// gradient average of a training step) since the last <see cref="Reset"/>: what <c>bench</c> reports as the
/// all-reduce's share of a step.
/// </summary>
public sealed class TimedCollective(ICollective inner) : ICollective
{
    private long _ticks;

    /// <summary>The collective whose calls are timed.</summary>
    public ICollective Inner => inner;

    /// <summary>Seconds spent in <see cref="AllReduce(DeviceBuffer, int, int, ReduceOp)"/> since <see cref="Reset"/>.</summary>
    public double BufferSeconds => (double)_ticks / Stopwatch.Frequency;

    public void Reset() => _ticks = 0;

    public string Name => inner.Name;
    public int Rank => inner.Rank;
    public int Size => inner.Size;

    public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        long start = Stopwatch.GetTimestamp();
        inner.AllReduce(buffer, offset, count, op);
        _ticks += Stopwatch.GetTimestamp() - start;
    }

    public void AllReduce(Span<float> data, ReduceOp op) => inner.AllReduce(data, op);
    public void AllReduce(Span<double> data, ReduceOp op) => inner.AllReduce(data, op);
    public void Broadcast(Span<byte> data, int root) => inner.Broadcast(data, root);
    public void Broadcast(Span<float> data, int root) => inner.Broadcast(data, root);
    public void Barrier() => inner.Barrier();
    public void Abort(int exitCode) => inner.Abort(exitCode);
    public void Dispose() => inner.Dispose();
}
