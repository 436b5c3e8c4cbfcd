using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// Whole ops of <see cref="CpuBackend"/> against double-precision scalar references. Elementwise tolerance:
/// relative 2e-6 plus absolute 1e-6 (float rounding of exp/log/sin and friends); reductions 1e-5 relative.
/// Sizes are odd and above the parallel grain so that the chunked paths run.
/// </summary>
public sealed class ElementwiseTests
{
    private const double Rtol = 2e-6, Atol = 1e-6;

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void UnaryAndBackward(int threads)
    {
        using var be = new CpuBackend(threads);
        const int n = 50_001;
        foreach (UnaryOp op in Enum.GetValues<UnaryOp>())
        {
            bool positive = op is UnaryOp.Log or UnaryOp.Sqrt;
            var x = Random(n, (int)op, positive ? 0.05f : -4f, 4f);
            var dy = Random(n, 100 + (int)op);
            var xb = Up(be, x); var yb = be.Allocate(n); var dyb = Up(be, dy); var dxb = be.Allocate(n);
            be.Unary(op, xb, n, yb);
            be.UnaryBackward(op, xb, yb, dyb, n, dxb);
            var ey = new double[n]; var edx = new double[n];
            for (int i = 0; i < n; i++) { ey[i] = UnaryReference.Value(op, x[i]); edx[i] = dy[i] * UnaryReference.Derivative(op, x[i]); }
            Closeness.AssertElementwise($"{op} forward", Down(be, yb, n), ey, Atol, Rtol);
            Closeness.AssertElementwise($"{op} backward", Down(be, dxb, n), edx, 1e-6, 1e-5);
            // In place: y aliases x.
            be.Unary(op, xb, n, xb);
            Closeness.AssertElementwise($"{op} in place", Down(be, xb, n), ey, Atol, Rtol);
        }
    }

    [Fact]
    public void AffineAxpbyClamp()
    {
        using var be = new CpuBackend(2);
        const int n = 40_003;
        var x = Random(n, 1, -3f, 3f); var y = Random(n, 2);
        var xb = Up(be, x); var yb = Up(be, y); var ob = be.Allocate(n);
        be.Affine(xb, n, 1.5f, -0.5f, ob);
        Closeness.AssertElementwise("affine", Down(be, ob, n), x.Select(v => 1.5 * v - 0.5).ToArray(), Atol, Rtol);
        be.Axpby(xb, n, 0.25f, -2f, yb);
        Closeness.AssertElementwise("axpby", Down(be, yb, n), x.Zip(y, (a, b) => 0.25 * a - 2 * b).ToArray(), Atol, Rtol);
        be.Axpby(xb, n, 0.25f, 0.5f, xb);
        Closeness.AssertElementwise("axpby aliased", Down(be, xb, n), x.Select(v => 0.75 * v).ToArray(), Atol, Rtol);
        be.Upload(x, xb, 0);
        be.Clamp(xb, n, -1f, 0.5f, ob);
        Closeness.AssertElementwise("clamp", Down(be, ob, n), x.Select(v => Math.Clamp((double)v, -1, 0.5)).ToArray(), 0, 0);
        Assert.Equal(x.Sum(v => (double)v * v), be.SumOfSquares(xb, n), 1e-6 * x.Sum(v => (double)v * v));
    }

    public static IEnumerable<object[]> BroadcastCases()
    {
        int[][][] cases =
        [
            [[5, 7, 9, 11], [5, 7, 9, 11]],
            [[5, 7, 9, 11], [1, 7, 1, 1]],
            [[5, 7, 9, 11], [5, 1, 1, 1]],
            [[5, 7, 9, 11], [1, 1, 1, 1]],
            [[1, 1, 1, 1], [5, 7, 9, 11]],
            [[5, 7, 1, 1], [1, 1, 9, 11]],
            [[5, 1, 9, 1], [1, 7, 1, 11]],
            [[1, 7, 1, 11], [5, 7, 9, 1]],
            [[37, 1000], [1, 1000]],
            [[37, 1000], [37, 1]],
            [[3, 1, 5], [3, 1, 5]],
        ];
        foreach (var c in cases)
            foreach (BinaryOp op in Enum.GetValues<BinaryOp>())
                yield return [c[0], c[1], op];
    }

    private static int[] Strides(int[] shape)
    {
        var s = new int[shape.Length];
        int p = 1;
        for (int d = shape.Length - 1; d >= 0; d--) { s[d] = shape[d] == 1 ? 0 : p; p *= shape[d]; }
        return s;
    }

    [Theory]
    [MemberData(nameof(BroadcastCases))]
    public void BinaryBroadcast(int[] aShape, int[] bShape, BinaryOp op)
    {
        using var be = new CpuBackend(2);
        var yShape = aShape.Zip(bShape, Math.Max).ToArray();
        int na = aShape.Aggregate(1, (p, d) => p * d), nb = bShape.Aggregate(1, (p, d) => p * d), ny = yShape.Aggregate(1, (p, d) => p * d);
        var a = Random(na, 1, 0.5f, 2f); var b = Random(nb, 2, 0.5f, 2f);
        int[] sa = Strides(aShape), sb = Strides(bShape);
        var expected = new double[ny];
        for (int i = 0; i < ny; i++)
        {
            int r = i, ia = 0, ib = 0;
            for (int d = yShape.Length - 1; d >= 0; d--) { int k = r % yShape[d]; r /= yShape[d]; ia += k * sa[d]; ib += k * sb[d]; }
            double va = a[ia], vb = b[ib];
            expected[i] = op switch { BinaryOp.Add => va + vb, BinaryOp.Sub => va - vb, BinaryOp.Mul => va * vb, _ => va / vb };
        }
        var ab = Up(be, a); var bb = Up(be, b); var yb = be.Allocate(ny);
        be.Binary(op, ab, aShape, bb, bShape, yb, yShape);
        Closeness.AssertElementwise($"{op} {string.Join(",", aShape)} with {string.Join(",", bShape)}", Down(be, yb, ny), expected, Atol, Rtol);
    }

    public static IEnumerable<object[]> ReduceCases() =>
    [
        [new[] { 5, 7, 9, 11 }, new[] { 1, 7, 1, 1 }],
        [new[] { 5, 7, 9, 11 }, new[] { 5, 1, 1, 1 }],
        [new[] { 5, 7, 9, 11 }, new[] { 1, 1, 1, 1 }],
        [new[] { 5, 7, 9, 11 }, new[] { 5, 7, 9, 11 }],
        [new[] { 5, 7, 9, 11 }, new[] { 1, 7, 1, 11 }],
        [new[] { 5, 7, 9, 11 }, new[] { 5, 1, 9, 1 }],
        [new[] { 301, 257 }, new[] { 1, 257 }],
        [new[] { 301, 257 }, new[] { 301, 1 }],
        [new[] { 70001 }, new[] { 1 }],
        [new[] { 3, 1, 4 }, new[] { 1, 1, 4 }],
    ];

    [Theory]
    [MemberData(nameof(ReduceCases))]
    public void SumToShape(int[] xShape, int[] yShape)
    {
        using var be = new CpuBackend(2);
        int nx = xShape.Aggregate(1, (p, d) => p * d), ny = yShape.Aggregate(1, (p, d) => p * d);
        var x = Random(nx, 3);
        int[] sy = Strides(yShape);
        var expected = new double[ny];
        for (int i = 0; i < nx; i++)
        {
            int r = i, iy = 0;
            for (int d = xShape.Length - 1; d >= 0; d--) { int k = r % xShape[d]; r /= xShape[d]; iy += k * sy[d]; }
            expected[iy] += x[i];
        }
        var xb = Up(be, x); var yb = Up(be, Enumerable.Repeat(float.NaN, ny).ToArray());
        be.SumToShape(xb, xShape, yb, yShape);
        Closeness.AssertElementwise("sum", Down(be, yb, ny), expected, 1e-4, 1e-5);
    }

    [Theory]
    [InlineData(new[] { 3, 5, 7, 9 }, new[] { 0, 2, 3, 1 })]
    [InlineData(new[] { 3, 5, 7, 9 }, new[] { 0, 1, 3, 2 })]
    [InlineData(new[] { 3, 5, 7, 9 }, new[] { 3, 2, 1, 0 })]
    [InlineData(new[] { 3, 1, 7, 9 }, new[] { 1, 0, 2, 3 })]
    [InlineData(new[] { 64, 300 }, new[] { 1, 0 })]
    public void Permute(int[] xShape, int[] perm)
    {
        using var be = new CpuBackend(2);
        int n = xShape.Aggregate(1, (p, d) => p * d);
        var x = Random(n, 4);
        var yShape = perm.Select(p => xShape[p]).ToArray();
        var xs = new int[xShape.Length];
        for (int d = xShape.Length - 1, p = 1; d >= 0; d--) { xs[d] = p; p *= xShape[d]; }
        var expected = new double[n];
        for (int i = 0; i < n; i++)
        {
            int r = i, ix = 0;
            for (int d = yShape.Length - 1; d >= 0; d--) { int k = r % yShape[d]; r /= yShape[d]; ix += k * xs[perm[d]]; }
            expected[i] = x[ix];
        }
        var xb = Up(be, x); var yb = be.Allocate(n);
        be.Permute(xb, xShape, perm, yb);
        Closeness.AssertElementwise("permute", Down(be, yb, n), expected, 0, 0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CopySliceAndIndex(bool accumulate)
    {
        using var be = new CpuBackend(2);
        int outer = 7, srcDim = 5, dstDim = 9, inner = 3001;
        var src = Random(outer * srcDim * inner, 5); var dst = Random(outer * dstDim * inner, 6);
        var expected = dst.Select(v => (double)v).ToArray();
        for (int o = 0; o < outer; o++)
            for (int d = 0; d < 3; d++)
                for (int i = 0; i < inner; i++)
                {
                    double v = src[(o * srcDim + 1 + d) * inner + i];
                    int di = (o * dstDim + 4 + d) * inner + i;
                    expected[di] = accumulate ? expected[di] + v : v;
                }
        var sb = Up(be, src); var db = Up(be, dst);
        be.CopySlice(sb, srcDim, 1, outer, 3, inner, accumulate, db, dstDim, 4);
        Closeness.AssertElementwise("copy slice", Down(be, db, dst.Length), expected, Atol, Rtol);

        var table = Random(10 * 3, 7);
        var tb = Up(be, table); var sel = be.Allocate(4 * 3);
        int[] idx = [9, 0, 9, 4];
        be.IndexSelect(tb, 10, 3, idx, sel);
        Closeness.AssertElementwise("index select", Down(be, sel, 12), idx.SelectMany(r => table.Skip(r * 3).Take(3)).Select(v => (double)v).ToArray(), 0, 0);
        var acc = new double[30];
        for (int i = 0; i < 4; i++) for (int j = 0; j < 3; j++) acc[idx[i] * 3 + j] += table[idx[i] * 3 + j];
        var zb = Up(be, new float[30]);
        be.IndexAdd(sel, 3, idx, zb, 10);
        Closeness.AssertElementwise("index add", Down(be, zb, 30), acc, Atol, Rtol);
    }

    [Theory]
    [InlineData(0UL, 0)]
    [InlineData(3UL, 1)]
    [InlineData(1000003UL, 2)]
    public void PhiloxFillsAreBitIdentical(ulong offset, int seedIndex)
    {
        ulong seed = 0x1234_5678_9ABCUL + (ulong)seedIndex;
        const int n = 100_003;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            using var be = new CpuBackend(threads);
            var b = be.Allocate(n);
            var expected = new float[n];
            be.FillNormal(seed, offset, b, n);
            Philox.FillNormal(expected, seed, offset);
            Assert.Equal(expected, Down(be, b, n));
            be.FillUniform(seed, offset, b, n);
            Philox.FillUniform(expected, seed, offset);
            Assert.Equal(expected, Down(be, b, n));
            be.DropoutMask(0.3f, seed, offset, b, n);
            float keep = 1f - 0.3f;
            Assert.Equal(expected.Select(u => u < keep ? 1f / keep : 0f).ToArray(), Down(be, b, n));
        }
    }
}
