using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// 4x4 stride-2 padding-1 convolutions on images of even height and width (the UNet's upsampling is the transposed
/// convolution of this geometry: its forward is this backward-data) as one 3x3 stride-1 padding-1 convolution. The input
/// is split into its four phases, x'[(2p + q) C + c, a, b] = x[c, 2a + p, 2b + q] ([4C, H/2, W/2], "space to depth"),
/// and output (i, j) reads phase row a = i + dh only for dh in -1..1, tap kh = 2 dh + p + 1 when that lies in 0..3. So
/// y = conv3x3(x', w') with w'[o, (2p + q) C + c, dh + 1, dw + 1] = w[o, c, 2 dh + p + 1, 2 dw + q + 1] and zero where
/// the tap falls outside the 4x4 kernel: 2.25x the multiplies of the 4x4 sums, but Winograd runs them (F(4x4, 3x3): 4x
/// fewer products than direct sums): up to 2x faster per pass than the strided implicit GEMM, and no slower (docs/cpu-backend.md).
/// </summary>
internal static unsafe class PhaseConv
{
    /// <summary>The 3x3 stride-1 convolution over the phases of a geometry this class handles, or false.</summary>
    public static bool Applies(in ConvGeometry g, out ConvGeometry phases)
    {
        phases = default;
        if (g.KH != 4 || g.KW != 4 || g.StrideH != 2 || g.StrideW != 2 || g.PadH != 1 || g.PadW != 1 || g.H % 2 != 0 || g.W % 2 != 0)
            return false;
        phases = new ConvGeometry(g.N, 4 * g.C, g.H / 2, g.W / 2, g.O, 3, 3, 1, 1, 1, 1);
        return true;
    }

    /// <summary>Kernel row (or column) of the 4x4 kernel at tap t (0..2) of phase p, or -1 where it is a zero tap.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Tap(int t, int p)
    {
        int k = 2 * t + p - 1;
        return k is >= 0 and < 4 ? k : -1;
    }

    /// <summary>w' [O, 4C, 3, 3] from w [O, C, 4, 4] (every 4x4 tap once, the rest zero).</summary>
    public static void Weights(WorkerPool pool, float* w, float* wPhases, in ConvGeometry g)
    {
        int c = g.C, o = g.O;
        nint src = (nint)w, dst = (nint)wPhases;
        pool.ForItems(o, Math.Max(1, 4096 / (36 * c)), (o0, count) =>
        {
            for (int oc = o0; oc < o0 + count; oc++)
                for (int ph = 0; ph < 4; ph++)
                    for (int ci = 0; ci < c; ci++)
                    {
                        float* s = (float*)src + ((long)oc * c + ci) * 16;
                        float* d = (float*)dst + ((long)oc * 4 * c + ph * c + ci) * 9;
                        for (int th = 0; th < 3; th++)
                        {
                            int kh = Tap(th, ph >> 1);
                            for (int tw = 0; tw < 3; tw++)
                            {
                                int kw = Tap(tw, ph & 1);
                                d[th * 3 + tw] = kh < 0 || kw < 0 ? 0f : s[kh * 4 + kw];
                            }
                        }
                    }
        });
    }

    /// <summary>dw [O, C, 4, 4] from the gradient of w' [O, 4C, 3, 3] (the zero taps' entries are not weights).</summary>
    public static void WeightGradient(WorkerPool pool, float* dwPhases, float* dw, in ConvGeometry g)
    {
        int c = g.C, o = g.O;
        nint src = (nint)dwPhases, dst = (nint)dw;
        pool.ForItems(o, Math.Max(1, 4096 / (36 * c)), (o0, count) =>
        {
            for (int oc = o0; oc < o0 + count; oc++)
                for (int ci = 0; ci < c; ci++)
                {
                    float* d = (float*)dst + ((long)oc * c + ci) * 16;
                    for (int kh = 0; kh < 4; kh++)
                    {
                        int p = (kh + 1) & 1, th = (kh + 1 - p) >> 1;
                        for (int kw = 0; kw < 4; kw++)
                        {
                            int q = (kw + 1) & 1, tw = (kw + 1 - q) >> 1;
                            d[kh * 4 + kw] = ((float*)src)[((long)oc * 4 * c + (2 * p + q) * c + ci) * 9 + th * 3 + tw];
                        }
                    }
                }
        });
    }

    /// <summary>x' [N, 4C, H/2, W/2] = the four phases of x [N, C, H, W].</summary>
    public static void Split(WorkerPool pool, float* x, float* xPhases, in ConvGeometry g, bool avx512) =>
        Planes(pool, x, xPhases, g, avx512, split: true);

    /// <summary>dx [N, C, H, W] = dx' [N, 4C, H/2, W/2] put back in place (the inverse of <see cref="Split"/>).</summary>
    public static void Merge(WorkerPool pool, float* dxPhases, float* dx, in ConvGeometry g, bool avx512) =>
        Planes(pool, dx, dxPhases, g, avx512, split: false);

    /// <summary>
    /// Per (sample, channel) plane and row phase p: the rows 2a + p read one after another are a sequence whose even
    /// elements are phase plane (p, 0) and odd ones phase plane (p, 1), row after row. With rows a multiple of a vector
    /// (16 floats with AVX-512, 8 with AVX2), two vector-long pieces of that sequence are deinterleaved (or interleaved
    /// back) by two permutes; the rest goes element by element.
    /// </summary>
    private static void Planes(WorkerPool pool, float* image, float* phases, in ConvGeometry g, bool avx512, bool split)
    {
        int h = g.H, w = g.W, c = g.C, h2 = h / 2, w2 = w / 2;
        long plane = (long)h2 * w2;
        int piece = avx512 && Avx512F.IsSupported ? 16 : Avx2.IsSupported ? 8 : 0;
        if (piece > 0 && w % piece != 0) piece = 0;
        nint ip = (nint)image, pp = (nint)phases;
        pool.ForItems(g.N * c, Math.Max(1, 16384 / (h * w)), (r0, count) =>
        {
            for (int r = r0; r < r0 + count; r++)
            {
                int n = r / c, ci = r % c;
                float* img = (float*)ip + (long)r * h * w;
                for (int p = 0; p < 2; p++)
                {
                    float* even = (float*)pp + ((long)n * 4 * c + 2 * p * c + ci) * plane;
                    float* odd = even + (long)c * plane;
                    long done = 0;
                    if (piece > 0)
                    {
                        // Piece u starts at row a = piece u / w of the phase, column piece u % w; a pair of pieces is
                        // one piece of each phase plane, at element piece u / 2.
                        int pairs = h2 * w / piece / 2;
                        for (int v = 0; v < pairs; v++)
                        {
                            int u0 = piece * 2 * v, u1 = u0 + piece;
                            float* s0 = img + (long)(2 * (u0 / w) + p) * w + u0 % w;
                            float* s1 = img + (long)(2 * (u1 / w) + p) * w + u1 % w;
                            long at = (long)piece * v;
                            if (piece == 16)
                            {
                                if (split) SplitPair512(s0, s1, even + at, odd + at);
                                else MergePair512(even + at, odd + at, s0, s1);
                            }
                            else if (split) SplitPair256(s0, s1, even + at, odd + at);
                            else MergePair256(even + at, odd + at, s0, s1);
                        }
                        done = (long)piece * pairs;
                    }
                    for (long e = done; e < plane; e++)
                    {
                        long a = e / w2, b = e % w2;
                        float* s = img + (2 * a + p) * w + 2 * b;
                        if (split) { even[e] = s[0]; odd[e] = s[1]; }
                        else { s[0] = even[e]; s[1] = odd[e]; }
                    }
                }
            }
        });
    }

    private static readonly Vector512<int> EvenIndex = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> OddIndex = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    private static readonly Vector512<int> LowIndex = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    private static readonly Vector512<int> HighIndex = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);

    /// <summary>Even and odd elements of the 32 floats s0[0..16), s1[0..16) to 16 floats each.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SplitPair512(float* s0, float* s1, float* even, float* odd)
    {
        var lo = Vector512.Load(s0);
        var hi = Vector512.Load(s1);
        Avx512F.PermuteVar16x32x2(lo, EvenIndex, hi).Store(even);
        Avx512F.PermuteVar16x32x2(lo, OddIndex, hi).Store(odd);
    }

    /// <summary>The inverse of <see cref="SplitPair512"/>: 16 even and 16 odd floats interleaved into s0 and s1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MergePair512(float* even, float* odd, float* s0, float* s1)
    {
        var e = Vector512.Load(even);
        var o = Vector512.Load(odd);
        Avx512F.PermuteVar16x32x2(e, LowIndex, o).Store(s0);
        Avx512F.PermuteVar16x32x2(e, HighIndex, o).Store(s1);
    }

    /// <summary>Even and odd elements of the 16 floats s0[0..8), s1[0..8) to 8 floats each (AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SplitPair256(float* s0, float* s1, float* even, float* odd)
    {
        var a = Vector256.Load(s0);
        var b = Vector256.Load(s1);
        // [a0 a2 b0 b2 | a4 a6 b4 b6], its 64-bit quarters reordered to [a0 a2 a4 a6 b0 b2 b4 b6]; odds alike.
        var e = Avx.Shuffle(a, b, 0b10_00_10_00).AsDouble();
        var o = Avx.Shuffle(a, b, 0b11_01_11_01).AsDouble();
        Avx2.Permute4x64(e, 0b11_01_10_00).AsSingle().Store(even);
        Avx2.Permute4x64(o, 0b11_01_10_00).AsSingle().Store(odd);
    }

    /// <summary>The inverse of <see cref="SplitPair256"/>: 8 even and 8 odd floats interleaved into s0 and s1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MergePair256(float* even, float* odd, float* s0, float* s1)
    {
        var e = Vector256.Load(even);
        var o = Vector256.Load(odd);
        var lo = Avx.UnpackLow(e, o);   // [e0 o0 e1 o1 | e4 o4 e5 o5]
        var hi = Avx.UnpackHigh(e, o);  // [e2 o2 e3 o3 | e6 o6 e7 o7]
        Avx.Permute2x128(lo, hi, 0x20).Store(s0);
        Avx.Permute2x128(lo, hi, 0x31).Store(s1);
    }
}
