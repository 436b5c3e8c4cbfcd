using System.Text.Json;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Ddpm.Tests.Golden;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Diffusion;

/// <summary>
/// UNetConfig.AttnNorm: the attention blocks project queries, keys and values from their GroupNorm's output and
/// add their input as it came; off (labml's model) the norm exists, untrained and unused.
/// </summary>
public sealed class AttentionNormTests
{
    private static readonly UNetConfig Config = GoldenTestsBase.TinyConfig with { Dropout = 0f, AttnNorm = true };

    // float32 against the double-accumulating reference: outputs to 1e-5, gradients to 1e-4 (relative L2), as parity.
    private const double OutputTol = 1e-5, GradTol = 1e-4;

    private static Tensor Input(IBackend be, int n, ulong seed)
    {
        var c = Config;
        return Tensor.FromArray(be, TestData.Normal(n * c.ImageChannels * c.ImageSize * c.ImageSize, seed), n, c.ImageChannels, c.ImageSize, c.ImageSize);
    }

    private static Parameter Param(UNet m, string name) => m.NamedParameters().Single(p => p.Name == name).Param;

    private static double RelL2(float[] a, float[] b, double floor = 0)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { num += Math.Pow((double)a[i] - b[i], 2); den += (double)b[i] * b[i]; }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), floor);
    }

    private static string AttnNorm(UNet m, string what) => m.NamedParameters().First(p => p.Name.EndsWith(".attn.norm." + what, StringComparison.Ordinal)).Name;

    [Fact]
    public void TheConfigKeepsLabmlsModelByDefaultAndSavesTheOption()
    {
        Assert.DoesNotContain("attn_norm", JsonSerializer.Serialize(GoldenTestsBase.TinyConfig));
        var back = JsonSerializer.Deserialize<UNetConfig>(JsonSerializer.Serialize(Config))!;
        Assert.True(back.AttnNorm);
        Assert.Contains("attn_norm=1", Config.ToString());
        using var be = new CpuReferenceBackend();
        using var plain = new UNet(be, Config with { AttnNorm = false }, new PhiloxGenerator(2));
        using var normed = new UNet(be, Config, new PhiloxGenerator(2));
        // Same parameters, names and count; only the norm's trainability differs.
        Assert.Equal(plain.NamedParameters().Select(p => p.Name), normed.NamedParameters().Select(p => p.Name));
        Assert.False(Param(plain, AttnNorm(plain, "weight")).RequiresGrad);
        Assert.True(Param(normed, AttnNorm(normed, "weight")).RequiresGrad);
        // With equal weights the norm changes the output.
        using var x = Input(be, 2, 3);
        using var a = plain.Forward(x, [4, 40]);
        using var b = normed.Forward(x, [4, 40]);
        Assert.True(RelL2(a.ToArray(), b.ToArray()) > 1e-2);
    }

    [Fact]
    public void TheFastBackendAgreesWithTheReference()
    {
        float[] eps;
        Dictionary<string, float[]> grads;
        (eps, grads) = Run(new CpuBackend(2));
        var (refEps, refGrads) = Run(new CpuReferenceBackend());
        Assert.True(RelL2(eps, refEps) < OutputTol);
        // A gradient that is zero in exact arithmetic (the bias of a convolution followed by a one-channel GroupNorm,
        // which removes it) is float32 round-off, measured here at 3e-9 of the whole gradient's norm: such tensors
        // are compared against 1e-4 of that norm; every other tensor against its own.
        double floor = 1e-4 * Math.Sqrt(refGrads.Values.Sum(g => g.Sum(v => (double)v * v)));
        foreach (var (name, g) in refGrads) Assert.True(RelL2(grads[name], g, floor) < GradTol, $"{name}: {RelL2(grads[name], g, floor):E2}");
        Assert.Contains("middle.attn.norm.weight", grads.Keys);

        static (float[], Dictionary<string, float[]>) Run(IBackend be)
        {
            using var m = new UNet(be, Config, new PhiloxGenerator(6));
            using var scope = new TensorScope();
            var x = Input(be, 3, 8);
            var y = m.Forward(x, [3, 300, 900]);
            var w = Tensor.FromArray(be, TestData.Normal(y.Size, 9), y.Shape.ToArray());
            Ops.Sum(Ops.Mul(y, w)).Backward();
            return (y.ToArray(), m.NamedParameters().Where(p => p.Param.RequiresGrad).ToDictionary(p => p.Name, p => p.Param.Grad!.ToArray()));
        }
    }

    [Fact]
    public void TheAttentionNormGradientMatchesFiniteDifferences()
    {
        using var be = new CpuReferenceBackend();
        using var model = new UNet(be, Config, new PhiloxGenerator(3));
        using var x = Input(be, 2, 4);
        int[] t = [5, 700];
        var w = TestData.Normal(x.Size, 0xBEEF);
        double Loss()
        {
            using var ng = GradMode.NoGrad();
            using var y = model.Forward(x, t);
            var v = y.ToArray();
            double l = 0;
            for (int i = 0; i < v.Length; i++) l += (double)w[i] * v[i];
            return l;
        }
        foreach (var name in new[] { AttnNorm(model, "weight"), AttnNorm(model, "bias"), "middle.attn.norm.weight" })
        {
            var p = Param(model, name);
            float[] analytic;
            using (var scope = new TensorScope())
            {
                model.ZeroGrad();
                var y = model.Forward(x, t);
                Ops.Sum(Ops.Mul(y, Tensor.FromArray(be, w, y.Shape.ToArray()))).Backward();
                analytic = p.Grad!.ToArray();
            }
            var values = p.ToArray();
            const double h = 1e-2;
            foreach (int j in new[] { 0, 17, values.Length - 1 })
            {
                var v = (float[])values.Clone();
                v[j] = values[j] + (float)h; p.CopyFrom(v);
                double lp = Loss();
                v[j] = values[j] - (float)h; p.CopyFrom(v);
                double lm = Loss();
                p.CopyFrom(values);
                double fd = (lp - lm) / ((double)(values[j] + (float)h) - (values[j] - (float)h));
                // float32 forward, loss summed in double: central differences over 2h carry ~1e-6 of rounding and O(h^2) curvature.
                Assert.True(Math.Abs(analytic[j] - fd) <= 2e-3 * (1 + Math.Abs(fd)), $"{name}[{j}]: analytic {analytic[j]} vs fd {fd}");
            }
        }
    }
}
