using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// Device memory of a <see cref="CudaBackend"/>: a pointer into a block of the backend's caching allocator.
/// No finalizer: an unreleased buffer goes back to the device when the backend is disposed.
/// </summary>
public sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaAllocator _allocator;

    internal CudaBuffer(CudaBackend backend, CudaAllocator allocator, ulong pointer, long blockBytes, int length)
        : base(backend, length)
    {
        _allocator = allocator;
        Pointer = pointer;
        BlockBytes = blockBytes;
    }

    /// <summary>The CUdeviceptr of element 0 (0 for an empty buffer).</summary>
    public ulong Pointer { get; }

    /// <summary>Size of the allocator block behind the buffer (at least 4 * Length).</summary>
    internal long BlockBytes { get; }

    protected override void Free() => _allocator.Return(Pointer, BlockBytes);
}
