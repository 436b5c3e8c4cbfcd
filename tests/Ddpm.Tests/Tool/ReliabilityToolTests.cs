using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Ddpm.Tool;
using Ddpm.Tool.Commands;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// What the tool keeps safe when things go wrong: a diverged run keeps its last finite checkpoint, a second run
/// into a folder is refused, the log matches the checkpoint, options are bounded before anything is allocated, and
/// every failure is one line with its exit code (with --verbose too).
/// </summary>
public sealed class ReliabilityToolTests
{
    internal static readonly string Golden = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny");
    internal static readonly string[] GoldenModel =
        ["--image-channels", "1", "--image-size", "16", "--n-channels", "32", "--ch-mults", "1,2", "--attn", "0,1", "--n-blocks", "1"];

    internal static string[] TinyRun(string outDir, params string[] extra) =>
    [
        "train", "--preset", "tiny", "--batch", "4", "--max-images", "64", "--diffusion-steps", "50", "--samples", "1",
        "--sample-steps", "2", "--sample-every", "0", "--log-every", "1", "--threads", "2", "--out", outDir, .. extra,
    ];

    private static int[] LoggedSteps(string csv) =>
        File.ReadAllLines(csv).Skip(1).Select(l => int.Parse(l.Split(',')[0], CultureInfo.InvariantCulture)).ToArray();

    // ---- --save-spikes and parity --replay ----------------------------------------------------------------

    [Fact]
    public void SavedStepsReplayOnBothBackendsAndTheirNumberIsCapped()
    {
        using var dir = new TempDir();
        // Every step's norm exceeds 1e-9: the first 20 are saved, the 21st is named once as not saved.
        var (code, output, err) = Run(TinyRun(dir.Path, "--steps", "22", "--save-spikes", "1e-9"));
        Assert.True(code == 0, err);
        var files = Directory.GetFiles(Path.Combine(dir.Path, "spikes")).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(Enumerable.Range(1, TrainOptions.MaxSpikeFiles).Select(i => $"step-{i:D7}.safetensors"), files);
        Assert.Matches(@"step 3: gradient norm \S+ > 1E-09, saved .*step-0000003\.safetensors; largest: \S+ \d+ %", output);
        Assert.Single(Regex.Matches(output, "not saved"));
        Assert.Contains("step 21: gradient norm", output);

        var (rc, replay, rerr) = Run("parity", "--replay", Path.Combine(dir.Path, "spikes", "step-0000020.safetensors"), "--threads", "2");
        Assert.True(rc == 0, replay + rerr);
        Assert.Contains("parity holds", replay);
        Assert.Contains("largest gradients (recorded)", replay);

        // A file that is not a recorded step, and bad thresholds, are one line each.
        var (bc, _, berr) = Run("parity", "--replay", RunFolder.Latest(dir.Path)!);
        Assert.Equal(1, bc);
        Assert.Contains("not a recorded training step", berr);
        Assert.Single(berr.Trim().Split('\n'));
        foreach (var bad in new[] { "-1", "NaN", "Infinity" })
        {
            var (uc, _, uerr) = Run(TinyRun(dir.Path + "-x", "--steps", "2", "--save-spikes", bad));
            Assert.Equal(2, uc);
            Assert.Contains("--save-spikes", uerr);
        }
    }

    // ---- a diverged run keeps the last good checkpoint ---------------------------------------------------

    [Fact]
    public void ANonFiniteLossKeepsTheLastGoodCheckpoint()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("train", "--preset", "tiny", "--batch", "4", "--steps", "30", "--warmup", "0", "--lr", "1e6",
            "--checkpoint-every", "1", "--sample-every", "0", "--max-images", "64", "--threads", "2", "--out", dir.Path);
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        var m = Regex.Match(err, @"(the loss became \S+ at step (\d+)|training diverged by step (\d+)).*The last good checkpoint is step (\d+) \((.+?)\)");
        Assert.True(m.Success, err);
        int failedAt = int.Parse(m.Groups[2].Success ? m.Groups[2].Value : m.Groups[3].Value, CultureInfo.InvariantCulture);
        int good = int.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture);
        Assert.InRange(good, 1, failedAt - 1);
        Assert.Equal(dir.File(RunFolder.CheckpointName(good)), m.Groups[5].Value);
        // Load checks every tensor (weights, EMA, both Adam moments) is finite.
        var ckpt = Checkpoint.Load(RunFolder.Latest(dir.Path)!);
        Assert.Equal(good, ckpt.Step);
        Assert.Contains(ckpt.File.Entries, e => e.Name.StartsWith("adam.v.", StringComparison.Ordinal));
        // The log holds every finite step up to the failure, and a resume from the checkpoint cuts it back.
        Assert.Equal(Enumerable.Range(1, failedAt - 1), LoggedSteps(dir.File("loss.csv")));
    }

    [Fact]
    public void ARunThatDivergesBeforeItsFirstCheckpointWritesNone()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("train", "--preset", "tiny", "--batch", "4", "--steps", "30", "--warmup", "0", "--lr", "1e6",
            "--checkpoint-every", "0", "--sample-every", "0", "--max-images", "64", "--threads", "2", "--out", dir.Path);
        Assert.Equal(1, code);
        Assert.Contains("No checkpoint of this run was written", err);
        Assert.Null(RunFolder.Latest(dir.Path));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
    }

    // ---- non-finite models and options are refused ----------------------------------------------------------

    /// <summary>A copy of <paramref name="path"/> with one value of tensor <paramref name="name"/> replaced.</summary>
    internal static string WithValue(string path, string name, float value, string copy)
    {
        var file = SafeTensorsFile.Read(path);
        var entries = file.Entries.Select(e =>
        {
            if (e.Name != name) return e;
            var data = (float[])e.AsFloats().Clone();
            data[data.Length / 2] = value;
            return SafeTensorEntry.F32(e.Name, e.Shape, data);
        }).ToList();
        Assert.Contains(entries, e => e.Name == name);
        SafeTensorsFile.Write(copy, entries, file.Metadata);
        return copy;
    }

    [Fact]
    public void NonFiniteWeightsAreRefusedNamingTheTensor()
    {
        using var dir = new TempDir();
        Assert.Equal(0, Run(TinyRun(dir.File("run"), "--steps", "2", "--warmup", "1")).Code);
        string ckpt = RunFolder.Latest(dir.File("run"))!;
        string emaNaN = WithValue(ckpt, "ema.final.weight", float.NaN, dir.File("ema-nan.safetensors"));
        foreach (var args in new[]
        {
            new[] { "sample", "--checkpoint", emaNaN, "--n", "1", "--steps", "2", "--out", dir.File("s.png") },
            ["animate", "--checkpoint", emaNaN, "--n", "1", "--steps", "2", "--frames", "2", "--out", dir.File("a")],
            ["interpolate", "--checkpoint", emaNaN, "--a", "data:0", "--b", "data:1", "--t", "5", "--frames", "2", "--out", dir.File("i.png")],
            ["info", "--checkpoint", emaNaN],
            ["train", "--resume", emaNaN, "--steps", "3", "--max-images", "64", "--out", dir.File("r")],
        })
        {
            var (code, output, err) = Run(args);
            Assert.True(code == 1, args[0] + ": " + err + output);
            Assert.Contains("ema-nan.safetensors", err);
            Assert.Contains("ema.final.weight", err);
            Assert.Contains("NaN", err);
            Assert.Single(err.Trim().Split('\n'));
            Assert.DoesNotContain("internal error", err);
        }
        Assert.False(File.Exists(dir.File("s.png")));
        string adamInf = WithValue(ckpt, "adam.m.final.weight", float.PositiveInfinity, dir.File("adam-inf.safetensors"));
        var (c2, _, e2) = Run("train", "--resume", adamInf, "--steps", "3", "--max-images", "64", "--out", dir.File("r"));
        Assert.Equal(1, c2);
        Assert.Contains("adam.m.final.weight", e2);

        string weightsNaN = WithValue(Path.Combine(Golden, "model.safetensors"), "final.weight", float.NaN, dir.File("w-nan.safetensors"));
        var (c3, _, e3) = Run(["forward", "--weights", weightsNaN, "--inputs", Path.Combine(Golden, "io.safetensors"), "--out", dir.File("o.safetensors"), .. GoldenModel]);
        Assert.Equal(1, c3);
        Assert.Contains("w-nan.safetensors", e3);
        Assert.Contains("tensor 'final.weight'", e3);
        Assert.False(File.Exists(dir.File("o.safetensors")));
    }

    [Fact]
    public void ForwardRefusesInputsThatDoNotFitTheModel()
    {
        using var dir = new TempDir();
        var io = SafeTensorsFile.Read(Path.Combine(Golden, "io.safetensors"));
        var x = io["x"]; var t = io["t"];
        var cases = new (string Name, SafeTensorEntry X, SafeTensorEntry T, string Message)[]
        {
            ("nan", SafeTensorEntry.F32("x", x.Shape, x.AsFloats().Select((v, i) => i == 7 ? float.NaN : v).ToArray()), t, "value 7 of tensor 'x'"),
            ("channels", SafeTensorEntry.F32("x", [x.Shape[0], 3, x.Shape[2], x.Shape[3]], new float[x.Shape[0] * 3 * x.Shape[2] * x.Shape[3]]), t,
                "the model takes [N, 1, 16, 16]"),
            ("size", SafeTensorEntry.F32("x", [x.Shape[0], 1, 8, 8], new float[x.Shape[0] * 64]), t, "the model takes [N, 1, 16, 16]"),
            ("tdtype", x, SafeTensorEntry.F32("t", t.Shape, t.AsLongs().Select(v => (float)v).ToArray()), "timesteps are integers"),
            ("xdtype", SafeTensorEntry.I64("x", x.Shape, new long[x.AsFloats().Length]), t, "tensor 'x' is I64"),
        };
        foreach (var (name, xe, te, message) in cases)
        {
            string inputs = dir.File(name + ".safetensors");
            SafeTensorsFile.Write(inputs, [xe, te]);
            var (code, _, err) = Run(["forward", "--weights", Path.Combine(Golden, "model.safetensors"), "--inputs", inputs, "--out", dir.File("o.safetensors"), .. GoldenModel]);
            Assert.True(code == 1, name + ": " + err);
            Assert.Contains(inputs, err);
            Assert.Contains(message, err);
            Assert.Single(err.Trim().Split('\n'));
        }
        Assert.False(File.Exists(dir.File("o.safetensors")));
    }

    // ---- one run per output folder ---------------------------------------------------------------------------

    [Fact]
    public void ASecondRunIntoTheSameFolderIsRefused()
    {
        using var dir = new TempDir();
        using (RunFolder.Lock(dir.Path))
        {
            // The same lock, taken twice in one process, conflicts as it does between processes.
            var e = Assert.Throws<RunFolderInUseException>(() => RunFolder.Lock(dir.Path));
            Assert.Contains("in use by another run", e.Message);
            var (code, _, err) = Run(TinyRun(dir.Path, "--steps", "2", "--warmup", "1"));
            Assert.Equal(1, code);
            Assert.Contains($"--out {dir.Path} is in use by another run", err);
            Assert.Single(err.Trim().Split('\n'));
            Assert.Null(RunFolder.Latest(dir.Path));
            Assert.False(File.Exists(dir.File("loss.csv")));
        }
        // Released with its handle (a killed run's is released by the OS): the folder is usable again.
        Assert.Equal(0, Run(TinyRun(dir.Path, "--steps", "2", "--warmup", "1")).Code);
        Assert.Equal(2, Checkpoint.Load(RunFolder.Latest(dir.Path)!).Step);
    }

    // ---- the log matches the checkpoint ----------------------------------------------------------------------

    [Fact]
    public void AResumeCutsTheLogToItsCheckpointAndRemovesStaleTemporaries()
    {
        using var dir = new TempDir();
        Assert.Equal(0, Run(TinyRun(dir.Path, "--steps", "4", "--warmup", "1", "--checkpoint-every", "2")).Code);
        // As a run killed after flushing rows 5 and 6 but before renaming their checkpoint leaves it, with the
        // temporary files of an unfinished checkpoint and plot.
        File.AppendAllText(dir.File("loss.csv"), "5,123.5,1,0.001,0.1\n6,123.5,1,0.001,0.1\n");
        string staleCheckpoint = dir.File($".checkpoint.safetensors.{Guid.NewGuid():N}.tmp");
        string stalePlot = dir.File($".loss.png.{Guid.NewGuid():N}.tmp");
        string notOurs = dir.File(".notes.tmp");
        foreach (var f in new[] { staleCheckpoint, stalePlot, notOurs }) File.WriteAllText(f, "x");

        var (code, output, err) = Run(TinyRun(dir.Path, "--resume", dir.Path, "--steps", "6"));
        Assert.True(code == 0, err);
        Assert.Contains("removed 2 temporary file(s)", output);
        Assert.False(File.Exists(staleCheckpoint));
        Assert.False(File.Exists(stalePlot));
        Assert.True(File.Exists(notOurs));
        Assert.Equal([1, 2, 3, 4, 5, 6], LoggedSteps(dir.File("loss.csv")));
        Assert.DoesNotContain("123.5", File.ReadAllText(dir.File("loss.csv")));
        Assert.Equal(6, Checkpoint.Load(RunFolder.Latest(dir.Path)!).Step);
    }

    /// <summary>A console writer that asks the run to stop (as Ctrl-C does) once a line containing <paramref name="trigger"/> is written.</summary>
    internal sealed class StopOn(string trigger, CancellationTokenSource cts) : StringWriter
    {
        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            if (value is not null && value.Contains(trigger, StringComparison.Ordinal)) cts.Cancel();
        }
    }

    [Fact]
    public void AnInterruptedRunSavesACheckpointTheLogCovers()
    {
        using var dir = new TempDir();
        using var cts = new CancellationTokenSource();
        var output = new StopOn("step       3/", cts);
        var err = new StringWriter();
        int code = Program.Run(TinyRun(dir.Path, "--steps", "20", "--warmup", "1", "--checkpoint-every", "0"),
            new ToolConsole(output, err, interactive: false) { Cancel = cts.Token });
        Assert.Equal(ExitCodes.Interrupted, code);
        Assert.Equal(3, Checkpoint.Load(RunFolder.Latest(dir.Path)!).Step);
        Assert.Equal([1, 2, 3], LoggedSteps(dir.File("loss.csv")));
    }

    [Fact]
    public void SamplingStopsAfterTheCurrentStepWhenAskedTo()
    {
        using var dir = new TempDir();
        Assert.Equal(0, Run(TinyRun(dir.File("run"), "--steps", "2", "--warmup", "1")).Code);
        using var cts = new CancellationTokenSource();
        var err = new StringWriter();
        int code = Program.Run(["sample", "--checkpoint", RunFolder.Latest(dir.File("run"))!, "--n", "2", "--steps", "40",
            "--out", dir.File("s.png"), "--threads", "2"], new ToolConsole(new StopOn("sampling", cts), err, interactive: false) { Cancel = cts.Token });
        Assert.Equal(ExitCodes.Interrupted, code);
        Assert.Contains("interrupted", err.ToString());
        Assert.False(File.Exists(dir.File("s.png")));
    }

    [Fact]
    public void SampleOutputsAreCheckedBeforeSampling()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("file"), "not a folder");
        // No checkpoint exists: an output problem is reported first, before the model is even opened.
        foreach (var (args, code, message) in new (string[], int, string)[]
        {
            (["--out", ""], 2, "--out is empty"),
            (["--out", dir.File(Path.Combine("file", "s.png"))], 1, "--out: cannot write in"),
            (["--out", dir.Path], 2, "is a folder"),
            (["--each", dir.File(Path.Combine("file", "each"))], 1, "--each: cannot write in"),
            (["--nrow", "0"], 2, "--nrow must be positive"),
        })
        {
            string[] output = args.Contains("--out") ? [] : ["--out", dir.File("s.png")];
            var (c, _, err) = Run(["sample", "--checkpoint", dir.File("none.safetensors"), .. output, .. args]);
            Assert.True(c == code, string.Join(" ", args) + ": " + err);
            Assert.Contains(message, err);
            Assert.Single(err.Trim().Split('\n'));
        }
    }

    [Fact]
    public void ALargeSampleCountIsDrawnInChunks()
    {
        using var dir = new TempDir();
        Assert.Equal(0, Run(TinyRun(dir.File("run"), "--steps", "2", "--warmup", "1")).Code);
        string ckpt = RunFolder.Latest(dir.File("run"))!;
        int n = Ddpm.Tool.Commands.SampleCommand.MaxChunk + 3;
        var (code, _, err) = Run("sample", "--checkpoint", ckpt, "--n", n.ToString(CultureInfo.InvariantCulture), "--steps", "1",
            "--out", dir.File("big.png"), "--each", dir.File("each"), "--scale", "1", "--threads", "2");
        Assert.True(code == 0, err);
        // The first chunk is what a grid of MaxChunk images draws from the same seed; the second chunk starts
        // from seed + 1, as a 3-image grid with that seed does.
        (code, _, err) = Run("sample", "--checkpoint", ckpt, "--n", "3", "--steps", "1", "--seed", "1", "--out", dir.File("tail.png"),
            "--each", dir.File("tail"), "--scale", "1", "--threads", "2");
        Assert.True(code == 0, err);
        string[] big = Directory.GetFiles(dir.File("each")).Order().ToArray();
        string[] tail = Directory.GetFiles(dir.File("tail")).Order().ToArray();
        Assert.Equal(n, big.Length);
        for (int i = 0; i < 3; i++)
            Assert.Equal(File.ReadAllBytes(tail[i]), File.ReadAllBytes(big[Ddpm.Tool.Commands.SampleCommand.MaxChunk + i]));
    }

    // ---- bounded options and memory -----------------------------------------------------------------------------

    [Theory]
    [InlineData(new[] { "train", "--threads", "100000" }, "--threads must be between 0")]
    [InlineData(new[] { "train", "--threads", "-1" }, "--threads must be between 0")]
    [InlineData(new[] { "train", "--batch", "100000" }, "--batch must be between 1 and")]
    [InlineData(new[] { "train", "--steps", "2000000000" }, "--steps must be between 1 and")]
    [InlineData(new[] { "train", "--lr", "NaN" }, "--lr must be a positive number")]
    [InlineData(new[] { "train", "--lr", "Infinity" }, "--lr must be a positive number")]
    [InlineData(new[] { "train", "--samples", "100000" }, "--samples must be between 1 and")]
    [InlineData(new[] { "train", "--preset", "tiny", "--n-groups", "0" }, "--n-groups 0 is not a positive divisor")]
    [InlineData(new[] { "train", "--preset", "tiny", "--n-blocks", "1000000" }, "--n-blocks 1000000 is not between 1 and")]
    [InlineData(new[] { "train", "--diffusion-steps", "2147483647" }, "--diffusion-steps 2147483647 is not between 2 and")]
    [InlineData(new[] { "train", "--preset", "tiny", "--steps", "10", "--lr-final", "2" }, "--lr-final 2 is not in [0, 1]")]
    [InlineData(new[] { "train", "--preset", "tiny", "--steps", "2", "--out", "" }, "--out is empty")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--eta", "NaN" }, "--eta must be a number >= 0")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--n", "100000000" }, "--n must be between 1 and")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--steps", "0" }, "--steps must be positive")]
    [InlineData(new[] { "animate", "--checkpoint", "c", "--frames", "100000" }, "--frames must be between 2 and")]
    [InlineData(new[] { "interpolate", "--checkpoint", "c", "--a", "x", "--b", "y", "--frames", "100000" }, "--frames must be between 2 and")]
    public void SizeAndNumberOptionsAreBoundedBeforeAnythingIsAllocated(string[] args, string message) =>
        ToolTests.AssertBadUsage(args, message);

    [Fact]
    public void ARunThatCannotFitInMemoryIsRefusedWithTheEstimate()
    {
        using var dir = new TempDir();
        // As train builds it: a new run applies the attention blocks' norm.
        var model = Presets.Get("ddpm-cifar10").Model with { AttnNorm = true };
        long bytes = MemoryEstimate.TrainingBytes(model, 60000);
        Assert.True(bytes > MemoryEstimate.Available, "the test needs a batch that does not fit");
        var (code, _, err) = Run("train", "--preset", "ddpm-cifar10", "--batch", "60000", "--steps", "10", "--out", dir.Path);
        Assert.Equal(1, code);
        Assert.Contains($"needs about {MemoryEstimate.Format(bytes)} of memory (estimated); this machine has {MemoryEstimate.Format(MemoryEstimate.Available)} available", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void TheTrainingEstimateCoversTheParametersAndGrowsWithTheBatch()
    {
        var c = Presets.Get("tiny").Model;
        long perImage = MemoryEstimate.TrainingActivationsPerImage(c);
        // At least the input and the first level's output of every residual block; linear in the batch.
        Assert.True(perImage >= (long)c.ImageChannels * c.ImageSize * c.ImageSize + c.NBlocks * 12L * c.NChannels * c.ImageSize * c.ImageSize);
        Assert.Equal(4 * 5 * c.ParameterCount(), MemoryEstimate.TrainingBytes(c, 0));
        Assert.Equal(MemoryEstimate.TrainingBytes(c, 3) - MemoryEstimate.TrainingBytes(c, 1), 2 * 4 * perImage);
    }

    // ---- --verbose keeps the line and the exit code ------------------------------------------------------------

    [Fact]
    public void VerboseAddsTheTraceButKeepsTheLineAndTheExitCode()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("train", "--image-size", "30", "--verbose");
        Assert.Equal(2, code);
        var lines = err.Split('\n');
        Assert.StartsWith("ddpm-tool: --image-size 30 must be divisible by 4", lines[0]);
        Assert.Contains("   at ", err);

        File.WriteAllBytes(dir.File("bad.safetensors"), [1, 2, 3]);
        (code, _, err) = Run("sample", "--checkpoint", dir.File("bad.safetensors"), "--verbose");
        Assert.Equal(1, code);
        Assert.StartsWith("ddpm-tool: error: ", err);
        Assert.Contains("bad.safetensors", err.Split('\n')[0]);
        Assert.Contains("   at ", err);
        (code, _, err) = Run("sample", "--checkpoint", dir.File("bad.safetensors"));
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
    }
}
