using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// --precision tf32 (BackendOptions.Precision): cuBLAS's TF32 math rounds A and B to 10-bit mantissas before it multiplies
/// (on the simulated device as on a GPU's tensor cores), so matrix products and convolutions move from the
/// float32 tolerance of the parity cases to a TF32 one. Both bounds are checked: TF32 results stay within
/// <see cref="Tf32Nmse"/> of the cpu-reference, and they differ from it by more than float32 rounding (so a
/// backend that ignored the flag, or a simulator that did, fails).
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaTf32Tests(ITestOutputHelper output)
{
    /// <summary>
    /// NMSE of a TF32 product of unit-normal inputs: each input's rounding error is at most 2^-11 relative
    /// (nearest) or 2^-10 (truncated), about 1.5e-7 of NMSE for round-to-nearest; 2e-6 leaves room for either.
    /// </summary>
    private const double Tf32Nmse = 2e-6;

    /// <summary>The float32 tolerance of the parity cases' reductions (ParityCases.Reduction).</summary>
    private const double Fp32Nmse = 1e-10;

    /// <summary>Uploads <paramref name="inputs"/> to <paramref name="be"/>, runs <paramref name="op"/> on them and downloads its result.</summary>
    internal static float[] Run(IBackend be, Func<IBackend, DeviceBuffer[], DeviceBuffer> op, params float[][] inputs)
    {
        var ins = inputs.Select(x =>
        {
            var b = be.Allocate(x.Length);
            be.Upload(x, b, 0);
            return b;
        }).ToArray();
        var y = op(be, ins);
        var r = new float[y.Length];
        be.Download(y, 0, r);
        foreach (var b in ins.Append(y)) b.Release();
        return r;
    }

    private void Compare(string what, Func<IBackend, DeviceBuffer[], DeviceBuffer> op, params float[][] inputs)
    {
        using var reference = new CpuReferenceBackend();
        using var tf32 = new CudaBackend(new BackendOptions { Precision = Precision.Tf32 });
        Assert.Contains("precision tf32", tf32.Description);
        var expected = Run(reference, op, inputs);
        var fp32 = Closeness.Nmse(Run(CudaTestEnvironment.Backend, op, inputs), expected);
        var t = Closeness.Nmse(Run(tf32, op, inputs), expected);
        output.WriteLine($"{what}: NMSE against cpu-reference {fp32.Value:E2} in float32, {t.Value:E2} in TF32");
        Assert.True(fp32.Value <= Fp32Nmse, fp32.Describe($"{what} (float32)", "NMSE", Fp32Nmse));
        Assert.True(t.Value <= Tf32Nmse, t.Describe($"{what} (TF32)", "NMSE", Tf32Nmse));
        Assert.True(t.Value > 100 * Fp32Nmse, $"{what}: TF32 NMSE {t.Value:E2} is no larger than float32 rounding; the inputs were not rounded to TF32.");
    }

    [CudaFact]
    public void GemmInTf32StaysWithinTheTf32Tolerance()
    {
        const int m = 64, n = 48, k = 257;
        Compare("gemm 64x48x257", (be, x) =>
        {
            var c = be.Allocate(m * n);
            be.Gemm(false, true, x[0], 0, x[1], 0, 1, m, n, k, 1f, 0f, c, 0);
            return c;
        }, TestData.Normal(m * k, 1), TestData.Normal(n * k, 2));
    }

    [CudaFact]
    public void ConvolutionInTf32StaysWithinTheTf32Tolerance()
    {
        var g = new ConvGeometry(2, 33, 8, 8, 17, 3, 3, 1, 1, 1, 1);
        Compare("conv 2x33x8x8 -> 17, 3x3", (be, x) =>
        {
            var y = be.Allocate(g.OutputSize);
            be.Conv2dForward(x[0], x[1], x[2], g, y);
            return y;
        }, TestData.Normal(g.InputSize, 3), TestData.Normal(g.O * g.C * g.KH * g.KW, 4), TestData.Normal(g.O, 5));
    }
}
