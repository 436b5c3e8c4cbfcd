using System.Text.Json;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Ddpm.Tests.Golden;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Conditional;

/// <summary>The class embedding of a conditional UNet and classifier-free guidance in <see cref="DenoiseDiffusion.PredictEps"/>.</summary>
public sealed class ClassConditionalModelTests
{
    private static UNetConfig Conditional => GoldenTestsBase.TinyConfig with { NumClasses = 4, ClassNames = ["a", "b", "c", "d"] };

    private static Tensor Input(IBackend be, int n, ulong seed)
    {
        var c = GoldenTestsBase.TinyConfig;
        return Tensor.FromArray(be, TestData.Normal(n * c.ImageChannels * c.ImageSize * c.ImageSize, seed), n, c.ImageChannels, c.ImageSize, c.ImageSize);
    }

    private static Parameter Param(UNet m, string name) => m.NamedParameters().Single(p => p.Name == name).Param;

    [Fact]
    public void AnUnconditionalConfigBuildsTheSameModelAndAConditionalOneAddsOnlyTheClassEmbedding()
    {
        using var be = new CpuReferenceBackend();
        using var plain = new UNet(be, GoldenTestsBase.TinyConfig, new PhiloxGenerator(5));
        using var cond = new UNet(be, Conditional, new PhiloxGenerator(5));
        var p = plain.NamedParameters().ToList();
        var c = cond.NamedParameters().ToList();
        // Registered last: every other parameter keeps its name, order, shape and initial value.
        Assert.Equal(p.Count + 1, c.Count);
        for (int i = 0; i < p.Count; i++)
        {
            Assert.Equal(p[i].Name, c[i].Name);
            Assert.Equal(p[i].Param.ToArray(), c[i].Param.ToArray());
        }
        Assert.Equal("class_emb.weight", c[^1].Name);
        int tc = 4 * GoldenTestsBase.TinyConfig.NChannels;
        Assert.Equal(new[] { tc, 5 }, c[^1].Param.Shape.ToArray());
        // The arithmetic count agrees with the built models.
        Assert.Equal(GoldenTestsBase.TinyConfig.ParameterCount(), plain.ParameterCount());
        Assert.Equal(Conditional.ParameterCount(), cond.ParameterCount());
        Assert.Equal(plain.ParameterCount() + tc * 5, cond.ParameterCount());
        // An unconditional config's JSON (checkpoint headers) has no class keys; a conditional one round-trips.
        string json = JsonSerializer.Serialize(GoldenTestsBase.TinyConfig);
        Assert.DoesNotContain("num_classes", json);
        Assert.DoesNotContain("class_names", json);
        var back = JsonSerializer.Deserialize<UNetConfig>(JsonSerializer.Serialize(Conditional))!;
        Assert.Equal(4, back.NumClasses);
        Assert.Equal(Conditional.ClassNames, back.ClassNames);
        // Without labels an unconditional model's output is unchanged by the new overload.
        plain.Eval();
        using var x = Input(be, 2, 1);
        using var y1 = plain.Forward(x, [3, 40]);
        using var y2 = plain.Forward(x, [3, 40], default);
        Assert.Equal(y1.ToArray(), y2.ToArray());
        Assert.Throws<ArgumentException>(() => plain.Forward(x, [3, 40], [0, 1]));
    }

    [Theory]
    [InlineData(-1, "num_classes")]
    [InlineData(UNetConfig.MaxClasses + 1, "num_classes")]
    public void AClassCountOutOfRangeIsRefusedNamingTheKey(int classes, string key) =>
        Assert.Equal(key, Assert.Throws<ConfigValueException>(() => (GoldenTestsBase.TinyConfig with { NumClasses = classes }).Validate()).Key);

    [Fact]
    public void ClassNamesMustBeOnePerClassAndDistinct()
    {
        Assert.Equal("class_names", Assert.Throws<ConfigValueException>(() => (Conditional with { ClassNames = ["a", "b"] }).Validate()).Key);
        Assert.Equal("class_names", Assert.Throws<ConfigValueException>(() => (Conditional with { ClassNames = ["a", "b", "c", "A"] }).Validate()).Key);
        Assert.Equal("class_names", Assert.Throws<ConfigValueException>(() => (Conditional with { ClassNames = ["a", "b", " ", "d"] }).Validate()).Key);
    }

    [Fact]
    public void TheClassEmbeddingEqualsShiftingTheTimeEmbeddingBiasByItsColumn()
    {
        // Independent computation: an unconditional model with the same weights whose last time-embedding layer
        // has its bias shifted by column y of class_emb.weight sees exactly time_emb + class_emb(one_hot(y)).
        using var be = new CpuReferenceBackend();
        using var cond = new UNet(be, Conditional, new PhiloxGenerator(7));
        using var plain = new UNet(be, GoldenTestsBase.TinyConfig, new PhiloxGenerator(7));
        cond.Eval();
        plain.Eval();
        var emb = Param(cond, "class_emb.weight").ToArray();   // [tc, K + 1], row-major
        var bias = Param(plain, "time_emb.lin2.bias");
        var bias0 = bias.ToArray();
        int tc = bias0.Length, k1 = Conditional.NumClasses + 1;
        int[] t = [0, 17, 33, 49], labels = [2, 0, 4, 3];       // 4 is the null class
        using var x = Input(be, 4, 2);
        using var y = cond.Forward(x, t, labels);
        using var yNull = cond.Forward(x, t);
        var got = y.ToArray();
        var gotNull = yNull.ToArray();
        int per = got.Length / 4;
        double worst = 0;
        for (int i = 0; i < 4; i++)
        {
            bias.CopyFrom(bias0.Select((b, j) => b + emb[j * k1 + labels[i]]).ToArray());
            using var xi = Ops.Narrow(x, 0, i, 1);
            using var yi = plain.Forward(xi, [t[i]]);
            var want = yi.ToArray();
            for (int j = 0; j < per; j++)
            {
                worst = Math.Max(worst, Math.Abs(got[i * per + j] - want[j]));
                if (labels[i] == 4) Assert.Equal(gotNull[i * per + j], got[i * per + j]);
            }
        }
        // float32: (a + b) + e and a + (b + e) differ by one rounding of the embedding (~1e-7 of values ~1),
        // carried through the network; outputs are of order 1.
        Assert.True(worst < 1e-4, $"max difference {worst:E3}");
        // The class changes the output.
        using var other = cond.Forward(x, t, [1, 1, 1, 1]);
        Assert.True(other.ToArray().Zip(got).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
    }

    [Fact]
    public void TheClassEmbeddingGradientMatchesFiniteDifferences()
    {
        using var be = new CpuReferenceBackend();
        var cfg = Conditional with { Dropout = 0f };
        using var model = new UNet(be, cfg, new PhiloxGenerator(3));
        using var x = Input(be, 3, 4);
        int[] t = [5, 20, 45], labels = [1, 4, 1];
        var w = TestData.Normal(x.Size, 0xC0FFEE);
        double Loss()
        {
            using var ng = GradMode.NoGrad();
            using var y = model.Forward(x, t, labels);
            var v = y.ToArray();
            double l = 0;
            for (int i = 0; i < v.Length; i++) l += (double)w[i] * v[i];
            return l;
        }
        var emb = Param(model, "class_emb.weight");
        float[] analytic;
        using (var scope = new TensorScope())
        {
            var y = model.Forward(x, t, labels);
            var wt = Tensor.FromArray(be, w, y.Shape.ToArray());
            Ops.Sum(Ops.Mul(y, wt)).Backward();
            analytic = emb.Grad!.ToArray();
        }
        var values = emb.ToArray();
        int k1 = cfg.NumClasses + 1;
        const double h = 1e-2;
        // Columns 1 (two samples) and 4 (the null class) are used; column 0 is not and must get exactly 0.
        foreach (int col in new[] { 0, 1, 4 })
            foreach (int row in new[] { 0, 7, 50, 127 })
            {
                int j = row * k1 + col;
                var v = (float[])values.Clone();
                v[j] = values[j] + (float)h; emb.CopyFrom(v);
                double lp = Loss();
                v[j] = values[j] - (float)h; emb.CopyFrom(v);
                double lm = Loss();
                emb.CopyFrom(values);
                double fd = (lp - lm) / (((double)(values[j] + (float)h)) - (values[j] - (float)h));
                if (col == 0) { Assert.Equal(0f, analytic[j]); continue; }
                // float32 forward, loss summed in double: the difference carries ~1e-6 of rounding over 2h.
                Assert.True(Math.Abs(analytic[j] - fd) <= 2e-3 * (1 + Math.Abs(fd)), $"class_emb.weight[{row}, {col}]: analytic {analytic[j]} vs fd {fd}");
            }
    }

    private static (DenoiseDiffusion D, UNet M) Diffusion(IBackend be, Prediction prediction = Prediction.Eps)
    {
        var m = new UNet(be, Conditional, new PhiloxGenerator(9));
        m.Eval();
        return (new DenoiseDiffusion(m, new DiffusionConfig { NSteps = 50, Prediction = prediction }), m);
    }

    [Fact]
    public void GuidanceZeroIsTheNullClassAndOneIsTheConditionalPredictionExactly()
    {
        using var be = new CpuBackend(1);
        var (d, m) = Diffusion(be);
        using var _ = m;
        using var x = Input(be, 3, 5);
        int[] t = [10, 20, 30], labels = [0, 3, 2];
        using var u = m.Forward(x, t);
        using var c = m.Forward(x, t, labels);
        using var g0 = d.PredictEps(x, t, new ClassCondition(labels, 0f));
        using var g1 = d.PredictEps(x, t, new ClassCondition(labels, 1f));
        Assert.Equal(u.ToArray(), g0.ToArray());
        Assert.Equal(c.ToArray(), g1.ToArray());
        using var none = d.PredictEps(x, t);
        Assert.Equal(u.ToArray(), none.ToArray());
    }

    [Theory]
    [InlineData(Prediction.Eps, 3f)]
    [InlineData(Prediction.Eps, 0.5f)]
    [InlineData(Prediction.V, 3f)]
    public void GuidedEpsIsTheUnconditionalPlusWTimesTheDifferenceOfTwoSeparateForwards(Prediction prediction, float w)
    {
        using var be = new CpuBackend(1);
        var (d, m) = Diffusion(be, prediction);
        using var _ = m;
        using var x = Input(be, 3, 6);
        int[] t = [1, 25, 49], labels = [1, 1, 2];
        // Reference: the two predictions from separate batches of N, combined in double.
        using var u = d.PredictEps(x, t, new ClassCondition(labels, 0f));
        using var c = d.PredictEps(x, t, new ClassCondition(labels, 1f));
        var (ua, ca) = (u.ToArray(), c.ToArray());
        using var g = d.PredictEps(x, t, new ClassCondition(labels, w));
        var ga = g.ToArray();
        double worst = 0;
        for (int i = 0; i < ga.Length; i++) worst = Math.Max(worst, Math.Abs(ga[i] - (ua[i] + (double)w * (ca[i] - ua[i]))));
        // One batch of 2N against two of N: the same sums, possibly blocked differently, and the guided
        // combination rounded in float32 (values of order 1, w <= 3).
        Assert.True(worst < 2e-5, $"max difference {worst:E3}");
    }

    [Theory]
    [InlineData(SamplerKind.Ddpm)]
    [InlineData(SamplerKind.Ddim)]
    [InlineData(SamplerKind.DpmSolver)]
    public void EverySamplerIsGuidedAndGuidanceZeroSamplesTheUnconditionalBranch(SamplerKind kind)
    {
        using var be = new CpuBackend(1);
        var (d, m) = Diffusion(be);
        using var _ = m;
        using var plain = new Sampler(d).Sample(2, kind, 5, 0f, 11);
        using var zero = new Sampler(d, new ClassCondition([1, 2], 0f)).Sample(2, kind, 5, 0f, 11);
        Assert.Equal(plain.ToArray(), zero.ToArray());
        using var guided = new Sampler(d, new ClassCondition([1, 2], 3f)).Sample(2, kind, 5, 0f, 11);
        using var other = new Sampler(d, new ClassCondition([3, 0], 3f)).Sample(2, kind, 5, 0f, 11);
        Assert.NotEqual(plain.ToArray(), guided.ToArray());
        Assert.NotEqual(guided.ToArray(), other.ToArray());
        Assert.Throws<ArgumentException>(() => new Sampler(d, new ClassCondition([1, 2], 3f)).Sample(3, kind, 5, 0f, 11));
    }

    [Fact]
    public void AnUnconditionalModelCannotBeGuided()
    {
        using var be = new CpuBackend(1);
        using var m = new UNet(be, GoldenTestsBase.TinyConfig, new PhiloxGenerator(1));
        var d = new DenoiseDiffusion(m, new DiffusionConfig { NSteps = 50 });
        using var x = Input(be, 1, 1);
        Assert.Throws<InvalidOperationException>(() => d.PredictEps(x, [3], new ClassCondition([0], 3f)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ClassCondition([0], -1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ClassCondition([0], float.NaN));
    }
}
