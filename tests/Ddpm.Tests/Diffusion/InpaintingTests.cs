using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Diffusion;

/// <summary>RePaint inpainting and SDEdit image-to-image against exact denoisers and their defining properties.</summary>
public class InpaintingTests
{
    private const int Side = 8, Pixels = Side * Side; // DiffusionTests.Tiny: 1 x 8 x 8

    [Fact]
    public void TheScheduleIsRePaintsJumpSchedule()
    {
        // RePaint's get_schedule_jump(t_T = 5, jump_length = 2, jump_n_sample = 2), traced by hand: jumps at 0 and 2.
        Assert.Equal([4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1], Inpainting.Schedule(5, new RePaintOptions(2, 2)));
        // No resampling: straight down.
        Assert.Equal([3, 2, 1, 0, -1], Inpainting.Schedule(4, new RePaintOptions(10, 1)));
        foreach (var (n, jl, r) in new[] { (50, 10, 10), (1000, 10, 10), (20, 3, 4), (7, 7, 5), (1, 1, 3) })
        {
            var s = Inpainting.Schedule(n, new RePaintOptions(jl, r));
            Assert.Equal(n - 1, s[0]);
            Assert.Equal(-1, s[^1]);
            Assert.All(s.Zip(s.Skip(1)), p => Assert.Equal(1, Math.Abs(p.First - p.Second)));
            Assert.All(s, v => Assert.InRange(v, -1, n - 1));
            // Each jump point j = 0, jl, ... below n - jl repeats its stretch r - 1 times: jl more steps each time.
            int points = n > jl ? (n - jl + jl - 1) / jl : 0;
            Assert.Equal(n + points * (r - 1) * jl, Inpainting.ReverseSteps(s));
        }
    }

    /// <summary>A tiny random UNet: its output is arbitrary, which is what the exact-keep property must survive.</summary>
    [Theory]
    [InlineData(SamplerKind.Ddpm, 0f)]
    [InlineData(SamplerKind.Ddim, 0f)]
    [InlineData(SamplerKind.Ddim, 1f)]
    [InlineData(SamplerKind.DpmSolver, 0f)]
    public void TheKnownRegionIsKeptBitForBit(SamplerKind kind, float eta)
    {
        var image = TestData.Uniform(3 * Pixels, 4, -1f, 1f);
        var mask = InpaintMasks.Random(Side, 9);
        var result = Inpaint(null, new DiffusionConfig { NSteps = 30 }, image, 3, mask, kind, 6, new RePaintOptions(2, 3), 5, eta);
        int kept = 0;
        for (int i = 0; i < result.Length; i++)
        {
            if (mask[i % Pixels] == 0) continue;
            Assert.Equal(BitConverter.SingleToInt32Bits(image[i]), BitConverter.SingleToInt32Bits(result[i]));
            kept++;
        }
        Assert.True(kept > 0 && kept < result.Length);
        // The generated region is the model's: not the image.
        Assert.Contains(Enumerable.Range(0, result.Length), i => mask[i % Pixels] == 0 && result[i] != image[i]);
        Assert.All(result, v => Assert.True(float.IsFinite(v)));
    }

    [Theory]
    [InlineData(SamplerKind.Ddpm)]
    [InlineData(SamplerKind.Ddim)]
    [InlineData(SamplerKind.DpmSolver)]
    public void WithTheDenoiserOfOneImageTheHoleIsThatImage(SamplerKind kind)
    {
        // Data = the one image mu: whatever the known region says, the only completion is mu.
        var cfg = new DiffusionConfig { NSteps = 100 };
        var mu = TestData.Uniform(Pixels, 21, -0.9f, 0.9f).Select(v => (double)v).ToArray();
        var oracle = new GaussianOracle(mu, 0, cfg);
        var image = mu.Select(v => (float)v).ToArray();
        var result = Inpaint(oracle.Output, cfg, image, 2, InpaintMasks.Center(Side), kind, 10, new RePaintOptions(3, 2), 7);
        Closeness.AssertElementwise($"{kind}", result, Enumerable.Range(0, result.Length).Select(i => mu[i % Pixels]).ToArray(), 2e-6, 0);
    }

    [Theory]
    [InlineData(SamplerKind.Ddpm, 1)]
    [InlineData(SamplerKind.Ddpm, 4)]
    [InlineData(SamplerKind.Ddim, 4)]
    [InlineData(SamplerKind.DpmSolver, 4)]
    public void TheHoleIsCompletedFromTheImageTheKnownRegionBelongsTo(SamplerKind kind, int resamples)
    {
        // Data = two images, a and b = -a, equally likely. Given a's known region the hole is a's, never b's: the
        // known region has to steer the generated one (an inpainter that ignored it would give b half the time).
        var cfg = new DiffusionConfig { NSteps = 100, ClipX0 = false };
        var a = TestData.AwayFromZero(Pixels, 31, 0.3f, 0.9f).Select(v => (double)v).ToArray();
        var b = a.Select(v => -v).ToArray();
        var schedule = new NoiseSchedule(cfg);
        var mask = InpaintMasks.Center(Side);
        const int n = 32;
        var image = Enumerable.Range(0, n * Pixels).Select(i => (float)a[i % Pixels]).ToArray();
        var result = Inpaint(TwoImages(a, b, schedule), cfg, image, n, mask, kind, 20, new RePaintOptions(4, resamples), 3);
        int toA = 0;
        for (int k = 0; k < n; k++)
        {
            double da = 0, db = 0;
            for (int j = 0; j < Pixels; j++)
            {
                if (mask[j] != 0) continue;
                double v = result[k * Pixels + j];
                da += (v - a[j]) * (v - a[j]);
                db += (v - b[j]) * (v - b[j]);
            }
            if (da < db && Math.Sqrt(da / 16) < 0.01) toA++;
        }
        Assert.True(toA == n, $"{toA} of {n} holes were completed as the known image's");
        // The tool's measure against its baseline: the fill's error is a small part of a mean fill's.
        var range = Ddpm.Diffusion.Data.DataRange.MinusOneToOne;
        var error = InpaintingQuality.Measure(image, result, 1, mask, 1, Side, range);
        var baseline = InpaintingQuality.Measure(image, InpaintingQuality.MeanFill(image, mask, 1, Side, range), 1, mask, 1, Side, range);
        Assert.Equal(0, error.KnownMismatches);
        Assert.True(error.HoleRms < 0.02 * baseline.HoleRms, $"hole RMS {error.HoleRms} against mean fill {baseline.HoleRms}");
    }

    [Fact]
    public void TheMeasuresAreTheHandComputedOnes()
    {
        // One 2x2 image in [-1, 1] (unit 0, 1, 0.5, 0.25), the top-left pixel unknown; results: the truth, then 1 (unit).
        float[] image = [-1f, 1f, 0f, -0.5f];
        float[] mask = [0f, 1f, 1f, 1f];
        var range = Ddpm.Diffusion.Data.DataRange.MinusOneToOne;
        float[] results = [-1f, 1f, 0f, -0.5f, 1f, 1f, 0f, 0.25f];
        var e = InpaintingQuality.Measure(image, results, 2, mask, 1, 2, range);
        // Hole: errors 0 and 1 (unit) -> RMS sqrt(1/2); known: 6 values, one off by 0.75.
        Assert.Equal(Math.Sqrt(0.5), e.HoleRms, 12);
        Assert.Equal((2L, 6L, 1L), (e.HolePixels, e.KnownPixels, e.KnownMismatches));
        Assert.Equal(0.75, e.KnownMaxAbs, 6);
        // Mean fill: the known pixels' mean (1 + 0 - 0.5) / 3 = 1/6 in the data range.
        Assert.Equal([1f / 6, 1f, 0f, -0.5f], InpaintingQuality.MeanFill(image, mask, 1, 2, range));
    }

    [Fact]
    public void AnEditAtStrengthZeroIsTheImageAndStrengthPicksTheStartingStep()
    {
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(1));
        model.Eval();
        var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig()));
        var image = TestData.Uniform(2 * Pixels, 4, -1f, 1f);
        using var x = Tensor.FromArray(be, image, 2, 1, Side, Side);
        Assert.Equal(image, sampler.Edit(x, 0f, SamplerKind.Ddim, 50, 0f, 3).ToArray());
        Assert.Equal(25, Sampler.EditSteps(50, 0.5f));
        Assert.Equal(1, Sampler.EditSteps(50, 0.02f));
        Assert.Equal(0, Sampler.EditSteps(50, 0.005f));
        Assert.Equal(750, Sampler.EditSteps(1000, 0.75f));
        int steps = 0;
        sampler.Edit(x, 0.3f, SamplerKind.Ddim, 20, 0f, 3, p => steps = Math.Max(steps, p.Of)).Dispose();
        Assert.Equal(6, steps);
        Assert.Throws<ArgumentOutOfRangeException>(() => sampler.Edit(x, 1.5f, SamplerKind.Ddim, 20, 0f, 3));
    }

    [Fact]
    public void AnEditIsTheDdimPathFromTheImageNoisedToItsStartingStep()
    {
        // Data N(mu, 0.3^2) per pixel (the exact denoiser, no clipping): the float32 edit against the same DDIM
        // recursion in double on the host, from sqrt(ab) x + sqrt(1 - ab) z with z the seed's first draw.
        var cfg = new DiffusionConfig { ClipX0 = false };
        var mu = TestData.Uniform(Pixels, 21, -0.5f, 0.5f).Select(v => (double)v).ToArray();
        var oracle = new GaussianOracle(mu, 0.3, cfg);
        var schedule = new NoiseSchedule(cfg);
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(1));
        var sampler = new Sampler(new DenoiseDiffusion(model, cfg, oracle.Output));
        var image = TestData.Uniform(2 * Pixels, 8, -1f, 1f);
        using var x = Tensor.FromArray(be, image, 2, 1, Side, Side);
        const ulong seed = 12;
        var edited = sampler.Edit(x, 0.6f, SamplerKind.Ddim, 20, 0f, seed).ToArray();
        var z = Tensor.RandN(be, x.Shape, new PhiloxGenerator(seed)).ToArray();
        var seq = Sampler.DdimTimesteps(1000, 20);
        int start = Sampler.EditSteps(20, 0.6f) - 1;
        Assert.Equal(11, start);
        var expected = new double[image.Length];
        for (int i = 0; i < image.Length; i++)
        {
            int j = i % Pixels;
            double ab0 = schedule.AlphaBar[seq[start]];
            double v = Math.Sqrt(ab0) * image[i] + Math.Sqrt(1 - ab0) * z[i];
            for (int k = start; k >= 0; k--)
            {
                double ab = schedule.AlphaBar[seq[k]], abPrev = k > 0 ? schedule.AlphaBar[seq[k - 1]] : 1;
                double eps = Math.Sqrt(1 - ab) * (v - Math.Sqrt(ab) * mu[j]) / (ab * 0.09 + 1 - ab);
                double x0 = (v - Math.Sqrt(1 - ab) * eps) / Math.Sqrt(ab);
                v = Math.Sqrt(abPrev) * x0 + Math.Sqrt(1 - abPrev) * eps;
            }
            expected[i] = v;
        }
        Closeness.AssertElementwise("SDEdit", edited, expected, 1e-5, 1e-5);
        // And it moved: the image is pulled toward the data (mu), not returned.
        Assert.Contains(edited.Zip(image), p => Math.Abs(p.First - p.Second) > 0.05);
    }

    /// <summary>Inpaints with <paramref name="network"/>, or a tiny random UNet (eval mode) when null.</summary>
    private static float[] Inpaint(DenoiseDiffusion.NetworkFunction? network, DiffusionConfig cfg, float[] image, int n, float[] mask,
        SamplerKind kind, int steps, RePaintOptions options, ulong seed, float eta = 0f)
    {
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, DiffusionTests.Tiny, new PhiloxGenerator(1));
        model.Eval();
        var sampler = new Sampler(new DenoiseDiffusion(model, cfg, network));
        var x = image.Length == Pixels ? Enumerable.Range(0, n * Pixels).Select(i => image[i % Pixels]).ToArray() : image;
        using var xt = Tensor.FromArray(be, x, n, 1, Side, Side);
        using var m = Tensor.FromArray(be, mask, 1, 1, Side, Side);
        return Inpainting.Inpaint(sampler, xt, m, kind, steps, eta, options, seed).ToArray();
    }

    /// <summary>
    /// The exact eps-denoiser of the data set {a, b} (each with probability 1/2): E[x0 | x_t] = w_a a + w_b b with
    /// w proportional to exp(-|x_t - sqrt(ab) x|^2 / (2 (1 - ab))), eps = (x_t - sqrt(ab) E[x0 | x_t]) / sqrt(1 - ab).
    /// </summary>
    private static DenoiseDiffusion.NetworkFunction TwoImages(double[] a, double[] b, NoiseSchedule schedule) => (xt, t) =>
    {
        var x = xt.ToArray();
        var y = new float[x.Length];
        for (int k = 0; k < x.Length / Pixels; k++)
        {
            double ab = schedule.AlphaBar[t[k]], sa = 0, sb = 0;
            for (int j = 0; j < Pixels; j++)
            {
                double v = x[k * Pixels + j];
                sa += (v - Math.Sqrt(ab) * a[j]) * (v - Math.Sqrt(ab) * a[j]);
                sb += (v - Math.Sqrt(ab) * b[j]) * (v - Math.Sqrt(ab) * b[j]);
            }
            double wa = 1 / (1 + Math.Exp((sa - sb) / (2 * (1 - ab))));
            for (int j = 0; j < Pixels; j++)
            {
                double x0 = wa * a[j] + (1 - wa) * b[j];
                y[k * Pixels + j] = (float)((x[k * Pixels + j] - Math.Sqrt(ab) * x0) / Math.Sqrt(1 - ab));
            }
        }
        return Tensor.FromArray(xt.Backend, y, xt.Shape.ToArray());
    };
}
