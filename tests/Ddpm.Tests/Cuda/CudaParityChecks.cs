using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Per-op checks of a backend against plain double-precision loops written here, with the tolerance of each
/// op next to it. Free of xunit so the GPU check program (tests/Ddpm.Cuda.Check) can run the same code on a
/// machine without .NET; the xunit tests in <see cref="CudaBackendTests"/> call them one by one.
/// </summary>
public static class CudaParityChecks
{
    /// <summary>Every check by name.</summary>
    public static IReadOnlyList<(string Name, Action<IBackend> Run)> All { get; } =
    [
        ("fills-and-copies", FillsAndCopies),
        ("philox", PhiloxStreams),
        ("unary", UnaryOps),
        ("binary-broadcast", BinaryBroadcast),
        ("sum-to-shape", SumToShape),
        ("sum-of-squares", SumOfSquares),
        ("layout", Layout),
        ("gemm", Gemm),
        ("conv2d", Conv2d),
        ("group-norm", GroupNorm),
        ("softmax", Softmax),
        ("adam", Adam),
    ];

    // ---- fills, copies, affine ------------------------------------------------------------------------

    public static void FillsAndCopies(IBackend be)
    {
        const int n = 1031;
        var x = Rand(n, 1);
        using var bx = Up(be, x);
        using var by = new Owned(be.Allocate(n));
        be.Fill(by.B, n, 2.5f);
        Close("Fill", Enumerable.Repeat(2.5f, n).ToArray(), Down(be, by.B, n), 0, 0);

        be.Copy(bx.B, 5, by.B, 100, 500);
        var expect = Enumerable.Repeat(2.5f, n).ToArray();
        Array.Copy(x, 5, expect, 100, 500);
        Close("Copy", expect, Down(be, by.B, n), 0, 0);

        // Overlapping copy within one buffer behaves like memmove.
        var ov = (float[])x.Clone();
        Array.Copy(x, 0, ov, 10, 800);
        be.Copy(bx.B, 0, bx.B, 10, 800);
        Close("Copy overlapping", ov, Down(be, bx.B, n), 0, 0);

        using var bz = Up(be, x);
        be.Affine(bz.B, bz.B, n, 1.5f, -0.25f);
        Close("Affine in place", x.Select(v => v * 1.5f - 0.25f).ToArray(), Down(be, bz.B, n), 1e-6, 1e-6);

        var y = Rand(n, 2);
        using var b1 = Up(be, x);
        using var b2 = Up(be, y);
        be.Axpby(b1.B, b2.B, n, 0.75f, -2f);
        Close("Axpby", x.Zip(y, (a, b) => 0.75f * a - 2f * b).ToArray(), Down(be, b2.B, n), 1e-6, 1e-6);

        be.Clamp(b1.B, b2.B, n, -0.3f, 0.4f);
        Close("Clamp", x.Select(v => Math.Clamp(v, -0.3f, 0.4f)).ToArray(), Down(be, b2.B, n), 0, 0);
    }

    // ---- Philox: bit-identical to Ddpm.Tensors.Philox -------------------------------------------------

    public static void PhiloxStreams(IBackend be)
    {
        const ulong seed = 0x0123_4567_89AB_CDEFUL;
        foreach (var (offset, n) in new[] { (0UL, 4096), (6UL, 1001), ((1UL << 34) + 3, 9) })
        {
            using var b = new Owned(be.Allocate(n));
            if (be is Ddpm.Backends.Cuda.CudaBackend cuda)
            {
                cuda.FillPhiloxWords(b.B, n, seed, offset);
                var words = Down(be, b.B, n).Select(BitConverter.SingleToUInt32Bits).ToArray();
                for (int i = 0; i < n; i++)
                    if (words[i] != Philox.Word(seed, offset + (ulong)i))
                        throw new ParityException($"Philox word {i} at offset {offset}: {words[i]:X8}, expected {Philox.Word(seed, offset + (ulong)i):X8}.");
            }
            var expect = new float[n];
            be.FillUniform(b.B, n, seed, offset);
            Philox.FillUniform(expect, seed, offset);
            Close($"FillUniform offset {offset}", expect, Down(be, b.B, n), 0, 0);

            be.FillNormal(b.B, n, seed, offset);
            Philox.FillNormal(expect, seed, offset);
            Close($"FillNormal offset {offset}", expect, Down(be, b.B, n), 0, 0);

            const float p = 0.3f;
            be.DropoutMask(b.B, n, p, seed, offset);
            Philox.FillUniform(expect, seed, offset);
            float keep = 1f - p;
            Close($"DropoutMask offset {offset}", expect.Select(u => u < keep ? 1f / keep : 0f).ToArray(), Down(be, b.B, n), 0, 0);
        }
    }

    // ---- elementwise ----------------------------------------------------------------------------------

    public static void UnaryOps(IBackend be)
    {
        const int n = 777;
        foreach (var op in Enum.GetValues<UnaryOp>())
        {
            bool positive = op is UnaryOp.Log or UnaryOp.Sqrt;
            var x = Rand(n, 10 + (int)op, positive ? 0.1f : -3f, 3f);
            var dy = Rand(n, 50 + (int)op);
            var y = x.Select(v => (float)UnaryReference.Value(op, v)).ToArray();
            using var bx = Up(be, x);
            using var by = new Owned(be.Allocate(n));
            be.Unary(op, bx.B, by.B, n);
            var got = Down(be, by.B, n);
            Close($"Unary {op}", y, got, 1e-6, 2e-6);

            using var bdy = Up(be, dy);
            using var bdx = new Owned(be.Allocate(n));
            be.UnaryBackward(op, bx.B, by.B, bdy.B, bdx.B, n);
            var dx = new float[n];
            for (int i = 0; i < n; i++) dx[i] = (float)(dy[i] * UnaryReference.Derivative(op, x[i]));
            Close($"UnaryBackward {op}", dx, Down(be, bdx.B, n), 1e-5, 1e-5);
        }
    }

    public static void BinaryBroadcast(IBackend be)
    {
        int[][][] cases =
        [
            [[2, 3, 4, 5], [2, 3, 4, 5], [2, 3, 4, 5]],
            [[2, 3, 4, 5], [1, 3, 1, 1], [2, 3, 4, 5]],
            [[2, 1, 4, 1], [1, 3, 1, 5], [2, 3, 4, 5]],
            [[1, 1, 1, 1], [2, 3, 4, 5], [2, 3, 4, 5]],
            [[3, 1, 2, 1, 2, 1, 2, 1, 3], [1, 2, 1, 2, 1, 2, 1, 2, 1], [3, 2, 2, 2, 2, 2, 2, 2, 3]],
        ];
        foreach (var c in cases)
            foreach (var op in Enum.GetValues<BinaryOp>())
            {
                int[] sa = c[0], sb = c[1], sy = c[2];
                var a = Rand(Size(sa), 3, -2f, 2f);
                var b = Rand(Size(sb), 4, 0.5f, 2f);
                var expect = new float[Size(sy)];
                var strideA = Strides(sa);
                var strideB = Strides(sb);
                var idx = new int[sy.Length];
                for (int i = 0; i < expect.Length; i++)
                {
                    int rem = i, oa = 0, ob = 0;
                    for (int d = sy.Length - 1; d >= 0; d--)
                    {
                        idx[d] = rem % sy[d];
                        rem /= sy[d];
                        oa += (sa[d] == 1 ? 0 : idx[d]) * strideA[d];
                        ob += (sb[d] == 1 ? 0 : idx[d]) * strideB[d];
                    }
                    expect[i] = op switch
                    {
                        BinaryOp.Add => a[oa] + b[ob],
                        BinaryOp.Sub => a[oa] - b[ob],
                        BinaryOp.Mul => a[oa] * b[ob],
                        _ => a[oa] / b[ob],
                    };
                }
                using var ba = Up(be, a);
                using var bb = Up(be, b);
                using var by = new Owned(be.Allocate(expect.Length));
                be.Binary(op, ba.B, sa, bb.B, sb, by.B, sy);
                Close($"Binary {op} {Fmt(sa)} {Fmt(sb)}", expect, Down(be, by.B, expect.Length), 1e-6, 1e-6);
            }

        // y aliasing a, as ConvTranspose2d's bias add does.
        var x = Rand(2 * 3 * 4, 5);
        var bias = Rand(3, 6);
        using var bx = Up(be, x);
        using var bbias = Up(be, bias);
        be.Binary(BinaryOp.Add, bx.B, [2, 3, 4], bbias.B, [1, 3, 1], bx.B, [2, 3, 4]);
        Close("Binary in place", x.Select((v, i) => v + bias[i / 4 % 3]).ToArray(), Down(be, bx.B, x.Length), 1e-6, 1e-6);
    }

    public static void SumToShape(IBackend be)
    {
        int[] xs = [3, 4, 5, 6];
        var x = Rand(Size(xs), 7);
        foreach (var ys in new[] { new[] { 1, 4, 1, 1 }, [3, 1, 5, 1], [1, 1, 1, 1], [3, 4, 5, 6], [1, 4, 5, 6], [3, 4, 5, 1] })
        {
            var expect = new double[Size(ys)];
            var sy = Strides(ys);
            for (int i = 0; i < x.Length; i++)
            {
                int rem = i, o = 0;
                for (int d = xs.Length - 1; d >= 0; d--)
                {
                    int c = rem % xs[d];
                    rem /= xs[d];
                    if (ys[d] != 1) o += c * sy[d];
                }
                expect[o] += x[i];
            }
            using var bx = Up(be, x);
            using var by = new Owned(be.Allocate(expect.Length));
            be.SumToShape(bx.B, xs, by.B, ys);
            Close($"SumToShape {Fmt(xs)} -> {Fmt(ys)}", expect.Select(v => (float)v).ToArray(), Down(be, by.B, expect.Length), 1e-5, 1e-5);
        }
    }

    public static void SumOfSquares(IBackend be)
    {
        var x = Rand(100_003, 8);
        using var bx = Up(be, x);
        double expect = x.Sum(v => (double)v * v);
        double got = be.SumOfSquares(bx.B, x.Length);
        if (Math.Abs(got - expect) > 1e-9 * expect)
            throw new ParityException($"SumOfSquares: {got}, expected {expect}.");
    }

    // ---- layout ---------------------------------------------------------------------------------------

    public static void Layout(IBackend be)
    {
        int[] xs = [2, 3, 4, 5];
        var x = Rand(Size(xs), 9);
        foreach (var perm in new[] { new[] { 0, 2, 3, 1 }, [3, 1, 0, 2], [0, 1, 3, 2], [0, 1, 2, 3] })
        {
            var ys = perm.Select(p => xs[p]).ToArray();
            var sx = Strides(xs);
            var expect = new float[x.Length];
            for (int i = 0; i < expect.Length; i++)
            {
                int rem = i, o = 0;
                for (int d = ys.Length - 1; d >= 0; d--)
                {
                    o += rem % ys[d] * sx[perm[d]];
                    rem /= ys[d];
                }
                expect[i] = x[o];
            }
            using var bx = Up(be, x);
            using var by = new Owned(be.Allocate(x.Length));
            be.Permute(bx.B, xs, perm, by.B);
            Close($"Permute {Fmt(perm)}", expect, Down(be, by.B, x.Length), 0, 0);
        }

        // CopySlice: src [2, 5, 3] rows 1..3 into dst [2, 4, 3] rows 0..2, copy and accumulate.
        var src = Rand(2 * 5 * 3, 10);
        var dst = Rand(2 * 4 * 3, 11);
        foreach (bool acc in new[] { false, true })
        {
            var expect = (float[])dst.Clone();
            for (int o = 0; o < 2; o++)
                for (int d = 0; d < 3; d++)
                    for (int i = 0; i < 3; i++)
                    {
                        float v = src[(o * 5 + 1 + d) * 3 + i];
                        int k = (o * 4 + d) * 3 + i;
                        expect[k] = acc ? expect[k] + v : v;
                    }
            using var bs = Up(be, src);
            using var bd = Up(be, dst);
            be.CopySlice(bs.B, 5, 1, bd.B, 4, 0, 2, 3, 3, acc);
            Close($"CopySlice accumulate={acc}", expect, Down(be, bd.B, dst.Length), 1e-7, 0);
        }

        // IndexSelect / IndexAdd on a [7, 3] table, with and without repeated indices.
        var table = Rand(7 * 3, 12);
        foreach (var indices in new[] { new[] { 6, 0, 3 }, [2, 2, 5, 2, 0] })
        {
            using var bt = Up(be, table);
            using var bsel = new Owned(be.Allocate(indices.Length * 3));
            be.IndexSelect(bt.B, 7, 3, indices, bsel.B);
            Close($"IndexSelect {Fmt(indices)}", indices.SelectMany(r => table.Skip(r * 3).Take(3)).ToArray(),
                Down(be, bsel.B, indices.Length * 3), 0, 0);

            var g = Rand(indices.Length * 3, 13);
            var expect = (float[])table.Clone();
            for (int r = 0; r < indices.Length; r++)
                for (int j = 0; j < 3; j++) expect[indices[r] * 3 + j] += g[r * 3 + j];
            using var bg = Up(be, g);
            be.IndexAdd(bg.B, 3, indices, bt.B, 7);
            Close($"IndexAdd {Fmt(indices)}", expect, Down(be, bt.B, table.Length), 1e-6, 1e-6);
        }
    }

    // ---- GEMM -----------------------------------------------------------------------------------------

    public static void Gemm(IBackend be)
    {
        const int batch = 3, m = 17, n = 13, k = 19;
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
                foreach (bool broadcastA in new[] { false, true })
                {
                    long sA = broadcastA ? 0 : m * k, sB = k * n, sC = m * n;
                    var a = Rand(broadcastA ? m * k : batch * m * k, 14);
                    var b = Rand(batch * k * n, 15);
                    var c = Rand(batch * m * n, 16);
                    const float alpha = 0.5f, beta = 0.25f;
                    var expect = new float[c.Length];
                    for (int bi = 0; bi < batch; bi++)
                        for (int i = 0; i < m; i++)
                            for (int j = 0; j < n; j++)
                            {
                                double s = 0;
                                for (int p = 0; p < k; p++)
                                {
                                    double av = a[bi * sA + (ta ? p * m + i : i * k + p)];
                                    double bv = b[bi * sB + (tb ? j * k + p : p * n + j)];
                                    s += av * bv;
                                }
                                long ci = bi * sC + i * n + j;
                                expect[ci] = (float)(alpha * s + beta * c[ci]);
                            }
                    using var ba = Up(be, a);
                    using var bb = Up(be, b);
                    using var bc = Up(be, c);
                    be.Gemm(ta, tb, batch, m, n, k, alpha, ba.B, sA, bb.B, sB, beta, bc.B, sC);
                    Close($"Gemm transA={ta} transB={tb} strideA={sA}", expect, Down(be, bc.B, c.Length), 1e-5, 1e-4);
                }
    }

    // ---- convolution ----------------------------------------------------------------------------------

    public static void Conv2d(IBackend be)
    {
        ConvGeometry[] geometries =
        [
            new(2, 3, 9, 7, 4, 3, 3, 2, 2, 1, 1),
            new(3, 5, 6, 6, 2, 1, 1, 1, 1, 0, 0),
            new(1, 2, 8, 8, 3, 4, 4, 2, 2, 1, 1),
            new(2, 4, 5, 5, 6, 3, 3, 1, 1, 1, 1),
        ];
        foreach (var g in geometries)
        {
            var x = Rand(g.InputSize, 17);
            var w = Rand(g.WeightSize, 18);
            var bias = Rand(g.O, 19);
            var dy = Rand(g.OutputSize, 20);
            var y = new double[g.OutputSize];
            var dx = new double[g.InputSize];
            var dw = new double[g.WeightSize];
            var db = new double[g.O];
            for (int n = 0; n < g.N; n++)
                for (int o = 0; o < g.O; o++)
                    for (int oh = 0; oh < g.OH; oh++)
                        for (int ow = 0; ow < g.OW; ow++)
                        {
                            int yi = ((n * g.O + o) * g.OH + oh) * g.OW + ow;
                            double s = bias[o];
                            db[o] += dy[yi];
                            for (int c = 0; c < g.C; c++)
                                for (int kh = 0; kh < g.KH; kh++)
                                    for (int kw = 0; kw < g.KW; kw++)
                                    {
                                        int h = oh * g.StrideH - g.PadH + kh, wc = ow * g.StrideW - g.PadW + kw;
                                        if (h < 0 || h >= g.H || wc < 0 || wc >= g.W) continue;
                                        int xi = ((n * g.C + c) * g.H + h) * g.W + wc;
                                        int wi = ((o * g.C + c) * g.KH + kh) * g.KW + kw;
                                        s += (double)x[xi] * w[wi];
                                        dx[xi] += (double)dy[yi] * w[wi];
                                        dw[wi] += (double)dy[yi] * x[xi];
                                    }
                            y[yi] = s;
                        }
            using var bx = Up(be, x);
            using var bw = Up(be, w);
            using var bb = Up(be, bias);
            using var by = new Owned(be.Allocate(g.OutputSize));
            be.Conv2dForward(bx.B, bw.B, bb.B, by.B, g);
            Close($"Conv2dForward {g}", ToFloat(y), Down(be, by.B, g.OutputSize), 1e-5, 1e-4);

            using var bdy = Up(be, dy);
            using var bdx = new Owned(be.Allocate(g.InputSize));
            be.Conv2dBackwardData(bdy.B, bw.B, bdx.B, g);
            Close($"Conv2dBackwardData {g}", ToFloat(dx), Down(be, bdx.B, g.InputSize), 1e-5, 1e-4);

            using var bdw = new Owned(be.Allocate(g.WeightSize));
            using var bdb = new Owned(be.Allocate(g.O));
            be.Conv2dBackwardWeight(bx.B, bdy.B, bdw.B, bdb.B, g);
            Close($"Conv2dBackwardWeight {g}", ToFloat(dw), Down(be, bdw.B, g.WeightSize), 1e-5, 1e-4);
            Close($"Conv2dBackwardWeight bias {g}", ToFloat(db), Down(be, bdb.B, g.O), 1e-5, 1e-4);
        }
    }

    // ---- normalisation --------------------------------------------------------------------------------

    public static void GroupNorm(IBackend be)
    {
        const int n = 2, c = 6, hw = 10, groups = 3, cpg = c / groups, count = cpg * hw;
        const float eps = 1e-5f;
        var x = Rand(n * c * hw, 21, -2f, 3f);
        var gamma = Rand(c, 22, 0.5f, 1.5f);
        var beta = Rand(c, 23);
        var dy = Rand(n * c * hw, 24);
        var y = new double[x.Length];
        var dx = new double[x.Length];
        var dg = new double[c];
        var dbt = new double[c];
        var means = new double[n * groups];
        var rstds = new double[n * groups];
        for (int s = 0; s < n; s++)
            for (int g = 0; g < groups; g++)
            {
                int b = (s * groups + g) * count;
                double mu = 0, v = 0;
                for (int i = 0; i < count; i++) mu += x[b + i];
                mu /= count;
                for (int i = 0; i < count; i++) v += (x[b + i] - mu) * (x[b + i] - mu);
                double r = 1 / Math.Sqrt(v / count + eps);
                means[s * groups + g] = mu;
                rstds[s * groups + g] = r;
                double m1 = 0, m2 = 0;
                for (int i = 0; i < count; i++)
                {
                    int ch = g * cpg + i / hw;
                    double xh = (x[b + i] - mu) * r;
                    y[b + i] = xh * gamma[ch] + beta[ch];
                    m1 += dy[b + i] * gamma[ch];
                    m2 += dy[b + i] * gamma[ch] * xh;
                    dg[ch] += dy[b + i] * xh;
                    dbt[ch] += dy[b + i];
                }
                m1 /= count;
                m2 /= count;
                for (int i = 0; i < count; i++)
                {
                    int ch = g * cpg + i / hw;
                    double xh = (x[b + i] - mu) * r;
                    dx[b + i] = r * (dy[b + i] * gamma[ch] - m1 - xh * m2);
                }
            }
        using var bx = Up(be, x);
        using var bg = Up(be, gamma);
        using var bb = Up(be, beta);
        using var by = new Owned(be.Allocate(x.Length));
        using var bm = new Owned(be.Allocate(n * groups));
        using var br = new Owned(be.Allocate(n * groups));
        be.GroupNormForward(bx.B, bg.B, bb.B, n, c, hw, groups, eps, by.B, bm.B, br.B);
        Close("GroupNormForward y", ToFloat(y), Down(be, by.B, x.Length), 1e-5, 1e-4);
        Close("GroupNormForward mean", ToFloat(means), Down(be, bm.B, n * groups), 1e-6, 1e-5);
        Close("GroupNormForward rstd", ToFloat(rstds), Down(be, br.B, n * groups), 1e-6, 1e-4);

        using var bdy = Up(be, dy);
        using var bdx = new Owned(be.Allocate(x.Length));
        using var bdg = new Owned(be.Allocate(c));
        using var bdb = new Owned(be.Allocate(c));
        be.GroupNormBackward(bdy.B, bx.B, bg.B, bm.B, br.B, n, c, hw, groups, bdx.B, bdg.B, bdb.B);
        Close("GroupNormBackward dx", ToFloat(dx), Down(be, bdx.B, x.Length), 1e-5, 1e-4);
        Close("GroupNormBackward dgamma", ToFloat(dg), Down(be, bdg.B, c), 1e-5, 1e-4);
        Close("GroupNormBackward dbeta", ToFloat(dbt), Down(be, bdb.B, c), 1e-5, 1e-4);
    }

    public static void Softmax(IBackend be)
    {
        foreach (var (outer, dim, inner) in new[] { (5, 37, 1), (3, 7, 11), (1, 300, 1) })
        {
            int size = outer * dim * inner;
            var x = Rand(size, 25, -4f, 4f);
            var dy = Rand(size, 26);
            var y = new double[size];
            var dx = new double[size];
            for (int o = 0; o < outer; o++)
                for (int i = 0; i < inner; i++)
                {
                    double m = double.NegativeInfinity, s = 0, dot = 0;
                    for (int j = 0; j < dim; j++) m = Math.Max(m, x[(o * dim + j) * inner + i]);
                    for (int j = 0; j < dim; j++) s += Math.Exp(x[(o * dim + j) * inner + i] - m);
                    for (int j = 0; j < dim; j++)
                    {
                        int k = (o * dim + j) * inner + i;
                        y[k] = Math.Exp(x[k] - m) / s;
                        dot += dy[k] * y[k];
                    }
                    for (int j = 0; j < dim; j++)
                    {
                        int k = (o * dim + j) * inner + i;
                        dx[k] = y[k] * (dy[k] - dot);
                    }
                }
            using var bx = Up(be, x);
            using var by = new Owned(be.Allocate(size));
            be.SoftmaxForward(bx.B, outer, dim, inner, by.B);
            Close($"SoftmaxForward ({outer}, {dim}, {inner})", ToFloat(y), Down(be, by.B, size), 1e-7, 1e-5);
            using var bdy = Up(be, dy);
            using var bdx = new Owned(be.Allocate(size));
            be.SoftmaxBackward(by.B, bdy.B, outer, dim, inner, bdx.B);
            Close($"SoftmaxBackward ({outer}, {dim}, {inner})", ToFloat(dx), Down(be, bdx.B, size), 1e-6, 1e-4);
        }
    }

    public static void Adam(IBackend be)
    {
        const int n = 1000;
        var p = Rand(n, 27);
        var g = Rand(n, 28);
        var m = Rand(n, 29, -0.1f, 0.1f);
        var v = Rand(n, 30, 0f, 0.01f);
        var hp = new AdamStepParams(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, (float)(1 - Math.Pow(0.9, 3)), (float)(1 - Math.Pow(0.999, 3)));
        var ep = new float[n];
        var em = new float[n];
        var ev = new float[n];
        for (int i = 0; i < n; i++)
        {
            double pi = p[i] * (1.0 - (double)hp.LearningRate * hp.WeightDecay);
            em[i] = (float)(hp.Beta1 * (double)m[i] + (1 - (double)hp.Beta1) * g[i]);
            ev[i] = (float)(hp.Beta2 * (double)v[i] + (1 - (double)hp.Beta2) * g[i] * (double)g[i]);
            ep[i] = (float)(pi - hp.LearningRate / (double)hp.BiasCorrection1 * em[i] / (Math.Sqrt(ev[i]) / Math.Sqrt(hp.BiasCorrection2) + hp.Eps));
        }
        using var bp = Up(be, p);
        using var bg = Up(be, g);
        using var bm = Up(be, m);
        using var bv = Up(be, v);
        be.AdamStep(bp.B, bg.B, bm.B, bv.B, n, hp);
        Close("AdamStep m", em, Down(be, bm.B, n), 1e-7, 1e-5);
        Close("AdamStep v", ev, Down(be, bv.B, n), 1e-9, 1e-5);
        Close("AdamStep param", ep, Down(be, bp.B, n), 1e-6, 1e-5);
    }

    // ---- helpers --------------------------------------------------------------------------------------

    /// <summary>Fails when |expected - actual| &gt; atol + rtol |expected| anywhere; names the first bad index.</summary>
    public static void Close(string what, float[] expected, float[] actual, double atol, double rtol)
    {
        if (expected.Length != actual.Length)
            throw new ParityException($"{what}: {actual.Length} values, expected {expected.Length}.");
        int bad = 0, first = -1;
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            bool same = e.Equals(a) || (double.IsNaN(e) && double.IsNaN(a));
            double err = Math.Abs(e - a);
            if (!same && !(err <= atol + rtol * Math.Abs(e)))
            {
                if (first < 0) first = i;
                bad++;
                worst = Math.Max(worst, double.IsNaN(err) ? double.PositiveInfinity : err);
            }
        }
        if (bad > 0)
            throw new ParityException(
                $"{what}: {bad} of {expected.Length} values differ beyond atol {atol} + rtol {rtol}; first at {first}: " +
                $"{actual[first]:R}, expected {expected[first]:R}; worst error {worst:G4}.");
    }

    private static float[] Rand(int n, int seed, float lo = -1f, float hi = 1f)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * r.NextSingle();
        return a;
    }

    private static float[] ToFloat(double[] a) => a.Select(v => (float)v).ToArray();

    private static int Size(int[] shape) => shape.Aggregate(1, (a, b) => a * b);

    private static int[] Strides(int[] shape)
    {
        var s = new int[shape.Length];
        int acc = 1;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            s[d] = acc;
            acc *= shape[d];
        }
        return s;
    }

    private static string Fmt(int[] a) => "[" + string.Join(", ", a) + "]";

    private static Owned Up(IBackend be, float[] data)
    {
        var b = be.Allocate(data.Length);
        be.Upload(data, b, 0);
        return new Owned(b);
    }

    private static float[] Down(IBackend be, DeviceBuffer b, int n)
    {
        var a = new float[n];
        be.Download(b, 0, a);
        return a;
    }

    /// <summary>Releases a buffer at the end of a using scope.</summary>
    private readonly struct Owned(DeviceBuffer b) : IDisposable
    {
        public DeviceBuffer B { get; } = b;

        public void Dispose() => B.Release();
    }
}

/// <summary>A backend result outside its tolerance.</summary>
public sealed class ParityException(string message) : Exception(message);
