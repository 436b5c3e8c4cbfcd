using System.Numerics.Tensors;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    // ---- broadcasting -------------------------------------------------------------------------------

    /// <summary>
    /// Broadcast binary op. The shapes are collapsed first (size-1 output dimensions dropped, neighbours with
    /// the same broadcast pattern merged), so [N,C,H,W] op [1,C,1,1] becomes rows of H*W with one b value
    /// per row, [N,C,H,W] op [N,1,1,1] rows of C*H*W, same shapes a single row. Each row is then one
    /// TensorPrimitives call: vector-vector, vector-scalar, scalar-vector, or a fill when both broadcast.
    /// </summary>
    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape,
        DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Shape.CheckRank(yShape, "Binary");
        int rank = yShape.Length;
        if (aShape.Length != rank || bShape.Length != rank)
            throw new ArgumentException($"Binary {op}: operand ranks {aShape.Length}, {bShape.Length} differ from the output's {rank}.");
        long n = 1, na = 1, nb = 1;
        for (int d = 0; d < rank; d++)
        {
            if ((aShape[d] != yShape[d] && aShape[d] != 1) || (bShape[d] != yShape[d] && bShape[d] != 1))
                throw new ArgumentException($"Binary {op}: shapes {Shape.Format(aShape.ToArray())} and {Shape.Format(bShape.ToArray())} do not broadcast to {Shape.Format(yShape.ToArray())}.");
            n *= yShape[d]; na *= aShape[d]; nb *= bShape[d];
        }
        float* ap = Ptr(a, na, nameof(a)), bp = Ptr(b, nb, nameof(b)), yp = Ptr(y, n, nameof(y));
        if (n == 0) return;

        // Collapsed dims, outer to inner: size, a stride, b stride (0 where broadcast).
        Span<int> size = stackalloc int[rank + 1], sa = stackalloc int[rank + 1], sb = stackalloc int[rank + 1];
        int nd = 0;
        int strideA = 1, strideB = 1;
        for (int d = rank - 1; d >= 0; d--)
        {
            if (yShape[d] == 1) continue;
            int da = aShape[d] == 1 ? 0 : strideA, db = bShape[d] == 1 ? 0 : strideB;
            if (nd > 0 && sa[nd - 1] * size[nd - 1] == da && sb[nd - 1] * size[nd - 1] == db
                && (da == 0) == (sa[nd - 1] == 0) && (db == 0) == (sb[nd - 1] == 0))
            {
                size[nd - 1] *= yShape[d];
            }
            else
            {
                size[nd] = yShape[d]; sa[nd] = da; sb[nd] = db; nd++;
            }
            strideA *= aShape[d];
            strideB *= bShape[d];
        }
        if (nd == 0) { size[0] = 1; sa[0] = 1; sb[0] = 1; nd = 1; }
        // Reverse to outer-to-inner order.
        size[..nd].Reverse(); sa[..nd].Reverse(); sb[..nd].Reverse();

        int inner = size[nd - 1];
        bool aRow = sa[nd - 1] != 0, bRow = sb[nd - 1] != 0;
        int rows = (int)(n / inner);
        var dims = new BroadcastDims(nd - 1, size, sa, sb);
        nint app = (nint)ap, bpp = (nint)bp, ypp = (nint)yp;
        if (rows == 1)
        {
            _pool.ForRange(inner, Grain, (s, len) =>
                BinaryRow(op, (float*)app + (aRow ? s : 0), aRow, (float*)bpp + (bRow ? s : 0), bRow, (float*)ypp + s, len));
            return;
        }
        int rowGrain = Math.Max(1, Grain / inner);
        _pool.ForItems(rows, rowGrain, (r0, count) =>
        {
            for (int r = r0; r < r0 + count; r++)
            {
                dims.Offsets(r, out long oa, out long ob);
                BinaryRow(op, (float*)app + oa, aRow, (float*)bpp + ob, bRow, (float*)ypp + (long)r * inner, inner);
            }
        });
    }

    /// <summary>The outer (non-innermost) collapsed dimensions of a broadcast, for row offsets.</summary>
    private readonly struct BroadcastDims
    {
        private readonly int _count;
        private readonly int[] _size, _sa, _sb;

        public BroadcastDims(int count, ReadOnlySpan<int> size, ReadOnlySpan<int> sa, ReadOnlySpan<int> sb)
        {
            _count = count;
            _size = size[..count].ToArray();
            _sa = sa[..count].ToArray();
            _sb = sb[..count].ToArray();
        }

        public void Offsets(int row, out long oa, out long ob)
        {
            oa = 0; ob = 0;
            for (int d = _count - 1; d >= 0; d--)
            {
                int i = row % _size[d];
                row /= _size[d];
                oa += (long)i * _sa[d];
                ob += (long)i * _sb[d];
            }
        }
    }

    private static void BinaryRow(BinaryOp op, float* a, bool aRow, float* b, bool bRow, float* y, int n)
    {
        var ys = new Span<float>(y, n);
        if (aRow && bRow)
        {
            var xa = new ReadOnlySpan<float>(a, n); var xb = new ReadOnlySpan<float>(b, n);
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(xa, xb, ys); break;
                case BinaryOp.Sub: TensorPrimitives.Subtract(xa, xb, ys); break;
                case BinaryOp.Mul: TensorPrimitives.Multiply(xa, xb, ys); break;
                case BinaryOp.Div: TensorPrimitives.Divide(xa, xb, ys); break;
                default: throw new NotSupportedException($"Binary op {op} is not supported by the cpu backend.");
            }
        }
        else if (aRow)
        {
            var xa = new ReadOnlySpan<float>(a, n); float vb = *b;
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(xa, vb, ys); break;
                case BinaryOp.Sub: TensorPrimitives.Subtract(xa, vb, ys); break;
                case BinaryOp.Mul: TensorPrimitives.Multiply(xa, vb, ys); break;
                case BinaryOp.Div: TensorPrimitives.Divide(xa, vb, ys); break;
                default: throw new NotSupportedException($"Binary op {op} is not supported by the cpu backend.");
            }
        }
        else if (bRow)
        {
            float va = *a; var xb = new ReadOnlySpan<float>(b, n);
            switch (op)
            {
                case BinaryOp.Add: TensorPrimitives.Add(xb, va, ys); break;
                case BinaryOp.Sub: TensorPrimitives.Subtract(va, xb, ys); break;
                case BinaryOp.Mul: TensorPrimitives.Multiply(xb, va, ys); break;
                case BinaryOp.Div: TensorPrimitives.Divide(va, xb, ys); break;
                default: throw new NotSupportedException($"Binary op {op} is not supported by the cpu backend.");
            }
        }
        else
        {
            float va = *a, vb = *b;
            ys.Fill(op switch
            {
                BinaryOp.Add => va + vb,
                BinaryOp.Sub => va - vb,
                BinaryOp.Mul => va * vb,
                BinaryOp.Div => va / vb,
                _ => throw new NotSupportedException($"Binary op {op} is not supported by the cpu backend."),
            });
        }
    }

    /// <summary>
    /// Reduction to a broadcast shape. Collapsed into alternating kept / reduced dimensions; the workers split
    /// the outermost kept dimension, so each output element is summed by one worker in a fixed order. Rows of
    /// the innermost dimension are one TensorPrimitives Sum (reduced) or Add (kept).
    /// </summary>
    public void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Shape.CheckRank(xShape, "SumToShape");
        int rank = xShape.Length;
        if (yShape.Length != rank) throw new ArgumentException($"SumToShape: ranks {rank} and {yShape.Length} differ.");
        long n = 1, ny = 1;
        for (int d = 0; d < rank; d++)
        {
            if (yShape[d] != xShape[d] && yShape[d] != 1)
                throw new ArgumentException($"SumToShape: {Shape.Format(xShape.ToArray())} cannot be summed to {Shape.Format(yShape.ToArray())}.");
            n *= xShape[d]; ny *= yShape[d];
        }
        float* xp = Ptr(x, n, nameof(x)), yp = Ptr(y, ny, nameof(y));
        if (ny == 0) return;
        new Span<float>(yp, (int)ny).Clear();
        if (n == 0) return;

        // Collapse, inner to outer: size, kept?, y stride (of kept dims).
        var size = new List<int>(); var kept = new List<bool>();
        for (int d = rank - 1; d >= 0; d--)
        {
            if (xShape[d] == 1) continue;
            bool k = yShape[d] != 1;
            if (size.Count > 0 && kept[^1] == k) size[^1] *= xShape[d];
            else { size.Add(xShape[d]); kept.Add(k); }
        }
        size.Reverse(); kept.Reverse();
        int nd = size.Count;
        if (nd == 0) { *yp = *xp; return; }
        var xStride = new long[nd]; var yStride = new long[nd];
        long xs = 1, ys = 1;
        for (int d = nd - 1; d >= 0; d--)
        {
            xStride[d] = xs; xs *= size[d];
            yStride[d] = kept[d] ? ys : 0; if (kept[d]) ys *= size[d];
        }
        int par = kept.IndexOf(true);
        if (par < 0)
        {
            // Everything reduced: fixed chunks, summed in order.
            const int chunk = 4096;
            int chunks = (int)((n + chunk - 1) / chunk);
            var partial = new float[chunks];
            nint xpp0 = (nint)xp;
            _pool.ForItems(chunks, 8, (c0, count) =>
            {
                for (int c = c0; c < c0 + count; c++)
                {
                    long s = (long)c * chunk;
                    partial[c] = TensorPrimitives.Sum(new ReadOnlySpan<float>((float*)xpp0 + s, (int)Math.Min(chunk, n - s)));
                }
            });
            double total = 0;
            foreach (float p in partial) total += p;
            *yp = (float)total;
            return;
        }
        int inner = size[nd - 1];
        bool innerKept = kept[nd - 1];
        int parSize = size[par];
        long work = n / parSize;
        int grain = (int)Math.Max(1, Grain / Math.Max(1, work));
        if (par == nd - 1) grain = Math.Max(grain, 64);
        var sizes = size.ToArray();
        nint xpp = (nint)xp, ypp = (nint)yp;
        Action<int, int> body = (lo, count) =>
        {
            int hi = lo + count;
            Span<int> idx = stackalloc int[nd];
            idx.Clear();
            if (par < nd - 1) idx[par] = lo;
            while (true)
            {
                long xo = 0, yo = 0;
                for (int d = 0; d < nd - 1; d++) { xo += idx[d] * xStride[d]; yo += idx[d] * yStride[d]; }
                float* xr = (float*)xpp + xo;
                float* yr = (float*)ypp + yo;
                if (!innerKept)
                {
                    *yr += TensorPrimitives.Sum(new ReadOnlySpan<float>(xr, inner));
                }
                else if (par == nd - 1)
                {
                    var yRow = new Span<float>(yr + lo, count);
                    TensorPrimitives.Add(yRow, new ReadOnlySpan<float>(xr + lo, count), yRow);
                }
                else
                {
                    var yRow = new Span<float>(yr, inner);
                    TensorPrimitives.Add(yRow, new ReadOnlySpan<float>(xr, inner), yRow);
                }
                // Odometer over the outer dimensions, the split one limited to [lo, hi).
                int d2 = nd - 2;
                for (; d2 >= 0; d2--)
                {
                    idx[d2]++;
                    int end = d2 == par ? hi : sizes[d2];
                    if (idx[d2] < end) break;
                    idx[d2] = d2 == par ? lo : 0;
                }
                if (d2 < 0) break;
            }
        };
        // The last dimension splits like vector elements; any other splits by index.
        if (par == nd - 1) _pool.ForRange(parSize, grain, body);
        else _pool.ForItems(parSize, grain, body);
    }

    // ---- layout -------------------------------------------------------------------------------------

    /// <summary>
    /// y = x.permute(perm). Output dimensions that stay neighbours in x are merged; when the innermost one is
    /// also innermost in x rows are block copies, otherwise a strided gather per row.
    /// </summary>
    public void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y)
    {
        Shape.CheckRank(xShape, "Permute");
        int rank = xShape.Length;
        if (perm.Length != rank) throw new ArgumentException($"Permute: {perm.Length} axes for rank {rank}.");
        long n = 1;
        var xStride = new long[rank];
        for (int d = rank - 1; d >= 0; d--) { xStride[d] = n; n *= xShape[d]; }
        Span<bool> seen = stackalloc bool[rank];
        foreach (int p in perm)
        {
            if ((uint)p >= (uint)rank || seen[p]) throw new ArgumentException($"Permute: {Shape.Format(perm.ToArray())} is not a permutation.");
            seen[p] = true;
        }
        float* xp = Ptr(x, n, nameof(x)), yp = Ptr(y, n, nameof(y));
        if (n == 0) return;
        var size = new List<int>(); var stride = new List<long>();
        for (int i = 0; i < rank; i++)
        {
            int d = perm[i];
            if (xShape[d] == 1) continue;
            if (size.Count > 0 && stride[^1] == xStride[d] * xShape[d])
            {
                size[^1] *= xShape[d];
                stride[^1] = xStride[d];
            }
            else { size.Add(xShape[d]); stride.Add(xStride[d]); }
        }
        if (size.Count == 0) { *yp = *xp; return; }
        int nd = size.Count, inner = size[nd - 1];
        long innerStride = stride[nd - 1];
        int rows = (int)(n / inner);
        var sizes = size.ToArray(); var strides = stride.ToArray();
        nint xpp = (nint)xp, ypp = (nint)yp;
        _pool.ForRange(rows, Math.Max(1, Grain / inner), (r0, count) =>
        {
            for (int r = r0; r < r0 + count; r++)
            {
                long xo = 0; int rr = r;
                for (int d = nd - 2; d >= 0; d--) { xo += (rr % sizes[d]) * strides[d]; rr /= sizes[d]; }
                float* src = (float*)xpp + xo;
                float* dst = (float*)ypp + (long)r * inner;
                if (innerStride == 1) Buffer.MemoryCopy(src, dst, 4L * inner, 4L * inner);
                else for (int j = 0; j < inner; j++) dst[j] = src[j * innerStride];
            }
        });
    }

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate,
        DeviceBuffer dst, int dstDim, int dstStart)
    {
        if (srcStart < 0 || dstStart < 0 || count < 0 || srcStart + count > srcDim || dstStart + count > dstDim)
            throw new ArgumentException($"CopySlice: [{srcStart}, +{count}) of {srcDim} to [{dstStart}, +{count}) of {dstDim} is out of range.");
        float* sp = Ptr(src, (long)outer * srcDim * inner, nameof(src));
        float* dp = Ptr(dst, (long)outer * dstDim * inner, nameof(dst));
        int len = count * inner;
        if (len == 0 || outer == 0) return;
        nint spp = (nint)sp, dpp = (nint)dp;
        _pool.ForRange(outer, Math.Max(1, Grain / len), (o0, cnt) =>
        {
            for (int o = o0; o < o0 + cnt; o++)
            {
                float* s = (float*)spp + ((long)o * srcDim + srcStart) * inner;
                float* d = (float*)dpp + ((long)o * dstDim + dstStart) * inner;
                if (accumulate)
                {
                    var ds = new Span<float>(d, len);
                    TensorPrimitives.Add(ds, new ReadOnlySpan<float>(s, len), ds);
                }
                else Buffer.MemoryCopy(s, d, 4L * len, 4L * len);
            }
        });
    }

    public void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst)
    {
        float* sp = Ptr(src, (long)rows * rowSize, nameof(src));
        float* dp = Ptr(dst, (long)indices.Length * rowSize, nameof(dst));
        for (int i = 0; i < indices.Length; i++)
        {
            int r = indices[i];
            if ((uint)r >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(indices), $"Index {r} is outside [0, {rows}).");
            Buffer.MemoryCopy(sp + (long)r * rowSize, dp + (long)i * rowSize, 4L * rowSize, 4L * rowSize);
        }
    }

    public void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows)
    {
        float* sp = Ptr(src, (long)indices.Length * rowSize, nameof(src));
        float* dp = Ptr(dst, (long)rows * rowSize, nameof(dst));
        for (int i = 0; i < indices.Length; i++)
        {
            int r = indices[i];
            if ((uint)r >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(indices), $"Index {r} is outside [0, {rows}).");
            var d = new Span<float>(dp + (long)r * rowSize, rowSize);
            TensorPrimitives.Add(d, new ReadOnlySpan<float>(sp + (long)i * rowSize, rowSize), d);
        }
    }
}
