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
/// The casts are per use: a weight is cast in the forward pass and again in the backward-data pass of the same step.
/// The backend cannot tell a weight from an activation, nor see when a buffer is written, so a cached bfloat16
/// copy could go stale without notice; the cast reads and writes 6 bytes per element, against the 2 * k multiply-adds
/// per output element of the product it feeds.
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
        Launch("cast_f32_to_bf16", GridFor(n), ThreadsPerBlock, src, copy.Pointer, CastLength(n));
        return copy;
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
    /// the arguments as there (row-major operands, swapped into column-major cuBLAS).
    /// </summary>
    private unsafe void GemmBf16(CublasOperation opB, CublasOperation opA, int batch, int m, int n, int k, float alpha,
        ulong a, int lda, long strideA, ulong b, int ldb, long strideB, float beta, ulong c, long strideC)
    {
        using var a16 = new ScratchLease(Bf16Copy(a, Extent(batch, strideA, (long)m * k)));
        using var b16 = new ScratchLease(Bf16Copy(b, Extent(batch, strideB, (long)k * n)));
        Cublas.Check(Cublas.cublasGemmStridedBatchedEx(_cublas, opB, opA, n, m, k, &alpha, b16.Pointer, CudaDataType.R16BF, ldb, strideB,
            a16.Pointer, CudaDataType.R16BF, lda, strideA, &beta, c, CudaDataType.R32F, n, strideC, batch, CublasComputeType.Compute32F,
            Cublas.GemmDefault), "cublasGemmStridedBatchedEx");
    }

    /// <summary>
    /// A convolution operand or result as cuDNN sees it: the float32 buffer itself, or in bf16 a bfloat16 copy (an input)
    /// or a bfloat16 scratch result that <see cref="Finish"/> widens into the float32 buffer.
    /// </summary>
    private readonly struct DnnTensor(ulong buffer, long count, CudaBuffer? bf16) : IDisposable
    {
        public ulong Pointer => bf16?.Pointer ?? buffer;

        /// <summary>Widens a bfloat16 result into its float32 buffer (nothing to do in float32).</summary>
        public void Finish(CudaBackend be)
        {
            if (bf16 is not null) be.WidenBf16(bf16.Pointer, count, buffer);
        }

        public void Dispose() => bf16?.Release();
    }

    private DnnTensor DnnInput(ulong p, long n) => new(p, n, UsesBf16 ? Bf16Copy(p, n) : null);

    private DnnTensor DnnOutput(ulong p, long n) => new(p, n, UsesBf16 ? Bf16Scratch(n) : null);

    /// <summary>The element type of the convolution descriptors: bfloat16 in bf16 (cuDNN's PSEUDO_BFLOAT16_CONFIG), else float32.</summary>
    private CudnnDataType DnnDataType => UsesBf16 ? CudnnDataType.BFloat16 : CudnnDataType.Float;
}
