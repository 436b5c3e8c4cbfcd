namespace Ddpm.Tensors;

/// <summary>
/// A block of float32 memory owned by one backend. Reference counted, because reshaped tensors share their
/// storage; the memory goes back to the backend when the last holder releases it. Finalizers never run
/// backend code: a buffer that is never released is reclaimed by the backend's own means (GC on the CPU,
/// context teardown on a GPU).
/// </summary>
public abstract class DeviceBuffer
{
    private int _refs = 1;

    protected DeviceBuffer(IBackend backend, int length)
    {
        Backend = backend;
        Length = length;
    }

    public IBackend Backend { get; }

    /// <summary>Number of float32 elements.</summary>
    public int Length { get; }

    public bool IsReleased => Volatile.Read(ref _refs) <= 0;

    public void Retain()
    {
        if (Interlocked.Increment(ref _refs) <= 1)
            throw new ObjectDisposedException(nameof(DeviceBuffer), "Retain of a buffer that was already freed.");
    }

    public void Release()
    {
        int r = Interlocked.Decrement(ref _refs);
        if (r == 0) Free();
        else if (r < 0) throw new ObjectDisposedException(nameof(DeviceBuffer), "Buffer released more often than retained.");
    }

    /// <summary>Returns the memory to the backend (pool or device). Called once, when the count reaches zero.</summary>
    protected abstract void Free();
}
