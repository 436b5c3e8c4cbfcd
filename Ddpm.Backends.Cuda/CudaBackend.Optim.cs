using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>Buffer views and the whole-model optimiser helpers (Kernels/optim.cu).</summary>
public sealed partial class CudaBackend
{
    public DeviceBuffer Slice(DeviceBuffer parent, int offset, int length)
    {
        Enter();
        if (parent is not CudaBuffer cb || !ReferenceEquals(cb.Backend, this))
            throw new ArgumentException($"Slice: a buffer of backend '{parent.Backend.Name}' was passed to this cuda backend.");
        return CudaBuffer.Slice(this, cb, offset, length);
    }

    public void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex)
    {
        Enter();
        ulong px = Ptr(x, n, "SumOfSquaresTo x");
        ulong pr = Ptr(result, resultIndex, 2, "SumOfSquaresTo result");
        // Same two-pass reduction as SumOfSquares (fixed grid, fixed order), with the total left on the device.
        int blocks = (int)Math.Min(GridFor(Math.Max(n, 1)), 1024);
        using var scratch = new ScratchLease(Scratch(2L * blocks));
        if (n > 0) Launch("sum_squares_partial", (uint)blocks, ThreadsPerBlock, px, n, scratch.Pointer);
        Launch("sum_partials_split", 1, ThreadsPerBlock, scratch.Pointer, n > 0 ? blocks : 0, pr);
    }

    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n)
    {
        Enter();
        ulong ps = Ptr(sumSq, index, 2, "ClipScale sumSq");
        ulong px = Ptr(x, n, "ClipScale x");
        if (n == 0) return;
        Launch("clip_scale", GridFor(n), ThreadsPerBlock, ps, KernelArg.Struct(maxNorm), px, n);
    }
}
