using System.Runtime.Intrinsics;
using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cpu.Fast;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// Each own SIMD kernel at every length 0..256 and every width cap (512, 256, 128 bits) against its scalar
/// path on the same inputs. Tolerance: 4 ulp-ish relative (2e-6) plus 1e-7 absolute, since the vector exp /
/// sin / cos approximations may differ from MathF's in the last bits.
/// </summary>
public sealed unsafe class KernelTests
{
    private const double Rtol = 2e-6, Atol = 1e-7;
    private static readonly int[] Widths = [512, 256, 128];

    private static void CheckUnary<T>(T op, float lo, float hi) where T : struct, IUnaryKernel
    {
        var x = Random(256 + 8, 11, lo, hi);
        var y = new float[x.Length];
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                Array.Fill(y, float.NaN);
                fixed (float* xp = x, yp = y) Kernel.Map(op, xp, yp, n, bits);
                var expected = new double[n];
                for (int i = 0; i < n; i++) expected[i] = op.Invoke(x[i]);
                Closeness.AssertElementwise($"{typeof(T).Name} n={n} bits={bits}", y.AsSpan(0, n), expected, Atol, Rtol);
                Assert.True(float.IsNaN(y[n]), $"{typeof(T).Name} wrote past n={n}");
            }
    }

    private static void CheckBinary<T>(T op) where T : struct, IBinaryKernel
    {
        var x = Random(264, 12); var z = Random(264, 13);
        var y = new float[x.Length];
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                Array.Fill(y, float.NaN);
                fixed (float* xp = x, zp = z, yp = y) Kernel.Map(op, xp, zp, yp, n, bits);
                var expected = new double[n];
                for (int i = 0; i < n; i++) expected[i] = op.Invoke(x[i], z[i]);
                Closeness.AssertElementwise($"{typeof(T).Name} n={n} bits={bits}", y.AsSpan(0, n), expected, Atol, Rtol);
                Assert.True(float.IsNaN(y[n]));
            }
    }

    private static void CheckTernary<T>(T op, float lo, float hi, bool positiveY = false) where T : struct, ITernaryKernel
    {
        var x = Random(264, 14, lo, hi); var yv = Random(264, 15, positiveY ? 0.1f : -1f, 1f); var dy = Random(264, 16);
        x[3] = 0f; x[40] = 0f;
        var dx = new float[x.Length];
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                Array.Fill(dx, float.NaN);
                fixed (float* xp = x, yp = yv, dyp = dy, dxp = dx) Kernel.Map(op, xp, yp, dyp, dxp, n, bits);
                var expected = new double[n];
                for (int i = 0; i < n; i++) expected[i] = op.Invoke(x[i], yv[i], dy[i]);
                Closeness.AssertElementwise($"{typeof(T).Name} n={n} bits={bits}", dx.AsSpan(0, n), expected, Atol, Rtol);
                Assert.True(float.IsNaN(dx[n]));
            }
    }

    [Fact] public void Silu() => CheckUnary(new SiluKernel(), -12f, 12f);
    [Fact] public void Normalize() => CheckUnary(new NormalizeKernel(0.3f, 2.5f, -0.25f), -3f, 3f);
    [Fact] public void Affine() => CheckUnary(new AffineKernel(1.5f, -0.25f), -3f, 3f);
    [Fact] public void Dropout() => CheckUnary(new DropoutKernel(0.7f, 1f / 0.7f), 0f, 1f);
    [Fact] public void Axpby() => CheckBinary(new AxpbyKernel(0.3f, -1.7f));
    [Fact] public void LinearCombination() => CheckBinary(new LinearCombinationKernel(0.3f, -1.7f, 0.4f, 0.125f));
    [Fact] public void SoftmaxBackward() => CheckBinary(new SoftmaxBackwardKernel(0.37f));
    [Fact] public void SoftmaxBackwardRows() => CheckTernary(new SoftmaxBackwardRowsKernel(), -1f, 1f);
    [Fact] public void NegBackward() => CheckTernary(new NegBackward(), -3f, 3f);
    [Fact] public void ExpBackward() => CheckTernary(new ExpBackward(), -3f, 3f);
    [Fact] public void LogBackward() => CheckTernary(new LogBackward(), 0.1f, 3f);
    [Fact] public void SinBackward() => CheckTernary(new SinBackward(), -10f, 10f);
    [Fact] public void CosBackward() => CheckTernary(new CosBackward(), -10f, 10f);
    [Fact] public void SqrtBackward() => CheckTernary(new SqrtBackward(), 0.1f, 3f, positiveY: true);
    [Fact] public void SquareBackward() => CheckTernary(new SquareBackward(), -3f, 3f);
    [Fact] public void SigmoidBackward() => CheckTernary(new SigmoidBackward(), -3f, 3f);
    [Fact] public void SiluBackward() => CheckTernary(new SiluBackward(), -12f, 12f);
    [Fact] public void TanhBackward() => CheckTernary(new TanhBackward(), -3f, 3f);
    [Fact] public void ReluBackward() => CheckTernary(new ReluBackward(), -3f, 3f);
    [Fact] public void AbsBackward() => CheckTernary(new AbsBackward(), -3f, 3f);

    [Fact]
    public void SumSquaredDeviation()
    {
        var x = Random(256, 17, -2f, 3f);
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                double expected = 0;
                for (int i = 0; i < n; i++) expected += (double)(x[i] - 0.3f) * (x[i] - 0.3f);
                double got;
                fixed (float* xp = x) got = Kernel.SumSquaredDeviation(xp, n, 0.3f, bits);
                Assert.True(Math.Abs(got - expected) <= 1e-5 * expected + 1e-12, $"n={n} bits={bits}: {got} vs {expected}");
            }
    }

    [Fact]
    public void FastSigmoidAgainstDouble()
    {
        // Every 1/64 from -120 to 120: past about -88 the logistic is below 1e-38 and comes out as 0; elsewhere a
        // few ulp (2e-7 relative) of the double value.
        var xs = Enumerable.Range(-120 * 64, 240 * 64 + 1).Select(i => i / 64f).ToArray();
        for (int i = 0; i + 16 <= xs.Length; i += 16)
        {
            var v512 = FastSigmoid.Invoke(Vector512.Create(xs.AsSpan(i, 16)));
            var v256 = FastSigmoid.Invoke(Vector256.Create(xs.AsSpan(i, 8)));
            for (int j = 0; j < 16; j++)
            {
                double expected = 1 / (1 + Math.Exp(-(double)xs[i + j]));
                Assert.True(Math.Abs(v512[j] - expected) <= 2e-7 * expected + 1e-38, $"512-bit sigmoid({xs[i + j]}) = {v512[j]}, expected {expected}");
                if (j < 8) Assert.True(Math.Abs(v256[j] - expected) <= 2e-7 * expected + 1e-38, $"256-bit sigmoid({xs[i + j]}) = {v256[j]}, expected {expected}");
            }
        }
        var special = FastSigmoid.Invoke(Vector512.Create(float.NegativeInfinity, float.PositiveInfinity, -3e38f, 3e38f, 0f, -0f, 1f, -1f, 88f, -88f, 50f, -50f, 10f, -10f, 0.5f, -0.5f));
        Assert.Equal(0f, special[0]);
        Assert.Equal(1f, special[1]);
        Assert.Equal(0f, special[2]);
        Assert.Equal(1f, special[3]);
        Assert.Equal(0.5f, special[4]);
    }

    [Fact]
    public void RowCopyAndAdd()
    {
        var src = Random(260, 26); var dst0 = Random(260, 27);
        for (int n = 0; n <= 256; n++)
        {
            var dst = (float[])dst0.Clone();
            fixed (float* s = src, d = dst) Rows.Copy(s + 1, d + 2, n);
            for (int i = 0; i < 260; i++) Assert.Equal(i >= 2 && i < n + 2 ? src[i - 1] : dst0[i], dst[i]);
            dst = (float[])dst0.Clone();
            fixed (float* s = src, d = dst) Rows.AddTo(s + 1, d + 2, n);
            for (int i = 0; i < 260; i++) Assert.Equal(i >= 2 && i < n + 2 ? dst0[i] + src[i - 1] : dst0[i], dst[i]);
        }
    }

    [Fact]
    public void SumProductDeviation()
    {
        var a = Random(256, 24); var x = Random(256, 25, -2f, 3f);
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                double expected = 0, abs = 0;
                for (int i = 0; i < n; i++) { expected += (double)a[i] * (x[i] - 0.3f); abs += Math.Abs((double)a[i] * (x[i] - 0.3f)); }
                double got;
                fixed (float* ap = a, xp = x) got = Reduce.SumProductDeviation(ap, xp, n, 0.3f, bits);
                Assert.True(Math.Abs(got - expected) <= 1e-6 * abs + 1e-12, $"n={n} bits={bits}: {got} vs {expected}");
            }
    }

    /// <summary>
    /// The group-norm backward pass: g = op(dy, x) stored (or not), its sum and its sum against x - mean, at every
    /// length and width, against the op's scalar path summed in double; nothing written past n.
    /// </summary>
    [Fact]
    public void GradientSums()
    {
        var dy = Random(264, 28); var x = Random(264, 29, -2f, 3f);
        var g = new float[264];
        foreach (bool silu in new[] { false, true })
            foreach (int bits in Widths)
                for (int n = 0; n <= 256; n++)
                {
                    var op = new NormalizeSiluBackwardKernel(0.3f, 1.7f, -0.2f);
                    double sumG = 0, sumGx = 0, absG = 0, absGx = 0;
                    var expected = new double[n];
                    for (int i = 0; i < n; i++)
                    {
                        double v = silu ? op.Invoke(dy[i], x[i]) : dy[i];
                        expected[i] = v;
                        sumG += v; absG += Math.Abs(v);
                        sumGx += v * (x[i] - 0.3f); absGx += Math.Abs(v * (x[i] - 0.3f));
                    }
                    Array.Fill(g, float.NaN);
                    double gotGx, gotG;
                    fixed (float* dyp = dy, xp = x, gp = g)
                        gotGx = silu ? Reduce.GradientSums(op, dyp, xp, gp, n, 0.3f, out gotG, bits)
                            : Reduce.GradientSums(new FirstKernel(), dyp, xp, null, n, 0.3f, out gotG, bits);
                    string what = $"silu={silu} n={n} bits={bits}";
                    Assert.True(Math.Abs(gotG - sumG) <= 1e-6 * absG + 1e-12, $"{what}: sum {gotG} vs {sumG}");
                    Assert.True(Math.Abs(gotGx - sumGx) <= 1e-6 * absGx + 1e-12, $"{what}: centred sum {gotGx} vs {sumGx}");
                    if (silu) Closeness.AssertElementwise(what, g.AsSpan(0, n), expected, Atol, Rtol);
                    else Assert.True(float.IsNaN(g[0]), $"{what}: wrote g without a buffer");
                    Assert.True(float.IsNaN(g[n]), $"{what}: wrote past n");
                }
    }

    [Fact]
    public void AdamMatchesScalarPath()
    {
        var ps = new AdamStepParams(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.1f, 0.001f);
        var k = new AdamKernel(ps);
        var p0 = Random(256, 18); var g = Random(256, 19); var m0 = Random(256, 20, -0.1f, 0.1f); var v0 = Random(256, 21, 0f, 0.01f);
        foreach (int bits in Widths)
            for (int n = 0; n <= 256; n++)
            {
                float[] p = (float[])p0.Clone(), m = (float[])m0.Clone(), v = (float[])v0.Clone();
                float[] ps1 = (float[])p0.Clone(), ms = (float[])m0.Clone(), vs = (float[])v0.Clone();
                fixed (float* pp = p, gp = g, mp = m, vp = v) k.Run(pp, gp, mp, vp, n, bits);
                fixed (float* pp = ps1, gp = g, mp = ms, vp = vs) k.Run(pp, gp, mp, vp, n, 0);
                for (int i = 0; i < 256; i++)
                {
                    Assert.True(Math.Abs(p[i] - ps1[i]) <= 1e-6 * Math.Abs(ps1[i]) + 1e-9, $"param n={n} bits={bits} i={i}");
                    Assert.True(Math.Abs(m[i] - ms[i]) <= 1e-6 * Math.Abs(ms[i]) + 1e-12, $"m n={n} bits={bits} i={i}");
                    Assert.True(Math.Abs(v[i] - vs[i]) <= 1e-6 * Math.Abs(vs[i]) + 1e-12, $"v n={n} bits={bits} i={i}");
                }
            }
    }

    [Fact]
    public void UnaryBackwardChunkCoversEveryOp()
    {
        foreach (UnaryOp op in Enum.GetValues<UnaryOp>())
        {
            var x = Random(100, 22, 0.2f, 2f); var dy = Random(100, 23);
            var y = new float[100];
            fixed (float* xp = x, yp = y) CpuBackend.UnaryChunk(op, xp, yp, 100);
            var dx = new float[100];
            fixed (float* xp = x, yp = y, dyp = dy, dxp = dx) CpuBackend.UnaryBackwardChunk(op, xp, yp, dyp, dxp, 100);
            Assert.DoesNotContain(dx, float.IsNaN);
        }
    }
}
