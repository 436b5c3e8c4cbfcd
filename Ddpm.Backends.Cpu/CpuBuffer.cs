using System.Collections.Concurrent;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>
/// Host memory for the CPU backends: a pinned float array (never moved by the GC, so kernels may take raw
/// pointers) that returns to its backend's pool when released; or a view of part of another buffer's array
/// (<see cref="IBackend.Slice"/>), which holds its root buffer until it is released itself. Element i of the
/// buffer is <c>Array[Offset + i]</c>.
/// </summary>
public sealed class CpuBuffer : DeviceBuffer
{
    private readonly CpuMemoryPool? _pool;
    private readonly CpuBuffer? _root;

    internal CpuBuffer(IBackend backend, float[] array, int length, CpuMemoryPool? pool)
        : base(backend, length)
    {
        Array = array;
        _pool = pool;
    }

    private CpuBuffer(IBackend backend, CpuBuffer root, int offset, int length)
        : base(backend, length)
    {
        Array = root.Array;
        Offset = offset;
        _root = root;
    }

    /// <summary>The storage; it may extend past the buffer on both sides (pooled sizes, views).</summary>
    public float[] Array { get; }

    /// <summary>Index in <see cref="Array"/> of element 0 (0 except for views).</summary>
    public int Offset { get; }

    public Span<float> Span => Array.AsSpan(Offset, Length);

    /// <summary>Elements [offset, offset + length) of <paramref name="parent"/> as a buffer of their own.</summary>
    internal static CpuBuffer Slice(IBackend backend, DeviceBuffer parent, int offset, int length)
    {
        var p = Of(parent);
        if (p.IsReleased) throw new ObjectDisposedException(nameof(parent), "Slice of a buffer that was already released.");
        if (offset < 0 || length < 0 || (long)offset + length > p.Length)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Slice [{offset}, {(long)offset + length}) is outside a buffer of {p.Length} floats.");
        // Views of views hang on the root, so releasing an intermediate view frees nothing early.
        var root = p._root ?? p;
        root.Retain();
        return new CpuBuffer(backend, root, p.Offset + offset, length);
    }

    protected override void Free()
    {
        if (_root is not null) _root.Release();
        else _pool?.Return(Array);
    }

    /// <summary>The CPU storage of a buffer, or an error naming the backend that owns it.</summary>
    public static CpuBuffer Of(DeviceBuffer b) =>
        b as CpuBuffer ?? throw new ArgumentException($"A buffer of backend '{b.Backend.Name}' was passed to a CPU backend.");
}

/// <summary>
/// Size-bucketed pool of pinned arrays (powers of two up to 1 MiB elements, then multiples of 1 MiB), so a
/// training step reuses the previous step's memory instead of allocating.
/// </summary>
public sealed class CpuMemoryPool
{
    private readonly ConcurrentDictionary<int, ConcurrentBag<float[]>> _free = new();
    private long _pooledBytes;

    /// <summary>Arrays above this many bytes in total are left to the GC rather than kept.</summary>
    public long MaxPooledBytes { get; init; } = 8L << 30;

    public static int BucketSize(int length)
    {
        if (length <= 64) return 64;
        if (length <= 1 << 20) return (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)length);
        const int mb = 1 << 20;
        long r = ((long)length + mb - 1) / mb * mb;
        return r > int.MaxValue ? length : (int)r;
    }

    public float[] Rent(int length)
    {
        int size = BucketSize(length);
        if (_free.TryGetValue(size, out var bag) && bag.TryTake(out var a))
        {
            Interlocked.Add(ref _pooledBytes, -4L * a.Length);
            return a;
        }
        return GC.AllocateUninitializedArray<float>(size, pinned: true);
    }

    public void Return(float[] a)
    {
        if (Interlocked.Add(ref _pooledBytes, 4L * a.Length) > MaxPooledBytes)
        {
            Interlocked.Add(ref _pooledBytes, -4L * a.Length);
            return;
        }
        _free.GetOrAdd(a.Length, _ => new ConcurrentBag<float[]>()).Add(a);
    }

    /// <summary>Drops every pooled array.</summary>
    public void Clear()
    {
        _free.Clear();
        Interlocked.Exchange(ref _pooledBytes, 0);
    }
}
