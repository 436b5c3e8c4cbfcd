using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// No verb writes an image or a tensor that is not finite: a model with a finite but absurd weight (3e38, whose
/// products overflow float) is refused with one line naming the sampling step and the image, exit code 1, and
/// nothing written, where it used to come out as black pictures.
/// </summary>
public sealed class FiniteOutputToolTests : IClassFixture<TrainedRun>
{
    private readonly TrainedRun _run;

    public FiniteOutputToolTests(TrainedRun run) => _run = run;

    private static void AssertRefused((int Code, string Out, string Err) r, string what, string message)
    {
        Assert.True(r.Code == 1, $"{what}: exit {r.Code}: {r.Err}{r.Out}");
        Assert.Single(r.Err.Trim().Split('\n'));
        Assert.StartsWith("ddpm-tool: error: ", r.Err);
        Assert.Matches(message, r.Err);
    }

    [Fact]
    public void AnAbsurdWeightIsRefusedAtTheStepWhereValuesStopBeingFinite()
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        // The EMA weights are what the sampling verbs and train's grids use.
        string big = ReliabilityToolTests.WithValue(_run.Checkpoint, "ema.final.weight", 3e38f, dir.File("big.safetensors"));
        const string AtStep = @"sampling step 1 of \d+ \(t = \d+\): the model's output is -?Infinity in image \d+ \(value \d+ of 1024\); the values stopped being finite there, so no image was written";
        foreach (var sampler in new[] { "ddim", "ddpm", "dpm++" })
            AssertRefused(Run("sample", "--checkpoint", big, "--n", "2", "--steps", "3", "--sampler", sampler, "--out", dir.File("s.png"), "--each", dir.File("each"), "--threads", "2"),
                "sample --sampler " + sampler, AtStep);
        AssertRefused(Run("animate", "--checkpoint", big, "--n", "2", "--steps", "3", "--frames", "2", "--out", dir.File("a"), "--threads", "2"), "animate", AtStep);
        AssertRefused(Run("interpolate", "--checkpoint", big, "--a", "data:0", "--b", "data:1", "--t", "5", "--frames", "2", "--out", dir.File("i.png"), "--threads", "2"),
            "interpolate", @"sampling step 1 of 6 \(t = 5\): the model's output is -?Infinity in image \d+");
        AssertRefused(Run("eval", "--checkpoint", big, "--n", "2", "--batch", "2", "--steps", "3", "--threads", "2"), "eval", AtStep);
        AssertRefused(Run("eval", "--checkpoint", big, "--by-t", "--n", "2", "--threads", "2"), "eval --by-t",
            @"the model's output at t = 0 is -?Infinity for image \d+; its error cannot be measured");
        // --each's folder is made (and checked writable) before sampling; it stays empty.
        Assert.Equal([dir.File("big.safetensors")], Directory.GetFiles(dir.Path));
        Assert.Equal([dir.File("each")], Directory.GetDirectories(dir.Path));
        Assert.Empty(Directory.GetFileSystemEntries(dir.File("each")));
    }

    [Fact]
    public void TrainDoesNotWriteASampleGridThatIsNotFinite()
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        string big = ReliabilityToolTests.WithValue(_run.Checkpoint, "ema.final.weight", 3e38f, dir.File("big.safetensors"));
        string run = dir.File("run");
        var r = Run("train", "--resume", big, "--steps", "5", "--max-images", "64", "--samples", "2", "--sample-steps", "2", "--sample-every", "0",
            "--threads", "2", "--out", run);
        AssertRefused(r, "train", @"sampling step 1 of 2 \(t = \d+\): the model's output is -?Infinity in image \d+");
        Assert.False(File.Exists(Path.Combine(run, "samples.png")));
        Assert.Empty(Directory.GetFiles(run, "*.tmp"));
        Assert.Empty(Directory.GetFiles(run, "samples*"));
        // A step's checkpoint is the last file it writes: the final state, whose grid failed, is not saved, so the
        // checkpoint the run resumed stays the one to continue from, and the run folder holds none.
        Assert.Null(Ddpm.Diffusion.Training.RunFolder.Latest(run));
    }

    [Fact]
    public void ForwardDoesNotWriteTensorsThatAreNotFinite()
    {
        using var dir = new TempDir();
        string big = ReliabilityToolTests.WithValue(Path.Combine(ReliabilityToolTests.Golden, "model.safetensors"), "final.weight", 3e38f, dir.File("w-big.safetensors"));
        var r = Run(["forward", "--weights", big, "--inputs", Path.Combine(ReliabilityToolTests.Golden, "io.safetensors"), "--out", dir.File("o.safetensors"), .. ReliabilityToolTests.GoldenModel]);
        AssertRefused(r, "forward", $@"{System.Text.RegularExpressions.Regex.Escape(dir.File("o.safetensors"))}: value \d+ of tensor 'eps' \[\d+,1,16,16\] is -?Infinity; nothing was written\.");
        Assert.False(File.Exists(dir.File("o.safetensors")));
    }
}
