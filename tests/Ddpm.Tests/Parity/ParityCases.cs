using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Parity;

/// <summary>
/// One case per op of the backend contract, in the manner of ggml's test-backend-ops: random inputs with odd
/// sizes, the op run on the backend under test and on <c>cpu-reference</c>, outputs compared by normalized
/// mean squared error NMSE = sum (a - b)^2 / sum b^2. Tolerances are declared per case, as tight as the
/// float32 arithmetic of a different summation order allows (measured on the cpu backend: most cases are
/// 1e-14..1e-12; GEMM-shaped reductions 1e-13..1e-11). Each backend's test class runs every case.
/// </summary>
public static class ParityCases
{
    // Elementwise ops are one rounding apart at most.
    private const double Elementwise = 1e-12;
    // Long float32 dot products summed in another order.
    private const double Reduction = 1e-10;
    // Transcendentals may use other approximations (SIMD polynomials): a few ulp.
    private const double Transcendental = 1e-11;

    // Products of inputs rounded to TF32 (10-bit mantissa, to nearest): each operand's relative error is at most
    // 2^-11, uniform, variance (2^-11)^2 / 3 = 7.9e-8, so a product's is 1.6e-7; a sum of products with independent
    // errors and random signs has NMSE ~1.6e-7 against the exact sum. 1e-6 leaves room for the spread of an
    // estimate over a few hundred outputs. Below 1e-10 the rounding is not in effect at all: that fails too.
    private const double Tf32 = 1e-6, Tf32Floor = 1e-10;

    private sealed record Case(string Name, Action<IBackend, IBackend> Run);

    private static readonly Case[] All = Build().ToArray();

    private static readonly Case[] Tf32Cases = ConvCases("tf32-", Tf32, Tf32Floor).ToArray();

    public static IEnumerable<object[]> Names => All.Select(c => new object[] { c.Name });

    /// <summary>The convolution cases alone (the ops whose path depends on the convolution engine).</summary>
    public static IEnumerable<object[]> ConvolutionNames => Names.Where(n => ((string)n[0]).StartsWith("conv-", StringComparison.Ordinal));

    /// <summary>The convolution cases for a backend computing in TF32: TF32 tolerances, and the rounding must show.</summary>
    public static IEnumerable<object[]> Tf32Names => Tf32Cases.Select(c => new object[] { c.Name });

    public static void Run(string name, IBackend backend, IBackend reference) =>
        All.Concat(Tf32Cases).Single(c => c.Name == name).Run(backend, reference);

    // ---- helpers ------------------------------------------------------------------------------------

    private static DeviceBuffer Up(IBackend be, float[] data)
    {
        var b = be.Allocate(data.Length);
        be.Upload(data, b, 0);
        return b;
    }

    private static float[] Down(IBackend be, DeviceBuffer b, int n)
    {
        var r = new float[n];
        be.Download(b, 0, r);
        return r;
    }

    /// <summary>
    /// Runs <paramref name="op"/> on both backends with the same inputs and compares the outputs: NMSE at most
    /// <paramref name="tol"/>, and for output 0 at least <paramref name="floor"/> (a reduced precision must show).
    /// </summary>
    private static void Both(IBackend be, IBackend rf, float[][] inputs, int[] outSizes, double tol, string what,
        Action<IBackend, DeviceBuffer[], DeviceBuffer[]> op, float[]? outInit = null, double floor = 0)
    {
        float[][] Go(IBackend b)
        {
            var ins = inputs.Select(x => Up(b, x)).ToArray();
            var outs = outSizes.Select(n => outInit is null ? b.Allocate(n) : Up(b, outInit)).ToArray();
            op(b, ins, outs);
            var r = outs.Select((o, i) => Down(b, o, outSizes[i])).ToArray();
            foreach (var x in ins.Concat(outs)) x.Release();
            return r;
        }
        var expected = Go(rf);
        var actual = Go(be);
        for (int i = 0; i < outSizes.Length; i++)
        {
            Closeness.AssertNmse($"{what} output {i}", actual[i], expected[i], tol);
            // The floor concerns the product (output 0), not a plain sum beside it (a bias gradient).
            if (floor > 0 && i == 0)
            {
                double nmse = Closeness.Nmse(actual[i], expected[i]).Value;
                Assert.True(nmse >= floor, $"{what} output {i}: NMSE {nmse:E3} < {floor:E0}: the reduced precision is not in effect.");
            }
        }
    }

    private static float[] N(int n, ulong seed) => TestData.Normal(n, seed);

    // ---- the cases ----------------------------------------------------------------------------------

    /// <summary>
    /// The three passes of convolutions of odd geometries, named <paramref name="prefix"/>conv-..., within
    /// <paramref name="tol"/> (and at least <paramref name="floor"/>).
    /// </summary>
    private static IEnumerable<Case> ConvCases(string prefix, double tol, double floor)
    {
        ConvGeometry[] convs =
        [
            new(2, 3, 9, 7, 5, 3, 3, 1, 1, 1, 1),
            new(2, 5, 9, 7, 4, 3, 3, 2, 2, 1, 1),
            new(3, 7, 5, 6, 9, 1, 1, 1, 1, 0, 0),
            new(2, 6, 5, 5, 3, 4, 4, 2, 2, 1, 1),
            new(1, 33, 8, 8, 17, 3, 3, 1, 1, 1, 1),
            new(2, 4, 6, 10, 3, 5, 5, 1, 1, 2, 2),
        ];
        foreach (var g in convs)
        {
            string tag = $"{g.N}x{g.C}x{g.H}x{g.W}-o{g.O}-k{g.KH}-s{g.StrideH}-p{g.PadH}";
            yield return new($"{prefix}conv-forward-{tag}", (be, rf) =>
            {
                Both(be, rf, [N(g.InputSize, 17), N(g.WeightSize, 18), N(g.O, 19)], [g.OutputSize], tol, "Conv2dForward",
                    (b, i, o) => b.Conv2dForward(i[0], i[1], i[2], g, o[0]), floor: floor);
                Both(be, rf, [N(g.InputSize, 17), N(g.WeightSize, 18)], [g.OutputSize], tol, "Conv2dForward no bias",
                    (b, i, o) => b.Conv2dForward(i[0], i[1], null, g, o[0]), floor: floor);
            });
            yield return new($"{prefix}conv-backward-data-{tag}", (be, rf) =>
                Both(be, rf, [N(g.OutputSize, 20), N(g.WeightSize, 21)], [g.InputSize], tol, "Conv2dBackwardData",
                    (b, i, o) => b.Conv2dBackwardData(i[0], i[1], g, o[0]), floor: floor));
            yield return new($"{prefix}conv-backward-weight-{tag}", (be, rf) =>
                Both(be, rf, [N(g.InputSize, 22), N(g.OutputSize, 23)], [g.WeightSize, g.O], tol, "Conv2dBackwardWeight",
                    (b, i, o) => b.Conv2dBackwardWeight(i[0], i[1], g, o[0], o[1]), floor: floor));
        }
    }

    private static IEnumerable<Case> Build()
    {
        foreach (var op in Enum.GetValues<UnaryOp>())
        {
            // Inputs where every op is defined (Log, Sqrt need x > 0).
            bool positive = op is UnaryOp.Log or UnaryOp.Sqrt;
            bool transcendental = op is UnaryOp.Exp or UnaryOp.Log or UnaryOp.Sin or UnaryOp.Cos or UnaryOp.Sigmoid or UnaryOp.Silu or UnaryOp.Tanh;
            double tol = transcendental ? Transcendental : Elementwise;
            foreach (int n in new[] { 1, 7, 33, 1000, 4099 })
            {
                yield return new($"unary-{op}-{n}", (be, rf) =>
                {
                    var x = positive ? TestData.Uniform(n, 11, 0.05f, 4f) : TestData.AwayFromZero(n, 11, 0.01f, 4f);
                    Both(be, rf, [x], [n], tol, $"{op} n={n}", (b, i, o) => b.Unary(op, i[0], n, o[0]));
                });
                yield return new($"unary-backward-{op}-{n}", (be, rf) =>
                {
                    var x = positive ? TestData.Uniform(n, 12, 0.05f, 4f) : TestData.AwayFromZero(n, 12, 0.01f, 4f);
                    var y = new float[n];
                    using (var r = new Ddpm.Backends.Cpu.CpuReferenceBackend())
                    {
                        var xb = Up(r, x); var yb = r.Allocate(n);
                        r.Unary(op, xb, n, yb);
                        y = Down(r, yb, n);
                    }
                    var dy = N(n, 13);
                    Both(be, rf, [x, y, dy], [n], tol, $"{op}' n={n}", (b, i, o) => b.UnaryBackward(op, i[0], i[1], i[2], n, o[0]));
                });
            }
        }

        yield return new("affine-axpby-clamp-fill-copy", (be, rf) =>
        {
            int n = 1031;
            var x = N(n, 1);
            Both(be, rf, [x], [n], Elementwise, "affine", (b, i, o) => b.Affine(i[0], n, 1.7f, -0.3f, o[0]));
            Both(be, rf, [x], [n], Elementwise, "axpby", (b, i, o) => b.Axpby(i[0], n, 0.25f, 0.75f, o[0]), N(n, 2));
            Both(be, rf, [x], [n], Elementwise, "clamp", (b, i, o) => b.Clamp(i[0], n, -0.5f, 0.7f, o[0]));
            Both(be, rf, [], [n], Elementwise, "fill", (b, i, o) => b.Fill(3.25f, o[0], n));
            Both(be, rf, [x], [n], Elementwise, "copy with offsets", (b, i, o) => b.Copy(i[0], 5, n - 20, o[0], 9), new float[n]);
        });

        int[][][] broadcasts =
        [
            [[2, 3, 5, 7], [2, 3, 5, 7]],
            [[2, 3, 5, 7], [1, 3, 1, 1]],
            [[2, 3, 5, 7], [2, 1, 1, 1]],
            [[2, 3, 5, 7], [1, 1, 1, 1]],
            [[1, 3, 1, 1], [2, 3, 5, 7]],
            [[2, 1, 5, 1], [1, 3, 1, 7]],
            [[3, 17], [3, 1]],
            [[5, 1, 9], [5, 4, 9]],
        ];
        foreach (var op in Enum.GetValues<BinaryOp>())
            foreach (var pair in broadcasts)
            {
                var a = pair[0]; var bShape = pair[1];
                var y = a.Zip(bShape, Math.Max).ToArray();
                yield return new($"binary-{op}-{Shape.Format(a)}x{Shape.Format(bShape)}", (be, rf) =>
                {
                    var xa = N(TestData.Size(a), 3);
                    var xb = op == BinaryOp.Div ? TestData.AwayFromZero(TestData.Size(bShape), 4, 0.5f, 2f) : N(TestData.Size(bShape), 4);
                    Both(be, rf, [xa, xb], [TestData.Size(y)], Elementwise, $"{op} {Shape.Format(a)} {Shape.Format(bShape)}",
                        (b, i, o) => b.Binary(op, i[0], a, i[1], bShape, o[0], y));
                });
            }

        int[][][] reductions =
        [
            [[2, 3, 5, 7], [1, 3, 1, 1]],
            [[2, 3, 5, 7], [2, 1, 1, 1]],
            [[2, 3, 5, 7], [1, 1, 1, 1]],
            [[2, 3, 5, 7], [2, 3, 1, 1]],
            [[2, 3, 5, 7], [1, 3, 5, 1]],
            [[64, 33], [1, 33]],
            [[64, 33], [64, 1]],
            [[3, 100000], [1, 1]],
            // A convolution's bias gradient: few outputs, long sums split over many warps, then the segments added.
            [[16, 8, 33 * 33], [1, 8, 1]],
            [[5, 3000], [5, 1]],
        ];
        foreach (var pair in reductions)
        {
            var xs = pair[0]; var ys = pair[1];
            yield return new($"sum-to-{Shape.Format(xs)}->{Shape.Format(ys)}", (be, rf) =>
                Both(be, rf, [N(TestData.Size(xs), 5)], [TestData.Size(ys)], Reduction, "SumToShape",
                    (b, i, o) => b.SumToShape(i[0], xs, o[0], ys)));
        }

        yield return new("sum-of-squares", (be, rf) =>
        {
            foreach (int n in new[] { 1, 17, 100003 })
            {
                var x = N(n, 6);
                var bx = Up(be, x); var rx = Up(rf, x);
                double a = be.SumOfSquares(bx, n), e = rf.SumOfSquares(rx, n);
                Assert.True(Math.Abs(a - e) <= 1e-6 * e, $"SumOfSquares n={n}: {a} vs {e}");
                bx.Release(); rx.Release();
            }
        });

        int[][][] perms =
        [
            [[2, 3, 5], [0, 2, 1]],
            [[2, 3, 5, 7], [0, 2, 1, 3]],
            [[2, 3, 5, 7], [3, 2, 1, 0]],
            [[4, 9, 3], [1, 0, 2]],
            [[31, 17], [1, 0]],
        ];
        foreach (var pp in perms)
        {
            var s = pp[0]; var perm = pp[1];
            yield return new($"permute-{Shape.Format(s)}-{Shape.Format(perm)}", (be, rf) =>
                Both(be, rf, [N(TestData.Size(s), 7)], [TestData.Size(s)], 0, "Permute", (b, i, o) => b.Permute(i[0], s, perm, o[0])));
        }

        yield return new("copy-slice", (be, rf) =>
        {
            // src [3, 5, 7] rows 1..3 into dst [3, 9, 7] at 4, plain and accumulating.
            Both(be, rf, [N(3 * 5 * 7, 8)], [3 * 9 * 7], 0, "CopySlice",
                (b, i, o) => b.CopySlice(i[0], 5, 1, 3, 3, 7, false, o[0], 9, 4), N(3 * 9 * 7, 9));
            Both(be, rf, [N(3 * 5 * 7, 8)], [3 * 9 * 7], Elementwise, "CopySlice accumulate",
                (b, i, o) => b.CopySlice(i[0], 5, 1, 3, 3, 7, true, o[0], 9, 4), N(3 * 9 * 7, 9));
        });

        yield return new("index-select-add", (be, rf) =>
        {
            int[] idx = [3, 0, 3, 9, 1];
            Both(be, rf, [N(10 * 6, 10)], [5 * 6], 0, "IndexSelect", (b, i, o) => b.IndexSelect(i[0], 10, 6, idx, o[0]));
            Both(be, rf, [N(5 * 6, 11)], [10 * 6], Elementwise, "IndexAdd", (b, i, o) => b.IndexAdd(i[0], 6, idx, o[0], 10), N(10 * 6, 12));
        });

        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
                foreach (var (batch, m, n, k, sA, sB) in new[] { (1, 37, 29, 53, 1, 1), (3, 17, 65, 33, 1, 1), (4, 9, 130, 7, 0, 1), (2, 64, 64, 257, 1, 0) })
                    yield return new($"gemm-{(ta ? "T" : "N")}{(tb ? "T" : "N")}-b{batch}-{m}x{n}x{k}-s{sA}{sB}", (be, rf) =>
                    {
                        long strideA = sA * (long)m * k, strideB = sB * (long)k * n;
                        var a = N((int)Math.Max(strideA * batch, m * k), 14);
                        var b2 = N((int)Math.Max(strideB * batch, k * n), 15);
                        var c0 = N(batch * m * n, 16);
                        Both(be, rf, [a, b2], [batch * m * n], Reduction, "Gemm beta 0.5",
                            (b, i, o) => b.Gemm(ta, tb, i[0], strideA, i[1], strideB, batch, m, n, k, 0.75f, 0.5f, o[0], (long)m * n), c0);
                        var nan = Enumerable.Repeat(float.NaN, batch * m * n).ToArray();
                        Both(be, rf, [a, b2], [batch * m * n], Reduction, "Gemm beta 0 over NaN",
                            (b, i, o) => b.Gemm(ta, tb, i[0], strideA, i[1], strideB, batch, m, n, k, 1f, 0f, o[0], (long)m * n), nan);
                    });

        foreach (var c in ConvCases("", Reduction, 0)) yield return c;

        foreach (var (n, c, hw, groups) in new[] { (2, 6, 35, 3), (3, 32, 16, 32), (2, 64, 9, 32), (1, 12, 1, 4), (2, 96, 64, 32), (4, 8, 1500, 4) })
        foreach (bool silu in new[] { false, true })
        foreach (bool withShift in new[] { false, true })
        {
            yield return new($"group-norm{(withShift ? "-shift" : "")}{(silu ? "-silu" : "")}-{n}x{c}x{hw}-g{groups}", (be, rf) =>
            {
                var x = N(n * c * hw, 24);
                for (int i = 0; i < x.Length; i++) x[i] = 3f + 2f * x[i];
                var gamma = N(c, 25); var beta = N(c, 26); var dy = N(n * c * hw, 27);
                var shift = N(n * c, 28);
                // The shift is an input of every call; the plain cases pass null in its place.
                DeviceBuffer? Shift(DeviceBuffer s) => withShift ? s : null;
                Both(be, rf, [x, shift, gamma, beta], [n * c * hw, n * groups, n * groups], Reduction, "GroupNormForward",
                    (b, i, o) => b.GroupNormForward(i[0], Shift(i[1]), i[2], i[3], n, c, hw, groups, 1e-5f, silu, o[0], o[1], o[2]));
                Both(be, rf, [dy, x, shift, gamma, beta], [n * c * hw, c, c], Reduction, "GroupNormBackward", (b, i, o) =>
                {
                    var y = b.Allocate(n * c * hw); var mean = b.Allocate(n * groups); var rstd = b.Allocate(n * groups);
                    b.GroupNormForward(i[1], Shift(i[2]), i[3], i[4], n, c, hw, groups, 1e-5f, silu, y, mean, rstd);
                    b.GroupNormBackward(i[0], i[1], Shift(i[2]), i[3], i[4], mean, rstd, n, c, hw, groups, silu, o[0], o[1], o[2]);
                    y.Release(); mean.Release(); rstd.Release();
                });
            });
        }

        foreach (var (outer, dim, inner) in new[] { (6, 17, 1), (2, 5, 7), (1, 300, 3), (64, 64, 1) })
            yield return new($"softmax-{outer}x{dim}x{inner}", (be, rf) =>
            {
                var x = N(outer * dim * inner, 28);
                for (int i = 0; i < x.Length; i++) x[i] *= 4f;
                Both(be, rf, [x], [x.Length], Transcendental, "SoftmaxForward", (b, i, o) => b.SoftmaxForward(i[0], outer, dim, inner, o[0]));
                Both(be, rf, [x, N(x.Length, 29)], [x.Length], Transcendental, "SoftmaxBackward", (b, i, o) =>
                {
                    var y = b.Allocate(x.Length);
                    b.SoftmaxForward(i[0], outer, dim, inner, y);
                    b.SoftmaxBackward(y, i[1], outer, dim, inner, o[0]);
                    y.Release();
                });
            });

        yield return new("adam-step", (be, rf) =>
        {
            int n = 1037;
            var p = N(n, 30); var g = N(n, 31); var m = N(n, 32);
            var v = TestData.Uniform(n, 33, 0f, 0.1f);
            foreach (float wd in new[] { 0f, 0.01f })
            {
                var prm = new AdamStepParams(1e-3f, 0.9f, 0.999f, 1e-8f, wd, 1f - 0.9f * 0.9f, 1f - 0.999f * 0.999f);
                Both(be, rf, [p, g, m, v], [n, n, n], Elementwise, $"AdamStep wd={wd}", (b, i, o) =>
                {
                    b.AdamStep(i[1], n, prm, i[0], i[2], i[3]);
                    b.Copy(i[0], 0, n, o[0], 0); b.Copy(i[2], 0, n, o[1], 0); b.Copy(i[3], 0, n, o[2], 0);
                });
            }
        });

        // NaN and infinities through every elementwise op: a diverging run must show its NaN on every backend.
        float[] special = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0f, -0f, 1f, -1f, 0.5f, -2.5f, 3e38f, -3e38f, 1e-38f];
        foreach (var op in Enum.GetValues<UnaryOp>())
        {
            yield return new($"nonfinite-unary-{op}", (be, rf) =>
            {
                int n = special.Length;
                Both(be, rf, [special], [n], Transcendental, $"{op} of NaN/Inf", (b, i, o) => b.Unary(op, i[0], n, o[0]));
                var y = new float[n];
                using (var r = new Ddpm.Backends.Cpu.CpuReferenceBackend())
                {
                    var xb = Up(r, special); var yb = r.Allocate(n);
                    r.Unary(op, xb, n, yb);
                    y = Down(r, yb, n);
                }
                // dy holds NaN and infinities too, at positions other than x's.
                var dy = special.Reverse().ToArray();
                Both(be, rf, [special, y, dy], [n], Transcendental, $"{op}' of NaN/Inf", (b, i, o) => b.UnaryBackward(op, i[0], i[1], i[2], n, o[0]));
                Both(be, rf, [special, y, N(n, 40)], [n], Transcendental, $"{op}' of NaN/Inf, finite dy", (b, i, o) => b.UnaryBackward(op, i[0], i[1], i[2], n, o[0]));
            });
        }
        yield return new("nonfinite-affine-axpby-clamp", (be, rf) =>
        {
            int n = special.Length;
            var other = special.Reverse().ToArray();
            Both(be, rf, [special], [n], Elementwise, "affine of NaN/Inf", (b, i, o) => b.Affine(i[0], n, 1.7f, -0.3f, o[0]));
            Both(be, rf, [special], [n], Elementwise, "affine by 0 of NaN/Inf", (b, i, o) => b.Affine(i[0], n, 0f, 1f, o[0]));
            Both(be, rf, [special], [n], Elementwise, "axpby of NaN/Inf", (b, i, o) => b.Axpby(i[0], n, 0.25f, 0.75f, o[0]), other);
            Both(be, rf, [special], [n], Elementwise, "clamp of NaN/Inf", (b, i, o) => b.Clamp(i[0], n, -0.5f, 0.7f, o[0]));
        });
        foreach (var op in Enum.GetValues<BinaryOp>())
            yield return new($"nonfinite-binary-{op}", (be, rf) =>
            {
                int n = special.Length;
                // Every pair of special values, same shape and broadcast.
                var a = new float[n * n]; var b2 = new float[n * n];
                for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) { a[i * n + j] = special[i]; b2[i * n + j] = special[j]; }
                Both(be, rf, [a, b2], [n * n], Elementwise, $"{op} of NaN/Inf pairs", (b, i, o) => b.Binary(op, i[0], [n, n], i[1], [n, n], o[0], [n, n]));
                Both(be, rf, [special, special], [n * n], Elementwise, $"{op} of NaN/Inf broadcast",
                    (b, i, o) => b.Binary(op, i[0], [n, 1], i[1], [1, n], o[0], [n, n]));
            });

        // Shapes of the largest rank a tensor may have, alternating so that no dimensions merge.
        foreach (int rank in new[] { 9, Shape.MaxRank })
        {
            var aShape = Enumerable.Range(0, rank).Select(d => d % 2 == 0 ? (d % 4 == 0 ? 3 : 2) : 1).ToArray();
            var bShape = Enumerable.Range(0, rank).Select(d => d % 2 == 1 ? 2 : 1).ToArray();
            if (rank == Shape.MaxRank) aShape = aShape.Select(v => Math.Min(v, 2)).ToArray();
            var yShape = aShape.Zip(bShape, Math.Max).ToArray();
            yield return new($"rank-{rank}-binary-sum-permute", (be, rf) =>
            {
                int ny = TestData.Size(yShape);
                Both(be, rf, [N(TestData.Size(aShape), 41), N(TestData.Size(bShape), 42)], [ny], Elementwise, $"Binary rank {rank}",
                    (b, i, o) => b.Binary(BinaryOp.Add, i[0], aShape, i[1], bShape, o[0], yShape));
                Both(be, rf, [N(ny, 43)], [TestData.Size(aShape)], Reduction, $"SumToShape rank {rank}",
                    (b, i, o) => b.SumToShape(i[0], yShape, o[0], aShape));
                var perm = Enumerable.Range(0, rank).Reverse().ToArray();
                Both(be, rf, [N(ny, 44)], [ny], 0, $"Permute rank {rank}", (b, i, o) => b.Permute(i[0], yShape, perm, o[0]));
            });
        }
        yield return new("rank-above-max-refused", (be, rf) =>
        {
            // One more dimension than a tensor may have: every backend refuses it with the same message.
            var shape = Enumerable.Repeat(1, Shape.MaxRank + 1).ToArray();
            string Refusal(IBackend b, Action<IBackend, DeviceBuffer> op)
            {
                var buf = b.Allocate(4);
                try { return Assert.Throws<NotSupportedException>(() => op(b, buf)).Message; }
                finally { buf.Release(); }
            }
            Action<IBackend, DeviceBuffer>[] ops =
            [
                (b, x) => b.Binary(BinaryOp.Add, x, shape, x, shape, x, shape),
                (b, x) => b.SumToShape(x, shape, x, shape),
                (b, x) => b.Permute(x, shape, Enumerable.Range(0, shape.Length).ToArray(), x),
            ];
            foreach (var op in ops) Assert.Equal(Refusal(rf, op), Refusal(be, op));
        });

        yield return new("philox-fills", (be, rf) =>
        {
            // Bit-identical: the same (seed, offset) gives the same numbers on every backend.
            foreach (var (n, off) in new[] { (1, 0UL), (7, 3UL), (1000, 12345UL), (4099, 1UL << 33) })
            {
                Both(be, rf, [], [n], 0, $"FillNormal n={n} offset={off}", (b, i, o) => b.FillNormal(42, off, o[0], n));
                Both(be, rf, [], [n], 0, $"FillUniform n={n} offset={off}", (b, i, o) => b.FillUniform(42, off, o[0], n));
                Both(be, rf, [], [n], 0, $"DropoutMask n={n} offset={off}", (b, i, o) => b.DropoutMask(0.1f, 42, off, o[0], n));
            }
        });
    }
}
