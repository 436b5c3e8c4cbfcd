using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ddpm.Backends.Cpu.Fast;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

/// <summary>
/// The fast CPU backend: TensorPrimitives and own Vector512/256/128 kernels for elementwise work, a packed
/// register-tiled SGEMM, convolutions as implicit GEMMs (im2col columns packed straight from the image; im2col
/// written out only for the per-sample weight gradient and strided backward-data), all spread over one worker
/// pool of spinning helper threads. Buffers are
/// pinned pooled arrays (<see cref="CpuBuffer"/>), so kernels work on raw pointers. An output may alias an
/// input exactly (same buffer), never partially. Ops are issued by one thread at a time. Every reduction is
/// split the same way on every run with the same thread count, so results are reproducible; the GEMM and
/// the elementwise ops give the same bits for any thread count.
/// </summary>
public sealed unsafe partial class CpuBackend : IBackend
{
    /// <summary>Elements per parallel chunk of a memory-bound elementwise op.</summary>
    private const int Grain = 16384;

    private readonly CpuMemoryPool _memory = new();
    private readonly WorkerPool _pool;
    private readonly WholeBatch _wholeBatch = new();

    /// <param name="threads">Worker threads; 0 means all cores.</param>
    public CpuBackend(int threads = 0) : this(new CpuBackendOptions { Threads = threads })
    {
    }

    /// <param name="options">Threads, kernels and block sizes of this backend (see <see cref="CpuBackendOptions"/>).</param>
    public CpuBackend(CpuBackendOptions options)
    {
        _pool = new WorkerPool(options);
    }

    public string Name => "cpu";

    public int Threads => _pool.Threads;

    public string Description =>
        $"CPU SIMD ({(_pool.Options.UseAvx512 ? "AVX-512" : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" : "128-bit")}), " +
        $"{_pool.Threads} threads, {RuntimeInformation.ProcessArchitecture}, System.Numerics.Tensors";

    /// <summary>The Winograd choice counts the tiles of the whole batch inside the scope (<see cref="WholeBatch"/>).</summary>
    public IDisposable PartOfBatch(int whole) => _wholeBatch.Of(whole);

    public void Dispose()
    {
        _memory.Clear();
        _pool.Dispose();
    }

    // ---- memory -------------------------------------------------------------------------------------

    public DeviceBuffer Allocate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return new CpuBuffer(this, _memory.Rent(length), length, _memory);
    }

    public void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset)
    {
        var d = CpuBuffer.Of(dst);
        Check(dst, (long)dstOffset + src.Length, nameof(dst));
        src.CopyTo(d.Array.AsSpan(d.Offset + dstOffset, src.Length));
    }

    public void Download(DeviceBuffer src, int srcOffset, Span<float> dst)
    {
        var s = CpuBuffer.Of(src);
        Check(src, (long)srcOffset + dst.Length, nameof(src));
        s.Array.AsSpan(s.Offset + srcOffset, dst.Length).CopyTo(dst);
    }

    public void Synchronize()
    {
    }

    public DeviceBuffer Slice(DeviceBuffer parent, int offset, int length) => CpuBuffer.Slice(this, parent, offset, length);

    /// <summary>The first element of a buffer, after checking that it holds <paramref name="needed"/> floats.</summary>
    private static float* Ptr(DeviceBuffer b, long needed, string name)
    {
        var cb = CpuBuffer.Of(b);
        Check(b, needed, name);
        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(cb.Array)) + cb.Offset;
    }

    private static float* Ptr(DeviceBuffer b)
    {
        var cb = CpuBuffer.Of(b);
        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(cb.Array)) + cb.Offset;
    }

    private static void Check(DeviceBuffer b, long needed, string name)
    {
        if (b.IsReleased) throw new ObjectDisposedException(name, $"Buffer '{name}' was already released.");
        if (needed < 0 || needed > b.Length)
            throw new ArgumentException($"Buffer '{name}' holds {b.Length} floats; the op needs {needed}.", name);
    }

    private static Span<float> S(float* p, int n) => new(p, n);

    // ---- fills and copies ---------------------------------------------------------------------------

    public void Fill(float value, DeviceBuffer dst, int n)
    {
        nint d = (nint)Ptr(dst, n, nameof(dst));
        _pool.ForRange(n, Grain * 4, (s, len) => S((float*)d + s, len).Fill(value));
    }

    public void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset)
    {
        float* s = Ptr(src, (long)srcOffset + n, nameof(src)) + srcOffset;
        float* d = Ptr(dst, (long)dstOffset + n, nameof(dst)) + dstOffset;
        // Overlapping ranges (one buffer, or two views of one array) need one memmove, not parallel chunks.
        if ((s < d + n && d < s + n) || n < Grain * 4)
        {
            Buffer.MemoryCopy(s, d, 4L * n, 4L * n);
            return;
        }
        nint sp = (nint)s, dp = (nint)d;
        _pool.ForRange(n, Grain * 4, (i, len) => Buffer.MemoryCopy((float*)sp + i, (float*)dp + i, 4L * len, 4L * len));
    }

    public void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        nint d = (nint)Ptr(dst, n, nameof(dst));
        // Each chunk starts at its own stream position, so the numbers do not depend on the chunking.
        _pool.ForRange(n, 4096, (s, len) => Philox.FillNormal(S((float*)d + s, len), seed, offset + (ulong)s));
    }

    public void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        nint d = (nint)Ptr(dst, n, nameof(dst));
        _pool.ForRange(n, 8192, (s, len) => Philox.FillUniform(S((float*)d + s, len), seed, offset + (ulong)s));
    }

    public void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n)
    {
        if (p < 0f || p >= 1f) throw new ArgumentOutOfRangeException(nameof(p), $"Dropout probability {p} is outside [0, 1).");
        nint d = (nint)Ptr(dst, n, nameof(dst));
        float keep = 1f - p;
        var k = new DropoutKernel(keep, 1f / keep);
        _pool.ForRange(n, 8192, (s, len) =>
        {
            float* q = (float*)d + s;
            Philox.FillUniform(S(q, len), seed, offset + (ulong)s);
            Kernel.Map(k, q, q, len);
        });
    }

    // ---- elementwise --------------------------------------------------------------------------------

    public void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y)
    {
        nint xp = (nint)Ptr(x, n, nameof(x)), yp = (nint)Ptr(y, n, nameof(y));
        _pool.ForRange(n, op is UnaryOp.Neg or UnaryOp.Abs or UnaryOp.Relu or UnaryOp.Square ? Grain : Grain / 4,
            (s, len) => UnaryChunk(op, (float*)xp + s, (float*)yp + s, len));
    }

    internal static void UnaryChunk(UnaryOp op, float* x, float* y, int n)
    {
        var xs = new ReadOnlySpan<float>(x, n);
        var ys = new Span<float>(y, n);
        switch (op)
        {
            case UnaryOp.Neg: TensorPrimitives.Negate(xs, ys); break;
            case UnaryOp.Exp: TensorPrimitives.Exp(xs, ys); break;
            case UnaryOp.Log: TensorPrimitives.Log(xs, ys); break;
            case UnaryOp.Sin: TensorPrimitives.Sin(xs, ys); break;
            case UnaryOp.Cos: TensorPrimitives.Cos(xs, ys); break;
            case UnaryOp.Sqrt: TensorPrimitives.Sqrt(xs, ys); break;
            case UnaryOp.Square: TensorPrimitives.Multiply(xs, xs, ys); break;
            case UnaryOp.Sigmoid: TensorPrimitives.Sigmoid(xs, ys); break;
            case UnaryOp.Silu: Kernel.Map(new SiluKernel(), x, y, n); break;
            case UnaryOp.Tanh: TensorPrimitives.Tanh(xs, ys); break;
            case UnaryOp.Relu: TensorPrimitives.Max(xs, 0f, ys); break;
            case UnaryOp.Abs: TensorPrimitives.Abs(xs, ys); break;
            default: throw new NotSupportedException($"Unary op {op} is not supported by the cpu backend.");
        }
    }

    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx)
    {
        nint xp = (nint)Ptr(x, n, nameof(x)), yp = (nint)Ptr(y, n, nameof(y));
        nint dyp = (nint)Ptr(dy, n, nameof(dy)), dxp = (nint)Ptr(dx, n, nameof(dx));
        _pool.ForRange(n, Grain / 2, (s, len) =>
            UnaryBackwardChunk(op, (float*)xp + s, (float*)yp + s, (float*)dyp + s, (float*)dxp + s, len));
    }

    internal static void UnaryBackwardChunk(UnaryOp op, float* x, float* y, float* dy, float* dx, int n, int maxBits = 512)
    {
        switch (op)
        {
            case UnaryOp.Neg: Kernel.Map(new NegBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Exp: Kernel.Map(new ExpBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Log: Kernel.Map(new LogBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Sin: Kernel.Map(new SinBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Cos: Kernel.Map(new CosBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Sqrt: Kernel.Map(new SqrtBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Square: Kernel.Map(new SquareBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Sigmoid: Kernel.Map(new SigmoidBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Silu: Kernel.Map(new SiluBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Tanh: Kernel.Map(new TanhBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Relu: Kernel.Map(new ReluBackward(), x, y, dy, dx, n, maxBits); break;
            case UnaryOp.Abs: Kernel.Map(new AbsBackward(), x, y, dy, dx, n, maxBits); break;
            default: throw new NotSupportedException($"Unary op {op} has no backward in the cpu backend.");
        }
    }

    public void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y)
    {
        nint xp = (nint)Ptr(x, n, nameof(x)), yp = (nint)Ptr(y, n, nameof(y));
        var k = new AffineKernel(scale, shift);
        _pool.ForRange(n, Grain, (s, len) => Kernel.Map(k, (float*)xp + s, (float*)yp + s, len));
    }

    public void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y)
    {
        nint xp = (nint)Ptr(x, n, nameof(x)), yp = (nint)Ptr(y, n, nameof(y));
        var k = new AxpbyKernel(a, b);
        _pool.ForRange(n, Grain, (s, len) => Kernel.Map(k, (float*)xp + s, (float*)yp + s, (float*)yp + s, len));
    }

    public void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y)
    {
        nint xp = (nint)Ptr(x, n, nameof(x)), yp = (nint)Ptr(y, n, nameof(y));
        _pool.ForRange(n, Grain, (s, len) =>
        {
            var ys = S((float*)yp + s, len);
            TensorPrimitives.Max(new ReadOnlySpan<float>((float*)xp + s, len), lo, ys);
            TensorPrimitives.Min(ys, hi, ys);
        });
    }

    public double SumOfSquares(DeviceBuffer x, int n) => SumOfSquares(Ptr(x, n, nameof(x)), n);

    private double SumOfSquares(float* xp, int n)
    {
        // Fixed 4096-element chunks summed in chunk order: the same double for any thread count.
        const int chunk = 4096;
        int chunks = (n + chunk - 1) / chunk;
        if (chunks == 0) return 0;
        var partial = new double[chunks];
        nint xpp = (nint)xp;
        _pool.ForItems(chunks, 8, (c0, count) =>
        {
            for (int c = c0; c < c0 + count; c++)
            {
                int s = c * chunk, len = Math.Min(chunk, n - s);
                partial[c] = SumOfSquaresChunk((float*)xpp + s, len);
            }
        });
        double total = 0;
        foreach (double p in partial) total += p;
        return total;
    }

    /// <summary>
    /// Sum of squares accumulated in double, as the contract asks: a float's square is exact in double, so
    /// only the additions round, and a gradient norm taken over a whole flat buffer agrees with one summed
    /// tensor by tensor to double precision rather than float.
    /// </summary>
    private static double SumOfSquaresChunk(float* x, int n)
    {
        int i = 0;
        double s = 0;
        if (System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated && n >= 8)
        {
            var a0 = System.Runtime.Intrinsics.Vector256<double>.Zero;
            var a1 = System.Runtime.Intrinsics.Vector256<double>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var (lo, hi) = System.Runtime.Intrinsics.Vector256.Widen(System.Runtime.Intrinsics.Vector256.Load(x + i));
                a0 += lo * lo;
                a1 += hi * hi;
            }
            s = System.Runtime.Intrinsics.Vector256.Sum(a0 + a1);
        }
        for (; i < n; i++) s += (double)x[i] * x[i];
        return s;
    }

    public void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex)
    {
        float* xp = Ptr(x, n, nameof(x));
        if (resultIndex < 0) throw new ArgumentOutOfRangeException(nameof(resultIndex), $"resultIndex = {resultIndex} is negative.");
        float* r = Ptr(result, (long)resultIndex + 2, nameof(result)) + resultIndex;
        (r[0], r[1]) = NormMath.Split(SumOfSquares(xp, n));
    }

    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n)
    {
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), $"index = {index} is negative.");
        float* s = Ptr(sumSq, (long)index + 2, nameof(sumSq)) + index;
        nint xp = (nint)Ptr(x, n, nameof(x));
        double coef = NormMath.ClipCoefficient(Math.Sqrt(NormMath.Join(s[0], s[1])), maxNorm);
        if (coef >= 1.0) return;
        // The same kernel as Affine(x, n, coef, 0, x), so clipping here scales exactly as the per-tensor path did.
        var k = new AffineKernel((float)coef, 0f);
        _pool.ForRange(n, Grain, (s0, len) => Kernel.Map(k, (float*)xp + s0, (float*)xp + s0, len));
    }

    // ---- optimiser ----------------------------------------------------------------------------------

    public void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v)
    {
        nint pp = (nint)Ptr(param, n, nameof(param)), gp = (nint)Ptr(grad, n, nameof(grad));
        nint mp = (nint)Ptr(m, n, nameof(m)), vp = (nint)Ptr(v, n, nameof(v));
        var k = new AdamKernel(p);
        _pool.ForRange(n, Grain / 2, (s, len) => k.Run((float*)pp + s, (float*)gp + s, (float*)mp + s, (float*)vp + s, len));
    }
}
