using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;
using static Ddpm.Tests.Cuda.CudaTf32Tests;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// --precision bf16 (BackendOptions.Precision): the operands of GEMMs and convolutions are rounded to bfloat16 and the
/// products summed in float32, on both convolution engines. Each op is checked three ways against the cpu-reference:
/// within the bfloat16 tolerance of its arithmetic; off float32 by more than float32 rounding (so a backend that
/// ignored the flag fails); and equal, to float32 rounding, to the float32 op on the bfloat16-rounded operands (so a
/// skipped or wrong cast of one operand fails), apart from the bfloat16 rounding of cuDNN's results.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBf16Tests(ITestOutputHelper output)
{
    /// <summary>
    /// bfloat16 keeps 8 significant bits (7 stored and the implicit one), so rounding to nearest moves a value by at
    /// most half its last place: 2^-8 of it, at a mantissa of 1.
    /// </summary>
    private const double U = 1.0 / 256;

    /// <summary>
    /// The mean squared relative error of one rounding to nearest: for a value of mantissa m in [1, 2) the error is
    /// uniform over +-u/m of it, so E[delta^2] = u^2 / (3 m^2) &lt;= u^2 / 3. A sum of products of zero-mean operands
    /// with independent rounding errors has an NMSE of sum (ab)^2 E[(da + db)^2] / sum (ab)^2, the sum of the
    /// roundings' E[delta^2]: 2 u^2 / 3 (1.0e-5) for two rounded operands, u^2 (1.5e-5) when the result is rounded
    /// too (cuDNN's bfloat16 output). Rounding by truncation doubles each error (E[delta^2] &lt;= 4 u^2 / 3) and fails.
    /// </summary>
    private const double PerRounding = U * U / 3;

    /// <summary>The float32 tolerance of the parity cases' reductions (ParityCases.Reduction).</summary>
    private const double Fp32Nmse = 1e-10;

    private static float P(int e) => MathF.ScaleB(1f, e);

    /// <summary>x rounded to bfloat16 on the host (nearest, ties to even), for the reference on rounded operands.</summary>
    internal static float RoundBf16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7fffffffu) > 0x7f800000u) return x;
        u += 0x7fffu + ((u >> 16) & 1u);
        return BitConverter.UInt32BitsToSingle(u & 0xffff0000u);
    }

    /// <param name="roundedOperands">Which inputs the op rounds to bfloat16 (a bias, added in float32, is not).</param>
    /// <param name="roundedResult">Whether the result is rounded to bfloat16 too (cuDNN's passes).</param>
    private void Compare(string what, CudaBackend bf16, bool[] roundedOperands, bool roundedResult, Func<IBackend, DeviceBuffer[], DeviceBuffer> op,
        params float[][] inputs)
    {
        using var reference = new CpuReferenceBackend();
        var expected = Run(reference, op, inputs);
        var onRounded = Run(reference, op, inputs.Select((x, i) => roundedOperands[i] ? x.Select(RoundBf16).ToArray() : x).ToArray());
        var got = Run(bf16, op, inputs);
        double tol = (roundedOperands.Count(r => r) + (roundedResult ? 1 : 0)) * PerRounding;
        double tolRounded = roundedResult ? PerRounding : Fp32Nmse;
        var nmse = Closeness.Nmse(got, expected);
        var nmseRounded = Closeness.Nmse(got, onRounded);
        output.WriteLine($"{what} ({bf16.ConvolutionPath}): NMSE {nmse.Value:E2} against cpu-reference (tolerance {tol:E2}), " +
            $"{nmseRounded.Value:E2} against cpu-reference on the bfloat16-rounded operands (tolerance {tolRounded:E2})");
        Assert.True(nmse.Value <= tol, nmse.Describe($"{what} (bf16)", "NMSE", tol));
        Assert.True(nmse.Value > 100 * Fp32Nmse, $"{what}: bf16 NMSE {nmse.Value:E2} is no larger than float32 rounding; the operands were not rounded to bfloat16.");
        Assert.True(nmseRounded.Value <= tolRounded, nmseRounded.Describe($"{what} (bf16 against the rounded operands)", "NMSE", tolRounded));
    }

    private static CudaBackend Bf16Backend(ConvolutionEngine engine)
    {
        var be = new CudaBackend(new BackendOptions { Precision = Precision.Bf16 }, engine);
        Assert.Contains("precision bf16", be.Description);
        return be;
    }

    [CudaFact]
    public void TheCastsRoundToNearestEven()
    {
        // Halfway cases go to the even neighbour (1 + 2^-8 between 1 and 1 + 2^-7: down; 1 + 3 * 2^-8: up), a hair past
        // half goes up, the largest float becomes infinity, NaN and infinities pass, subnormals round like the rest.
        float[] x =
        [
            1f + P(-8), 1f + 3 * P(-8), -(1f + 3 * P(-8)), 1f + P(-8) + P(-20), 1f + P(-8) - P(-20), float.MaxValue,
            BitConverter.UInt32BitsToSingle(0x7f7f0000u), float.PositiveInfinity, float.NegativeInfinity, float.NaN,
            BitConverter.UInt32BitsToSingle(0x00018000u), 0f, -0f,
        ];
        float[] expected =
        [
            1f, 1f + P(-6), -(1f + P(-6)), 1f + P(-7), 1f, float.PositiveInfinity,
            BitConverter.UInt32BitsToSingle(0x7f7f0000u), float.PositiveInfinity, float.NegativeInfinity, float.NaN,
            BitConverter.UInt32BitsToSingle(0x00020000u), 0f, -0f,
        ];
        var be = CudaTestEnvironment.Backend;
        var got = Run(be, (b, ins) =>
        {
            var y = b.Allocate(x.Length);
            ((CudaBackend)b).RoundThroughBf16(ins[0], x.Length, y);
            return y;
        }, x);
        for (int i = 0; i < x.Length; i++)
            Assert.True(BitConverter.SingleToUInt32Bits(got[i]) == BitConverter.SingleToUInt32Bits(expected[i]) || (float.IsNaN(got[i]) && float.IsNaN(expected[i])),
                $"{x[i]:R} rounds to {got[i]:R}, not {expected[i]:R}");

        // Any float: the result is a bfloat16 (low 16 bits clear) and the nearer of the two around it, the even one on a tie.
        var values = TestData.Normal(4096, 7).Select((v, i) => v * MathF.Pow(2, i % 40 - 20)).ToArray();
        var rounded = Run(be, (b, ins) =>
        {
            var y = b.Allocate(values.Length);
            ((CudaBackend)b).RoundThroughBf16(ins[0], values.Length, y);
            return y;
        }, values);
        double worst = 0;
        for (int i = 0; i < values.Length; i++)
        {
            uint bits = BitConverter.SingleToUInt32Bits(values[i]);
            float down = BitConverter.UInt32BitsToSingle(bits & 0xffff0000u), up = BitConverter.UInt32BitsToSingle((bits & 0xffff0000u) + 0x10000u);
            double dd = Math.Abs((double)values[i] - down), du = Math.Abs((double)up - values[i]);
            float nearest = dd < du ? down : du < dd ? up : (BitConverter.SingleToUInt32Bits(down) & 0x10000u) == 0 ? down : up;
            Assert.True(rounded[i] == nearest, $"{values[i]:R} rounds to {rounded[i]:R}, not {nearest:R}");
            worst = Math.Max(worst, Math.Abs((double)rounded[i] - values[i]) / Math.Abs(values[i]));
        }
        output.WriteLine($"largest relative rounding error {worst:E3} (bound 2^-8 = {U:E3})");
        Assert.True(worst <= U, $"a rounding moved a value by {worst:E3} of it, more than 2^-8");
    }

    [CudaFact]
    public void GemmsRoundTheirOperandsAndSumInFloat32()
    {
        using var bf16 = Bf16Backend(ConvolutionEngine.Auto);
        const int m = 64, n = 48, k = 257;
        Compare("gemm 64x48x257 (B transposed)", bf16, [true, true], false, (be, x) =>
        {
            var c = be.Allocate(m * n);
            be.Gemm(false, true, x[0], 0, x[1], 0, 1, m, n, k, 1f, 0f, c, 0);
            return c;
        }, TestData.Normal(m * k, 1), TestData.Normal(n * k, 2));
        // Attention's products: batched, strided, A transposed, accumulating into C (beta = 1).
        const int batch = 3, q = 16, d = 40;
        Compare("batched gemm 3 x 16x16x40 (A transposed, beta 1)", bf16, [true, true, false], false, (be, x) =>
        {
            var c = be.Allocate(batch * q * q);
            be.Copy(x[2], 0, batch * q * q, c, 0);
            be.Gemm(true, false, x[0], q * d, x[1], d * q, batch, q, q, d, 0.5f, 1f, c, q * q);
            return c;
        }, TestData.Normal(batch * d * q, 3), TestData.Normal(batch * d * q, 4), TestData.Normal(batch * q * q, 5));
    }

    [CudnnFact]
    public void CudnnConvolutionsRoundTheirOperandsAndSumInFloat32() => ConvolutionPasses(ConvolutionEngine.Cudnn);

    [CudaFact]
    public void Im2colConvolutionsRoundTheirOperandsAndSumInFloat32() => ConvolutionPasses(ConvolutionEngine.Im2col);

    private void ConvolutionPasses(ConvolutionEngine engine)
    {
        using var bf16 = Bf16Backend(engine);
        bool cudnn = bf16.UsesCudnn;
        Assert.Equal(engine == ConvolutionEngine.Cudnn, cudnn);
        var g = new ConvGeometry(2, 33, 8, 8, 17, 3, 3, 1, 1, 1, 1);
        float[] x = TestData.Normal(g.InputSize, 6), w = TestData.Normal(g.WeightSize, 7), bias = TestData.Normal(g.O, 8), dy = TestData.Normal(g.OutputSize, 9);
        Compare("conv forward 2x33x8x8 -> 17, 3x3, with bias", bf16, [true, true, false], cudnn, (be, t) =>
        {
            var y = be.Allocate(g.OutputSize);
            be.Conv2dForward(t[0], t[1], t[2], g, y);
            return y;
        }, x, w, bias);
        Compare("conv backward data", bf16, [true, true], cudnn, (be, t) =>
        {
            var dx = be.Allocate(g.InputSize);
            be.Conv2dBackwardData(t[0], t[1], g, dx);
            return dx;
        }, dy, w);
        Compare("conv backward filter", bf16, [true, true], cudnn, (be, t) =>
        {
            var dw = be.Allocate(g.WeightSize);
            be.Conv2dBackwardWeight(t[0], t[1], g, dw, null);
            return dw;
        }, x, dy);

        // The bias gradient is a float32 sum of the float32 dy, in every precision.
        using var reference = new CpuReferenceBackend();
        Func<IBackend, DeviceBuffer[], DeviceBuffer> biasGradient = (be, t) =>
        {
            var dw = be.Allocate(g.WeightSize);
            var db = be.Allocate(g.O);
            be.Conv2dBackwardWeight(t[0], t[1], g, dw, db);
            dw.Release();
            return db;
        };
        var nmse = Closeness.Nmse(Run(bf16, biasGradient, x, dy), Run(reference, biasGradient, x, dy));
        Assert.True(nmse.Value <= Fp32Nmse, nmse.Describe("conv bias gradient (bf16)", "NMSE", Fp32Nmse));
    }
}
