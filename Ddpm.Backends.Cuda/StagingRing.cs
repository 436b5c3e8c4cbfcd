using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// Pinned host memory for host-device copies, used as a ring: each upload copies into the next free region
/// and queues an asynchronous copy, with an event recorded after it. A region is written again only after
/// the event of the last copy that used it has completed, so uploads do not wait for the device unless the
/// ring is full. Downloads synchronise the stream anyway, which retires every pending region.
/// </summary>
internal sealed unsafe class StagingRing : IDisposable
{
    private readonly nint _stream;
    private readonly Queue<(long Start, long End, nint Event)> _pending = new();
    private readonly Stack<nint> _events = new();
    private long _head;
    private bool _disposed;

    internal StagingRing(nint stream, long bytes)
    {
        _stream = stream;
        Bytes = bytes;
        Driver.Check(Driver.cuMemHostAlloc(out nint p, (nuint)bytes, 0), "cuMemHostAlloc");
        Base = (byte*)p;
    }

    internal long Bytes { get; }

    /// <summary>Times an upload waited for the device because the ring was full.</summary>
    internal long Waits { get; private set; }

    private byte* Base { get; }

    /// <summary>
    /// A region of <paramref name="bytes"/> (at most <see cref="Bytes"/>) that no queued copy still reads or
    /// writes. The caller queues its copy and then calls <see cref="Commit"/>.
    /// </summary>
    internal (nint Pointer, long Start) Acquire(long bytes)
    {
        if (bytes > Bytes) throw new ArgumentOutOfRangeException(nameof(bytes), $"{bytes} bytes exceed the {Bytes}-byte staging ring.");
        long start = _head + bytes <= Bytes ? _head : 0;
        long end = start + bytes;
        // Pending regions are in queue order; waiting for the youngest overlapping one retires all before it.
        int lastOverlap = -1, index = 0;
        foreach (var (s, e, _) in _pending)
        {
            if (s < end && start < e) lastOverlap = index;
            index++;
        }
        for (int i = 0; i <= lastOverlap; i++)
        {
            var (_, _, ev) = _pending.Dequeue();
            if (i == lastOverlap)
            {
                Waits++;
                Driver.Check(Driver.cuEventSynchronize(ev), "cuEventSynchronize");
            }
            _events.Push(ev);
        }
        return ((nint)(Base + start), start);
    }

    /// <summary>Marks [start, start + bytes) busy until the work queued so far on the stream completes.</summary>
    internal void Commit(long start, long bytes)
    {
        nint ev;
        if (_events.Count > 0) ev = _events.Pop();
        else Driver.Check(Driver.cuEventCreate(out ev, Driver.EventDisableTiming), "cuEventCreate");
        Driver.Check(Driver.cuEventRecord(ev, _stream), "cuEventRecord");
        _pending.Enqueue((start, start + bytes, ev));
        _head = start + bytes;
    }

    /// <summary>After a stream synchronisation every queued copy is done: all regions are free.</summary>
    internal void AllCompleted()
    {
        while (_pending.Count > 0) _events.Push(_pending.Dequeue().Event);
        _head = 0;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        AllCompleted();
        while (_events.Count > 0) Driver.cuEventDestroy_v2(_events.Pop());
        Driver.cuMemFreeHost((nint)Base);
    }
}
