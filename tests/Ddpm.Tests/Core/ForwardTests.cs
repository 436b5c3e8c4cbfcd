using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// Forward values of the ops on the reference backend against hand-written results, closed forms and
/// identities computed independently in double. Tolerances: exact (integers, copies) or as noted per test.
/// </summary>
public sealed class ForwardTests : IDisposable
{
    private readonly CpuReferenceBackend _be = new();
    private readonly TensorScope _scope = new();

    public void Dispose()
    {
        _scope.Dispose();
        _be.Dispose();
    }

    private Tensor T(float[] data, params int[] shape) => Tensor.FromArray(_be, data, shape);

    private static float[] Range(int n) => Enumerable.Range(0, n).Select(i => (float)i).ToArray();

    private static double Dot(float[] a, float[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += (double)a[i] * b[i];
        return s;
    }

    [Fact]
    public void Conv2dHandExamples()
    {
        // x: [1, 1, 3, 3] = 1..9; a 2x2 kernel [[1, 0], [0, -1]] gives x[i, j] - x[i+1, j+1] = -4, plus bias.
        var x = T([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 1, 3, 3);
        var w = T([1, 0, 0, -1], 1, 1, 2, 2);
        var b = T([0.5f], 1);
        Assert.Equal(new float[] { -3.5f, -3.5f, -3.5f, -3.5f }, Ops.Conv2d(x, w, b).ToArray());

        // A 3x3 box filter with padding 1 and stride 2 sums the zero-padded neighbourhoods of the corners.
        var box = T(Enumerable.Repeat(1f, 9).ToArray(), 1, 1, 3, 3);
        var y = Ops.Conv2d(x, box, null, stride: 2, padding: 1);
        Assert.Equal(new Shape(1, 1, 2, 2), y.Shape);
        Assert.Equal(new float[] { 12, 16, 24, 28 }, y.ToArray());
    }

    [Fact]
    public void Conv2dOneByOneIsAChannelMatrixProduct()
    {
        // y[n, o, p] = sum_c w[o, c] x[n, c, p] + b[o], computed here in double. Tolerance 1e-6 relative.
        int n = 2, c = 3, o = 4, hw = 35;
        var xd = TestData.Normal(n * c * hw, 1);
        var wd = TestData.Normal(o * c, 2);
        var bd = TestData.Normal(o, 3);
        var y = Ops.Conv2d(T(xd, n, c, 5, 7), T(wd, o, c, 1, 1), T(bd, o)).ToArray();
        var expected = new double[n * o * hw];
        for (int s = 0; s < n; s++)
            for (int k = 0; k < o; k++)
                for (int p = 0; p < hw; p++)
                {
                    double acc = bd[k];
                    for (int ch = 0; ch < c; ch++) acc += (double)wd[k * c + ch] * xd[(s * c + ch) * hw + p];
                    expected[(s * o + k) * hw + p] = acc;
                }
        Closeness.AssertElementwise("conv 1x1", y, expected, 1e-6, 1e-6);
    }

    [Theory]
    [InlineData(3, 1, 1)]
    [InlineData(3, 2, 1)]
    [InlineData(4, 2, 1)]
    [InlineData(5, 3, 2)]
    public void ConvTransposeIsTheAdjointOfConv(int k, int stride, int pad)
    {
        // <conv(x, w), y> == <x, convT(y, w)> for the same weight; both sides in double, relative 1e-5.
        // Start from y so that x has exactly the size the transposed convolution produces.
        var yd = TestData.Normal(2 * 4 * 4 * 5, 6);
        var wd = TestData.Normal(4 * 3 * k * k, 5);
        var y = T(yd, 2, 4, 4, 5);
        var w = T(wd, 4, 3, k, k);
        var ty = Ops.ConvTranspose2d(y, w, null, stride, pad);
        Assert.Equal(new Shape(2, 3, 3 * stride - 2 * pad + k, 4 * stride - 2 * pad + k), ty.Shape);
        var xd = TestData.Normal(ty.Size, 4);
        var cx = Ops.Conv2d(T(xd, ty.Shape.ToArray()), w, null, stride, pad);
        Assert.Equal(y.Shape, cx.Shape);
        double lhs = Dot(cx.ToArray(), yd), rhs = Dot(xd, ty.ToArray());
        Assert.True(Math.Abs(lhs - rhs) <= 1e-5 * (1 + Math.Abs(lhs)), $"<conv x, y> = {lhs}, <x, convT y> = {rhs}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void GroupNormNormalisesEachGroup(int groups)
    {
        // With gamma = 1, beta = 0 every (sample, group) has mean 0 and variance var / (var + eps) ~ 1
        // (biased variance). Inputs have mean 3 and scale 2 so the normalisation does real work.
        int n = 3, c = 8, hw = 15;
        var xd = TestData.Normal(n * c * hw, 7).Select(v => 3 + 2 * v).ToArray();
        var y = Ops.GroupNorm(T(xd, n, c, 3, 5), groups, Tensor.Full(_be, new Shape(c), 1f), Tensor.Zeros(_be, new Shape(c))).ToArray();
        int count = c / groups * hw;
        for (int s = 0; s < n; s++)
            for (int g = 0; g < groups; g++)
            {
                int start = (s * c + g * (c / groups)) * hw;
                double mx = 0, my = 0;
                for (int e = 0; e < count; e++) { mx += xd[start + e]; my += y[start + e]; }
                mx /= count; my /= count;
                double vx = 0, vy = 0;
                for (int e = 0; e < count; e++)
                {
                    vx += (xd[start + e] - mx) * (xd[start + e] - mx);
                    vy += (y[start + e] - my) * (y[start + e] - my);
                }
                vx /= count; vy /= count;
                Assert.True(Math.Abs(my) < 1e-6, $"group ({s}, {g}) mean {my}");
                Assert.True(Math.Abs(vy - vx / (vx + 1e-5)) < 1e-5, $"group ({s}, {g}) variance {vy}, expected {vx / (vx + 1e-5)}");
            }
    }

    [Fact]
    public void GroupNormAppliesTheAffinePerChannel()
    {
        // y = gamma[c] * xhat + beta[c]: compare against gamma = 1, beta = 0 transformed by hand (1e-6 relative).
        int n = 2, c = 6, hw = 4;
        var xd = TestData.Normal(n * c * hw, 8);
        var gd = TestData.Normal(c, 9);
        var bd = TestData.Normal(c, 10);
        var plain = Ops.GroupNorm(T(xd, n, c, hw), 3, Tensor.Full(_be, new Shape(c), 1f), Tensor.Zeros(_be, new Shape(c))).ToArray();
        var affine = Ops.GroupNorm(T(xd, n, c, hw), 3, T(gd, c), T(bd, c)).ToArray();
        var expected = new double[plain.Length];
        for (int i = 0; i < plain.Length; i++)
        {
            int ch = i / hw % c;
            expected[i] = (double)gd[ch] * plain[i] + bd[ch];
        }
        Closeness.AssertElementwise("group norm affine", affine, expected, 1e-6, 1e-6);
    }

    [Fact]
    public void SoftmaxIsADistributionAndShiftInvariant()
    {
        var xd = TestData.Normal(3 * 4 * 5, 11).Select(v => 5 * v).ToArray();
        for (int dim = 0; dim < 3; dim++)
        {
            var y = Ops.Softmax(T(xd, 3, 4, 5), dim);
            Assert.All(y.ToArray(), v => Assert.True(v > 0f && v <= 1f));
            var sums = Ops.Sum(y, dim).ToArray();
            Assert.All(sums, s => Assert.True(Math.Abs(s - 1) < 1e-6, $"dim {dim}: sum {s}"));
            // Adding 1000 would overflow exp without the max subtraction; the result must not change.
            var shifted = Ops.Softmax(T(xd.Select(v => v + 1000f).ToArray(), 3, 4, 5), dim).ToArray();
            Closeness.AssertElementwise($"softmax shift, dim {dim}", shifted, y.ToArray(), 1e-6, 1e-4);
        }
    }

    [Fact]
    public void MatMulMatchesExplicitMatrices()
    {
        // [[1,2,3],[4,5,6]] x [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
        float[] a = [1, 2, 3, 4, 5, 6], at = [1, 4, 2, 5, 3, 6];
        float[] b = [7, 8, 9, 10, 11, 12], bt = [7, 9, 11, 8, 10, 12];
        float[] expected = [58, 64, 139, 154];
        Assert.Equal(expected, Ops.MatMul(T(a, 2, 3), T(b, 3, 2)).ToArray());
        Assert.Equal(expected, Ops.MatMul(T(at, 3, 2), T(b, 3, 2), transA: true).ToArray());
        Assert.Equal(expected, Ops.MatMul(T(a, 2, 3), T(bt, 2, 3), transB: true).ToArray());
        Assert.Equal(expected, Ops.MatMul(T(at, 3, 2), T(bt, 2, 3), true, true).ToArray());
        // A batch of two: the second pair is the first scaled by -1 and 2.
        var a2 = T([.. a, .. a.Select(v => -v)], 2, 2, 3);
        var b2 = T([.. b, .. b.Select(v => 2 * v)], 2, 3, 2);
        Assert.Equal(new float[] { 58, 64, 139, 154, -116, -128, -278, -308 }, Ops.MatMul(a2, b2).ToArray());
    }

    [Fact]
    public void GemmHonoursAlphaBetaAndBroadcastStrides()
    {
        // C starts as NaN: beta == 0 must overwrite it; then beta = 1 accumulates; stride 0 reuses A.
        var a = T([1, 2, 3, 4], 2, 2);
        var b = T([1, 0, 0, 1, 2, 0, 0, 2], 2, 2, 2);
        var c = Tensor.Full(_be, new Shape(2, 2, 2), float.NaN);
        _be.Gemm(false, false, a.Buffer, 0, b.Buffer, 4, 2, 2, 2, 2, 0.5f, 0f, c.Buffer, 4);
        Assert.Equal(new float[] { 0.5f, 1, 1.5f, 2, 1, 2, 3, 4 }, c.ToArray());
        _be.Gemm(false, false, a.Buffer, 0, b.Buffer, 4, 2, 2, 2, 2, 1f, 1f, c.Buffer, 4);
        Assert.Equal(new float[] { 1.5f, 3, 4.5f, 6, 3, 6, 9, 12 }, c.ToArray());
        Assert.Throws<ArgumentException>(() => _be.Gemm(false, false, a.Buffer, 0, b.Buffer, 4, 3, 2, 2, 2, 1f, 0f, c.Buffer, 4));
    }

    [Fact]
    public void PermuteMovesEveryIndex()
    {
        // x: [2, 3, 4] holds its own linear index; y = permute(x, [2, 0, 1]): [4, 2, 3], y[k, i, j] = x[i, j, k].
        var y = Ops.Permute(T(Range(24), 2, 3, 4), 2, 0, 1);
        Assert.Equal(new Shape(4, 2, 3), y.Shape);
        var v = y.ToArray();
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 3; j++)
                    Assert.Equal(i * 12 + j * 4 + k, v[(k * 2 + i) * 3 + j]);
    }

    [Fact]
    public void SumToShapeSumsTheBroadcastDimensions()
    {
        var x = T(Range(24), 2, 3, 4);
        // Over dims 0 and 2: sum_i sum_k (12 i + 4 j + k) = 2*4*4j + 4*12 + 2*6 = 32 j + 60.
        Assert.Equal(new float[] { 60, 92, 124 }, Ops.SumTo(x, new Shape(3, 1)).ToArray());
        var s1 = Ops.SumTo(x, new Shape(2, 1, 4)).ToArray();
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 4; k++)
                Assert.Equal(3 * (12 * i + k) + 4 * 3, s1[i * 4 + k]);
    }

    [Fact]
    public void BinaryBroadcastsAndWorksInPlace()
    {
        var a = T(Range(6), 2, 3);
        var b = T([10, 20, 30], 3);
        Assert.Equal(new float[] { 10, 21, 32, 13, 24, 35 }, Ops.Add(a, b).ToArray());
        var col = T([2, 4], 2, 1);
        Assert.Equal(new float[] { 0, 0.5f, 1, 0.75f, 1, 1.25f }, Ops.Div(a, col).ToArray());
        // y aliasing a (same shape): each element is read before it is written.
        _be.Binary(BinaryOp.Mul, a.Buffer, [2, 3], b.Buffer, [1, 3], a.Buffer, [2, 3]);
        Assert.Equal(new float[] { 0, 20, 60, 30, 80, 150 }, a.ToArray());
        Assert.Throws<ArgumentException>(() => _be.Binary(BinaryOp.Add, a.Buffer, [2, 3], b.Buffer, [1, 2], a.Buffer, [2, 3]));
    }

    [Fact]
    public void ConcatNarrowSplitAndGatherMoveTheRightValues()
    {
        var a = T(Range(6), 2, 3);
        var b = T([100, 101, 102, 103], 2, 2);
        var c = Ops.Concat([a, b], 1);
        Assert.Equal(new float[] { 0, 1, 2, 100, 101, 3, 4, 5, 102, 103 }, c.ToArray());
        Assert.Equal(new float[] { 1, 2, 4, 5 }, Ops.Narrow(a, 1, 1, 2).ToArray());
        var parts = Ops.Split(c, 1, 3, 2);
        Assert.Equal(a.ToArray(), parts[0].ToArray());
        Assert.Equal(b.ToArray(), parts[1].ToArray());
        var table = T([10, 11, 12, 13], 4);
        Assert.Equal(new float[] { 13, 10, 13 }, Ops.Gather(table, [3, 0, 3]).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.Gather(table, [4]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _be.IndexSelect(table.Buffer, 4, 1, [-1], a.Buffer));
    }

    [Fact]
    public void UnaryOpsMatchTheirFormulas()
    {
        var xd = TestData.AwayFromZero(64, 12, 0.1f, 3f);
        var x = T(xd, 64);
        (UnaryOp Op, Func<double, double> F)[] ops =
        [
            (UnaryOp.Neg, v => -v), (UnaryOp.Exp, Math.Exp), (UnaryOp.Sin, Math.Sin), (UnaryOp.Cos, Math.Cos),
            (UnaryOp.Square, v => v * v), (UnaryOp.Sigmoid, v => 1 / (1 + Math.Exp(-v))),
            (UnaryOp.Silu, v => v / (1 + Math.Exp(-v))), (UnaryOp.Tanh, Math.Tanh),
            (UnaryOp.Relu, v => Math.Max(v, 0)), (UnaryOp.Abs, Math.Abs),
        ];
        foreach (var (op, f) in ops)
            Closeness.AssertElementwise(op.ToString(), Ops.Unary(op, x).ToArray(), xd.Select(v => f(v)).ToArray(), 1e-7, 1e-7);
        var pos = xd.Select(MathF.Abs).ToArray();
        Closeness.AssertElementwise("Log", Ops.Log(T(pos, 64)).ToArray(), pos.Select(v => Math.Log(v)).ToArray(), 1e-7, 1e-7);
        Closeness.AssertElementwise("Sqrt", Ops.Sqrt(T(pos, 64)).ToArray(), pos.Select(v => Math.Sqrt(v)).ToArray(), 1e-7, 1e-7);
    }

    [Fact]
    public void ClampLimitsAndRefusesToRecord()
    {
        var x = T([-3f, -1f, 0.5f, 2f, float.NaN], 5);
        var y = Ops.Clamp(x, -1f, 1f).ToArray();
        Assert.Equal(new float[] { -1f, -1f, 0.5f, 1f }, y.Take(4));
        // NaN stays NaN, as torch.clamp does.
        Assert.True(float.IsNaN(y[4]));
        x.RequiresGrad = true;
        Assert.Throws<NotSupportedException>(() => Ops.Clamp(x, -1f, 1f));
    }

    [Fact]
    public void UnaryBackwardHasTheDocumentedKinks()
    {
        // Relu' = 0 at x <= 0 (including 0), Abs' = sign(x) (0 at 0).
        var x = T([-1, 0, 2], 3);
        var dy = T([5, 5, 5], 3);
        var dx = Tensor.Empty(_be, new Shape(3));
        var y = Ops.Relu(x);
        _be.UnaryBackward(UnaryOp.Relu, x.Buffer, y.Buffer, dy.Buffer, 3, dx.Buffer);
        Assert.Equal(new float[] { 0, 0, 5 }, dx.ToArray());
        y = Ops.Abs(x);
        _be.UnaryBackward(UnaryOp.Abs, x.Buffer, y.Buffer, dy.Buffer, 3, dx.Buffer);
        Assert.Equal(new float[] { -5, 0, 5 }, dx.ToArray());
    }

    [Fact]
    public void DropoutMaskFollowsTheDefinition()
    {
        // mask[i] = u(offset + i) < keep ? 1/keep : 0, u the Philox uniform of that position.
        const int n = 10_000;
        const float p = 0.3f;
        var mask = Tensor.Empty(_be, new Shape(n));
        _be.DropoutMask(p, 99, 8, mask.Buffer, n);
        var u = new float[n];
        Philox.FillUniform(u, 99, 8);
        var m = mask.ToArray();
        float keep = 1f - p;
        for (int i = 0; i < n; i++) Assert.Equal(u[i] < keep ? 1f / keep : 0f, m[i]);
        // Kept fraction within 5 standard deviations of keep.
        double kept = m.Count(v => v != 0) / (double)n;
        Assert.True(Math.Abs(kept - keep) < 5 * Math.Sqrt(keep * (1 - keep) / n), $"kept fraction {kept}");
    }

    [Fact]
    public void BuffersAreBoundsChecked()
    {
        var t = Tensor.Zeros(_be, new Shape(10));
        Assert.Throws<ArgumentException>(() => _be.Upload(new float[5], t.Buffer, 6));
        Assert.Throws<ArgumentException>(() => _be.Download(t.Buffer, 8, new float[3]));
        Assert.Throws<ArgumentException>(() => _be.Fill(0f, t.Buffer, 11));
        Assert.Throws<ArgumentException>(() => _be.Copy(t.Buffer, 5, 6, t.Buffer, 0));
        var e = Assert.Throws<ArgumentException>(() => _be.Unary(UnaryOp.Exp, t.Buffer, 10, Tensor.Zeros(_be, new Shape(4)).Buffer));
        Assert.Equal("y", e.ParamName);
        // Two samples of 3x3 need 18 input floats; the buffer has 10.
        var g = new ConvGeometry(2, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1);
        Assert.Throws<ArgumentException>(() => _be.Conv2dForward(t.Buffer, t.Buffer, null, g, t.Buffer));
        var registry = new BackendRegistry().RegisterCpuReference();
        using var created = registry.Create("cpu-reference");
        Assert.Equal("cpu-reference", created.Name);
    }
}
