using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Core;

/// <summary>
/// Backward of every op in <see cref="Ops"/> against central finite differences, on the reference backend,
/// with odd sizes. Each case declares its step h and tolerance; the criterion for every input element is
/// |analytic - fd| &lt;= tol * (1 + |fd|) (see <see cref="GradCheck"/>).
///
/// Tolerances (float32 forward, loss accumulated in double), calibrated worst error times a margin of 3-5:
///   op                         h       tol     (calibrated worst |analytic - fd| / (1 + |fd|))
///   linear in the input        0.25    2e-5    (conv 3x3: 5.7e-6; others <= 3.7e-6): Add/Sub/Mul, Affine,
///     (no truncation error,                    Neg, Square, SumTo, Expand, Sum, Mean, MseLoss, layout ops,
///      large h)                                Gather, MatMul, Linear, Conv2d, ConvTranspose2d, Dropout
///   Relu, Abs (|x| >= 0.1)      0.05    2e-5    (1e-14)
///   Div (|b| in [0.5, 2])       3e-3    1e-4    (3.0e-5)
///   Exp, Sin, Cos, Tanh        1e-2    1e-4    (2.4e-5)
///   Sigmoid, Silu              1e-2    5e-5    (1e-5)
///   Sqrt (x in [0.5, 3])        1e-2    1e-4    (2.8e-5)
///   Log (x in [0.5, 3])         1e-2    3e-4    (9.4e-5)
///   GroupNorm (groups 1,2,3,6)  1e-2    3e-4    (5.8e-5)
///     and fused with SiLU       1e-2    3e-4    (4.5e-5)
///     and with a shift input    1e-2    3e-4    (3.7e-5)
///   Softmax                    1e-2    3e-5    (4.5e-6)
///   CrossEntropy               1e-2    3e-5    (1.1e-5)
/// </summary>
public sealed class GradientTests
{
    private static readonly CpuReferenceBackend Be = new();
    private readonly ITestOutputHelper _out;

    public GradientTests(ITestOutputHelper output) => _out = output;

    private sealed record Case(Func<Tensor[], Tensor> F, GradInput[] Inputs, double H, double Tol);

    private const double LinH = 0.25, LinTol = 2e-5;
    private const double SmoothH = 1e-2;
    private const double DivH = 3e-3, DivTol = 1e-4;

    // x: [N, C, H, W] = [2, 3, 5, 7], odd sizes so that no dimension hides another.
    private static readonly int[] X4 = [2, 3, 5, 7];

    private static GradInput N(ulong seed, params int[] shape) => GradInput.Normal(seed, shape);

    private static GradInput Away(ulong seed, float lo, float hi, params int[] shape) =>
        new(shape, TestData.AwayFromZero(TestData.Size(shape), seed, lo, hi));

    private static GradInput Positive(ulong seed, float lo, float hi, params int[] shape) =>
        new(shape, TestData.Uniform(TestData.Size(shape), seed, lo, hi));

    private static readonly Dictionary<string, Case> Cases = BuildCases();

    private static Dictionary<string, Case> BuildCases()
    {
        var c = new Dictionary<string, Case>();

        // ---- broadcasting arithmetic: b's shape against x [2, 3, 5, 7], and a broadcast left operand.
        int[][] bShapes = [[2, 3, 5, 7], [7], [1, 3, 1, 1], [2, 1, 1, 1], [1], [3, 1, 1]];
        foreach (var op in new[] { BinaryOp.Add, BinaryOp.Sub, BinaryOp.Mul, BinaryOp.Div })
        {
            foreach (var bs in bShapes)
            {
                // Division is nonlinear in b: denominators in +-[0.5, 2], the SMOOTH class.
                var b = op == BinaryOp.Div ? Away(20, 0.5f, 2f, bs) : N(20, bs);
                bool div = op == BinaryOp.Div;
                c[$"{op}_x_{Shape.Format(bs)}"] = new(t => Ops.Binary(op, t[0], t[1]), [N(10, X4), b],
                    div ? DivH : LinH, div ? DivTol : LinTol);
            }
            var left = op == BinaryOp.Div ? Away(21, 0.5f, 2f, X4) : N(21, X4);
            c[$"{op}_[1, 3, 1, 1]_x"] = new(t => Ops.Binary(op, t[0], t[1]), [N(11, 1, 3, 1, 1), left],
                op == BinaryOp.Div ? DivH : LinH, op == BinaryOp.Div ? DivTol : LinTol);
        }
        c["Affine"] = new(t => Ops.Affine(t[0], 1.5f, -0.3f), [N(12, X4)], LinH, LinTol);

        // ---- unary ops (SMOOTH), each on a domain where it is smooth within +-h.
        c["Neg"] = new(t => Ops.Neg(t[0]), [N(13, X4)], LinH, LinTol);
        c["Exp"] = new(t => Ops.Exp(t[0]), [N(13, X4)], SmoothH, 1e-4);
        c["Log"] = new(t => Ops.Log(t[0]), [Positive(13, 0.5f, 3f, X4)], SmoothH, 3e-4);
        c["Sin"] = new(t => Ops.Sin(t[0]), [N(13, X4)], SmoothH, 1e-4);
        c["Cos"] = new(t => Ops.Cos(t[0]), [N(13, X4)], SmoothH, 1e-4);
        c["Sqrt"] = new(t => Ops.Sqrt(t[0]), [Positive(13, 0.5f, 3f, X4)], SmoothH, 1e-4);
        c["Square"] = new(t => Ops.Square(t[0]), [N(13, X4)], LinH, LinTol);
        c["Sigmoid"] = new(t => Ops.Sigmoid(t[0]), [N(13, X4)], SmoothH, 5e-5);
        c["Silu"] = new(t => Ops.Silu(t[0]), [N(13, X4)], SmoothH, 5e-5);
        c["Tanh"] = new(t => Ops.Tanh(t[0]), [N(13, X4)], SmoothH, 1e-4);
        // Relu and Abs are piecewise linear: inputs stay at least 0.1 > h away from the kink.
        c["Relu"] = new(t => Ops.Relu(t[0]), [Away(13, 0.1f, 2f, X4)], 0.05, LinTol);
        c["Abs"] = new(t => Ops.Abs(t[0]), [Away(13, 0.1f, 2f, X4)], 0.05, LinTol);

        // ---- reductions and losses.
        c["SumTo_[1, 3, 1, 7]"] = new(t => Ops.SumTo(t[0], new Shape(1, 3, 1, 7)), [N(14, X4)], LinH, LinTol);
        c["SumTo_[5, 1]"] = new(t => Ops.SumTo(t[0], new Shape(5, 1)), [N(14, X4)], LinH, LinTol);
        c["Expand_[3, 1, 1]"] = new(t => Ops.Expand(t[0], new Shape(X4)), [N(15, 3, 1, 1)], LinH, LinTol);
        c["Sum"] = new(t => Ops.Sum(t[0]), [N(16, X4)], LinH, LinTol);
        c["Mean"] = new(t => Ops.Mean(t[0]), [N(16, X4)], LinH, LinTol);
        for (int d = 0; d < 4; d++)
        {
            int dim = d;
            c[$"Sum_dim{d}"] = new(t => Ops.Sum(t[0], dim), [N(17, X4)], LinH, LinTol);
            c[$"Sum_dim{d}_keep"] = new(t => Ops.Sum(t[0], dim, keepDim: true), [N(17, X4)], LinH, LinTol);
        }
        c["MseLoss"] = new(t => Ops.MseLoss(t[0], t[1]), [N(18, X4), N(19, X4)], LinH, LinTol);

        // ---- layout.
        c["Reshape"] = new(t => Ops.Reshape(t[0], 6, -1), [N(22, X4)], LinH, LinTol);
        c["Permute_2031"] = new(t => Ops.Permute(t[0], 2, 0, 3, 1), [N(22, X4)], LinH, LinTol);
        c["Transpose_1_3"] = new(t => Ops.Transpose(t[0], 1, -1), [N(22, X4)], LinH, LinTol);
        c["Concat_dim1"] = new(t => Ops.Concat([t[0], t[1], t[2]], 1),
            [N(23, 2, 2, 5, 7), N(24, 2, 3, 5, 7), N(25, 2, 1, 5, 7)], LinH, LinTol);
        c["Concat_dim3"] = new(t => Ops.Concat([t[0], t[1]], -1), [N(23, 2, 3, 5, 2), N(24, 2, 3, 5, 3)], LinH, LinTol);
        c["Narrow_dim2"] = new(t => Ops.Narrow(t[0], 2, 1, 3), [N(26, X4)], LinH, LinTol);
        // The pieces are put back in another order, so every piece's gradient lands in the right place.
        c["Split_dim3"] = new(t =>
        {
            var p = Ops.Split(t[0], 3, 2, 4, 1);
            return Ops.Concat([p[2], p[0], p[1]], 3);
        }, [N(27, X4)], LinH, LinTol);
        c["Gather"] = new(t => Ops.Gather(t[0], [3, 0, 10, 3, 7]), [N(28, 11)], LinH, LinTol);

        // ---- matrix products: all transpose combinations, batched and 2-d. Stored shapes give
        // op(A): [4, 5], op(B): [5, 6].
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
            {
                bool transA = ta, transB = tb;
                int[] a2 = ta ? [5, 4] : [4, 5], b2 = tb ? [6, 5] : [5, 6];
                c[$"MatMul_2d_{(ta ? "T" : "N")}{(tb ? "T" : "N")}"] = new(t => Ops.MatMul(t[0], t[1], transA, transB),
                    [N(30, a2), N(31, b2)], LinH, LinTol);
                c[$"MatMul_batched_{(ta ? "T" : "N")}{(tb ? "T" : "N")}"] = new(t => Ops.MatMul(t[0], t[1], transA, transB),
                    [N(32, [3, .. a2]), N(33, [3, .. b2])], LinH, LinTol);
            }
        c["Linear"] = new(t => Ops.Linear(t[0], t[1], t[2]), [N(34, 2, 3, 5), N(35, 4, 5), N(36, 4)], LinH, LinTol);
        c["Linear_nobias"] = new(t => Ops.Linear(t[0], t[1], null), [N(34, 2, 3, 5), N(35, 4, 5)], LinH, LinTol);

        // ---- convolutions (weights scaled down so outputs stay O(1)).
        c["Conv2d_3x3_s1_p1"] = new(t => Ops.Conv2d(t[0], t[1], t[2], 1, 1), [N(40, X4), N(41, 4, 3, 3, 3), N(42, 4)], LinH, LinTol);
        c["Conv2d_3x3_s2_p1"] = new(t => Ops.Conv2d(t[0], t[1], t[2], 2, 1), [N(40, X4), N(41, 4, 3, 3, 3), N(42, 4)], LinH, LinTol);
        c["Conv2d_1x1"] = new(t => Ops.Conv2d(t[0], t[1], t[2], 1, 0), [N(40, X4), N(41, 4, 3, 1, 1), N(42, 4)], LinH, LinTol);
        c["Conv2d_5x5_s3_p2_nobias"] = new(t => Ops.Conv2d(t[0], t[1], null, 3, 2), [N(40, X4), N(41, 4, 3, 5, 5)], LinH, LinTol);
        c["Conv2d_2x2_s3_p1"] = new(t => Ops.Conv2d(t[0], t[1], t[2], 3, 1), [N(40, X4), N(41, 4, 3, 2, 2), N(42, 4)], LinH, LinTol);
        c["ConvTranspose2d_4x4_s2_p1"] = new(t => Ops.ConvTranspose2d(t[0], t[1], t[2], 2, 1),
            [N(43, 2, 3, 4, 5), N(44, 3, 2, 4, 4), N(45, 2)], LinH, LinTol);
        c["ConvTranspose2d_3x3_s1_p1"] = new(t => Ops.ConvTranspose2d(t[0], t[1], t[2], 1, 1),
            [N(43, 2, 3, 4, 5), N(44, 3, 2, 3, 3), N(45, 2)], LinH, LinTol);

        // ---- normalisation (NORM).
        foreach (int groups in new[] { 1, 2, 3, 6 })
        {
            int g = groups;
            c[$"GroupNorm_g{g}"] = new(t => Ops.GroupNorm(t[0], g, t[1], t[2]),
                [N(50, 2, 6, 3, 5), N(51, 6), N(52, 6)], SmoothH, 3e-4);
            c[$"GroupNormSilu_g{g}"] = new(t => Ops.GroupNorm(t[0], g, t[1], t[2], silu: true),
                [N(50, 2, 6, 3, 5), N(51, 6), N(52, 6)], SmoothH, 3e-4);
            c[$"GroupNormShiftSilu_g{g}"] = new(t => Ops.GroupNorm(t[0], g, t[1], t[2], silu: true, shift: t[3]),
                [N(50, 2, 6, 3, 5), N(51, 6), N(52, 6), N(53, 2, 6, 1, 1)], SmoothH, 3e-4);
        }
        for (int d = 0; d < 3; d++)
        {
            int dim = d;
            c[$"Softmax_dim{d}"] = new(t => Ops.Softmax(t[0], dim), [N(53, 3, 4, 5)], SmoothH, 3e-5);
        }

        // ---- cross-entropy of 7 samples over 5 classes, every class used as a label at least once.
        c["CrossEntropy"] = new(t => Ops.CrossEntropy(t[0], [2, 0, 4, 1, 3, 4, 0]), [N(55, 7, 5)], SmoothH, 3e-5);

        // ---- dropout: a generator with a fixed seed gives every evaluation the same mask, so the
        // gradient is the mask.
        c["Dropout_p0.3"] = new(t => Ops.Dropout(t[0], 0.3f, true, new PhiloxGenerator(42)), [N(54, X4)], LinH, LinTol);
        return c;
    }

    public static IEnumerable<object[]> CaseNames => Cases.Keys.Select(k => new object[] { k });

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void BackwardMatchesFiniteDifferences(string name)
    {
        var cs = Cases[name];
        double worst = GradCheck.Check(Be, name, cs.F, cs.Inputs, cs.H, cs.Tol);
        _out.WriteLine($"{name}: worst |analytic - fd| / (1 + |fd|) = {worst:E2} (tol {cs.Tol:E1}, h {cs.H})");
    }
}
