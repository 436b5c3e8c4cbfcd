using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

public sealed partial class CudaBackend
{
    // Convolutions stage im2col matrices in chunks of samples no larger than this many floats (256 MiB).
    private const long ColumnBudgetFloats = 64L << 20;

    private const int WarpsPerBlock = 8;

    // Reductions with few outputs (a bias gradient [N, O, HW] -> [O]) are split into segments of the reduced
    // range so that about this many warps work at once, several times what an H100 (132 SMs) holds; each
    // segment is summed in a fixed order, then the segments in order. A constant rather than the device's SM
    // count, so that the summation order, and so the result, depends on the shapes only.
    private const int ReductionWarps = 4096;

    // The group norm's affine gradients split likewise, into about this many blocks of ThreadsPerBlock.
    private const int ReductionBlocks = 512;

    // A segment holds at least this many elements (32 per lane of a warp), so short sums are not split.
    private const int ReductionMinSegment = 1024;

    // ---- fills and copies -----------------------------------------------------------------------------

    public void Fill(float value, DeviceBuffer dst, int n)
    {
        Enter();
        ulong d = Ptr(dst, n, "Fill dst");
        if (n == 0) return;
        MemsetAsync(d, BitConverter.SingleToUInt32Bits(value), (nuint)n);
    }

    public void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset)
    {
        Enter();
        ulong s = Ptr(src, srcOffset, n, "Copy src"), d = Ptr(dst, dstOffset, n, "Copy dst");
        if (n == 0 || s == d) return;
        // Views of one buffer overlap too: compare the device ranges, not the buffer objects.
        bool overlap = s < d + 4UL * (ulong)n && d < s + 4UL * (ulong)n;
        if (!overlap)
        {
            CopyAsync(d, s, (nuint)(4L * n));
            return;
        }
        // cuMemcpy leaves overlapping ranges undefined: go through a scratch copy.
        using var tmp = new ScratchLease(Scratch(n));
        CopyAsync(tmp.Pointer, s, (nuint)(4L * n));
        CopyAsync(d, tmp.Pointer, (nuint)(4L * n));
    }

    public void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n) => Philox(dst, n, seed, offset, 0, 0f, 0f);

    public void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n) => Philox(dst, n, seed, offset, 1, 0f, 0f);

    public void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(nameof(p), $"Dropout probability {p} is outside [0, 1).");
        float keep = 1f - p;
        Philox(dst, n, seed, offset, 2, keep, 1f / keep);
    }

    /// <summary>dst[i] = the raw Philox word at position offset+i, bit for bit (for checks against <see cref="Tensors.Philox.Word"/>).</summary>
    internal void FillPhiloxWords(DeviceBuffer dst, int n, ulong seed, ulong offset) => Philox(dst, n, seed, offset, 3, 0f, 0f);

    // dst: [n]; mode as in philox.cu.
    private void Philox(DeviceBuffer dst, int n, ulong seed, ulong offset, int mode, float keep, float scale)
    {
        Enter();
        ulong d = Ptr(dst, n, "Philox dst");
        if (n == 0) return;
        if (_recording is not null)
        {
            // Inside a recorded step the seed and offset change from replay to replay: read from device memory.
            Launch("philox_fill_at", GridFor(n / 4 + 2), ThreadsPerBlock, d, n, StepScalars(new PhiloxScalars(seed, offset, keep, scale)), mode);
            return;
        }
        long blocks = (long)(((offset + (ulong)n - 1) >> 2) - (offset >> 2) + 1);
        Launch("philox_fill", GridFor(blocks), ThreadsPerBlock, d, n, seed, offset, mode, keep, scale);
    }

    // ---- elementwise ----------------------------------------------------------------------------------

    public void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y)
    {
        Enter();
        CheckDefined(op);
        ulong px = Ptr(x, n, "Unary x"), py = Ptr(y, n, "Unary y");
        if (n == 0) return;
        Launch("unary_forward", GridFor(n), ThreadsPerBlock, px, py, n, (int)op);
    }

    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx)
    {
        Enter();
        CheckDefined(op);
        ulong px = Ptr(x, n, "UnaryBackward x"), py = Ptr(y, n, "UnaryBackward y");
        ulong pdy = Ptr(dy, n, "UnaryBackward dy"), pdx = Ptr(dx, n, "UnaryBackward dx");
        if (n == 0) return;
        Launch("unary_backward", GridFor(n), ThreadsPerBlock, px, py, pdy, pdx, n, (int)op);
    }

    public void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y)
    {
        Enter();
        ulong px = Ptr(x, n, "Affine x"), py = Ptr(y, n, "Affine y");
        if (n == 0) return;
        // Inside a recorded step the factors change from replay to replay (a sampler's coefficients): read from device memory.
        if (_recording is not null) Launch("affine_at", GridFor(n), ThreadsPerBlock, px, py, n, StepScalars(new FloatPair(scale, shift)));
        else Launch("affine", GridFor(n), ThreadsPerBlock, px, py, n, scale, shift);
    }

    public void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y)
    {
        Enter();
        ulong px = Ptr(x, n, "Axpby x"), py = Ptr(y, n, "Axpby y");
        if (n == 0) return;
        if (_recording is not null) Launch("axpby_at", GridFor(n), ThreadsPerBlock, px, py, n, StepScalars(new FloatPair(a, b)));
        else Launch("axpby", GridFor(n), ThreadsPerBlock, px, py, n, a, b);
    }

    public void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y)
    {
        Enter();
        ulong px = Ptr(x, n, "Clamp x"), py = Ptr(y, n, "Clamp y");
        if (n == 0) return;
        Launch("clamp_values", GridFor(n), ThreadsPerBlock, px, py, n, lo, hi);
    }

    public unsafe void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape,
        DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Enter();
        Shape.CheckRank(yShape, "Binary");
        if (!Enum.IsDefined(op)) throw new NotSupportedException($"Binary op {op} is not supported by the cuda backend.");
        if (aShape.Length != yShape.Length || bShape.Length != yShape.Length)
            throw new ArgumentException($"Binary {op}: shapes {Join(aShape)}, {Join(bShape)} and {Join(yShape)} differ in rank.");
        long n = 1, na = 1, nb = 1;
        for (int d = 0; d < yShape.Length; d++)
        {
            if ((aShape[d] != yShape[d] && aShape[d] != 1) || (bShape[d] != yShape[d] && bShape[d] != 1))
                throw new ArgumentException($"Binary {op}: {Join(aShape)} and {Join(bShape)} do not broadcast to {Join(yShape)}.");
            n *= yShape[d];
            na *= aShape[d];
            nb *= bShape[d];
        }
        ulong pa = Ptr(a, na, "Binary a"), pb = Ptr(b, nb, "Binary b"), py = Ptr(y, n, "Binary y");
        if (n == 0) return;
        if (na == n && nb == n)
        {
            Launch("binary_same", GridFor(n), ThreadsPerBlock, pa, pb, py, (int)n, (int)op);
            return;
        }
        var dims = CoalesceBroadcast(aShape, bShape, yShape, $"Binary {op}");
        Launch("binary_broadcast", GridFor(n), ThreadsPerBlock, pa, pb, py, (int)n, (int)op, KernelArg.Struct(dims));
    }

    /// <summary>
    /// Drops size-1 output dimensions and merges neighbours that broadcast alike in both operands, then
    /// writes each operand's stride (0 where it broadcasts). [N,C,H,W] + [1,C,1,1] becomes [N, C, H*W].
    /// </summary>
    internal static unsafe BroadcastDims CoalesceBroadcast(ReadOnlySpan<int> aShape, ReadOnlySpan<int> bShape,
        ReadOnlySpan<int> yShape, string what)
    {
        Shape.CheckRank(yShape, what);
        var sizes = new List<long>();
        var fullA = new List<bool>();
        var fullB = new List<bool>();
        for (int d = 0; d < yShape.Length; d++)
        {
            if (yShape[d] == 1) continue;
            bool fa = aShape[d] != 1, fb = bShape[d] != 1;
            if (sizes.Count > 0 && fullA[^1] == fa && fullB[^1] == fb) sizes[^1] *= yShape[d];
            else
            {
                sizes.Add(yShape[d]);
                fullA.Add(fa);
                fullB.Add(fb);
            }
        }
        var dims = new BroadcastDims { Rank = sizes.Count };
        long accA = 1, accB = 1;
        for (int k = sizes.Count - 1; k >= 0; k--)
        {
            dims.Size[k] = (int)sizes[k];
            dims.StrideA[k] = fullA[k] ? (int)accA : 0;
            dims.StrideB[k] = fullB[k] ? (int)accB : 0;
            if (fullA[k]) accA *= sizes[k];
            if (fullB[k]) accB *= sizes[k];
        }
        return dims;
    }

    public void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Enter();
        Shape.CheckRank(xShape, "SumToShape");
        if (xShape.Length != yShape.Length)
            throw new ArgumentException($"SumToShape: {Join(xShape)} and {Join(yShape)} differ in rank.");
        long nx = 1, ny = 1;
        for (int d = 0; d < xShape.Length; d++)
        {
            if (yShape[d] != xShape[d] && yShape[d] != 1)
                throw new ArgumentException($"SumToShape: {Join(xShape)} does not reduce to {Join(yShape)}.");
            nx *= xShape[d];
            ny *= yShape[d];
        }
        ulong px = Ptr(x, nx, "SumToShape x"), py = Ptr(y, ny, "SumToShape y");
        SumToShapeRaw(px, xShape, py, yShape);
    }

    /// <summary>y = x summed over the dimensions where yShape is 1; shapes already checked.</summary>
    private unsafe void SumToShapeRaw(ulong px, ReadOnlySpan<int> xShape, ulong py, ReadOnlySpan<int> yShape)
    {
        long nx = 1, ny = 1;
        for (int d = 0; d < xShape.Length; d++)
        {
            nx *= xShape[d];
            ny *= yShape[d];
        }
        if (ny == 0) return;
        if (nx == 0)
        {
            MemsetAsync(py, 0, (nuint)ny);
            return;
        }
        if (nx == ny)
        {
            CopyAsync(py, px, (nuint)(4 * nx));
            return;
        }
        // Merge neighbouring dimensions of the same kind (kept or reduced); drop size-1 ones.
        var sizes = new List<long>();
        var kept = new List<bool>();
        for (int d = 0; d < xShape.Length; d++)
        {
            if (xShape[d] == 1) continue;
            bool k = yShape[d] != 1;
            if (sizes.Count > 0 && kept[^1] == k) sizes[^1] *= xShape[d];
            else
            {
                sizes.Add(xShape[d]);
                kept.Add(k);
            }
        }
        var dims = new ReduceDims();
        var strides = new long[sizes.Count];
        long acc = 1;
        for (int k = sizes.Count - 1; k >= 0; k--)
        {
            strides[k] = acc;
            acc *= sizes[k];
        }
        for (int k = 0; k < sizes.Count; k++)
        {
            if (kept[k])
            {
                dims.KeptSize[dims.KeptRank] = (int)sizes[k];
                dims.KeptStride[dims.KeptRank++] = (int)strides[k];
            }
            else
            {
                dims.RedSize[dims.RedRank] = (int)sizes[k];
                dims.RedStride[dims.RedRank++] = (int)strides[k];
            }
        }
        int nRed = (int)(nx / ny);
        // Two passes whatever the split, so that the launches of a step do not depend on the batch size.
        var (segments, segLen) = SplitReduction(ny, nRed, ReductionWarps);
        using var partial = new ScratchLease(Scratch(segments * ny));
        Launch("sum_to_shape_partial", GridFor(segments * ny * 32, WarpsPerBlock * 32), WarpsPerBlock * 32, px, partial.Pointer, (int)ny, nRed,
            segments, segLen, KernelArg.Struct(dims));
        Launch("sum_segments", GridFor(ny), ThreadsPerBlock, partial.Pointer, py, (int)ny, segments);
    }

    /// <summary>
    /// How a sum of <paramref name="reduced"/> elements into each of <paramref name="outputs"/> outputs is split:
    /// enough segments that outputs x segments reaches <paramref name="workers"/>, none shorter than
    /// <see cref="ReductionMinSegment"/> (except a whole short sum), and no empty one.
    /// </summary>
    internal static (int Segments, int SegmentLength) SplitReduction(long outputs, long reduced, int workers)
    {
        if (reduced <= 0 || outputs <= 0) return (1, 1);
        long wanted = (workers + outputs - 1) / outputs;
        long most = (reduced + ReductionMinSegment - 1) / ReductionMinSegment;
        long segments = Math.Max(1, Math.Min(wanted, most));
        long length = (reduced + segments - 1) / segments;
        return ((int)((reduced + length - 1) / length), (int)length);
    }

    public unsafe double SumOfSquares(DeviceBuffer x, int n)
    {
        Enter();
        ulong px = Ptr(x, n, "SumOfSquares x");
        if (n == 0) return 0.0;
        int blocks = (int)Math.Min(GridFor(n), 1024);
        // partial: [blocks] doubles, then the total in the double after them.
        using var scratch = new ScratchLease(Scratch(2L * (blocks + 1)));
        ulong partial = scratch.Pointer, total = scratch.Pointer + 8UL * (ulong)blocks;
        Launch("sum_squares_partial", (uint)blocks, ThreadsPerBlock, px, n, partial);
        Launch("sum_partials", 1, ThreadsPerBlock, partial, blocks, total);
        double result = 0;
        DownloadBytes(total, new Span<byte>(&result, sizeof(double)));
        return result;
    }

    // ---- layout ---------------------------------------------------------------------------------------

    public unsafe void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y)
    {
        Enter();
        Shape.CheckRank(xShape, "Permute");
        int rank = xShape.Length;
        if (perm.Length != rank) throw new ArgumentException($"Permute: permutation {Join(perm)} does not match shape {Join(xShape)}.");
        var seen = new bool[rank];
        foreach (int p in perm)
        {
            if (p < 0 || p >= rank || seen[p]) throw new ArgumentException($"Permute: {Join(perm)} is not a permutation of {rank} dimensions.");
            seen[p] = true;
        }
        long n = 1;
        foreach (int size in xShape) n *= size;
        ulong px = Ptr(x, n, "Permute x"), py = Ptr(y, n, "Permute y");
        if (n == 0) return;
        PermuteRaw(px, xShape, perm, py);
    }

    /// <summary>y = x.permute(perm) on raw pointers; the permutation is already checked.</summary>
    private unsafe void PermuteRaw(ulong px, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, ulong py)
    {
        int rank = xShape.Length;
        long n = 1;
        var xStride = new long[rank];
        for (int d = rank - 1; d >= 0; d--)
        {
            xStride[d] = n;
            n *= xShape[d];
        }
        if (n == 0) return;
        // y dimension i reads x dimension perm[i]; neighbours that stay neighbours in x merge, size-1 ones drop.
        var sizes = new List<long>();
        var strides = new List<long>();
        int prev = -2;
        foreach (int p in perm)
        {
            if (xShape[p] == 1) continue;
            if (sizes.Count > 0 && p == prev + 1)
            {
                sizes[^1] *= xShape[p];
                strides[^1] = xStride[p];
            }
            else
            {
                sizes.Add(xShape[p]);
                strides.Add(xStride[p]);
            }
            prev = p;
        }
        if (sizes.Count <= 1)
        {
            CopyAsync(py, px, (nuint)(4 * n));
            return;
        }
        var dims = new BroadcastDims { Rank = sizes.Count };
        for (int k = 0; k < sizes.Count; k++)
        {
            dims.Size[k] = (int)sizes[k];
            dims.StrideA[k] = (int)strides[k];
        }
        Launch("permute", GridFor(n), ThreadsPerBlock, px, py, (int)n, KernelArg.Struct(dims));
    }

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate,
        DeviceBuffer dst, int dstDim, int dstStart)
    {
        Enter();
        if (outer < 0 || count < 0 || inner < 0 || srcStart < 0 || dstStart < 0 || srcStart + count > srcDim || dstStart + count > dstDim)
            throw new ArgumentException(
                $"CopySlice: [{srcStart}, {srcStart + count}) of {srcDim} into [{dstStart}, {dstStart + count}) of {dstDim} (outer {outer}, inner {inner}) is out of range.");
        ulong ps = Ptr(src, (long)outer * srcDim * inner, "CopySlice src");
        ulong pd = Ptr(dst, (long)outer * dstDim * inner, "CopySlice dst");
        long total = (long)outer * count * inner;
        if (total == 0) return;
        Launch("copy_slice", GridFor(total), ThreadsPerBlock, ps, srcDim, srcStart, pd, dstDim, dstStart, count, inner,
            (int)total, accumulate ? 1 : 0);
    }

    public void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst)
    {
        Enter();
        CheckIndices(indices, rows, "IndexSelect");
        ulong ps = Ptr(src, (long)rows * rowSize, "IndexSelect src");
        ulong pd = Ptr(dst, (long)indices.Length * rowSize, "IndexSelect dst");
        if (indices.Length == 0 || rowSize == 0) return;
        using var idx = UploadIndices(indices);
        Launch("index_select", GridFor((long)indices.Length * rowSize), ThreadsPerBlock, ps, rowSize, idx.Pointer, indices.Length, pd);
    }

    public void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows)
    {
        Enter();
        CheckIndices(indices, rows, "IndexAdd");
        ulong ps = Ptr(src, (long)indices.Length * rowSize, "IndexAdd src");
        ulong pd = Ptr(dst, (long)rows * rowSize, "IndexAdd dst");
        if (indices.Length == 0 || rowSize == 0) return;
        bool unique = new HashSet<int>(indices.ToArray()).Count == indices.Length;
        using var idx = UploadIndices(indices);
        if (unique)
            Launch("index_add_unique", GridFor((long)indices.Length * rowSize), ThreadsPerBlock, ps, rowSize, idx.Pointer, indices.Length, pd);
        else
            Launch("index_add_ordered", GridFor(rowSize), ThreadsPerBlock, ps, rowSize, idx.Pointer, indices.Length, pd);
    }

    private static void CheckIndices(ReadOnlySpan<int> indices, int rows, string what)
    {
        foreach (int i in indices)
            if (i < 0 || i >= rows) throw new ArgumentOutOfRangeException(nameof(indices), $"{what}: index {i} is outside [0, {rows}).");
    }

    private ScratchLease UploadIndices(ReadOnlySpan<int> indices)
    {
        var lease = new ScratchLease(Scratch(indices.Length));
        UploadBytes(MemoryMarshal.AsBytes(indices), lease.Pointer);
        return lease;
    }

    // ---- linear algebra -------------------------------------------------------------------------------

    public void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB,
        int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC)
    {
        Enter();
        if (batch < 0 || m < 0 || n < 0 || k < 0 || strideA < 0 || strideB < 0 || strideC < 0)
            throw new ArgumentException($"Gemm: negative size or stride (batch {batch}, m {m}, n {n}, k {k}).");
        if (batch == 0 || m == 0 || n == 0) return;
        ulong pa = Ptr(a, Extent(batch, strideA, (long)m * k), "Gemm A");
        ulong pb = Ptr(b, Extent(batch, strideB, (long)k * n), "Gemm B");
        ulong pc = Ptr(c, Extent(batch, strideC, (long)m * n), "Gemm C");
        if (strideC < (long)m * n && batch > 1)
            throw new ArgumentException($"Gemm: C batches of {m}x{n} overlap with stride {strideC}.");
        GemmRaw(transA, transB, batch, m, n, k, alpha, pa, strideA, pb, strideB, beta, pc, strideC);
    }

    private static long Extent(int batch, long stride, long matrix) => (batch - 1) * stride + matrix;

    /// <summary>
    /// Row-major C_b = alpha op(A_b) op(B_b) + beta C_b through column-major cuBLAS: a row-major [r, c]
    /// matrix is the column-major [c, r] matrix, so computing C^T = op(B)^T op(A)^T with the operands
    /// swapped gives C in row-major order without any transposition in memory.
    /// </summary>
    private unsafe void GemmRaw(bool transA, bool transB, int batch, int m, int n, int k, float alpha,
        ulong a, long strideA, ulong b, long strideB, float beta, ulong c, long strideC)
    {
        Writes(c, 4 * Extent(batch, strideC, (long)m * n));
        if (k == 0)
        {
            // cuBLAS rejects leading dimensions of 0; C = beta * C is all that is left.
            for (int i = 0; i < batch; i++)
            {
                ulong ci = c + 4UL * (ulong)(i * strideC);
                if (beta == 0f) MemsetAsync(ci, 0, (nuint)((long)m * n));
                else Launch("affine", GridFor((long)m * n), ThreadsPerBlock, ci, ci, m * n, beta, 0f);
            }
            return;
        }
        int lda = transA ? m : k;  // A row-major [m, k], or [k, m] when transposed
        int ldb = transB ? k : n;  // B row-major [k, n], or [n, k] when transposed
        var opB = transB ? CublasOperation.T : CublasOperation.N;
        var opA = transA ? CublasOperation.T : CublasOperation.N;
        if (UsesBf16)
        {
            // The operands' casts are kernels (recorded and checked as such); the product is checked on its own.
            if (!GemmBf16(opB, opA, batch, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, strideC)) return;
        }
        else
        {
            if (Replaying("cublasSgemmStridedBatched", [(transA ? 1UL : 0) | (transB ? 2UL : 0), (ulong)m, (ulong)n, (ulong)k, a, (ulong)strideA,
                    b, (ulong)strideB, c, (ulong)strideC, (ulong)batch, BitConverter.SingleToUInt32Bits(alpha), BitConverter.SingleToUInt32Bits(beta)]))
                return;
            Cublas.Check(Cublas.cublasSgemmStridedBatched(_cublas, opB, opA, n, m, k, &alpha, b, ldb, strideB, a, lda, strideA, &beta, c, n, strideC,
                batch), "cublasSgemmStridedBatched");
        }
        _blasCalls++;
        if (_syncEachLaunch) SynchronizeAfter("cuBLAS GEMM");
    }

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y)
    {
        Enter();
        g.Validate();
        ulong px = Ptr(x, g.InputSize, "Conv2dForward x"), pw = Ptr(w, g.WeightSize, "Conv2dForward w");
        ulong py = Ptr(y, g.OutputSize, "Conv2dForward y");
        ulong pbias = bias is null ? 0 : Ptr(bias, g.O, "Conv2dForward bias");
        if (UsesCudnn)
        {
            CudnnForward(g, px, pw, pbias, py);
            return;
        }
        using var st = new ConvStaging(this, g);
        for (int n0 = 0; n0 < g.N; n0 += st.Chunk)
        {
            int nb = Math.Min(st.Chunk, g.N - n0);
            st.Im2col(this, px, n0, nb);
            // yt [O, nb*OH*OW] = w [O, C*KH*KW] x col [C*KH*KW, nb*OH*OW]: the whole chunk in one product.
            GemmRaw(false, false, 1, g.O, (int)(nb * st.Ohw), (int)st.Ckk, 1f, pw, 0, st.Columns.Pointer, 0, 0f, st.ByOutput.Pointer, 0);
            Launch("conv_output", GridFor(nb * g.O * st.Ohw), ThreadsPerBlock, st.ByOutput.Pointer, pbias,
                py + 4UL * (ulong)((long)n0 * g.O * st.Ohw), nb, g.O, (int)st.Ohw);
        }
    }

    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx)
    {
        Enter();
        g.Validate();
        ulong pdy = Ptr(dy, g.OutputSize, "Conv2dBackwardData dy"), pw = Ptr(w, g.WeightSize, "Conv2dBackwardData w");
        ulong pdx = Ptr(dx, g.InputSize, "Conv2dBackwardData dx");
        if (UsesCudnn)
        {
            CudnnBackwardData(g, pdy, pw, pdx);
            return;
        }
        using var st = new ConvStaging(this, g);
        for (int n0 = 0; n0 < g.N; n0 += st.Chunk)
        {
            int nb = Math.Min(st.Chunk, g.N - n0);
            // dcol [C*KH*KW, nb*OH*OW] = w^T [C*KH*KW, O] x dyT [O, nb*OH*OW], then gathered back into dx by col2im.
            st.TransposeDy(this, pdy, n0, nb);
            GemmRaw(true, false, 1, (int)st.Ckk, (int)(nb * st.Ohw), g.O, 1f, pw, 0, st.ByOutput.Pointer, 0, 0f, st.Columns.Pointer, 0);
            Launch("col2im", GridFor((long)nb * g.C * g.H * g.W), ThreadsPerBlock, st.Columns.Pointer, pdx, n0, nb, KernelArg.Struct(st.Dims));
        }
    }

    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias)
    {
        Enter();
        g.Validate();
        ulong px = Ptr(x, g.InputSize, "Conv2dBackwardWeight x"), pdy = Ptr(dy, g.OutputSize, "Conv2dBackwardWeight dy");
        ulong pdw = Ptr(dw, g.WeightSize, "Conv2dBackwardWeight dw");
        ulong pdb = dbias is null ? 0 : Ptr(dbias, g.O, "Conv2dBackwardWeight dbias");
        if (UsesCudnn)
        {
            CudnnBackwardFilter(g, px, pdy, pdw, pdb);
            return;
        }
        using (var st = new ConvStaging(this, g))
        {
            for (int n0 = 0; n0 < g.N; n0 += st.Chunk)
            {
                int nb = Math.Min(st.Chunk, g.N - n0);
                st.Im2col(this, px, n0, nb);
                st.TransposeDy(this, pdy, n0, nb);
                // dw [O, C*KH*KW] (+)= dyT [O, nb*OH*OW] x col^T [nb*OH*OW, C*KH*KW]: the sum over the chunk's
                // samples is the GEMM's inner dimension; later chunks accumulate with beta = 1.
                GemmRaw(false, true, 1, g.O, (int)st.Ckk, (int)(nb * st.Ohw), 1f, st.ByOutput.Pointer, 0, st.Columns.Pointer, 0,
                    n0 == 0 ? 0f : 1f, pdw, 0);
            }
        }
        if (pdb != 0)
            SumToShapeRaw(pdy, [g.N, g.O, g.OH * g.OW], pdb, [1, g.O, 1]);
    }

    /// <summary>
    /// The staging buffers of an im2col pass, for chunks of <see cref="Chunk"/> samples: the columns
    /// [C*KH*KW, chunk*OH*OW] and a matrix [O, chunk*OH*OW] (the product before its transpose, or dy transposed).
    /// </summary>
    private readonly struct ConvStaging : IDisposable
    {
        internal ConvStaging(CudaBackend be, in ConvGeometry g)
        {
            Dims = CudaBackend.Dims(g);
            Ckk = (long)g.C * g.KH * g.KW;
            Ohw = (long)g.OH * g.OW;
            O = g.O;
            Chunk = ChunkSamples(g, Ckk + g.O, Ckk, Ohw);
            Columns = new ScratchLease(be.Scratch(Chunk * Ckk * Ohw));
            ByOutput = new ScratchLease(be.Scratch(Chunk * g.O * Ohw));
        }

        internal ConvDims Dims { get; }
        internal long Ckk { get; }
        internal long Ohw { get; }
        internal int O { get; }
        internal int Chunk { get; }
        internal ScratchLease Columns { get; }
        internal ScratchLease ByOutput { get; }

        /// <summary>Columns of samples [n0, n0 + nb) of x.</summary>
        internal void Im2col(CudaBackend be, ulong px, int n0, int nb) =>
            be.Launch("im2col", be.GridFor(nb * Ckk * Ohw), ThreadsPerBlock, px, Columns.Pointer, n0, nb, KernelArg.Struct(Dims));

        /// <summary>ByOutput: [O, nb, OH*OW] from samples [n0, n0 + nb) of dy: [N, O, OH*OW].</summary>
        internal void TransposeDy(CudaBackend be, ulong pdy, int n0, int nb) =>
            be.PermuteRaw(pdy + 4UL * (ulong)((long)n0 * O * Ohw), [nb, O, (int)Ohw], [1, 0, 2], ByOutput.Pointer);

        public void Dispose()
        {
            Columns.Dispose();
            ByOutput.Dispose();
        }
    }

    private static ConvDims Dims(in ConvGeometry g) => new()
    {
        N = g.N, C = g.C, H = g.H, W = g.W, O = g.O, KH = g.KH, KW = g.KW,
        SH = g.StrideH, SW = g.StrideW, PH = g.PadH, PW = g.PadW, OH = g.OH, OW = g.OW,
    };

    /// <summary>
    /// Samples per chunk of a convolution pass whose staging buffers hold <paramref name="stagedRows"/> x OH*OW
    /// floats per sample, within <see cref="ColumnBudgetFloats"/> (at least one sample); refuses a geometry whose
    /// GEMM operands exceed cuBLAS's int sizes.
    /// </summary>
    private static int ChunkSamples(in ConvGeometry g, long stagedRows, long ckk, long ohw)
    {
        int chunk = (int)Math.Clamp(ColumnBudgetFloats / Math.Max(stagedRows * ohw, 1), 1, g.N);
        if (ckk * ohw * chunk > int.MaxValue || (long)g.O * ohw * chunk > int.MaxValue || ohw * chunk > int.MaxValue)
            throw new NotSupportedException($"Convolution {g}: one sample's column matrix ({ckk} x {ohw}) exceeds 2^31 elements.");
        return chunk;
    }

    // ---- normalisation --------------------------------------------------------------------------------

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd)
    {
        Enter();
        CheckGroups(n, c, hw, groups, "GroupNormForward");
        long size = (long)n * c * hw;
        ulong px = Ptr(x, size, "GroupNormForward x"), pg = Ptr(gamma, c, "GroupNormForward gamma");
        ulong pb = Ptr(beta, c, "GroupNormForward beta"), py = Ptr(y, size, "GroupNormForward y");
        ulong pm = Ptr(mean, (long)n * groups, "GroupNormForward mean"), pr = Ptr(rstd, (long)n * groups, "GroupNormForward rstd");
        ulong psh = shift is null ? 0 : Ptr(shift, (long)n * c, "GroupNormForward shift");
        if (n == 0) return;
        Launch("group_norm_forward", (uint)(n * groups), ThreadsPerBlock, px, psh, pg, pb, c, hw, groups, eps, silu ? 1 : 0, py, pm, pr);
    }

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta)
    {
        Enter();
        CheckGroups(n, c, hw, groups, "GroupNormBackward");
        long size = (long)n * c * hw;
        ulong pdy = Ptr(dy, size, "GroupNormBackward dy"), px = Ptr(x, size, "GroupNormBackward x");
        ulong pg = Ptr(gamma, c, "GroupNormBackward gamma"), pb = Ptr(beta, c, "GroupNormBackward beta");
        ulong pm = Ptr(mean, (long)n * groups, "GroupNormBackward mean"), pr = Ptr(rstd, (long)n * groups, "GroupNormBackward rstd");
        ulong pdx = Ptr(dx, size, "GroupNormBackward dx");
        ulong pdg = Ptr(dgamma, c, "GroupNormBackward dgamma"), pdb = Ptr(dbeta, c, "GroupNormBackward dbeta");
        ulong psh = shift is null ? 0 : Ptr(shift, (long)n * c, "GroupNormBackward shift");
        if (n > 0)
            Launch("group_norm_backward_data", (uint)(n * groups), ThreadsPerBlock, pdy, px, psh, pg, pb, pm, pr, c, hw, groups, silu ? 1 : 0, pdx);
        // dgamma, dbeta: [c], each a sum over n * hw elements, split so that about ReductionBlocks blocks share it.
        var (segments, segLen) = SplitReduction(c, (long)n * hw, ReductionBlocks);
        using var partial = new ScratchLease(Scratch(2L * segments * c));
        Launch("group_norm_backward_affine_partial", (uint)(c * segments), ThreadsPerBlock, pdy, px, psh, pg, pb, pm, pr, n, c, hw, groups,
            silu ? 1 : 0, segments, segLen, partial.Pointer);
        Launch("group_norm_backward_affine_finish", GridFor(c), ThreadsPerBlock, partial.Pointer, c, segments, pdg, pdb);
    }

    private static void CheckGroups(int n, int c, int hw, int groups, string what)
    {
        if (n < 0 || c <= 0 || hw <= 0 || groups <= 0 || c % groups != 0)
            throw new ArgumentException($"{what}: {c} channels do not split into {groups} groups (n {n}, hw {hw}).");
        if ((long)(c / groups) * hw > int.MaxValue)
            throw new NotSupportedException($"{what}: a group of {(long)(c / groups) * hw} elements exceeds the kernel's 2^31 limit.");
    }

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y)
    {
        Enter();
        long size = CheckSoftmax(outer, dim, inner, "SoftmaxForward");
        ulong px = Ptr(x, size, "SoftmaxForward x"), py = Ptr(y, size, "SoftmaxForward y");
        if (size == 0) return;
        if (inner == 1)
            Launch("softmax_rows", GridFor((long)outer * 32, WarpsPerBlock * 32), WarpsPerBlock * 32, px, py, outer, dim);
        else
            Launch("softmax_cols", GridFor((long)outer * inner), ThreadsPerBlock, px, py, outer, dim, inner);
    }

    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx)
    {
        Enter();
        long size = CheckSoftmax(outer, dim, inner, "SoftmaxBackward");
        ulong py = Ptr(y, size, "SoftmaxBackward y"), pdy = Ptr(dy, size, "SoftmaxBackward dy"), pdx = Ptr(dx, size, "SoftmaxBackward dx");
        if (size == 0) return;
        if (inner == 1)
            Launch("softmax_backward_rows", GridFor((long)outer * 32, WarpsPerBlock * 32), WarpsPerBlock * 32, py, pdy, pdx, outer, dim);
        else
            Launch("softmax_backward_cols", GridFor((long)outer * inner), ThreadsPerBlock, py, pdy, pdx, outer, dim, inner);
    }

    private static long CheckSoftmax(int outer, int dim, int inner, string what)
    {
        if (outer < 0 || dim < 0 || inner < 0) throw new ArgumentException($"{what}: negative size ({outer}, {dim}, {inner}).");
        long size = (long)outer * dim * inner;
        if (size > int.MaxValue) throw new NotSupportedException($"{what}: {size} elements exceed the 2^31 limit of a buffer.");
        return size;
    }

    // ---- optimiser ------------------------------------------------------------------------------------

    public void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v)
    {
        Enter();
        ulong pp = Ptr(param, n, "AdamStep param"), pg = Ptr(grad, n, "AdamStep grad");
        ulong pm = Ptr(m, n, "AdamStep m"), pv = Ptr(v, n, "AdamStep v");
        if (n == 0) return;
        if (_recording is not null)
        {
            // The learning rate and the bias corrections change every step: read from device memory in a recorded step.
            Launch("adam_step_at", GridFor(n), ThreadsPerBlock, pp, pg, pm, pv, n, StepScalars(p));
            return;
        }
        Launch("adam_step", GridFor(n), ThreadsPerBlock, pp, pg, pm, pv, n, p.LearningRate, p.Beta1, p.Beta2, p.Eps,
            p.WeightDecay, p.BiasCorrection1, p.BiasCorrection2);
    }

    private static void CheckDefined(UnaryOp op)
    {
        if (!Enum.IsDefined(op)) throw new NotSupportedException($"Unary op {op} is not supported by the cuda backend.");
    }

    /// <summary>A scratch buffer released (back to the allocator's cache, stream-ordered) at the end of a scope.</summary>
    private readonly struct ScratchLease(CudaBuffer? buffer) : IDisposable
    {
        public ulong Pointer => buffer?.Pointer ?? 0;

        public void Dispose() => buffer?.Release();
    }
}
