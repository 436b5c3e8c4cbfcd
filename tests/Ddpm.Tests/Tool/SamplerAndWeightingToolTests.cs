using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Tool;

/// <summary>--sampler dpm++ on the sampling verbs and --loss-weighting min-snr on train.</summary>
public sealed class SamplerAndWeightingToolTests
{
    [Fact]
    public void AMinSnrRunIsRecordedAndSamplesWithDpmSolver()
    {
        using var dir = new TempDir();
        var (code, output, err) = ToolTests.Run("train", "--preset", "tiny", "--steps", "2", "--batch", "4", "--max-images", "16",
            "--diffusion-steps", "50", "--samples", "1", "--sample-steps", "2", "--warmup", "1", "--loss-weighting", "min-snr",
            "--min-snr-gamma", "4", "--out", dir.Path, "--threads", "2");
        Assert.True(code == 0, err);
        Assert.Contains("Min-SNR-4 loss weighting", output);
        var diffusion = Checkpoint.Load(RunFolder.Latest(dir.Path)!).Diffusion!;
        Assert.Equal((LossWeighting.MinSnr, 4.0), (diffusion.LossWeighting, diffusion.MinSnrGamma));

        (code, output, err) = ToolTests.Run("sample", "--checkpoint", dir.Path, "--sampler", "dpm++", "--steps", "5",
            "--n", "4", "--scale", "1", "--out", dir.File("s.png"), "--threads", "2");
        Assert.True(code == 0, err);
        Assert.Contains("DPM-Solver++ (5 steps)", output);
        var grid = ImageFile.Load(dir.File("s.png"), 1);
        Assert.Equal((2 * 34 + 2, 2 * 34 + 2), (grid.Width, grid.Height)); // 2x2 grid of 32-pixel images, 2-pixel gaps

        (code, _, err) = ToolTests.Run("animate", "--checkpoint", dir.Path, "--sampler", "DPMPP", "--steps", "4",
            "--n", "1", "--frames", "2", "--out", dir.File("anim"), "--threads", "2");
        Assert.True(code == 0, err);
        Assert.True(File.Exists(dir.File("anim.png")));
    }

    [Fact]
    public void SamplerNamesAreReadInAnyCase()
    {
        Assert.Equal(SamplerKind.DpmSolver, Ddpm.Tool.SamplerOptions.ParseSampler(" Dpm++ "));
        Assert.Equal(SamplerKind.Ddpm, Ddpm.Tool.SamplerOptions.ParseSampler("DDPM"));
    }

    [Theory]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--sampler", "x" }, "--sampler is ddim, dpm++ or ddpm, not 'x'")]
    [InlineData(new[] { "eval", "--checkpoint", "c", "--sampler", "euler" }, "--sampler is ddim, dpm++ or ddpm, not 'euler'")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--sampler", "dpm++", "--eta", "0.5" }, "--eta 0.5 is DDIM's noise; --sampler dpm++ is deterministic")]
    [InlineData(new[] { "train", "--sample-sampler", "euler" }, "--sample-sampler is ddim, dpm++ or ddpm, not 'euler'")]
    [InlineData(new[] { "train", "--loss-weighting", "snr" }, "--loss-weighting is uniform or min-snr, not 'snr'")]
    [InlineData(new[] { "train", "--loss-weighting", "min-snr", "--min-snr-gamma", "0" }, "--min-snr-gamma must be a positive number")]
    [InlineData(new[] { "train", "--min-snr-gamma", "NaN" }, "--min-snr-gamma must be a positive number")]
    [InlineData(new[] { "train", "--labml-exact", "--loss-weighting", "min-snr" }, "--labml-exact trains labml's uniformly weighted L_simple")]
    public void BadSamplerAndWeightingAreOneLineAndExitCode2(string[] args, string message) => ToolTests.AssertBadUsage(args, message);
}
