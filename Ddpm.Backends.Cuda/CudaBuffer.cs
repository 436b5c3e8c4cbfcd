using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// Device memory of a <see cref="CudaBackend"/>: a pointer into a block of the backend's caching allocator,
/// or a view of part of another buffer (<see cref="IBackend.Slice"/>: the parent's pointer plus 4 * offset),
/// which holds its root buffer until it is released itself and never returns memory on its own.
/// No finalizer: an unreleased buffer goes back to the device when the backend is disposed.
/// </summary>
public sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaAllocator? _allocator;
    private readonly CudaBuffer? _root;

    internal CudaBuffer(CudaBackend backend, CudaAllocator allocator, ulong pointer, long blockBytes, int length)
        : base(backend, length)
    {
        _allocator = allocator;
        Pointer = pointer;
        BlockBytes = blockBytes;
    }

    private CudaBuffer(CudaBackend backend, CudaBuffer root, ulong pointer, int length)
        : base(backend, length)
    {
        _root = root;
        Pointer = pointer;
        BlockBytes = root.BlockBytes;
    }

    /// <summary>The CUdeviceptr of element 0 (0 for an empty buffer).</summary>
    public ulong Pointer { get; }

    /// <summary>Size of the allocator block behind the buffer (at least 4 * Length; a view reports its root's).</summary>
    internal long BlockBytes { get; }

    /// <summary>Elements [offset, offset + length) of <paramref name="parent"/> as a buffer of their own.</summary>
    internal static CudaBuffer Slice(CudaBackend backend, CudaBuffer parent, int offset, int length)
    {
        if (parent.IsReleased) throw new ObjectDisposedException(nameof(parent), "Slice of a buffer that was already released.");
        if (offset < 0 || length < 0 || (long)offset + length > parent.Length)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Slice [{offset}, {(long)offset + length}) is outside a buffer of {parent.Length} floats.");
        // Views of views hang on the root, so releasing an intermediate view frees nothing early.
        var root = parent._root ?? parent;
        root.Retain();
        ulong pointer = length == 0 ? parent.Pointer : parent.Pointer + 4UL * (ulong)offset;
        return new CudaBuffer(backend, root, pointer, length);
    }

    protected override void Free()
    {
        if (_root is not null) _root.Release();
        else
        {
            ((CudaBackend)Backend).ForgetWeights(Pointer, 4L * Length);
            _allocator!.Return(Pointer, BlockBytes);
        }
    }
}
