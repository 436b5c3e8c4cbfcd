using Ddpm.Diffusion.Diffusion;
using Xunit;

namespace Ddpm.Tests.Diffusion;

public class ScheduleTests
{
    // Independent double-precision values: alpha_bar_t = prod_{s<=t} (1 - beta_s), beta linear 1e-4..0.02.
    private static double AlphaBar(int t)
    {
        double ab = 1;
        for (int s = 0; s <= t; s++) ab *= 1 - (1e-4 + (0.02 - 1e-4) * s / 999.0);
        return ab;
    }

    [Theory]
    [InlineData(0, 0.9999)]
    [InlineData(499, 0.0786)]
    [InlineData(999, 4.036e-5)]
    public void LinearAlphaBarMatchesTheProductAndThePublishedValues(int t, double published)
    {
        var s = new NoiseSchedule(new DiffusionConfig());
        Assert.Equal(AlphaBar(t), s.AlphaBar[t], 12);
        // The reference sheet's rounded numbers (labml, T = 1000).
        Assert.True(Math.Abs(s.AlphaBar[t] - published) <= 5e-4 * published + 1e-9, $"alpha_bar[{t}] = {s.AlphaBar[t]}");
    }

    [Fact]
    public void PosteriorVarianceIsBetaTilde()
    {
        var s = new NoiseSchedule(new DiffusionConfig());
        Assert.Equal(0.0, s.PosteriorVariance[0]);
        for (int t = 1; t < 1000; t += 111)
        {
            double beta = 1e-4 + (0.02 - 1e-4) * t / 999.0;
            double expected = beta * (1 - AlphaBar(t - 1)) / (1 - AlphaBar(t));
            Assert.Equal(expected, s.PosteriorVariance[t], 12);
        }
        Assert.InRange(s.PosteriorVariance[1], 5.445e-5, 5.455e-5);
        Assert.InRange(s.PosteriorVariance[999], 0.01995, 0.02005);
    }

    [Fact]
    public void FirstTimestepBelowHalfSignalIs259()
    {
        var s = new NoiseSchedule(new DiffusionConfig());
        Assert.Equal(259, Array.FindIndex(s.AlphaBar, a => a < 0.5));
    }

    [Fact]
    public void CosineScheduleFollowsItsClosedForm()
    {
        var s = new NoiseSchedule(new DiffusionConfig { Schedule = BetaSchedule.Cosine });
        static double F(double u) => Math.Pow(Math.Cos((u + 0.008) / 1.008 * Math.PI / 2), 2);
        // Before the 0.999 clip takes effect, alpha_bar_t = f((t+1)/T) / f(0).
        foreach (int t in new[] { 0, 10, 500, 900 })
            Assert.Equal(F((t + 1) / 1000.0) / F(0), s.AlphaBar[t], 10);
        Assert.All(s.Beta, b => Assert.InRange(b, 0, 0.999));
    }

    [Fact]
    public void Float32ScheduleIsTheFloat32Computation()
    {
        var s = new NoiseSchedule(DiffusionConfig.LabmlExact);
        float ab = 1f;
        for (int t = 0; t < 1000; t++)
        {
            ab *= 1f - (float)s.Beta[t];
            Assert.Equal(ab, (float)s.AlphaBar[t]);
        }
        Assert.Equal(1e-4f, (float)s.Beta[0]);
        Assert.Equal(0.02f, (float)s.Beta[999]);
    }

    [Fact]
    public void DdimTimestepsAreUniformAndLeading()
    {
        Assert.Equal([0, 20, 40, 60, 80], Sampler.DdimTimesteps(100, 5));
        Assert.Equal(Enumerable.Range(0, 1000).ToArray(), Sampler.DdimTimesteps(1000, 1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.DdimTimesteps(100, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.DdimTimesteps(100, 101));
    }
}

public class ReverseStepOptionTests
{
    [Fact]
    public void NoiseStdFollowsVarianceAndLastStepOptions()
    {
        using var be = new Ddpm.Backends.Cpu.CpuReferenceBackend();
        using var model = new Ddpm.Diffusion.Model.UNet(be, DiffusionTests.Tiny, new Ddpm.Tensors.PhiloxGenerator(0));
        var seed = new DenoiseDiffusion(model, DiffusionConfig.LabmlExact);
        var improved = new DenoiseDiffusion(model, new DiffusionConfig { Variance = VarianceType.FixedSmall });
        // The seed adds sqrt(beta_0) = 0.01 of noise even at t = 0; the improved sampler adds none there.
        Assert.Equal(0.01, seed.NoiseStd(0), 6);
        Assert.Equal(0.0, improved.NoiseStd(0));
        Assert.Equal(Math.Sqrt(seed.Schedule.Beta[500]), seed.NoiseStd(500), 12);
        Assert.Equal(Math.Sqrt(improved.Schedule.PosteriorVariance[500]), improved.NoiseStd(500), 12);
        Assert.True(improved.NoiseStd(500) < seed.NoiseStd(500));
    }

    [Fact]
    public void DataRangeSetsTheClipInterval()
    {
        Assert.Equal((0f, 1f), DiffusionConfig.LabmlExact.Range);
        Assert.Equal((-1f, 1f), new DiffusionConfig().Range);
        Assert.False(DiffusionConfig.LabmlExact.ClipX0);
        Assert.False(DiffusionConfig.LabmlExact.NoNoiseAtLastStep);
    }
}
