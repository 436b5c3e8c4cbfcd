using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// Convolutions against naive double loops on odd shapes. Tolerance: normalized MSE &lt;= 1e-10 (a float sum
/// of C*KH*KW terms has relative error about sqrt(k) u ~ 1e-6, so ~1e-12 is typical; a wrong index gives ~1).
/// Winograd F(2x2, 3x3) is held to the same bound: its transforms add and halve at most 9 terms per value, which
/// multiplies the rounding error by a small constant (about 1e-13 typical here). Every case runs with Winograd on
/// (where the geometry allows it), in small chunks, and off.
/// </summary>
public sealed class ConvTests
{
    private const double Tolerance = 1e-10;

    public static IEnumerable<object[]> Geometries()
    {
        // N, C, H, W, O, K, stride, pad
        int[][] g =
        [
            [2, 3, 7, 9, 5, 3, 1, 1],
            [3, 5, 9, 7, 4, 3, 2, 1],
            [2, 7, 5, 6, 3, 1, 1, 0],
            [3, 4, 8, 10, 6, 4, 2, 1],
            [1, 3, 6, 5, 2, 3, 1, 0],
            [4, 6, 5, 5, 7, 1, 2, 0],
            [5, 2, 4, 4, 3, 3, 1, 1],
            // At least 128 output positions: the per-sample GEMM path (the ones above batch the columns).
            [2, 3, 13, 11, 5, 3, 1, 1],
            [3, 3, 25, 23, 4, 3, 2, 1],
            [3, 4, 12, 11, 6, 1, 1, 0],
            [2, 3, 30, 26, 5, 4, 2, 1],
            // One-pixel-wide rows: a whole image is 300 runs of one column (the packer's heap-allocated run table).
            [2, 2, 300, 1, 3, 3, 1, 1],
            // At most 4 output channels at stride 1 (also several of the above): direct sums, rows longer than four
            // vectors with a tail, a 4x4 kernel with padding 2.
            [3, 32, 6, 37, 2, 3, 1, 1],
            [2, 5, 9, 13, 1, 4, 1, 2],
            // At least 16 channels in and out: the 3x3 stride-1 padding-1 ones run as Winograd F(2x2, 3x3), with
            // odd and even sizes (partial tiles), chunks of several tile rows, and images narrower than a tile.
            [2, 16, 9, 7, 17, 3, 1, 1],
            [3, 20, 12, 13, 16, 3, 1, 1],
            [5, 16, 4, 4, 24, 3, 1, 1],
            [2, 17, 1, 1, 16, 3, 1, 1],
            [1, 16, 3, 40, 16, 3, 1, 1],
            [2, 16, 10, 9, 16, 3, 2, 1],
            // 4x4 stride-2 padding-1 on even images with 4C and O at least 16: the 3x3 convolution over the four phases
            // of the input (Winograd). The split goes by vector-long pieces (16 floats with AVX-512, 8 with AVX2), in
            // pairs: rows of 8 floats (AVX2: 3 pieces per phase, the last to the element loop), of 16 (AVX-512: 3
            // pieces), of 32, and of 34 (element by element).
            [2, 4, 6, 8, 16, 4, 2, 1],
            [2, 4, 6, 16, 16, 4, 2, 1],
            [2, 16, 8, 32, 17, 4, 2, 1],
            [3, 8, 10, 34, 20, 4, 2, 1],
        ];
        foreach (var a in g) yield return [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
    }

    /// <summary>
    /// Backends on 1..maxThreads threads, each with Winograd off, and for F(2x2, 3x3) and F(4x4, 3x3) each: on, on with
    /// chunks of one or two tile rows (chunks that start inside an image), and on with the AVX2 kernels (other
    /// register-tile widths).
    /// </summary>
    private static IEnumerable<(string Name, CpuBackend Backend)> Backends(int maxThreads)
    {
        for (int threads = 1; threads <= maxThreads; threads++)
        {
            yield return ($"{threads} threads, winograd off", new CpuBackend(new CpuBackendOptions { Threads = threads, Winograd = false }));
            foreach (int tile in new[] { 2, 4 })
            {
                string f = $"winograd F({tile}x{tile}, 3x3)";
                yield return ($"{threads} threads, {f}", new CpuBackend(Winograd(threads, tile)));
                yield return ($"{threads} threads, {f} in small chunks", new CpuBackend(Winograd(threads, tile) with { WinogradChunk = 200 }));
                yield return ($"{threads} threads, {f} on the AVX2 kernels", new CpuBackend(Winograd(threads, tile) with { Avx512 = false }));
            }
        }
    }

    /// <summary>Winograd with <paramref name="tile"/> x <paramref name="tile"/> output tiles for every geometry it applies to with 16 channels or more, however few its tiles.</summary>
    private static CpuBackendOptions Winograd(int threads, int tile) =>
        new() { Threads = threads, WinogradTile = tile, WinogradMinTiles = 1, WinogradMinWork = 0 };

    private static ConvGeometry Geo(int n, int c, int h, int w, int o, int k, int s, int p) => new(n, c, h, w, o, k, k, s, s, p, p);

    /// <summary>Naive y[n,o,oh,ow] = sum x[n,c,ih,iw] w[o,c,kh,kw] + bias[o], in double.</summary>
    private static double[] Forward(float[] x, float[] w, float[]? bias, ConvGeometry g)
    {
        var y = new double[g.OutputSize];
        for (int n = 0; n < g.N; n++)
            for (int o = 0; o < g.O; o++)
                for (int oh = 0; oh < g.OH; oh++)
                    for (int ow = 0; ow < g.OW; ow++)
                    {
                        double s = bias?[o] ?? 0;
                        for (int c = 0; c < g.C; c++)
                            for (int kh = 0; kh < g.KH; kh++)
                                for (int kw = 0; kw < g.KW; kw++)
                                {
                                    int ih = oh * g.StrideH - g.PadH + kh, iw = ow * g.StrideW - g.PadW + kw;
                                    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                    s += (double)x[((n * g.C + c) * g.H + ih) * g.W + iw] * w[((o * g.C + c) * g.KH + kh) * g.KW + kw];
                                }
                        y[((n * g.O + o) * g.OH + oh) * g.OW + ow] = s;
                    }
        return y;
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void ForwardMatchesNaive(int n, int c, int h, int w, int o, int k, int s, int p)
    {
        var g = Geo(n, c, h, w, o, k, s, p);
        foreach (var (name, be) in Backends(2))
        {
            using var _ = be;
            var x = Random(g.InputSize, 1); var wt = Random(g.WeightSize, 2); var bias = Random(o, 3);
            var xb = Up(be, x); var wb = Up(be, wt); var bb = Up(be, bias); var yb = be.Allocate(g.OutputSize);
            be.Conv2dForward(xb, wb, bb, g, yb);
            Closeness.AssertNmse($"conv forward, {name}", Down(be, yb, g.OutputSize), Forward(x, wt, bias, g), Tolerance);
            be.Conv2dForward(xb, wb, null, g, yb);
            Closeness.AssertNmse($"conv forward without bias, {name}", Down(be, yb, g.OutputSize), Forward(x, wt, null, g), Tolerance);
        }
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void BackwardDataMatchesNaive(int n, int c, int h, int w, int o, int k, int s, int p)
    {
        var g = Geo(n, c, h, w, o, k, s, p);
        var dy = Random(g.OutputSize, 4); var wt = Random(g.WeightSize, 5);
        // dx[n,c,ih,iw] = sum over outputs that read it of dy * w.
        var expected = new double[g.InputSize];
        for (int b = 0; b < g.N; b++)
            for (int oc = 0; oc < g.O; oc++)
                for (int oh = 0; oh < g.OH; oh++)
                    for (int ow = 0; ow < g.OW; ow++)
                        for (int ic = 0; ic < g.C; ic++)
                            for (int kh = 0; kh < g.KH; kh++)
                                for (int kw = 0; kw < g.KW; kw++)
                                {
                                    int ih = oh * g.StrideH - g.PadH + kh, iw = ow * g.StrideW - g.PadW + kw;
                                    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                    expected[((b * g.C + ic) * g.H + ih) * g.W + iw] +=
                                        (double)dy[((b * g.O + oc) * g.OH + oh) * g.OW + ow] * wt[((oc * g.C + ic) * g.KH + kh) * g.KW + kw];
                                }
        foreach (var (name, be) in Backends(2))
        {
            using var _ = be;
            var dyb = Up(be, dy); var wb = Up(be, wt);
            var dxb = Up(be, Enumerable.Repeat(float.NaN, g.InputSize).ToArray());
            be.Conv2dBackwardData(dyb, wb, g, dxb);
            Closeness.AssertNmse($"conv backward data, {name}", Down(be, dxb, g.InputSize), expected, Tolerance);
        }
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void BackwardWeightMatchesNaive(int n, int c, int h, int w, int o, int k, int s, int p)
    {
        var g = Geo(n, c, h, w, o, k, s, p);
        var x = Random(g.InputSize, 6); var dy = Random(g.OutputSize, 7);
        var dw = new double[g.WeightSize]; var db = new double[o];
        for (int b = 0; b < g.N; b++)
            for (int oc = 0; oc < g.O; oc++)
                for (int oh = 0; oh < g.OH; oh++)
                    for (int ow = 0; ow < g.OW; ow++)
                    {
                        double d = dy[((b * g.O + oc) * g.OH + oh) * g.OW + ow];
                        db[oc] += d;
                        for (int ic = 0; ic < g.C; ic++)
                            for (int kh = 0; kh < g.KH; kh++)
                                for (int kw = 0; kw < g.KW; kw++)
                                {
                                    int ih = oh * g.StrideH - g.PadH + kh, iw = ow * g.StrideW - g.PadW + kw;
                                    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                    dw[((oc * g.C + ic) * g.KH + kh) * g.KW + kw] += d * x[((b * g.C + ic) * g.H + ih) * g.W + iw];
                                }
                    }
        foreach (var (name, be) in Backends(3))
        {
            using var _ = be;
            var xb = Up(be, x); var dyb = Up(be, dy);
            var dwb = Up(be, Enumerable.Repeat(float.NaN, g.WeightSize).ToArray());
            var dbb = Up(be, Enumerable.Repeat(float.NaN, o).ToArray());
            be.Conv2dBackwardWeight(xb, dyb, g, dwb, dbb);
            Closeness.AssertNmse($"dw, {name}", Down(be, dwb, g.WeightSize), dw, Tolerance);
            Closeness.AssertNmse($"dbias, {name}", Down(be, dbb, o), db, Tolerance);
        }
    }

    /// <summary>
    /// A part of a batch (a data-parallel shard, a micro-batch) given to <see cref="IBackend.PartOfBatch"/> as part of the whole batch
    /// computes each of its samples bit for bit as the whole batch does. [4, 32, 16, 16] -> 32 runs as a Winograd
    /// convolution by the default thresholds (256 F(2x2) tiles, 256K O C tiles) and a half of it alone as an implicit
    /// GEMM, which rounds differently: outside the scope the half's outputs differ.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void APartOfABatchComputesItsSamplesAsTheWholeBatchDoes(int threads)
    {
        var whole = Geo(4, 32, 16, 16, 32, 3, 1, 1);
        var half = whole with { N = 2 };
        using var be = new CpuBackend(new CpuBackendOptions { Threads = threads });
        var x = Random(whole.InputSize, 8); var wt = Random(whole.WeightSize, 9); var bias = Random(whole.O, 10); var dy = Random(whole.OutputSize, 11);
        var wb = Up(be, wt); var bb = Up(be, bias);
        var yb = be.Allocate(whole.OutputSize); var dxb = be.Allocate(whole.InputSize);
        be.Conv2dForward(Up(be, x), wb, bb, whole, yb);
        be.Conv2dBackwardData(Up(be, dy), wb, whole, dxb);
        var (y, dx) = (Down(be, yb, whole.OutputSize), Down(be, dxb, whole.InputSize));

        (float[] Y, float[] Dx) Half(int h)
        {
            var xh = Up(be, x.AsSpan(h * half.InputSize, half.InputSize).ToArray());
            var dyh = Up(be, dy.AsSpan(h * half.OutputSize, half.OutputSize).ToArray());
            var yh = be.Allocate(half.OutputSize); var dxh = be.Allocate(half.InputSize);
            be.Conv2dForward(xh, wb, bb, half, yh);
            be.Conv2dBackwardData(dyh, wb, half, dxh);
            return (Down(be, yh, half.OutputSize), Down(be, dxh, half.InputSize));
        }

        for (int h = 0; h < 2; h++)
        {
            var expectedY = y.AsSpan(h * half.OutputSize, half.OutputSize).ToArray();
            var expectedDx = dx.AsSpan(h * half.InputSize, half.InputSize).ToArray();
            using (be.PartOfBatch(2))
            using (be.PartOfBatch(whole.N))
            {
                var (yh, dxh) = Half(h);
                Assert.Equal(expectedY, yh);
                Assert.Equal(expectedDx, dxh);
            }
            var (alone, dxAlone) = Half(h);
            Assert.NotEqual(expectedY, alone);
            Assert.NotEqual(expectedDx, dxAlone);
            Closeness.AssertNmse("the half alone", alone, expectedY, Tolerance);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => be.PartOfBatch(0));
    }
}
