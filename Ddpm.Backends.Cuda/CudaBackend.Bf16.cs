using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// <see cref="Precision.Bf16"/>: mixed precision as PyTorch's bfloat16 autocast. The operands of every GEMM (the
/// linear layers, attention's two products, the im2col convolutions) and of the cuDNN convolution passes are cast
/// to bfloat16 (round to nearest even, <c>cast_f32_to_bf16</c>) into scratch buffers of the allocator, and the
/// products are summed in float32 (CUBLAS_COMPUTE_32F; cuDNN's CUDNN_DATA_FLOAT compute type).
///
/// What comes out stays float32, so nothing else in the engine changes: cuBLAS writes a float32 C
/// (cublasGemmStridedBatchedEx takes bfloat16 A and B with a float32 C), which also keeps the beta = 1 accumulation
/// of the im2col filter gradient a float32 sum; cuDNN's legacy API wants x, w and y of one type, so its passes write
/// bfloat16 that <c>cast_bf16_to_f32</c> widens (exactly) into the float32 result, as autocast's outputs are bfloat16
/// too. Weights, gradients, Adam's moments, the EMA, GroupNorm, softmax and the loss never leave float32.
///
/// Activations are cast at each use, into scratch buffers. Weights are cast once per optimiser step: an operand inside a
/// buffer declared to hold weights (<see cref="IBackend.HoldsWeights"/>, a parameter store's values) is read from that
/// buffer's bfloat16 copy, cast whole on its first use after a write (CudaBackend.WeightCopies.cs), so the forward and
/// backward-data passes of every micro-batch share one cast of each weight. Both round the same float32 values the same
/// way, so the products see the same bits either way.
/// </summary>
public sealed partial class CudaBackend
{
    private bool UsesBf16 => _options.Precision == Precision.Bf16;

    /// <summary>A scratch buffer of <paramref name="elements"/> bfloat16 values (two to a float of the allocator).</summary>
    private CudaBuffer Bf16Scratch(long elements) => Scratch((elements + 1) / 2);

    /// <summary>A bfloat16 copy of the <paramref name="n"/> floats at <paramref name="src"/>, rounded to nearest even.</summary>
    private CudaBuffer Bf16Copy(ulong src, long n)
    {
        var copy = Bf16Scratch(n);
        CastToBf16(src, n, copy.Pointer);
        return copy;
    }

    /// <summary>The <paramref name="n"/> floats at <paramref name="src"/> rounded to nearest even into bfloat16 at <paramref name="dst"/>.</summary>
    private void CastToBf16(ulong src, long n, ulong dst)
    {
        Launch("cast_f32_to_bf16", GridFor(n), ThreadsPerBlock, src, dst, CastLength(n));
        if (FeedingRecording) return;
        _castKernels++;
        _castElements += n;
    }

    /// <summary>
    /// An operand in bfloat16: the <paramref name="n"/> floats at <paramref name="src"/> read from their weight buffer's copy,
    /// or else cast into a scratch buffer released on dispose.
    /// </summary>
    private Bf16Operand Bf16Of(ulong src, long n)
    {
        ulong copy = WeightCopyOf(src, n);
        if (copy != 0) return new Bf16Operand(copy, null);
        var scratch = Bf16Copy(src, n);
        return new Bf16Operand(scratch.Pointer, scratch);
    }

    /// <summary>A bfloat16 operand and the scratch buffer it lives in, if any (none for a weight copy).</summary>
    private readonly record struct Bf16Operand(ulong Pointer, CudaBuffer? Scratch) : IDisposable
    {
        public void Dispose() => Scratch?.Release();
    }

    /// <summary>Widens the <paramref name="n"/> bfloat16 values at <paramref name="src"/> into floats at <paramref name="dst"/>.</summary>
    private void WidenBf16(ulong src, long n, ulong dst) =>
        Launch("cast_bf16_to_f32", GridFor(n), ThreadsPerBlock, src, dst, CastLength(n));

    /// <summary>y = x rounded to bfloat16 and widened back by the two cast kernels (what every bf16 operand goes through).</summary>
    internal void RoundThroughBf16(DeviceBuffer x, int n, DeviceBuffer y)
    {
        Enter();
        ulong px = Ptr(x, n, "RoundThroughBf16 x"), py = Ptr(y, n, "RoundThroughBf16 y");
        using var copy = new ScratchLease(Bf16Copy(px, n));
        WidenBf16(copy.Pointer, n, py);
    }

    private static int CastLength(long n) =>
        n <= int.MaxValue ? (int)n : throw new NotSupportedException($"A bfloat16 cast of {n} elements exceeds the 2^31 element limit of a buffer.");

    /// <summary>
    /// <see cref="GemmRaw"/> in bf16: A and B (the extents the batch reads) cast to bfloat16, C float32, float32 sums;
    /// the arguments as there (row-major operands, swapped into column-major cuBLAS). False where a replayed step's
    /// graph makes the product (the casts before it are kernels, recorded and checked as such).
    /// </summary>
    private unsafe bool GemmBf16(CublasOperation opB, CublasOperation opA, int batch, int m, int n, int k, float alpha,
        ulong a, int lda, long strideA, ulong b, int ldb, long strideB, float beta, ulong c, long strideC)
    {
        using var a16 = Bf16Of(a, Extent(batch, strideA, (long)m * k));
        using var b16 = Bf16Of(b, Extent(batch, strideB, (long)k * n));
        if (Replaying("cublasGemmStridedBatchedEx", [(ulong)opA | ((ulong)opB << 8), (ulong)m, (ulong)n, (ulong)k, a16.Pointer, (ulong)strideA,
                b16.Pointer, (ulong)strideB, c, (ulong)strideC, (ulong)batch, BitConverter.SingleToUInt32Bits(alpha), BitConverter.SingleToUInt32Bits(beta)]))
            return false;
        Cublas.Check(Cublas.cublasGemmStridedBatchedEx(_cublas, opB, opA, n, m, k, &alpha, b16.Pointer, CudaDataType.R16BF, ldb, strideB,
            a16.Pointer, CudaDataType.R16BF, lda, strideA, &beta, c, CudaDataType.R32F, n, strideC, batch, CublasComputeType.Compute32F,
            Cublas.GemmDefault), "cublasGemmStridedBatchedEx");
        return true;
    }

    /// <summary>
    /// A convolution operand or result as cuDNN sees it: the float32 buffer itself, or in bf16 a bfloat16 operand (an
    /// input: a weight copy or a scratch cast) or a bfloat16 scratch result that <see cref="Finish"/> widens into the
    /// float32 buffer.
    /// </summary>
    private readonly struct DnnTensor(ulong buffer, long count, ulong pointer, CudaBuffer? scratch, bool widen) : IDisposable
    {
        public ulong Pointer => pointer;

        /// <summary>Widens a bfloat16 result into its float32 buffer (nothing to do for an input or in float32).</summary>
        public void Finish(CudaBackend be)
        {
            if (widen) be.WidenBf16(pointer, count, buffer);
        }

        public void Dispose() => scratch?.Release();
    }

    private DnnTensor DnnInput(ulong p, long n)
    {
        if (!UsesBf16) return new(p, n, p, null, false);
        var (pointer, scratch) = Bf16Of(p, n);
        return new(p, n, pointer, scratch, false);
    }

    private DnnTensor DnnOutput(ulong p, long n)
    {
        if (!UsesBf16) return new(p, n, p, null, false);
        var scratch = Bf16Scratch(n);
        return new(p, n, scratch.Pointer, scratch, true);
    }

    /// <summary>The element type of the convolution descriptors: bfloat16 in bf16 (cuDNN's PSEUDO_BFLOAT16_CONFIG), else float32.</summary>
    private CudnnDataType DnnDataType => UsesBf16 ? CudnnDataType.BFloat16 : CudnnDataType.Float;
}
