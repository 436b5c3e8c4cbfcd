using System.Numerics;
using System.Runtime.CompilerServices;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// Stride-1 convolutions with at most 4 output channels (the UNet's 1-channel output layer, and the input gradient of
/// its 1-channel image projection) as direct sums vectorised along the output rows: as a GEMM their operand of 1 to 4
/// rows leaves most of a register tile idle (3 GFLOP/s on the benchmark machine against 16 here, forward of
/// [64, 32, 32, 32] -> 1). Input rows are copied with their zero padding first, so every tap is a whole-row multiply-add.
/// </summary>
internal static unsafe class DirectConv
{
    /// <summary>Whether a convolution runs here: stride 1 and at most 4 output channels.</summary>
    public static bool Applies(in ConvGeometry g) => g.StrideH == 1 && g.StrideW == 1 && g.O <= 4;

    /// <summary>The channels c0 .. c0 + channels of sample s, rows padded by PadW zeros each side: [channels, H, W + 2 PadW].</summary>
    private static float* PadRows(float* x, in ConvGeometry g, int s, int c0, int channels, float* dst)
    {
        int wp = g.W + 2 * g.PadW, lanes = Vector<float>.Count;
        for (int c = 0; c < channels; c++)
        {
            float* src = x + ((long)s * g.C + c0 + c) * g.H * g.W;
            for (int ih = 0; ih < g.H; ih++, src += g.W)
            {
                float* d = dst + ((long)c * g.H + ih) * wp;
                for (int i = 0; i < g.PadW; i++) { d[i] = 0f; d[wp - 1 - i] = 0f; }
                d += g.PadW;
                int j = 0;
                for (; j + lanes <= g.W; j += lanes) Unsafe.WriteUnaligned(d + j, Unsafe.ReadUnaligned<Vector<float>>(src + j));
                for (; j < g.W; j++) d[j] = src[j];
            }
        }
        return dst;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Ld(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    /// <summary>
    /// y [N, O, OH, OW] = conv(x, w) + bias, sample by sample: each output row in blocks of four vectors held in
    /// registers while every (channel, tap) adds its row of x; the rest of the row a vector, then an element, at a time.
    /// </summary>
    public static void Forward(WorkerPool pool, float* x, float* w, float* bias, float* y, in ConvGeometry g)
    {
        var geo = g;
        nint xp = (nint)x, wp = (nint)w, bp = (nint)bias, yp = (nint)y;
        int rowLen = g.W + 2 * g.PadW, kk = g.KH * g.KW, lanes = Vector<float>.Count;
        pool.For(g.N, (wk, s) =>
        {
            float* pad = PadRows((float*)xp, geo, s, 0, geo.C, pool.Scratch(wk).Get(ScratchSlot.Columns, (long)geo.C * geo.H * rowLen));
            for (int o = 0; o < geo.O; o++)
            {
                float b = bp == 0 ? 0f : ((float*)bp)[o];
                float* wo = (float*)wp + (long)o * geo.C * kk;
                for (int oh = 0; oh < geo.OH; oh++)
                {
                    float* dst = (float*)yp + (((long)s * geo.O + o) * geo.OH + oh) * geo.OW;
                    int kh0 = Math.Max(0, geo.PadH - oh), kh1 = Math.Min(geo.KH, geo.H + geo.PadH - oh);
                    float* rows = pad + (long)(oh - geo.PadH) * rowLen;
                    int ow = 0;
                    for (; ow + 4 * lanes <= geo.OW; ow += 4 * lanes)
                    {
                        var a0 = new Vector<float>(b); var a1 = a0; var a2 = a0; var a3 = a0;
                        for (int c = 0; c < geo.C; c++)
                            for (int kh = kh0; kh < kh1; kh++)
                            {
                                float* r = rows + ((long)c * geo.H + kh) * rowLen + ow;
                                float* wr = wo + (long)c * kk + kh * geo.KW;
                                for (int kw = 0; kw < geo.KW; kw++)
                                {
                                    var wv = new Vector<float>(wr[kw]);
                                    a0 += wv * Ld(r + kw); a1 += wv * Ld(r + kw + lanes);
                                    a2 += wv * Ld(r + kw + 2 * lanes); a3 += wv * Ld(r + kw + 3 * lanes);
                                }
                            }
                        Unsafe.WriteUnaligned(dst + ow, a0); Unsafe.WriteUnaligned(dst + ow + lanes, a1);
                        Unsafe.WriteUnaligned(dst + ow + 2 * lanes, a2); Unsafe.WriteUnaligned(dst + ow + 3 * lanes, a3);
                    }
                    for (; ow < geo.OW; ow++)
                    {
                        float a = b;
                        for (int c = 0; c < geo.C; c++)
                            for (int kh = kh0; kh < kh1; kh++)
                            {
                                float* r = rows + ((long)c * geo.H + kh) * rowLen + ow;
                                float* wr = wo + (long)c * kk + kh * geo.KW;
                                for (int kw = 0; kw < geo.KW; kw++) a += wr[kw] * r[kw];
                            }
                        dst[ow] = a;
                    }
                }
            }
        });
    }

    /// <summary>
    /// dw [O, C, KH, KW] = sum over samples and outputs of dy times the input under each tap. Per (output channel, input
    /// channel) item, sample by sample, each tap a pass over the sample's dy and padded x planes (in L1) with vector
    /// accumulators, summed into doubles per sample in sample order (the result does not depend on scheduling).
    /// </summary>
    public static void BackwardWeight(WorkerPool pool, float* x, float* dy, float* dw, in ConvGeometry g)
    {
        var geo = g;
        nint xp = (nint)x, dyp = (nint)dy, dwp = (nint)dw;
        int rowLen = g.W + 2 * g.PadW, kk = g.KH * g.KW, lanes = Vector<float>.Count;
        pool.For(g.O * g.C, (wk, item) =>
        {
            int o = item / geo.C, c = item % geo.C;
            float* pad = pool.Scratch(wk).Get(ScratchSlot.Columns, (long)geo.H * rowLen);
            var sum = stackalloc double[kk];
            for (int t = 0; t < kk; t++) sum[t] = 0;
            int whole = geo.OW / lanes * lanes;
            for (int s = 0; s < geo.N; s++)
            {
                PadRows((float*)xp, geo, s, c, 1, pad);
                float* dys = (float*)dyp + ((long)s * geo.O + o) * geo.OH * geo.OW;
                for (int kh = 0; kh < geo.KH; kh++)
                {
                    int oh0 = Math.Max(0, geo.PadH - kh), oh1 = Math.Min(geo.OH, geo.H + geo.PadH - kh);
                    for (int kw = 0; kw < geo.KW; kw++)
                    {
                        Vector<float> a0 = default, a1 = default;
                        double tail = 0;
                        for (int oh = oh0; oh < oh1; oh++)
                        {
                            float* d = dys + (long)oh * geo.OW;
                            float* r = pad + (long)(oh - geo.PadH + kh) * rowLen + kw;
                            int i = 0;
                            for (; i + 2 * lanes <= whole; i += 2 * lanes)
                            {
                                a0 += Ld(d + i) * Ld(r + i);
                                a1 += Ld(d + i + lanes) * Ld(r + i + lanes);
                            }
                            for (; i < whole; i += lanes) a0 += Ld(d + i) * Ld(r + i);
                            for (; i < geo.OW; i++) tail += (double)d[i] * r[i];
                        }
                        sum[kh * geo.KW + kw] += Vector.Sum(a0 + a1) + tail;
                    }
                }
            }
            float* dst = (float*)dwp + (long)item * kk;
            for (int t = 0; t < kk; t++) dst[t] = (float)sum[t];
        });
    }
}
