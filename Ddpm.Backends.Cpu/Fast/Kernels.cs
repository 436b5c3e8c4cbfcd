using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>An elementwise op of one input, written once per width (the TensorPrimitives pattern).</summary>
internal interface IUnaryKernel
{
    float Invoke(float x);
    Vector128<float> Invoke(Vector128<float> x);
    Vector256<float> Invoke(Vector256<float> x);
    Vector512<float> Invoke(Vector512<float> x);
}

/// <summary>An elementwise op of two inputs.</summary>
internal interface IBinaryKernel
{
    float Invoke(float x, float y);
    Vector128<float> Invoke(Vector128<float> x, Vector128<float> y);
    Vector256<float> Invoke(Vector256<float> x, Vector256<float> y);
    Vector512<float> Invoke(Vector512<float> x, Vector512<float> y);
}

/// <summary>An elementwise op of three inputs (unary backward: x, y = f(x), dy).</summary>
internal interface ITernaryKernel
{
    float Invoke(float x, float y, float z);
    Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> z);
    Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> z);
    Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> z);
}

/// <summary>
/// Drivers that run a kernel over n elements: whole Vector512s, then Vector256s, Vector128s and a scalar tail.
/// <c>maxBits</c> caps the widest vector (tests use it to check every path against the scalar one). Every
/// element's inputs are loaded before its output is stored, so an output may alias an input exactly.
/// </summary>
internal static unsafe class Kernel
{
    public static void Map<T>(T op, float* x, float* y, int n, int maxBits = 512) where T : struct, IUnaryKernel
    {
        int i = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) op.Invoke(Vector512.Load(x + i)).Store(y + i);
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) op.Invoke(Vector256.Load(x + i)).Store(y + i);
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated)
            for (; i <= n - 4; i += 4) op.Invoke(Vector128.Load(x + i)).Store(y + i);
        for (; i < n; i++) y[i] = op.Invoke(x[i]);
    }

    public static void Map<T>(T op, float* x, float* y, float* z, int n, int maxBits = 512) where T : struct, IBinaryKernel
    {
        int i = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) op.Invoke(Vector512.Load(x + i), Vector512.Load(y + i)).Store(z + i);
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) op.Invoke(Vector256.Load(x + i), Vector256.Load(y + i)).Store(z + i);
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated)
            for (; i <= n - 4; i += 4) op.Invoke(Vector128.Load(x + i), Vector128.Load(y + i)).Store(z + i);
        for (; i < n; i++) z[i] = op.Invoke(x[i], y[i]);
    }

    public static void Map<T>(T op, float* x, float* y, float* z, float* w, int n, int maxBits = 512) where T : struct, ITernaryKernel
    {
        int i = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) op.Invoke(Vector512.Load(x + i), Vector512.Load(y + i), Vector512.Load(z + i)).Store(w + i);
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) op.Invoke(Vector256.Load(x + i), Vector256.Load(y + i), Vector256.Load(z + i)).Store(w + i);
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated)
            for (; i <= n - 4; i += 4) op.Invoke(Vector128.Load(x + i), Vector128.Load(y + i), Vector128.Load(z + i)).Store(w + i);
        for (; i < n; i++) w[i] = op.Invoke(x[i], y[i], z[i]);
    }

    /// <summary>Sum of (x[i] - mean)^2 with float vector lanes, reduced in double.</summary>
    public static double SumSquaredDeviation(float* x, int n, float mean, int maxBits = 512)
    {
        int i = 0;
        double total = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(mean);
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var d = Vector512.Load(x + i) - m;
                acc = Vector512.FusedMultiplyAdd(d, d, acc);
            }
            total += Vector512.Sum(acc);
        }
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            var m = Vector256.Create(mean);
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var d = Vector256.Load(x + i) - m;
                acc = Vector256.FusedMultiplyAdd(d, d, acc);
            }
            total += Vector256.Sum(acc);
        }
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated && n - i >= 4)
        {
            var m = Vector128.Create(mean);
            var acc = Vector128<float>.Zero;
            for (; i <= n - 4; i += 4)
            {
                var d = Vector128.Load(x + i) - m;
                acc = Vector128.FusedMultiplyAdd(d, d, acc);
            }
            total += Vector128.Sum(acc);
        }
        for (; i < n; i++)
        {
            float d = x[i] - mean;
            total += d * d;
        }
        return total;
    }
}

/// <summary>
/// Copies and adds of short rows (an image row of im2col / col2im, often 4 to 64 floats) inlined, where a
/// memcpy or TensorPrimitives call would cost more than the work.
/// </summary>
internal static unsafe class Rows
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Copy(float* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) Vector512.Load(src + i).Store(dst + i);
        for (; i <= n - 4; i += 4) Vector128.Load(src + i).Store(dst + i);
        for (; i < n; i++) dst[i] = src[i];
    }

    /// <summary>dst[i] += src[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddTo(float* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) (Vector512.Load(dst + i) + Vector512.Load(src + i)).Store(dst + i);
        for (; i <= n - 4; i += 4) (Vector128.Load(dst + i) + Vector128.Load(src + i)).Store(dst + i);
        for (; i < n; i++) dst[i] += src[i];
    }
}

/// <summary>Reductions with float vector lanes finished in double.</summary>
internal static unsafe class Reduce
{
    /// <summary>
    /// Sum of a[i] * (x[i] - mean). Centering before the product keeps it accurate when x hugs its mean
    /// (dy . x - mean * sum(dy) would cancel).
    /// </summary>
    public static double SumProductDeviation(float* a, float* x, int n, float mean, int maxBits = 512) =>
        GradientSums(new FirstKernel(), a, x, null, n, mean, out _, maxBits);

    /// <summary>
    /// One pass of a normalisation's backward over a channel: g[i] = op(dy[i], x[i]), stored to <paramref name="g"/>
    /// unless it is null; returns the sum of g[i] (x[i] - mean) and gives the sum of g[i] in <paramref name="sumG"/>
    /// (both with float vector lanes, finished in double).
    /// </summary>
    public static double GradientSums<T>(T op, float* dy, float* x, float* g, int n, float mean, out double sumG, int maxBits = 512)
        where T : struct, IBinaryKernel
    {
        int i = 0;
        double total = 0, gs = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(mean);
            Vector512<float> acc = default, sum = default;
            for (; i <= n - 16; i += 16)
            {
                var v = op.Invoke(Vector512.Load(dy + i), Vector512.Load(x + i));
                if (g != null) v.Store(g + i);
                sum += v;
                acc = Vector512.FusedMultiplyAdd(v, Vector512.Load(x + i) - m, acc);
            }
            total += Vector512.Sum(acc);
            gs += Vector512.Sum(sum);
        }
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            var m = Vector256.Create(mean);
            Vector256<float> acc = default, sum = default;
            for (; i <= n - 8; i += 8)
            {
                var v = op.Invoke(Vector256.Load(dy + i), Vector256.Load(x + i));
                if (g != null) v.Store(g + i);
                sum += v;
                acc = Vector256.FusedMultiplyAdd(v, Vector256.Load(x + i) - m, acc);
            }
            total += Vector256.Sum(acc);
            gs += Vector256.Sum(sum);
        }
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated && n - i >= 4)
        {
            var m = Vector128.Create(mean);
            Vector128<float> acc = default, sum = default;
            for (; i <= n - 4; i += 4)
            {
                var v = op.Invoke(Vector128.Load(dy + i), Vector128.Load(x + i));
                if (g != null) v.Store(g + i);
                sum += v;
                acc = Vector128.FusedMultiplyAdd(v, Vector128.Load(x + i) - m, acc);
            }
            total += Vector128.Sum(acc);
            gs += Vector128.Sum(sum);
        }
        for (; i < n; i++)
        {
            float v = op.Invoke(dy[i], x[i]);
            if (g != null) g[i] = v;
            gs += v;
            total += (double)v * (x[i] - mean);
        }
        sumG = gs;
        return total;
    }
}

/// <summary>(x, y) -&gt; x: the gradient passed through unchanged (a normalisation's backward without an activation).</summary>
internal readonly struct FirstKernel : IBinaryKernel
{
    public float Invoke(float x, float y) => x;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y) => x;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y) => x;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y) => x;
}

// ---- unary forward --------------------------------------------------------------------------------------

/// <summary>
/// The logistic function 1 / (1 + exp(-x)) of the SiLU kernels on 256- and 512-bit vectors, where it is most of the
/// cost of a SiLU pass: exp by Cody-Waite reduction and Cephes' degree-5 polynomial (about 2 ulp), and on AVX-512
/// the scaling by 2^n and the reciprocal as single instructions (vscalefps; the 14-bit estimate plus one Newton
/// step); elsewhere the argument is clamped to where exp is a normal float and the reciprocal is a divide. Against the correctly rounded value it is off by a few ulp (KernelTests: 2e-6 relative).
/// </summary>
internal static class FastSigmoid
{
    private const float Log2E = 1.44269504088896341f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    private const float ArgMin = -87.33654f, ArgMax = 88.37626f;
    private const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f,
        P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    // Inlined into the kernels that call them: as calls, the vectors go through the stack and the kernels' scalars are
    // spilled around every call (a group norm + SiLU pass ran at a third of its inlined speed).

    /// <summary>On AVX-512 one 512-bit pass; elsewhere (a software Vector512) the two 256-bit halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Invoke(Vector512<float> x) =>
        Avx512F.IsSupported ? InvokeAvx512(x) : Vector512.Create(Invoke(x.GetLower()), Invoke(x.GetUpper()));

    /// <summary>0 where exp(-x) was clamped at the top (x below about -88): there the logistic is below 1e-38, and exactly 0 makes silu(-inf) NaN and silu(-3e38) zero, as the plain formula gives.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Saturate(Vector512<float> t, Vector512<float> s) =>
        Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(t, Vector512.Create(ArgMax)), Vector512<float>.Zero, s);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Saturate(Vector256<float> t, Vector256<float> s) =>
        Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(t, Vector256.Create(ArgMax)), Vector256<float>.Zero, s);

    /// <summary>
    /// AVX-512: 2^n applied by vscalefps, and the reciprocal from its 14-bit estimate and one Newton step. The
    /// argument is clamped as on the other paths, so 1 + exp(-x) stays finite and the Newton step never meets
    /// infinity times zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> InvokeAvx512(Vector512<float> x)
    {
        var t = Vector512.Min(Vector512.Max(-x, Vector512.Create(ArgMin)), Vector512.Create(ArgMax));
        var n = Vector512.Round(t * Vector512.Create(Log2E));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), t);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        var e = Avx512F.Scale(Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One), n);
        var d = Vector512<float>.One + e;
        var rc = Avx512F.Reciprocal14(d);
        return Saturate(t, rc * Vector512.FusedMultiplyAdd(-d, rc, Vector512.Create(2f)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Invoke(Vector256<float> x)
    {
        var t = Vector256.Min(Vector256.Max(-x, Vector256.Create(ArgMin)), Vector256.Create(ArgMax));
        var n = Vector256.Round(t * Vector256.Create(Log2E));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), t);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        var e = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        e *= Vector256.ShiftLeft(Vector256.ConvertToInt32Native(n) + Vector256.Create(127), 23).AsSingle();
        var d = Vector256<float>.One + e;
        if (!Avx512F.VL.IsSupported) return Saturate(t, Vector256<float>.One / d);
        var rc = Avx512F.VL.Reciprocal14(d);
        return Saturate(t, rc * Vector256.FusedMultiplyAdd(-d, rc, Vector256.Create(2f)));
    }
}

/// <summary>SiLU: x * sigmoid(x) = x / (1 + exp(-x)); the wide vectors take the sigmoid from <see cref="FastSigmoid"/>.</summary>
internal readonly struct SiluKernel : IUnaryKernel
{
    public float Invoke(float x) => x / (1f + MathF.Exp(-x));
    public Vector128<float> Invoke(Vector128<float> x) => x / (Vector128<float>.One + Vector128.Exp(-x));
    public Vector256<float> Invoke(Vector256<float> x) => x * FastSigmoid.Invoke(x);
    public Vector512<float> Invoke(Vector512<float> x) => x * FastSigmoid.Invoke(x);
}

// ---- unary backward: (x, y = f(x), dy) -> dx --------------------------------------------------------------

internal readonly struct NegBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => -dy;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => -dy;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => -dy;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => -dy;
}

/// <summary>exp: dx = dy * y.</summary>
internal readonly struct ExpBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy * y;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy * y;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy * y;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy * y;
}

/// <summary>log: dx = dy / x.</summary>
internal readonly struct LogBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy / x;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy / x;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy / x;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy / x;
}

/// <summary>sqrt: dx = dy * 0.5 / y.</summary>
internal readonly struct SqrtBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy * 0.5f / y;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy * 0.5f / y;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy * 0.5f / y;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy * 0.5f / y;
}

/// <summary>square: dx = 2 x dy.</summary>
internal readonly struct SquareBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => 2f * x * dy;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => 2f * x * dy;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => 2f * x * dy;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => 2f * x * dy;
}

/// <summary>sigmoid: dx = dy * y * (1 - y).</summary>
internal readonly struct SigmoidBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy * y * (1f - y);
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy * y * (Vector128<float>.One - y);
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy * y * (Vector256<float>.One - y);
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy * y * (Vector512<float>.One - y);
}

/// <summary>SiLU: with s = sigmoid(x), dx = dy * s * (1 + x (1 - s)); recomputes s from x, not from y.</summary>
internal readonly struct SiluBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy)
    {
        float s = 1f / (1f + MathF.Exp(-x));
        return dy * s * (1f + x * (1f - s));
    }

    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy)
    {
        var one = Vector128<float>.One;
        var s = one / (one + Vector128.Exp(-x));
        return dy * s * (one + x * (one - s));
    }

    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy)
    {
        var one = Vector256<float>.One;
        var s = FastSigmoid.Invoke(x);
        return dy * s * (one + x * (one - s));
    }

    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy)
    {
        var one = Vector512<float>.One;
        var s = FastSigmoid.Invoke(x);
        return dy * s * (one + x * (one - s));
    }
}

/// <summary>tanh: dx = dy * (1 - y^2).</summary>
internal readonly struct TanhBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy * (1f - y * y);
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy * (Vector128<float>.One - y * y);
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy * (Vector256<float>.One - y * y);
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy * (Vector512<float>.One - y * y);
}

/// <summary>relu: dx = x &gt; 0 ? dy : 0, and NaN where x is NaN (the NaN of a diverging run stays visible).</summary>
internal readonly struct ReluBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => x > 0f ? dy : x <= 0f ? 0f : x;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) =>
        Vector128.ConditionalSelect(Vector128.GreaterThan(x, Vector128<float>.Zero), dy,
            Vector128.ConditionalSelect(Vector128.LessThanOrEqual(x, Vector128<float>.Zero), Vector128<float>.Zero, x));
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) =>
        Vector256.ConditionalSelect(Vector256.GreaterThan(x, Vector256<float>.Zero), dy,
            Vector256.ConditionalSelect(Vector256.LessThanOrEqual(x, Vector256<float>.Zero), Vector256<float>.Zero, x));
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) =>
        Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512<float>.Zero), dy,
            Vector512.ConditionalSelect(Vector512.LessThanOrEqual(x, Vector512<float>.Zero), Vector512<float>.Zero, x));
}

/// <summary>abs: dx = dy * sign(x), with sign(0) = 0 as in PyTorch, and NaN where x is NaN.</summary>
internal readonly struct AbsBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => x > 0f ? dy : x < 0f ? -dy : x == 0f ? 0f : x;

    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy)
    {
        var z = Vector128<float>.Zero;
        return Vector128.ConditionalSelect(Vector128.GreaterThan(x, z), dy,
            Vector128.ConditionalSelect(Vector128.LessThan(x, z), -dy, Vector128.ConditionalSelect(Vector128.Equals(x, z), z, x)));
    }

    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy)
    {
        var z = Vector256<float>.Zero;
        return Vector256.ConditionalSelect(Vector256.GreaterThan(x, z), dy,
            Vector256.ConditionalSelect(Vector256.LessThan(x, z), -dy, Vector256.ConditionalSelect(Vector256.Equals(x, z), z, x)));
    }

    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy)
    {
        var z = Vector512<float>.Zero;
        return Vector512.ConditionalSelect(Vector512.GreaterThan(x, z), dy,
            Vector512.ConditionalSelect(Vector512.LessThan(x, z), -dy, Vector512.ConditionalSelect(Vector512.Equals(x, z), z, x)));
    }
}

/// <summary>sin: dx = dy * cos(x).</summary>
internal readonly struct SinBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => dy * MathF.Cos(x);
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => dy * Vector128.Cos(x);
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => dy * Vector256.Cos(x);
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => dy * Vector512.Cos(x);
}

/// <summary>cos: dx = -dy * sin(x).</summary>
internal readonly struct CosBackward : ITernaryKernel
{
    public float Invoke(float x, float y, float dy) => -dy * MathF.Sin(x);
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y, Vector128<float> dy) => -dy * Vector128.Sin(x);
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y, Vector256<float> dy) => -dy * Vector256.Sin(x);
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y, Vector512<float> dy) => -dy * Vector512.Sin(x);
}

// ---- two-input kernels with scalars ---------------------------------------------------------------------

/// <summary>y' = a x + b y.</summary>
internal readonly struct AxpbyKernel(float a, float b) : IBinaryKernel
{
    public float Invoke(float x, float y) => a * x + b * y;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y) => Vector128.Create(a) * x + Vector128.Create(b) * y;
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y) => Vector256.Create(a) * x + Vector256.Create(b) * y;
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y) => Vector512.Create(a) * x + Vector512.Create(b) * y;
}

/// <summary>Softmax backward with s = sum(dy * y) of the row: dx = y * (dy - s).</summary>
internal readonly struct SoftmaxBackwardKernel(float s) : IBinaryKernel
{
    public float Invoke(float y, float dy) => y * (dy - s);
    public Vector128<float> Invoke(Vector128<float> y, Vector128<float> dy) => y * (dy - Vector128.Create(s));
    public Vector256<float> Invoke(Vector256<float> y, Vector256<float> dy) => y * (dy - Vector256.Create(s));
    public Vector512<float> Invoke(Vector512<float> y, Vector512<float> dy) => y * (dy - Vector512.Create(s));
}

/// <summary>
/// One Adam(W) step with PyTorch's operation order: p *= 1 - lr*wd; m = b1 m + (1-b1) g;
/// v = b2 v + (1-b2) g^2; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
/// </summary>
internal readonly struct AdamKernel
{
    private readonly float _decay, _b1, _c1, _b2, _c2, _step, _rbc2, _eps;

    public AdamKernel(in Ddpm.Tensors.AdamStepParams p)
    {
        _decay = 1f - p.LearningRate * p.WeightDecay;
        _b1 = p.Beta1;
        _c1 = 1f - p.Beta1;
        _b2 = p.Beta2;
        _c2 = 1f - p.Beta2;
        _step = p.LearningRate / p.BiasCorrection1;
        _rbc2 = MathF.Sqrt(p.BiasCorrection2);
        _eps = p.Eps;
    }

    public unsafe void Run(float* param, float* grad, float* m, float* v, int n, int maxBits = 512)
    {
        int i = 0;
        if (maxBits >= 512 && Vector512.IsHardwareAccelerated)
        {
            var decay = Vector512.Create(_decay); var b1 = Vector512.Create(_b1); var c1 = Vector512.Create(_c1);
            var b2 = Vector512.Create(_b2); var c2 = Vector512.Create(_c2); var step = Vector512.Create(_step);
            var rbc2 = Vector512.Create(_rbc2); var eps = Vector512.Create(_eps);
            for (; i <= n - 16; i += 16)
            {
                var g = Vector512.Load(grad + i);
                var mi = b1 * Vector512.Load(m + i) + c1 * g;
                var vi = b2 * Vector512.Load(v + i) + c2 * (g * g);
                var p = Vector512.Load(param + i) * decay;
                p -= step * (mi / (Vector512.Sqrt(vi) / rbc2 + eps));
                mi.Store(m + i); vi.Store(v + i); p.Store(param + i);
            }
        }
        if (maxBits >= 256 && Vector256.IsHardwareAccelerated)
        {
            var decay = Vector256.Create(_decay); var b1 = Vector256.Create(_b1); var c1 = Vector256.Create(_c1);
            var b2 = Vector256.Create(_b2); var c2 = Vector256.Create(_c2); var step = Vector256.Create(_step);
            var rbc2 = Vector256.Create(_rbc2); var eps = Vector256.Create(_eps);
            for (; i <= n - 8; i += 8)
            {
                var g = Vector256.Load(grad + i);
                var mi = b1 * Vector256.Load(m + i) + c1 * g;
                var vi = b2 * Vector256.Load(v + i) + c2 * (g * g);
                var p = Vector256.Load(param + i) * decay;
                p -= step * (mi / (Vector256.Sqrt(vi) / rbc2 + eps));
                mi.Store(m + i); vi.Store(v + i); p.Store(param + i);
            }
        }
        if (maxBits >= 128 && Vector128.IsHardwareAccelerated)
        {
            var decay = Vector128.Create(_decay); var b1 = Vector128.Create(_b1); var c1 = Vector128.Create(_c1);
            var b2 = Vector128.Create(_b2); var c2 = Vector128.Create(_c2); var step = Vector128.Create(_step);
            var rbc2 = Vector128.Create(_rbc2); var eps = Vector128.Create(_eps);
            for (; i <= n - 4; i += 4)
            {
                var g = Vector128.Load(grad + i);
                var mi = b1 * Vector128.Load(m + i) + c1 * g;
                var vi = b2 * Vector128.Load(v + i) + c2 * (g * g);
                var p = Vector128.Load(param + i) * decay;
                p -= step * (mi / (Vector128.Sqrt(vi) / rbc2 + eps));
                mi.Store(m + i); vi.Store(v + i); p.Store(param + i);
            }
        }
        for (; i < n; i++)
        {
            float g = grad[i];
            float mi = _b1 * m[i] + _c1 * g;
            float vi = _b2 * v[i] + _c2 * (g * g);
            float p = param[i] * _decay;
            p -= _step * (mi / (MathF.Sqrt(vi) / _rbc2 + _eps));
            m[i] = mi; v[i] = vi; param[i] = p;
        }
    }
}

/// <summary>
/// out = a x + b (y - m) + c: the group-norm input gradient per channel (x = dy, y = the input, m = its
/// mean). Subtracting the mean before scaling avoids the cancellation of b y + (c - b m) when 1/std is large.
/// </summary>
internal readonly struct LinearCombinationKernel(float a, float b, float m, float c) : IBinaryKernel
{
    public float Invoke(float x, float y) => a * x + b * (y - m) + c;
    public Vector128<float> Invoke(Vector128<float> x, Vector128<float> y) =>
        Vector128.Create(a) * x + Vector128.Create(b) * (y - Vector128.Create(m)) + Vector128.Create(c);
    public Vector256<float> Invoke(Vector256<float> x, Vector256<float> y) =>
        Vector256.Create(a) * x + Vector256.Create(b) * (y - Vector256.Create(m)) + Vector256.Create(c);
    public Vector512<float> Invoke(Vector512<float> x, Vector512<float> y) =>
        Vector512.Create(a) * x + Vector512.Create(b) * (y - Vector512.Create(m)) + Vector512.Create(c);
}

/// <summary>y = (x - mean) * scale + shift: group-norm output per channel (scale = gamma / std, shift = beta).</summary>
internal readonly struct NormalizeKernel(float mean, float scale, float shift) : IUnaryKernel
{
    public float Invoke(float x) => (x - mean) * scale + shift;
    public Vector128<float> Invoke(Vector128<float> x) => (x - Vector128.Create(mean)) * Vector128.Create(scale) + Vector128.Create(shift);
    public Vector256<float> Invoke(Vector256<float> x) => (x - Vector256.Create(mean)) * Vector256.Create(scale) + Vector256.Create(shift);
    public Vector512<float> Invoke(Vector512<float> x) => (x - Vector512.Create(mean)) * Vector512.Create(scale) + Vector512.Create(shift);
}

/// <summary>
/// silu((x - mean) * scale + shift): group norm and SiLU in one pass; z is formed exactly as
/// <see cref="NormalizeKernel"/> forms it and SiLU applied as <see cref="SiluKernel"/>, so the result is bitwise that
/// of the two ops one after the other wherever both run the same vector width (channels of a whole number of vectors).
/// </summary>
internal readonly struct NormalizeSiluKernel(float mean, float scale, float shift) : IUnaryKernel
{
    public float Invoke(float x) => new SiluKernel().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x));
    public Vector128<float> Invoke(Vector128<float> x) => new SiluKernel().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x));
    public Vector256<float> Invoke(Vector256<float> x) => new SiluKernel().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x));
    public Vector512<float> Invoke(Vector512<float> x) => new SiluKernel().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x));
}

/// <summary>
/// (dy, x) -> dy silu'(z), z = (x - mean) * scale + shift recomputed as the forward pass formed it: the gradient
/// of the normalised tensor under a fused group norm + SiLU (<see cref="SiluBackward"/> of the z the forward pass formed).
/// </summary>
internal readonly struct NormalizeSiluBackwardKernel(float mean, float scale, float shift) : IBinaryKernel
{
    public float Invoke(float dy, float x) => new SiluBackward().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x), 0f, dy);
    public Vector128<float> Invoke(Vector128<float> dy, Vector128<float> x) =>
        new SiluBackward().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x), default, dy);
    public Vector256<float> Invoke(Vector256<float> dy, Vector256<float> x) =>
        new SiluBackward().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x), default, dy);
    public Vector512<float> Invoke(Vector512<float> dy, Vector512<float> x) =>
        new SiluBackward().Invoke(new NormalizeKernel(mean, scale, shift).Invoke(x), default, dy);
}

/// <summary>Softmax backward with a per-position row sum s: dx = y * (dy - s).</summary>
internal readonly struct SoftmaxBackwardRowsKernel : ITernaryKernel
{
    public float Invoke(float y, float dy, float s) => y * (dy - s);
    public Vector128<float> Invoke(Vector128<float> y, Vector128<float> dy, Vector128<float> s) => y * (dy - s);
    public Vector256<float> Invoke(Vector256<float> y, Vector256<float> dy, Vector256<float> s) => y * (dy - s);
    public Vector512<float> Invoke(Vector512<float> y, Vector512<float> dy, Vector512<float> s) => y * (dy - s);
}

/// <summary>Inverted-dropout mask from uniforms: u &lt; keep ? 1/keep : 0.</summary>
internal readonly struct DropoutKernel(float keep, float scale) : IUnaryKernel
{
    public float Invoke(float u) => u < keep ? scale : 0f;
    public Vector128<float> Invoke(Vector128<float> u) =>
        Vector128.ConditionalSelect(Vector128.LessThan(u, Vector128.Create(keep)), Vector128.Create(scale), Vector128<float>.Zero);
    public Vector256<float> Invoke(Vector256<float> u) =>
        Vector256.ConditionalSelect(Vector256.LessThan(u, Vector256.Create(keep)), Vector256.Create(scale), Vector256<float>.Zero);
    public Vector512<float> Invoke(Vector512<float> u) =>
        Vector512.ConditionalSelect(Vector512.LessThan(u, Vector512.Create(keep)), Vector512.Create(scale), Vector512<float>.Zero);
}

/// <summary>y = x * scale + shift.</summary>
internal readonly struct AffineKernel(float scale, float shift) : IUnaryKernel
{
    public float Invoke(float x) => x * scale + shift;
    public Vector128<float> Invoke(Vector128<float> x) => x * Vector128.Create(scale) + Vector128.Create(shift);
    public Vector256<float> Invoke(Vector256<float> x) => x * Vector256.Create(scale) + Vector256.Create(shift);
    public Vector512<float> Invoke(Vector512<float> x) => x * Vector512.Create(scale) + Vector512.Create(shift);
}
