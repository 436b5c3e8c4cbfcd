using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// Group norm (alone and fused with SiLU), softmax and Adam against double-precision scalar references. Tolerances: group norm output
/// and gradients relative 1e-5 plus absolute 1e-5 (sums of up to a few thousand float terms); softmax 1e-6
/// relative plus 1e-7; Adam 1e-6 relative plus 1e-9 (a handful of float roundings per element).
/// </summary>
public sealed class NnTests
{
    [Theory]
    [InlineData(3, 12, 37, 4, false, false)]
    [InlineData(2, 32, 64, 32, false, false)]
    [InlineData(5, 6, 1, 3, false, false)]
    [InlineData(4, 64, 1024, 32, false, false)]
    [InlineData(3, 12, 37, 4, true, false)]
    [InlineData(2, 32, 64, 32, true, false)]
    [InlineData(5, 6, 1, 3, true, false)]
    [InlineData(4, 64, 1024, 32, true, false)]
    [InlineData(3, 12, 37, 4, true, true)]
    [InlineData(2, 32, 64, 32, false, true)]
    [InlineData(5, 6, 1, 3, true, true)]
    [InlineData(4, 64, 1024, 32, true, true)]
    public void GroupNormForwardBackward(int n, int c, int hw, int groups, bool silu, bool withShift)
    {
        using var be = new CpuBackend(2);
        int size = n * c * hw, cpg = c / groups;
        var x0 = Random(size, 1, -2f, 3f); var gamma = Random(c, 2, 0.5f, 1.5f); var beta = Random(c, 3); var dy = Random(size, 4);
        // With a shift [n, c] the op normalises x + shift; the references below use that sum in double.
        var shift = withShift ? Random(n * c, 5, -1.5f, 1.5f) : null;
        var x = x0.Select((v, i) => v + (shift?[i / hw] ?? 0.0)).ToArray();
        const double eps = 1e-5;
        var ey = new double[size]; var edx = new double[size]; var edg = new double[c]; var edb = new double[c];
        var emean = new double[n * groups]; var erstd = new double[n * groups];
        for (int s = 0; s < n; s++)
            for (int g = 0; g < groups; g++)
            {
                int off = (s * c + g * cpg) * hw, m = cpg * hw;
                double mu = 0; for (int i = 0; i < m; i++) mu += x[off + i]; mu /= m;
                double v = 0; for (int i = 0; i < m; i++) v += (x[off + i] - mu) * (x[off + i] - mu); v /= m;
                double r = 1 / Math.Sqrt(v + eps);
                emean[s * groups + g] = mu; erstd[s * groups + g] = r;
                for (int i = 0; i < m; i++)
                {
                    int ch = g * cpg + i / hw;
                    double z = (x[off + i] - mu) * r * gamma[ch] + beta[ch];
                    ey[off + i] = silu ? z / (1 + Math.Exp(-z)) : z;
                }
            }
        var xb = Up(be, x0); var gb = Up(be, gamma); var bb = Up(be, beta); var yb = be.Allocate(size);
        var sb = shift is null ? null : Up(be, shift);
        var mb = be.Allocate(n * groups); var rb = be.Allocate(n * groups);
        be.GroupNormForward(xb, sb, gb, bb, n, c, hw, groups, (float)eps, silu, yb, mb, rb);
        Closeness.AssertElementwise("y", Down(be, yb, size), ey, 1e-5, 1e-5);
        Closeness.AssertElementwise("mean", Down(be, mb, n * groups), emean, 1e-6, 1e-5);
        Closeness.AssertElementwise("rstd", Down(be, rb, n * groups), erstd, 1e-6, 1e-5);

        // The backward takes the forward's float mean and 1/std as given; the reference does too, so the
        // check isolates the backward op (with 2 elements per group 1/std is large and amplifies them).
        var fmean = Down(be, mb, n * groups); var frstd = Down(be, rb, n * groups);
        for (int s = 0; s < n; s++)
            for (int g = 0; g < groups; g++)
            {
                int off = (s * c + g * cpg) * hw, m = cpg * hw;
                double mu = fmean[s * groups + g], r = frstd[s * groups + g];
                // The gradient of the normalised z: dy, or under SiLU dy silu'(z).
                var gz = new double[m];
                for (int i = 0; i < m; i++)
                {
                    int ch = g * cpg + i / hw;
                    double z = (x[off + i] - mu) * r * gamma[ch] + beta[ch], sg = 1 / (1 + Math.Exp(-z));
                    gz[i] = dy[off + i] * (silu ? sg * (1 + z * (1 - sg)) : 1);
                }
                double a = 0, b = 0;
                for (int i = 0; i < m; i++)
                {
                    int ch = g * cpg + i / hw;
                    double xh = (x[off + i] - mu) * r;
                    edg[ch] += gz[i] * xh; edb[ch] += gz[i];
                    a += gamma[ch] * gz[i]; b += gamma[ch] * gz[i] * xh;
                }
                for (int i = 0; i < m; i++)
                {
                    int ch = g * cpg + i / hw;
                    double xh = (x[off + i] - mu) * r;
                    edx[off + i] = r * (gamma[ch] * gz[i] - (a + xh * b) / m);
                }
            }
        var dyb = Up(be, dy); var dxb = be.Allocate(size); var dgb = be.Allocate(c); var dbb = be.Allocate(c);
        be.GroupNormBackward(dyb, xb, sb, gb, bb, mb, rb, n, c, hw, groups, silu, dxb, dgb, dbb);
        Closeness.AssertElementwise("dx", Down(be, dxb, size), edx, 2e-5, 1e-4);
        Closeness.AssertElementwise("dgamma", Down(be, dgb, c), edg, 1e-4, 1e-5);
        Closeness.AssertElementwise("dbeta", Down(be, dbb, c), edb, 1e-4, 1e-5);
    }

    [Fact]
    public void GroupNormSiluIsBitwiseTheTwoOps()
    {
        // The fused op forms z and applies SiLU (and silu' backward) with the same kernels as the separate ops, so
        // where a channel is a whole number of 512-bit vectors (every UNet layer: 16 to 1024 positions) the
        // results are the same bits. (In a channel's tail the fused op runs the narrower vector or scalar exp,
        // which may differ in the last bit.)
        using var be = new CpuBackend(2);
        int n = 3, c = 32, hw = 64, groups = 8, size = n * c * hw;
        var x = Random(size, 11, -2f, 3f); var gamma = Random(c, 12, 0.5f, 1.5f); var beta = Random(c, 13); var dy = Random(size, 14);
        var xb = Up(be, x); var gb = Up(be, gamma); var bb = Up(be, beta); var dyb = Up(be, dy);
        var z = be.Allocate(size); var a = be.Allocate(size); var fused = be.Allocate(size);
        var m1 = be.Allocate(n * groups); var r1 = be.Allocate(n * groups); var m2 = be.Allocate(n * groups); var r2 = be.Allocate(n * groups);
        be.GroupNormForward(xb, null, gb, bb, n, c, hw, groups, 1e-5f, false, z, m1, r1);
        be.Unary(UnaryOp.Silu, z, size, a);
        be.GroupNormForward(xb, null, gb, bb, n, c, hw, groups, 1e-5f, true, fused, m2, r2);
        Assert.Equal(Down(be, a, size), Down(be, fused, size));
        var dz = be.Allocate(size); var dx1 = be.Allocate(size); var dx2 = be.Allocate(size);
        var dg1 = be.Allocate(c); var db1 = be.Allocate(c); var dg2 = be.Allocate(c); var db2 = be.Allocate(c);
        be.UnaryBackward(UnaryOp.Silu, z, a, dyb, size, dz);
        be.GroupNormBackward(dz, xb, null, gb, bb, m1, r1, n, c, hw, groups, false, dx1, dg1, db1);
        be.GroupNormBackward(dyb, xb, null, gb, bb, m2, r2, n, c, hw, groups, true, dx2, dg2, db2);
        Assert.Equal(Down(be, dx1, size), Down(be, dx2, size));
        Assert.Equal(Down(be, dg1, c), Down(be, dg2, c));
        Assert.Equal(Down(be, db1, c), Down(be, db2, c));
    }

    [Theory]
    [InlineData(37, 53, 1)]
    [InlineData(5, 7, 301)]
    [InlineData(3, 16, 2049)]
    [InlineData(64, 1, 1)]
    public void SoftmaxForwardBackward(int outer, int dim, int inner)
    {
        using var be = new CpuBackend(2);
        int size = outer * dim * inner;
        var x = Random(size, 5, -8f, 8f); var dy = Random(size, 6);
        var ey = new double[size]; var edx = new double[size];
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                int Idx(int d) => (o * dim + d) * inner + i;
                double max = double.NegativeInfinity;
                for (int d = 0; d < dim; d++) max = Math.Max(max, x[Idx(d)]);
                double sum = 0;
                for (int d = 0; d < dim; d++) sum += Math.Exp(x[Idx(d)] - max);
                double dot = 0;
                for (int d = 0; d < dim; d++) { ey[Idx(d)] = Math.Exp(x[Idx(d)] - max) / sum; dot += ey[Idx(d)] * dy[Idx(d)]; }
                for (int d = 0; d < dim; d++) edx[Idx(d)] = ey[Idx(d)] * (dy[Idx(d)] - dot);
            }
        var xb = Up(be, x); var yb = be.Allocate(size);
        be.SoftmaxForward(xb, outer, dim, inner, yb);
        var y = Down(be, yb, size);
        Closeness.AssertElementwise("softmax", y, ey, 1e-7, 1e-6);
        // The backward of the float y, so the check isolates the backward op.
        var ey2 = new double[size];
        for (int o = 0; o < outer; o++)
            for (int i = 0; i < inner; i++)
            {
                double dot = 0;
                for (int d = 0; d < dim; d++) dot += (double)y[(o * dim + d) * inner + i] * dy[(o * dim + d) * inner + i];
                for (int d = 0; d < dim; d++) { int k = (o * dim + d) * inner + i; ey2[k] = y[k] * (dy[k] - dot); }
            }
        var dyb = Up(be, dy); var dxb = be.Allocate(size);
        be.SoftmaxBackward(yb, dyb, outer, dim, inner, dxb);
        Closeness.AssertElementwise("softmax backward", Down(be, dxb, size), ey2, 1e-7, 1e-5);
        Closeness.AssertElementwise("softmax backward vs exact", Down(be, dxb, size), edx, 1e-6, 1e-4);
    }

    [Fact]
    public void AdamMatchesDoubleReference()
    {
        using var be = new CpuBackend(2);
        const int n = 70_001;
        var p = Random(n, 7); var g = Random(n, 8); var m = Random(n, 9, -0.1f, 0.1f); var v = Random(n, 10, 0f, 0.01f);
        // The float hyper-parameters the backend receives, widened.
        const double lr = 2e-4f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
        const int t = 3;
        double bc1 = (float)(1 - Math.Pow(b1, t)), bc2 = (float)(1 - Math.Pow(b2, t));
        var ep = new double[n]; var em = new double[n]; var ev = new double[n];
        for (int i = 0; i < n; i++)
        {
            double pi = p[i] * (double)(1f - (float)lr * (float)wd);
            em[i] = b1 * m[i] + (double)(1f - (float)b1) * g[i];
            ev[i] = b2 * v[i] + (double)(1f - (float)b2) * g[i] * g[i];
            ep[i] = pi - lr / bc1 * em[i] / (Math.Sqrt(ev[i]) / Math.Sqrt(bc2) + eps);
        }
        var pb = Up(be, p); var gb = Up(be, g); var mb = Up(be, m); var vb = Up(be, v);
        be.AdamStep(gb, n, new AdamStepParams((float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)bc1, (float)bc2), pb, mb, vb);
        // m and v are sums of two terms that may cancel: absolute tolerance from the terms' size (|m| < 0.2, v < 0.02).
        Closeness.AssertElementwise("m", Down(be, mb, n), em, 3e-8, 1e-6);
        Closeness.AssertElementwise("v", Down(be, vb, n), ev, 3e-9, 1e-6);
        Closeness.AssertElementwise("param", Down(be, pb, n), ep, 1e-7, 1e-6);
    }
}
