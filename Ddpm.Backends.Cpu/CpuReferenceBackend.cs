using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>
/// The oracle backend: every kernel is a plain scalar loop written as its formula, single-threaded, with
/// double accumulation wherever a sum is long (GEMM, convolution, reductions, normalisation statistics,
/// softmax sums). Elementwise functions are evaluated in double and rounded once. Other backends are tested
/// against this one op by op, so clarity comes before speed. Every buffer is checked against the sizes
/// passed before anything is read or written.
/// </summary>
public sealed class CpuReferenceBackend : IBackend
{
    private readonly CpuMemoryPool _pool = new();
    private bool _disposed;

    public string Name => "cpu-reference";

    public string Description => "scalar single-threaded reference (double accumulation), .NET " + Environment.Version;

    // ---- argument checks ------------------------------------------------------------------------------

    /// <summary>
    /// The elements of a buffer (a view starts inside its array), indexed from 0 and bounds-checked against the
    /// buffer's own length, so a kernel can neither miss a view's offset nor run past its end.
    /// </summary>
    private readonly struct Mem
    {
        private readonly float[] _array;
        private readonly int _offset;

        public Mem(CpuBuffer b)
        {
            _array = b.Array;
            _offset = b.Offset;
            Length = b.Length;
        }

        public int Length { get; }

        public ref float this[long i]
        {
            get
            {
                if ((ulong)i >= (ulong)Length) throw new IndexOutOfRangeException($"Element {i} of a buffer of {Length}.");
                return ref _array[_offset + i];
            }
        }

        public Span<float> AsSpan(int start, int length) => _array.AsSpan(_offset, Length).Slice(start, length);
    }

    /// <summary>The storage of <paramref name="b"/>, after checking that it holds at least <paramref name="need"/> floats.</summary>
    private static Mem Data(DeviceBuffer b, long need, string name)
    {
        ArgumentNullException.ThrowIfNull(b, name);
        var cb = CpuBuffer.Of(b);
        if (cb.IsReleased) throw new ObjectDisposedException(name, $"Buffer '{name}' was already freed.");
        if (need < 0) throw new ArgumentException($"Negative size {need} for buffer '{name}'.", name);
        if (cb.Length < need)
            throw new ArgumentException($"Buffer '{name}' holds {cb.Length} floats; the operation needs {need}.", name);
        return new Mem(cb);
    }

    private static void NonNegative(long value, string name)
    {
        if (value < 0) throw new ArgumentOutOfRangeException(name, $"{name} = {value} is negative.");
    }

    private static long Product(ReadOnlySpan<int> shape, string name)
    {
        long p = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"Shape '{name}' {Shape.Format(shape)} has a negative dimension.", name);
            p *= d;
        }
        return p;
    }

    /// <summary>Row-major strides of <paramref name="shape"/>, with 0 where the dimension is 1 and broadcast.</summary>
    private static long[] BroadcastStrides(ReadOnlySpan<int> shape, ReadOnlySpan<int> target, string name)
    {
        if (shape.Length != target.Length)
            throw new ArgumentException($"Shape '{name}' {Shape.Format(shape)} does not have the rank of {Shape.Format(target)}.", name);
        var s = new long[shape.Length];
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            if (shape[i] != target[i] && shape[i] != 1)
                throw new ArgumentException($"Shape '{name}' {Shape.Format(shape)} does not broadcast to {Shape.Format(target)}.", name);
            s[i] = shape[i] == 1 ? 0 : stride;
            stride *= shape[i];
        }
        return s;
    }

    /// <summary>Offset of linear index <paramref name="i"/> of a tensor of <paramref name="shape"/> under other strides.</summary>
    private static long Offset(long i, ReadOnlySpan<int> shape, long[] strides)
    {
        long off = 0;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            long coord = i % shape[d];
            i /= shape[d];
            off += coord * strides[d];
        }
        return off;
    }

    // ---- memory -------------------------------------------------------------------------------------------

    public DeviceBuffer Allocate(int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        NonNegative(length, nameof(length));
        return new CpuBuffer(this, _pool.Rent(length), length, _pool);
    }

    public void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset)
    {
        NonNegative(dstOffset, nameof(dstOffset));
        var d = Data(dst, (long)dstOffset + src.Length, nameof(dst));
        src.CopyTo(d.AsSpan(dstOffset, src.Length));
    }

    public void Download(DeviceBuffer src, int srcOffset, Span<float> dst)
    {
        NonNegative(srcOffset, nameof(srcOffset));
        var s = Data(src, (long)srcOffset + dst.Length, nameof(src));
        s.AsSpan(srcOffset, dst.Length).CopyTo(dst);
    }

    public void Synchronize()
    {
    }

    public DeviceBuffer Slice(DeviceBuffer parent, int offset, int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return CpuBuffer.Slice(this, parent, offset, length);
    }

    // ---- fills and copies ---------------------------------------------------------------------------------

    public void Fill(float value, DeviceBuffer dst, int n)
    {
        var d = Data(dst, n, nameof(dst));
        for (int i = 0; i < n; i++) d[i] = value;
    }

    public void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset)
    {
        NonNegative(srcOffset, nameof(srcOffset));
        NonNegative(dstOffset, nameof(dstOffset));
        NonNegative(n, nameof(n));
        var s = Data(src, (long)srcOffset + n, nameof(src));
        var d = Data(dst, (long)dstOffset + n, nameof(dst));
        // Span.CopyTo handles overlapping ranges (one buffer, or two views of one array) like memmove.
        s.AsSpan(srcOffset, n).CopyTo(d.AsSpan(dstOffset, n));
    }

    public void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        NonNegative(n, nameof(n));
        var d = Data(dst, n, nameof(dst));
        Philox.FillNormal(d.AsSpan(0, n), seed, offset);
    }

    public void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        NonNegative(n, nameof(n));
        var d = Data(dst, n, nameof(dst));
        Philox.FillUniform(d.AsSpan(0, n), seed, offset);
    }

    public void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(nameof(p), $"Dropout probability {p} is outside [0, 1).");
        NonNegative(n, nameof(n));
        var d = Data(dst, n, nameof(dst));
        float keep = 1f - p;
        float scale = 1f / keep;
        for (int i = 0; i < n; i++)
        {
            float u = Philox.ToUniform(Philox.Word(seed, offset + (ulong)i));
            d[i] = u < keep ? scale : 0f;
        }
    }

    // ---- elementwise --------------------------------------------------------------------------------------

    private static double Sigmoid(double x) => 1.0 / (1.0 + Math.Exp(-x));

    public void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        var ys = Data(y, n, nameof(y));
        for (int i = 0; i < n; i++)
        {
            double v = xs[i];
            ys[i] = op switch
            {
                UnaryOp.Neg => -xs[i],
                UnaryOp.Exp => (float)Math.Exp(v),
                UnaryOp.Log => (float)Math.Log(v),
                UnaryOp.Sin => (float)Math.Sin(v),
                UnaryOp.Cos => (float)Math.Cos(v),
                UnaryOp.Sqrt => (float)Math.Sqrt(v),
                UnaryOp.Square => (float)(v * v),
                UnaryOp.Sigmoid => (float)Sigmoid(v),
                UnaryOp.Silu => (float)(v * Sigmoid(v)),
                UnaryOp.Tanh => (float)Math.Tanh(v),
                // MathF.Max propagates NaN, as torch.relu does.
                UnaryOp.Relu => MathF.Max(xs[i], 0f),
                UnaryOp.Abs => MathF.Abs(xs[i]),
                _ => throw new NotSupportedException($"Unary op {op} is not implemented by {Name}."),
            };
        }
    }

    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        var ys = Data(y, n, nameof(y));
        var gs = Data(dy, n, nameof(dy));
        var dxs = Data(dx, n, nameof(dx));
        for (int i = 0; i < n; i++)
        {
            double v = xs[i], o = ys[i], g = gs[i];
            double d = op switch
            {
                UnaryOp.Neg => -g,
                UnaryOp.Exp => g * o,
                UnaryOp.Log => g / v,
                UnaryOp.Sin => g * Math.Cos(v),
                UnaryOp.Cos => -g * Math.Sin(v),
                UnaryOp.Sqrt => g * 0.5 / o,
                UnaryOp.Square => g * 2.0 * v,
                UnaryOp.Sigmoid => g * o * (1.0 - o),
                UnaryOp.Silu => g * SiluDerivative(v),
                UnaryOp.Tanh => g * (1.0 - o * o),
                UnaryOp.Relu => v > 0 ? g : v <= 0 ? 0.0 : double.NaN,
                UnaryOp.Abs => double.IsNaN(v) ? double.NaN : g * Math.Sign(v),
                _ => throw new NotSupportedException($"Unary op {op} is not implemented by {Name}."),
            };
            dxs[i] = (float)d;
        }

        static double SiluDerivative(double v)
        {
            double s = Sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
    }

    public void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        var ys = Data(y, n, nameof(y));
        for (int i = 0; i < n; i++) ys[i] = (float)((double)xs[i] * scale + shift);
    }

    public void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        var ys = Data(y, n, nameof(y));
        for (int i = 0; i < n; i++) ys[i] = (float)((double)a * xs[i] + (double)b * ys[i]);
    }

    public void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        var ys = Data(y, n, nameof(y));
        for (int i = 0; i < n; i++) ys[i] = MathF.Min(MathF.Max(xs[i], lo), hi);
    }

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape,
        DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Shape.CheckRank(yShape, "Binary");
        long n = Product(yShape, nameof(yShape));
        var sa = BroadcastStrides(aShape, yShape, nameof(aShape));
        var sb = BroadcastStrides(bShape, yShape, nameof(bShape));
        var av = Data(a, Product(aShape, nameof(aShape)), nameof(a));
        var bv = Data(b, Product(bShape, nameof(bShape)), nameof(b));
        var yv = Data(y, n, nameof(y));
        // Element i reads a and b at offsets that are i itself when their shape equals y's, so y may alias
        // an operand of its own shape: each element is read before it is written.
        for (long i = 0; i < n; i++)
        {
            float l = av[Offset(i, yShape, sa)], r = bv[Offset(i, yShape, sb)];
            yv[i] = op switch
            {
                BinaryOp.Add => l + r,
                BinaryOp.Sub => l - r,
                BinaryOp.Mul => l * r,
                BinaryOp.Div => l / r,
                _ => throw new NotSupportedException($"Binary op {op} is not implemented by {Name}."),
            };
        }
    }

    public void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Shape.CheckRank(xShape, "SumToShape");
        long nx = Product(xShape, nameof(xShape));
        long ny = Product(yShape, nameof(yShape));
        // y's strides over x's index space: 0 along the summed dimensions.
        var sy = BroadcastStrides(yShape, xShape, nameof(yShape));
        var xv = Data(x, nx, nameof(x));
        var yv = Data(y, ny, nameof(y));
        var acc = new double[ny];
        for (long i = 0; i < nx; i++) acc[Offset(i, xShape, sy)] += xv[i];
        for (long j = 0; j < ny; j++) yv[j] = (float)acc[j];
    }

    public double SumOfSquares(DeviceBuffer x, int n)
    {
        NonNegative(n, nameof(n));
        var xs = Data(x, n, nameof(x));
        double s = 0;
        for (int i = 0; i < n; i++) s += (double)xs[i] * xs[i];
        return s;
    }

    public void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex)
    {
        NonNegative(resultIndex, nameof(resultIndex));
        var r = Data(result, (long)resultIndex + 2, nameof(result));
        (r[resultIndex], r[resultIndex + 1]) = NormMath.Split(SumOfSquares(x, n));
    }

    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n)
    {
        NonNegative(index, nameof(index));
        NonNegative(n, nameof(n));
        var s = Data(sumSq, (long)index + 2, nameof(sumSq));
        var xs = Data(x, n, nameof(x));
        double coef = NormMath.ClipCoefficient(Math.Sqrt(NormMath.Join(s[index], s[index + 1])), maxNorm);
        if (coef >= 1.0) return;
        float c = (float)coef;
        for (int i = 0; i < n; i++) xs[i] = (float)((double)xs[i] * c);
    }

    // ---- layout -------------------------------------------------------------------------------------------

    public void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y)
    {
        Shape.CheckRank(xShape, "Permute");
        int rank = xShape.Length;
        if (perm.Length != rank) throw new ArgumentException($"Permutation {Shape.Format(perm)} does not match shape {Shape.Format(xShape)}.", nameof(perm));
        var seen = new bool[rank];
        foreach (int p in perm)
        {
            if (p < 0 || p >= rank || seen[p]) throw new ArgumentException($"{Shape.Format(perm)} is not a permutation.", nameof(perm));
            seen[p] = true;
        }
        long n = Product(xShape, nameof(xShape));
        var xv = Data(x, n, nameof(x));
        var yv = Data(y, n, nameof(y));
        var xStride = new long[rank];
        long s = 1;
        for (int d = rank - 1; d >= 0; d--) { xStride[d] = s; s *= xShape[d]; }
        // y's dimension i walks x's dimension perm[i].
        var yShape = new int[rank];
        var yStrideInX = new long[rank];
        for (int i = 0; i < rank; i++) { yShape[i] = xShape[perm[i]]; yStrideInX[i] = xStride[perm[i]]; }
        for (long j = 0; j < n; j++) yv[j] = xv[Offset(j, yShape, yStrideInX)];
    }

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate,
        DeviceBuffer dst, int dstDim, int dstStart)
    {
        NonNegative(outer, nameof(outer));
        NonNegative(count, nameof(count));
        NonNegative(inner, nameof(inner));
        NonNegative(srcStart, nameof(srcStart));
        NonNegative(dstStart, nameof(dstStart));
        if ((long)srcStart + count > srcDim) throw new ArgumentException($"Slice [{srcStart}, {srcStart + count}) exceeds source dimension {srcDim}.", nameof(srcStart));
        if ((long)dstStart + count > dstDim) throw new ArgumentException($"Slice [{dstStart}, {dstStart + count}) exceeds destination dimension {dstDim}.", nameof(dstStart));
        var s = Data(src, (long)outer * srcDim * inner, nameof(src));
        var d = Data(dst, (long)outer * dstDim * inner, nameof(dst));
        for (long o = 0; o < outer; o++)
            for (long k = 0; k < count; k++)
                for (long i = 0; i < inner; i++)
                {
                    long si = (o * srcDim + srcStart + k) * inner + i;
                    long di = (o * dstDim + dstStart + k) * inner + i;
                    d[di] = accumulate ? d[di] + s[si] : s[si];
                }
    }

    public void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst)
    {
        NonNegative(rows, nameof(rows));
        NonNegative(rowSize, nameof(rowSize));
        var s = Data(src, (long)rows * rowSize, nameof(src));
        var d = Data(dst, (long)indices.Length * rowSize, nameof(dst));
        for (int i = 0; i < indices.Length; i++)
        {
            int r = indices[i];
            if ((uint)r >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(indices), $"Index {r} at position {i} is outside [0, {rows}).");
            for (int j = 0; j < rowSize; j++) d[(long)i * rowSize + j] = s[(long)r * rowSize + j];
        }
    }

    public void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows)
    {
        NonNegative(rows, nameof(rows));
        NonNegative(rowSize, nameof(rowSize));
        var s = Data(src, (long)indices.Length * rowSize, nameof(src));
        var d = Data(dst, (long)rows * rowSize, nameof(dst));
        // Checked before any write, so a bad index leaves dst untouched.
        for (int i = 0; i < indices.Length; i++)
            if ((uint)indices[i] >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(indices), $"Index {indices[i]} at position {i} is outside [0, {rows}).");
        for (int i = 0; i < indices.Length; i++)
            for (int j = 0; j < rowSize; j++) d[(long)indices[i] * rowSize + j] += s[(long)i * rowSize + j];
    }

    // ---- linear algebra -----------------------------------------------------------------------------------

    public void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB,
        int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC)
    {
        NonNegative(batch, nameof(batch));
        NonNegative(m, nameof(m));
        NonNegative(n, nameof(n));
        NonNegative(k, nameof(k));
        NonNegative(strideA, nameof(strideA));
        NonNegative(strideB, nameof(strideB));
        NonNegative(strideC, nameof(strideC));
        if (batch == 0) return;
        // The last batch's operand must fit; stride 0 means every batch reads the same matrix.
        var av = Data(a, (batch - 1) * strideA + (long)m * k, nameof(a));
        var bv = Data(b, (batch - 1) * strideB + (long)k * n, nameof(b));
        var cv = Data(c, (batch - 1) * strideC + (long)m * n, nameof(c));
        for (int t = 0; t < batch; t++)
        {
            long oa = t * strideA, ob = t * strideB, oc = t * strideC;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double acc = 0;
                    for (int p = 0; p < k; p++)
                    {
                        // op(A)[i, p] and op(B)[p, j] in row-major storage of A [m, k] / [k, m] and B [k, n] / [n, k].
                        float aip = transA ? av[oa + (long)p * m + i] : av[oa + (long)i * k + p];
                        float bpj = transB ? bv[ob + (long)j * k + p] : bv[ob + (long)p * n + j];
                        acc += (double)aip * bpj;
                    }
                    long ci = oc + (long)i * n + j;
                    // beta == 0 overwrites C without reading it, so NaN or garbage in C does not leak (BLAS rule).
                    double prior = beta == 0f ? 0.0 : (double)beta * cv[ci];
                    cv[ci] = (float)(alpha * acc + prior);
                }
        }
    }

    private static void CheckConv(in ConvGeometry g, DeviceBuffer? bias, string biasName)
    {
        g.Validate();
        if (bias is not null) Data(bias, g.O, biasName);
    }

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y)
    {
        CheckConv(g, bias, nameof(bias));
        var xv = Data(x, g.InputSize, nameof(x));
        var wv = Data(w, g.WeightSize, nameof(w));
        var yv = Data(y, g.OutputSize, nameof(y));
        Mem? bv = bias is null ? null : Data(bias, g.O, nameof(bias));
        int oh = g.OH, ow = g.OW;
        for (int n = 0; n < g.N; n++)
            for (int o = 0; o < g.O; o++)
                for (int i = 0; i < oh; i++)
                    for (int j = 0; j < ow; j++)
                    {
                        double acc = bv is null ? 0.0 : bv.Value[o];
                        for (int c = 0; c < g.C; c++)
                            for (int kh = 0; kh < g.KH; kh++)
                            {
                                int h = i * g.StrideH - g.PadH + kh;
                                if (h < 0 || h >= g.H) continue;
                                for (int kw = 0; kw < g.KW; kw++)
                                {
                                    int ww = j * g.StrideW - g.PadW + kw;
                                    if (ww < 0 || ww >= g.W) continue;
                                    acc += (double)xv[((long)(n * g.C + c) * g.H + h) * g.W + ww]
                                        * wv[((long)(o * g.C + c) * g.KH + kh) * g.KW + kw];
                                }
                            }
                        yv[((long)(n * g.O + o) * oh + i) * ow + j] = (float)acc;
                    }
    }

    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx)
    {
        CheckConv(g, null, "");
        var dyv = Data(dy, g.OutputSize, nameof(dy));
        var wv = Data(w, g.WeightSize, nameof(w));
        var dxv = Data(dx, g.InputSize, nameof(dx));
        int oh = g.OH, ow = g.OW;
        // dx[n, c, h, w] gathers every output (i, j) whose window put tap (kh, kw) on (h, w):
        // h = i * stride - pad + kh, so i = (h + pad - kh) / stride when that division is exact.
        for (int n = 0; n < g.N; n++)
            for (int c = 0; c < g.C; c++)
                for (int h = 0; h < g.H; h++)
                    for (int ww = 0; ww < g.W; ww++)
                    {
                        double acc = 0;
                        for (int o = 0; o < g.O; o++)
                            for (int kh = 0; kh < g.KH; kh++)
                            {
                                int ti = h + g.PadH - kh;
                                if (ti < 0 || ti % g.StrideH != 0) continue;
                                int i = ti / g.StrideH;
                                if (i >= oh) continue;
                                for (int kw = 0; kw < g.KW; kw++)
                                {
                                    int tj = ww + g.PadW - kw;
                                    if (tj < 0 || tj % g.StrideW != 0) continue;
                                    int j = tj / g.StrideW;
                                    if (j >= ow) continue;
                                    acc += (double)dyv[((long)(n * g.O + o) * oh + i) * ow + j]
                                        * wv[((long)(o * g.C + c) * g.KH + kh) * g.KW + kw];
                                }
                            }
                        dxv[((long)(n * g.C + c) * g.H + h) * g.W + ww] = (float)acc;
                    }
    }

    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias)
    {
        CheckConv(g, dbias, nameof(dbias));
        var xv = Data(x, g.InputSize, nameof(x));
        var dyv = Data(dy, g.OutputSize, nameof(dy));
        var dwv = Data(dw, g.WeightSize, nameof(dw));
        int oh = g.OH, ow = g.OW;
        for (int o = 0; o < g.O; o++)
            for (int c = 0; c < g.C; c++)
                for (int kh = 0; kh < g.KH; kh++)
                    for (int kw = 0; kw < g.KW; kw++)
                    {
                        double acc = 0;
                        for (int n = 0; n < g.N; n++)
                            for (int i = 0; i < oh; i++)
                            {
                                int h = i * g.StrideH - g.PadH + kh;
                                if (h < 0 || h >= g.H) continue;
                                for (int j = 0; j < ow; j++)
                                {
                                    int ww = j * g.StrideW - g.PadW + kw;
                                    if (ww < 0 || ww >= g.W) continue;
                                    acc += (double)xv[((long)(n * g.C + c) * g.H + h) * g.W + ww]
                                        * dyv[((long)(n * g.O + o) * oh + i) * ow + j];
                                }
                            }
                        dwv[((long)(o * g.C + c) * g.KH + kh) * g.KW + kw] = (float)acc;
                    }
        if (dbias is null) return;
        var dbv = Data(dbias, g.O, nameof(dbias));
        for (int o = 0; o < g.O; o++)
        {
            double acc = 0;
            for (int n = 0; n < g.N; n++)
                for (int p = 0; p < oh * ow; p++) acc += dyv[(long)(n * g.O + o) * oh * ow + p];
            dbv[o] = (float)acc;
        }
    }

    // ---- normalisation ------------------------------------------------------------------------------------

    private static void CheckGroups(int n, int c, int hw, int groups)
    {
        NonNegative(n, nameof(n));
        NonNegative(hw, nameof(hw));
        if (c <= 0 || groups <= 0 || c % groups != 0)
            throw new ArgumentException($"{c} channels do not split into {groups} groups.", nameof(groups));
    }

    /// <summary>x [n, c, hw] in double, plus shift [n, c] broadcast over hw when there is one.</summary>
    private double[] Shifted(DeviceBuffer x, DeviceBuffer? shift, int n, int c, int hw)
    {
        long size = (long)n * c * hw;
        var xs = Data(x, size, nameof(x));
        var sv = shift is null ? default : Data(shift, (long)n * c, nameof(shift));
        var r = new double[size];
        for (long i = 0; i < size; i++) r[i] = xs[(int)i] + (shift is null ? 0.0 : sv[(int)(i / hw)]);
        return r;
    }

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd)
    {
        CheckGroups(n, c, hw, groups);
        long size = (long)n * c * hw;
        var xv = Shifted(x, shift, n, c, hw);
        var gv = Data(gamma, c, nameof(gamma));
        var bv = Data(beta, c, nameof(beta));
        var yv = Data(y, size, nameof(y));
        var mv = Data(mean, (long)n * groups, nameof(mean));
        var rv = Data(rstd, (long)n * groups, nameof(rstd));
        int cpg = c / groups;
        long count = (long)cpg * hw;
        for (int s = 0; s < n; s++)
            for (int gi = 0; gi < groups; gi++)
            {
                // A group is cpg consecutive channels of one sample: a contiguous run of count floats.
                long start = ((long)s * c + (long)gi * cpg) * hw;
                double sum = 0;
                for (long e = 0; e < count; e++) sum += xv[start + e];
                double mu = sum / count;
                // Two-pass biased variance (as PyTorch's group_norm), eps inside the square root.
                double sq = 0;
                for (long e = 0; e < count; e++) { double d = xv[start + e] - mu; sq += d * d; }
                double r = 1.0 / Math.Sqrt(sq / count + eps);
                mv[s * groups + gi] = (float)mu;
                rv[s * groups + gi] = (float)r;
                for (long e = 0; e < count; e++)
                {
                    int ch = gi * cpg + (int)(e / hw);
                    double z = (xv[start + e] - mu) * r * gv[ch] + bv[ch];
                    yv[start + e] = (float)(silu ? z * Sigmoid(z) : z);
                }
            }
    }

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta)
    {
        CheckGroups(n, c, hw, groups);
        long size = (long)n * c * hw;
        var dyIn = Data(dy, size, nameof(dy));
        var xv = Shifted(x, shift, n, c, hw);
        var gv = Data(gamma, c, nameof(gamma));
        var bv = Data(beta, c, nameof(beta));
        var mv = Data(mean, (long)n * groups, nameof(mean));
        var rv = Data(rstd, (long)n * groups, nameof(rstd));
        var dxv = Data(dx, size, nameof(dx));
        var dgv = Data(dgamma, c, nameof(dgamma));
        var dbv = Data(dbeta, c, nameof(dbeta));
        int cpg = c / groups;
        long count = (long)cpg * hw;
        // The gradient of the normalised z: dy itself, or dy silu'(z) with z recomputed in double.
        var dyv = new double[size];
        for (long i = 0; i < size; i++)
        {
            dyv[i] = dyIn[i];
            if (!silu) continue;
            long sc = i / hw;
            int s = (int)(sc / c), ch = (int)(sc % c), gi = ch / cpg;
            double z = (xv[i] - mv[s * groups + gi]) * (double)rv[s * groups + gi] * gv[ch] + bv[ch];
            double sg = Sigmoid(z);
            dyv[i] *= sg * (1.0 + z * (1.0 - sg));
        }

        // dgamma[ch] = sum dy * xhat and dbeta[ch] = sum dy over samples and positions.
        for (int ch = 0; ch < c; ch++)
        {
            int gi = ch / cpg;
            double dg = 0, db = 0;
            for (int s = 0; s < n; s++)
            {
                double mu = mv[s * groups + gi], r = rv[s * groups + gi];
                long start = ((long)s * c + ch) * hw;
                for (int p = 0; p < hw; p++)
                {
                    double g = dyv[start + p];
                    dg += g * (xv[start + p] - mu) * r;
                    db += g;
                }
            }
            dgv[ch] = (float)dg;
            dbv[ch] = (float)db;
        }

        // With xhat = (x - mu) * rstd and dxhat = dy * gamma, over the count elements of a group:
        // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
        for (int s = 0; s < n; s++)
            for (int gi = 0; gi < groups; gi++)
            {
                double mu = mv[s * groups + gi], r = rv[s * groups + gi];
                long start = ((long)s * c + (long)gi * cpg) * hw;
                double sumDxhat = 0, sumDxhatXhat = 0;
                for (long e = 0; e < count; e++)
                {
                    int ch = gi * cpg + (int)(e / hw);
                    double dxhat = dyv[start + e] * (double)gv[ch];
                    sumDxhat += dxhat;
                    sumDxhatXhat += dxhat * (xv[start + e] - mu) * r;
                }
                double meanDxhat = sumDxhat / count, meanDxhatXhat = sumDxhatXhat / count;
                for (long e = 0; e < count; e++)
                {
                    int ch = gi * cpg + (int)(e / hw);
                    double dxhat = dyv[start + e] * (double)gv[ch];
                    double xhat = (xv[start + e] - mu) * r;
                    dxv[start + e] = (float)(r * (dxhat - meanDxhat - xhat * meanDxhatXhat));
                }
            }
    }

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y)
    {
        NonNegative(outer, nameof(outer));
        NonNegative(dim, nameof(dim));
        NonNegative(inner, nameof(inner));
        long size = (long)outer * dim * inner;
        var xv = Data(x, size, nameof(x));
        var yv = Data(y, size, nameof(y));
        for (long o = 0; o < outer; o++)
            for (long i = 0; i < inner; i++)
            {
                long baseIdx = o * dim * inner + i;
                // Subtracting the maximum keeps exp from overflowing; it cancels in the ratio.
                float max = float.NegativeInfinity;
                for (long d = 0; d < dim; d++) max = MathF.Max(max, xv[baseIdx + d * inner]);
                double sum = 0;
                for (long d = 0; d < dim; d++) sum += Math.Exp((double)xv[baseIdx + d * inner] - max);
                for (long d = 0; d < dim; d++)
                    yv[baseIdx + d * inner] = (float)(Math.Exp((double)xv[baseIdx + d * inner] - max) / sum);
            }
    }

    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx)
    {
        NonNegative(outer, nameof(outer));
        NonNegative(dim, nameof(dim));
        NonNegative(inner, nameof(inner));
        long size = (long)outer * dim * inner;
        var yv = Data(y, size, nameof(y));
        var dyv = Data(dy, size, nameof(dy));
        var dxv = Data(dx, size, nameof(dx));
        for (long o = 0; o < outer; o++)
            for (long i = 0; i < inner; i++)
            {
                long baseIdx = o * dim * inner + i;
                double dot = 0;
                for (long d = 0; d < dim; d++) dot += (double)dyv[baseIdx + d * inner] * yv[baseIdx + d * inner];
                for (long d = 0; d < dim; d++)
                {
                    long e = baseIdx + d * inner;
                    dxv[e] = (float)(yv[e] * (dyv[e] - dot));
                }
            }
    }

    // ---- optimiser ----------------------------------------------------------------------------------------

    public void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v)
    {
        NonNegative(n, nameof(n));
        var pv = Data(param, n, nameof(param));
        var gv = Data(grad, n, nameof(grad));
        var mv = Data(m, n, nameof(m));
        var vv = Data(v, n, nameof(v));
        double lr = p.LearningRate, b1 = p.Beta1, b2 = p.Beta2, eps = p.Eps, wd = p.WeightDecay;
        double sqrtBc2 = Math.Sqrt(p.BiasCorrection2);
        for (int i = 0; i < n; i++)
        {
            double w = pv[i], g = gv[i];
            // Decoupled (AdamW) decay acts on the weight before the moment update, as torch.optim.AdamW.
            if (wd != 0) w *= 1.0 - lr * wd;
            double mi = b1 * mv[i] + (1.0 - b1) * g;
            double vi = b2 * vv[i] + (1.0 - b2) * g * g;
            mv[i] = (float)mi;
            vv[i] = (float)vi;
            w -= lr * (mi / p.BiasCorrection1) / (Math.Sqrt(vi) / sqrtBc2 + eps);
            pv[i] = (float)w;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _pool.Clear();
    }
}
