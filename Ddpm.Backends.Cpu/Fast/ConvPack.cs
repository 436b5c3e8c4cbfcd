using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// The im2col matrix of x [N, C, H, W] as a GEMM B operand, packed straight from the image (implicit GEMM):
/// op(B)[p, j] = x[s, c, oh*sh - ph + kh, ow*sw - pw + kw] (0 in the padding), with row p = (c*KH + kh)*KW + kw
/// and column j = s*OH*OW + oh*OW + ow, so the columns of all N samples lie side by side. A conv's forward is
/// then W [O, C*KH*KW] times this B. Nothing of size C*KH*KW*N*OH*OW is written: each panel is built in cache.
/// </summary>
internal readonly unsafe struct ConvColumnsB(float* x, ConvGeometry g) : IPackB
{
    public void Pack(int pc, int kc, int j0, int cols, int nr, float* dst, bool gather = false)
    {
        // The strip's columns as runs of consecutive output columns within one output row of one sample: at most
        // a partial row, whole rows and a partial row. On the stack unless the rows are very narrow (the whole
        // per-sample im2col matrix is packed as one panel, so cols can be a whole image).
        int maxRuns = Math.Min(cols, cols / g.OW + 2);
        bool small = maxRuns <= 256;
        Span<int> runStart = small ? stackalloc int[maxRuns + 1] : new int[maxRuns + 1];
        Span<int> runIh = small ? stackalloc int[maxRuns] : new int[maxRuns];
        Span<int> runIw = small ? stackalloc int[maxRuns] : new int[maxRuns];
        Span<long> runSample = small ? stackalloc long[maxRuns] : new long[maxRuns];
        int ohw = g.OH * g.OW, hw = g.H * g.W, runs = 0;
        long chw = (long)g.C * hw;
        for (int q = 0; q < cols;)
        {
            int j = j0 + q, s = j / ohw, r = j - s * ohw, oh = r / g.OW, ow = r - oh * g.OW;
            runStart[runs] = q;
            runIh[runs] = oh * g.StrideH - g.PadH;
            runIw[runs] = ow * g.StrideW - g.PadW;
            runSample[runs] = s * chw;
            runs++;
            q += Math.Min(cols - q, g.OW - ow);
        }
        runStart[runs] = cols;

        int kk = g.KH * g.KW, c = pc / kk, kh = pc % kk / g.KW, kw = pc % g.KW;
        for (int p = 0; p < kc; p++, dst += nr)
        {
            float* xc = x + (long)c * hw;
            for (int ri = 0; ri < runs; ri++)
            {
                int q0 = runStart[ri], len = runStart[ri + 1] - q0;
                float* d = dst + q0;
                int ih = runIh[ri] + kh;
                if ((uint)ih >= (uint)g.H)
                {
                    for (int t = 0; t < len; t++) d[t] = 0f;
                    continue;
                }
                float* src = xc + runSample[ri] + (long)ih * g.W;
                int iw0 = runIw[ri] + kw;
                if (g.StrideW == 1)
                {
                    // Output columns t with 0 <= iw0 + t < W are inside the image.
                    int a = Math.Clamp(-iw0, 0, len), b = Math.Clamp(g.W - iw0, a, len);
                    for (int t = 0; t < a; t++) d[t] = 0f;
                    Rows.Copy(src + iw0 + a, d + a, b - a);
                    for (int t = b; t < len; t++) d[t] = 0f;
                }
                else
                {
                    for (int t = 0, iw = iw0; t < len; t++, iw += g.StrideW) d[t] = (uint)iw < (uint)g.W ? src[iw] : 0f;
                }
            }
            for (int t = cols; t < nr; t++) dst[t] = 0f;
            Odometer.Step(ref kw, ref kh, ref c, g.KW, g.KH);
        }
    }
}

/// <summary>
/// The transpose of <see cref="ConvColumnsB"/> as a GEMM B operand: op(B)[p, j] = col[j, p], row p an output
/// position (s, oh, ow) and column j a filter tap (c, kh, kw). A conv's weight gradient is then
/// dy [O, N*OH*OW] times this B, again without an im2col matrix in memory.
/// </summary>
internal readonly unsafe struct ConvColumnsTB(float* x, ConvGeometry g) : IPackB
{
    /// <summary><paramref name="gather"/>: use the AVX2 gathers (the backend's option; the caller checked the CPU has AVX2).</summary>
    public void Pack(int pc, int kc, int j0, int cols, int nr, float* dst, bool gather)
    {
        if (gather && nr % 8 == 0) PackGather(pc, kc, j0, cols, nr, dst);
        else PackScalar(pc, kc, j0, cols, nr, dst);
    }

    /// <summary>Per column q of the strip: the tap's offset in a sample (c*H*W + kh*W + kw) and its kh, kw.</summary>
    private void Taps(int j0, int cols, int* offset, int* tapKh, int* tapKw)
    {
        int kk = g.KH * g.KW, hw = g.H * g.W;
        for (int q = 0; q < cols; q++)
        {
            int j = j0 + q, c = j / kk, kh = j % kk / g.KW, kw = j % g.KW;
            offset[q] = c * hw + kh * g.W + kw;
            tapKh[q] = kh;
            tapKw[q] = kw;
        }
    }

    /// <summary>
    /// Rows of the panel as 8-lane AVX2 gathers from x, lanes in the padding (or past <c>cols</c>) masked off:
    /// masked lanes are neither loaded nor faulted, and read as 0.
    /// </summary>
    private void PackGather(int pc, int kc, int j0, int cols, int nr, float* dst)
    {
        int* offset = stackalloc int[nr];
        int* tapKh = stackalloc int[nr];
        int* tapKw = stackalloc int[nr];
        int* lane = stackalloc int[nr];
        Taps(j0, cols, offset, tapKh, tapKw);
        for (int q = 0; q < nr; q++)
        {
            if (q >= cols) offset[q] = tapKh[q] = tapKw[q] = 0;
            lane[q] = q < cols ? -1 : 0;
        }
        int ohw = g.OH * g.OW;
        long chw = (long)g.C * g.H * g.W;
        var hv = Vector256.Create((uint)g.H);
        var wv = Vector256.Create((uint)g.W);
        int s = pc / ohw, r = pc - s * ohw, oh = r / g.OW, ow = r - oh * g.OW;
        for (int p = 0; p < kc; p++, dst += nr)
        {
            int ih0 = oh * g.StrideH - g.PadH, iw0 = ow * g.StrideW - g.PadW;
            var basev = Vector256.Create((int)(s * chw) + ih0 * g.W + iw0);
            bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + g.KH <= g.H && iw0 + g.KW <= g.W;
            var ihv = Vector256.Create(ih0);
            var iwv = Vector256.Create(iw0);
            for (int q = 0; q < nr; q += 8)
            {
                var idx = basev + Vector256.Load(offset + q);
                var mask = Vector256.Load(lane + q);
                if (!inside)
                {
                    var okH = Vector256.LessThan((ihv + Vector256.Load(tapKh + q)).AsUInt32(), hv);
                    var okW = Vector256.LessThan((iwv + Vector256.Load(tapKw + q)).AsUInt32(), wv);
                    mask &= (okH & okW).AsInt32();
                }
                Avx2.GatherMaskVector256(Vector256<float>.Zero, x, idx, mask.AsSingle(), 4).Store(dst + q);
            }
            Odometer.Step(ref ow, ref oh, ref s, g.OW, g.OH);
        }
    }

    private void PackScalar(int pc, int kc, int j0, int cols, int nr, float* dst)
    {
        int* tapOffset = stackalloc int[nr];
        int* tapKh = stackalloc int[nr];
        int* tapKw = stackalloc int[nr];
        Taps(j0, cols, tapOffset, tapKh, tapKw);
        int ohw = g.OH * g.OW;
        long chw = (long)g.C * g.H * g.W;
        int s = pc / ohw, r = pc - s * ohw, oh = r / g.OW, ow = r - oh * g.OW;
        for (int p = 0; p < kc; p++, dst += nr)
        {
            int ih0 = oh * g.StrideH - g.PadH, iw0 = ow * g.StrideW - g.PadW;
            float* xs = x + s * chw + (long)ih0 * g.W + iw0;
            bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + g.KH <= g.H && iw0 + g.KW <= g.W;
            if (inside)
            {
                for (int q = 0; q < cols; q++) dst[q] = xs[tapOffset[q]];
            }
            else
            {
                for (int q = 0; q < cols; q++)
                    dst[q] = (uint)(ih0 + tapKh[q]) < (uint)g.H && (uint)(iw0 + tapKw[q]) < (uint)g.W ? xs[tapOffset[q]] : 0f;
            }
            for (int q = cols; q < nr; q++) dst[q] = 0f;
            Odometer.Step(ref ow, ref oh, ref s, g.OW, g.OH);
        }
    }
}

/// <summary>Mixed-radix counters: the (kw, kh, c) tap and (ow, oh, s) position indices of the packers.</summary>
internal static class Odometer
{
    /// <summary>Advances (inner, middle, outer) by one, inner counting to <paramref name="innerSize"/> and middle to <paramref name="middleSize"/>.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static void Step(ref int inner, ref int middle, ref int outer, int innerSize, int middleSize)
    {
        if (++inner < innerSize) return;
        inner = 0;
        if (++middle < middleSize) return;
        middle = 0;
        outer++;
    }
}
