using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cpu.Fast;
using Ddpm.Tensors;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// The implicit-GEMM packers against an explicit im2col matrix built by naive loops: for every strip position,
/// depth and width they must write exactly (bit for bit) what the dense packer writes from that matrix, padding
/// columns included. Covers runs that cross output rows and samples, strides 1 and 2, pads 0 to 2.
/// </summary>
public sealed unsafe class ConvPackTests
{
    public static IEnumerable<object[]> Geometries()
    {
        // N, C, H, W, O, KH, KW, stride, pad
        int[][] g =
        [
            [1, 2, 5, 7, 1, 3, 3, 1, 1],
            [3, 2, 4, 4, 1, 3, 3, 1, 1],
            [2, 3, 8, 8, 1, 3, 3, 1, 2],
            [2, 2, 9, 6, 1, 3, 3, 2, 1],
            [2, 3, 6, 5, 1, 4, 4, 2, 1],
            [2, 2, 7, 9, 1, 3, 2, 1, 0],
            [1, 3, 34, 3, 1, 3, 3, 1, 1],
            [4, 1, 3, 3, 1, 1, 1, 1, 0],
        ];
        foreach (var a in g) yield return [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]];
    }

    /// <summary>col [C*KH*KW, N*OH*OW] by the definition.</summary>
    private static float[] Im2Col(float[] x, ConvGeometry g)
    {
        int ohw = g.OH * g.OW, nTot = g.N * ohw, kk = g.KH * g.KW;
        var col = new float[g.C * kk * nTot];
        for (int c = 0; c < g.C; c++)
            for (int kh = 0; kh < g.KH; kh++)
                for (int kw = 0; kw < g.KW; kw++)
                    for (int s = 0; s < g.N; s++)
                        for (int oh = 0; oh < g.OH; oh++)
                            for (int ow = 0; ow < g.OW; ow++)
                            {
                                int ih = oh * g.StrideH - g.PadH + kh, iw = ow * g.StrideW - g.PadW + kw;
                                bool inside = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
                                col[(long)(c * kk + kh * g.KW + kw) * nTot + s * ohw + oh * g.OW + ow] =
                                    inside ? x[((s * g.C + c) * g.H + ih) * g.W + iw] : 0f;
                            }
        return col;
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void PackersWriteWhatIm2ColThenDensePackingWrites(int n, int c, int h, int w, int o, int kh, int kw, int stride, int pad)
    {
        foreach (bool gather in new CpuBackendOptions().UseGather ? new[] { true, false } : new[] { false })
            CheckPackers(n, c, h, w, o, kh, kw, stride, pad, gather);
    }

    private static void CheckPackers(int n, int c, int h, int w, int o, int kh, int kw, int stride, int pad, bool gather)
    {
        var g = new ConvGeometry(n, c, h, w, o, kh, kw, stride, stride, pad, pad);
        var x = Random(g.InputSize, 7);
        var col = Im2Col(x, g);
        int ckk = c * kh * kw, nTot = n * g.OH * g.OW;
        const int nr = 32;
        var rng = new Random(ckk * 131 + nTot);
        var got = new float[nr * (Math.Max(ckk, nTot) + 1)];
        var want = new float[got.Length];
        fixed (float* xp = x, cp = col, gp = got, wp = want)
        {
            for (int trial = 0; trial < 200; trial++)
            {
                // Forward: k over taps (ckk), columns over positions (nTot). Weight gradient: the transpose.
                foreach (bool transposed in new[] { false, true })
                {
                    int kDim = transposed ? nTot : ckk, nDim = transposed ? ckk : nTot;
                    int pc = rng.Next(kDim), kc = 1 + rng.Next(kDim - pc);
                    int j0 = rng.Next(nDim), cols = 1 + rng.Next(Math.Min(nr, nDim - j0));
                    Array.Fill(got, float.NaN);
                    Array.Fill(want, float.NaN);
                    if (transposed)
                    {
                        new ConvColumnsTB(xp, g).Pack(pc, kc, j0, cols, nr, gp, gather);
                        new DenseB(true, cp, nTot).Pack(pc, kc, j0, cols, nr, wp);
                    }
                    else
                    {
                        new ConvColumnsB(xp, g).Pack(pc, kc, j0, cols, nr, gp);
                        new DenseB(false, cp, nTot).Pack(pc, kc, j0, cols, nr, wp);
                    }
                    for (int i = 0; i < kc * nr; i++)
                        if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(want[i]))
                            Assert.Fail($"{(transposed ? $"ConvColumnsTB (gather {gather})" : "ConvColumnsB")} {g} pc={pc} kc={kc} j0={j0} cols={cols}: " +
                                $"element [{i / nr}, {i % nr}] = {got[i]}, im2col + dense packing gives {want[i]}.");
                    // Nothing past the kc x nr panel is touched.
                    Assert.True(float.IsNaN(got[kc * nr]));
                }
            }
        }
    }
}
