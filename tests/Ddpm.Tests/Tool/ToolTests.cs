using System.Text.Json;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Ddpm.Tool;
using SixLabors.ImageSharp;
using Xunit;

namespace Ddpm.Tests.Tool;

/// <summary>Runs each verb in-process on a tiny configuration and checks what it writes.</summary>
public sealed class ToolTests : IClassFixture<ToolTests.TrainedRun>
{
    private readonly TrainedRun _run;

    public ToolTests(TrainedRun run) => _run = run;

    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter(); var e = new StringWriter();
        int code = Program.Run(args, new ToolConsole(o, e, interactive: false));
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>A tool run into a temporary output folder (the arguments' --out), shared by the tests of a class.</summary>
    public abstract class ToolRun : IDisposable
    {
        protected ToolRun(params string[] args) => (Code, Out, Err) = Run([.. args, "--out", Dir.Path]);

        public TempDir Dir { get; } = new();
        public int Code { get; }
        public string Out { get; }
        public string Err { get; }
        public string Checkpoint => RunFolder.Latest(Dir.Path) ?? Dir.File("no-checkpoint");

        public void Dispose() => Dir.Dispose();
    }

    /// <summary>One short unconditional training run (T = 50 so DDPM sampling is quick) shared by the tests (ClassToolTests train conditionally).</summary>
    public sealed class TrainedRun() : ToolRun("train", "--preset", "tiny", "--steps", "4", "--batch", "4", "--max-images", "64",
        "--diffusion-steps", "50", "--samples", "4", "--sample-steps", "3", "--sample-every", "2", "--checkpoint-every", "2",
        "--log-every", "1", "--warmup", "2", "--lr", "1e-3", "--no-classes", "--threads", "2");

    [Fact]
    public void TrainWritesCheckpointSamplesAndLog()
    {
        Assert.True(_run.Code == 0, _run.Err + _run.Out);
        var csv = File.ReadAllLines(_run.Dir.File("loss.csv"));
        Assert.Equal("step,loss,grad_norm,lr,seconds", csv[0]);
        Assert.Equal(5, csv.Length);
        Assert.Equal(new[] { "1", "2", "3", "4" }, csv.Skip(1).Select(l => l.Split(',')[0]));
        // Warm-up over 2 steps, then half a cosine to 0 at step 4: 5e-4, 1e-3, 5e-4, 0.
        var lrs = csv.Skip(1).Select(l => double.Parse(l.Split(',')[3], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(new[] { 5e-4, 1e-3, 5e-4, 0 }, lrs, (a, b) => Math.Abs(a - b) <= 1e-9);
        // A 2x2 grid of 32-pixel images is 70 pixels; written 8 times larger to be readable (560 >= 512).
        var grid = ImageFile.Load(_run.Dir.File("samples.png"), 1);
        Assert.Equal((8 * (2 * 34 + 2), 8 * (2 * 34 + 2)), (grid.Width, grid.Height));
        Assert.True(File.Exists(_run.Dir.File("samples-0000002.png")));
        var plot = ImageFile.Load(_run.Dir.File("loss.png"), 3);
        Assert.Equal((LossPlot.Width, LossPlot.Height), (plot.Width, plot.Height));
        // Drawn, not blank: the curves are blue (the library's default background is white).
        Assert.Contains(Enumerable.Range(0, plot.Width * plot.Height), i => plot.Pixels[3 * i + 2] > plot.Pixels[3 * i] + 60);
        var ckpt = Checkpoint.Load(_run.Checkpoint);
        Assert.True(ckpt.IsTrainingCheckpoint);
        Assert.Equal(4, ckpt.Step);
        Assert.True(ckpt.HasEma);
        Assert.Equal(50, ckpt.Diffusion!.NSteps);
        var weights = SafeTensorsFile.Read(_run.Dir.File("model.safetensors"));
        Assert.Contains(weights.Entries, e => e.Name == "image_proj.weight");
        Assert.Contains("step       4/4", _run.Out);
    }

    [Fact]
    public void TheTargetIsRecordedVByDefaultAndEpsOnRequest()
    {
        // The shared run used the default: v.
        Assert.Contains("v prediction", _run.Out);
        Assert.Equal(Ddpm.Diffusion.Diffusion.Prediction.V, Checkpoint.Load(_run.Checkpoint).Diffusion!.Prediction);
        using var dir = new TempDir();
        var (code, output, err) = Run("train", "--preset", "tiny", "--steps", "2", "--batch", "4", "--max-images", "16", "--diffusion-steps", "50",
            "--samples", "1", "--sample-steps", "2", "--warmup", "1", "--prediction", "eps", "--out", dir.Path, "--threads", "2");
        Assert.True(code == 0, err);
        Assert.Contains("eps prediction", output);
        Assert.Equal(Ddpm.Diffusion.Diffusion.Prediction.Eps, Checkpoint.Load(RunFolder.Latest(dir.Path)!).Diffusion!.Prediction);
        (code, output, err) = Run("info", "--checkpoint", dir.Path);
        Assert.True(code == 0, err);
        Assert.Contains("prediction=Eps", output);
        (code, _, err) = Run("sample", "--checkpoint", dir.Path, "--n", "2", "--steps", "2", "--out", dir.File("s.png"));
        Assert.True(code == 0, err);
        Assert.True(File.Exists(dir.File("s.png")));
    }

    [Fact]
    public void ResumeContinuesTheRunAndTheLog()
    {
        using var dir = new TempDir();
        foreach (var f in Directory.GetFiles(_run.Dir.Path)) File.Copy(f, Path.Combine(dir.Path, Path.GetFileName(f)));
        var (code, output, err) = Run("train", "--resume", dir.Path, "--steps", "6", "--max-images", "64",
            "--out", dir.Path, "--samples", "1", "--sample-steps", "2", "--threads", "2");
        Assert.True(code == 0, err);
        var resumed = Checkpoint.Load(RunFolder.Latest(dir.Path)!);
        Assert.Equal(6, resumed.Step);
        Assert.Equal(6, resumed.Training!.DecaySteps);
        Assert.Contains("the cosine learning-rate decay now ends at step 6 instead of 4", output);
        var csv = File.ReadAllLines(dir.File("loss.csv"));
        Assert.Equal(7, csv.Length);
        Assert.Equal("6", csv[^1].Split(',')[0]);
    }

    [Theory]
    [InlineData("ddim", "3")]
    [InlineData("ddpm", "3")]
    public void SampleWritesAGridAndSingleImages(string sampler, string steps)
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("sample", "--checkpoint", _run.Checkpoint, "--sampler", sampler, "--steps", steps,
            "--n", "3", "--nrow", "3", "--out", dir.File("g.png"), "--each", dir.File("each"), "--seed", "5", "--scale", "1");
        Assert.True(code == 0, err);
        var g = ImageFile.Load(dir.File("g.png"), 1);
        Assert.Equal((3 * 34 + 2, 34 + 2), (g.Width, g.Height));
        Assert.Equal(3, Directory.GetFiles(dir.File("each"), "*.png").Length);
        Assert.Equal((32, 32), (ImageFile.Load(Directory.GetFiles(dir.File("each"), "*.png")[0], 1).Width, 32));
        // Same seed, same pixels; by default the grid is enlarged (104 -> 520 pixels) by repeating them.
        Run("sample", "--checkpoint", _run.Checkpoint, "--sampler", sampler, "--steps", "3", "--n", "3", "--nrow", "3", "--out", dir.File("g2.png"), "--seed", "5");
        var g2 = ImageFile.Load(dir.File("g2.png"), 1);
        Assert.Equal((5 * g.Width, 5 * g.Height), (g2.Width, g2.Height));
        for (int y = 0; y < g2.Height; y++)
            for (int x = 0; x < g2.Width; x++)
                Assert.Equal(g[x / 5, y / 5, 0], g2[x, y, 0]);
        // The 4-step model's x0 predictions leave the data range, so clipping them changes the pixels.
        (code, _, err) = Run("sample", "--checkpoint", _run.Checkpoint, "--sampler", sampler, "--steps", "3", "--n", "3", "--nrow", "3", "--out", dir.File("g3.png"), "--seed", "5", "--no-clip", "--scale", "1");
        Assert.True(code == 0, err);
        Assert.NotEqual(g.Pixels, ImageFile.Load(dir.File("g3.png"), 1).Pixels);
    }

    [Fact]
    public void AnimateWritesAStripAndAGif()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("animate", "--checkpoint", _run.Checkpoint, "--n", "2", "--steps", "6", "--frames", "3", "--out", dir.File("a"));
        Assert.True(code == 0, err);
        var strip = ImageFile.Load(dir.File("a.png"), 1);
        Assert.Equal((4 * (3 * 34 + 2), 4 * (2 * 34 + 2)), (strip.Width, strip.Height)); // --scale 4 by default, as the GIF
        using var gif = Image.Load(dir.File("a.gif"));
        Assert.Equal(3, gif.Frames.Count);
    }

    [Fact]
    public void InterpolateWritesAStrip()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("interpolate", "--checkpoint", _run.Checkpoint, "--a", "data:0", "--b", "data:5", "--t", "20",
            "--frames", "4", "--out", dir.File("i.png"));
        Assert.True(code == 0, err);
        var strip = ImageFile.Load(dir.File("i.png"), 1);
        Assert.Equal((3 * (6 * 34 + 2), 3 * (34 + 2)), (strip.Width, strip.Height)); // enlarged to >= 512 pixels
    }

    [Fact]
    public void ForwardReproducesThePyTorchGoldenOutputs()
    {
        using var dir = new TempDir();
        string g = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny");
        var (code, _, err) = Run("forward", "--weights", Path.Combine(g, "model.safetensors"), "--inputs", Path.Combine(g, "io.safetensors"),
            "--out", dir.File("o.safetensors"), "--grads", "--image-channels", "1", "--image-size", "16", "--n-channels", "32",
            "--ch-mults", "1,2", "--attn", "0,1", "--n-blocks", "1");
        Assert.True(code == 0, err);
        var ours = SafeTensorsFile.Read(dir.File("o.safetensors"));
        var io = SafeTensorsFile.Read(Path.Combine(g, "io.safetensors"));
        foreach (var (name, tol) in new[] { ("eps", 1e-5), ("L", 1e-5), ("grad.x", 1e-4), ("grad.final.weight", 1e-4), ("grad.image_proj.weight", 1e-4) })
        {
            var a = ours[name].AsFloats(); var b = io[name].AsFloats();
            double num = a.Zip(b, (x, y) => Math.Pow(x - y, 2)).Sum(), den = b.Sum(y => (double)y * y);
            Assert.True(Math.Sqrt(num / den) <= tol, $"{name}: relative L2 {Math.Sqrt(num / den):E3}");
        }
        Assert.Equal(3 + 128, ours.Entries.Count); // eps, L, grad.x and one gradient per parameter
    }

    [Fact]
    public void ParityCpuAgainstReferenceHolds()
    {
        var (code, output, err) = Run("parity", "--backend", "cpu", "--against", "cpu-reference", "--train-steps", "2", "--sample-steps", "2");
        Assert.True(code == 0, err + output);
        Assert.Contains("parity holds", output);
        Assert.Contains("grad.x", output);
    }

    [Fact]
    public void BenchPrintsJson()
    {
        var (code, output, err) = Run("bench", "--mode", "gemm", "--size", "64", "--steps", "3", "--json");
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.Equal("gemm", json.GetProperty("mode").GetString());
        Assert.True(json.GetProperty("gflops").GetDouble() > 0);
        (code, output, err) = Run("bench", "--preset", "tiny", "--mode", "train", "--batch", "2", "--steps", "1", "--warmup", "0", "--json");
        Assert.True(code == 0, err);
        json = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.Equal(2, json.GetProperty("batch").GetInt32());
        Assert.True(json.GetProperty("images_per_s").GetDouble() > 0);
        Assert.Contains("% of the FMA peak", output);
        // Every convolution and GEMM of a step scales with the batch, so doubling it doubles the counted FLOPs;
        // the efficiency is the rate over the measured peak.
        double flops2 = json.GetProperty("flops_per_step").GetDouble();
        (code, output, err) = Run("bench", "--preset", "tiny", "--mode", "train", "--batch", "4", "--steps", "1", "--warmup", "0", "--json");
        Assert.True(code == 0, err);
        json = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.True(flops2 > 0);
        Assert.Equal(2.0, json.GetProperty("flops_per_step").GetDouble() / flops2, 12);
        double gflops = json.GetProperty("gflops_per_s").GetDouble(), peak = json.GetProperty("fma_peak_gflops").GetDouble();
        Assert.Equal(json.GetProperty("flops_per_step").GetDouble() / json.GetProperty("median_s").GetDouble() / 1e9, gflops, 6);
        Assert.Equal(100 * gflops / peak, json.GetProperty("efficiency_percent").GetDouble(), 9);
    }

    [Fact]
    public void BenchProfilePrintsAnOpTableBeforeTheJson()
    {
        var (code, output, err) = Run("bench", "--preset", "tiny", "--mode", "train", "--batch", "2", "--steps", "2", "--warmup", "0",
            "--profile", "--profile-top", "4", "--json");
        Assert.True(code == 0, err);
        var lines = output.Trim().Split('\n');
        int header = Array.FindIndex(lines, l => l.Contains("profile of the 2 timed steps"));
        Assert.True(header > 0, output);
        // Column header, 4 slowest rows, the rest, all ops, between ops; then the JSON line last.
        Assert.Contains("GFLOP/s", lines[header + 1]);
        Assert.Contains("other rows", lines[header + 6]);
        Assert.Contains("all ops", lines[header + 7]);
        Assert.Contains("between ops", lines[header + 8]);
        JsonDocument.Parse(lines[^1]);
        // Which 4 ops are slowest depends on the host's load (the tiny preset's attention GEMMs take about as long as
        // its convolutions), so the op names are checked on the whole table: every row, the convolutions among them.
        (code, output, err) = Run("bench", "--preset", "tiny", "--mode", "train", "--batch", "2", "--steps", "1", "--warmup", "0",
            "--profile", "--profile-top", "1000");
        Assert.True(code == 0, err);
        lines = output.Trim().Split('\n');
        header = Array.FindIndex(lines, l => l.Contains("profile of the 1 timed steps"));
        Assert.True(header > 0, output);
        Assert.Contains(lines.Skip(header + 2), l => l.Contains("conv2d forward"));
        Assert.DoesNotContain(lines.Skip(header + 2), l => l.Contains("other rows"));
        (code, _, err) = Run("bench", "--preset", "tiny", "--profile", "--profile-top", "0");
        Assert.Equal(2, code);
        Assert.Contains("--profile-top must be positive", err);
    }

    [Fact]
    public void VersionIsOneLine()
    {
        var (code, output, err) = Run("--version");
        Assert.True(code == 0, err);
        Assert.Matches(@"^ddpm-tool \d+\.\d+\.\d+\S*$", output.Trim());
    }

    [Fact]
    public void AShortRunWithoutWarmupShortensTheDefaultWarmup()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run("train", "--preset", "tiny", "--steps", "3", "--batch", "2", "--max-images", "8", "--diffusion-steps", "20",
            "--samples", "1", "--sample-steps", "1", "--out", dir.Path, "--threads", "1");
        Assert.True(code == 0, err + output);
        Assert.Contains("warm-up 0, cosine", output);
        Assert.Contains("warm-up shortened to 0 steps for a 3-step run", output);
    }

    [Theory]
    [InlineData("20", null, 2, true)]
    [InlineData("999", null, 99, true)]
    [InlineData("1000", null, 100, false)]
    [InlineData("20", "5", 5, false)]
    [InlineData("20", "0", 0, false)]
    public void TheDefaultWarmupIsATenthOfAShortRun(string steps, string? warmup, int expected, bool noted)
    {
        var args = new List<string> { "train", "--preset", "tiny", "--steps", steps, "--max-images", "8" };
        if (warmup is not null) args.AddRange(["--warmup", warmup]);
        var plan = Plan(args.ToArray());
        Assert.Equal(expected, plan.Training.WarmupSteps);
        Assert.Equal(noted, plan.Notes.Any(n => n.StartsWith("warm-up shortened", StringComparison.Ordinal)));
    }

    [Theory]
    [InlineData(new string[0], true)]
    [InlineData(new[] { "--no-classes" }, true)]
    [InlineData(new[] { "--attn-norm", "0" }, false)]
    [InlineData(new[] { "--attn-norm", "1" }, true)]
    [InlineData(new[] { "--labml-exact" }, false)]
    [InlineData(new[] { "--preset", "labml", "--batch", "1" }, false)]
    public void NewRunsNormaliseTheirAttentionUnlessTheyTrainLabmlsModel(string[] extra, bool expected)
    {
        var args = new List<string> { "train", "--steps", "20", "--max-images", "8" };
        if (!extra.Contains("--preset")) args.AddRange(["--preset", "tiny"]);
        args.AddRange(extra);
        Assert.Equal(expected, Plan(args.ToArray()).Model.AttnNorm);
        // The presets themselves stay labml's model (bench, parity and forward build them as they are).
        Assert.False(Presets.Get("tiny").Model.AttnNorm);
    }

    /// <summary>The plan <c>train</c> resolves from <paramref name="args"/> (options, data and model), without training.</summary>
    internal static Ddpm.Tool.Commands.TrainPlan Plan(params string[] args)
    {
        var options = (Ddpm.Tool.Commands.TrainOptions)((CommandLine.Parsed<object>)new CommandLine.Parser(s => s.CaseInsensitiveEnumValues = true)
            .ParseArguments(args, typeof(Ddpm.Tool.Commands.TrainOptions))).Value;
        return Ddpm.Tool.Commands.TrainPlan.Resolve(options);
    }

    [Fact]
    public void LossPlotTicksAreRoundLossValues()
    {
        string Labels(double lo, double hi) => string.Join(" ", LossPlot.LogTicks(Math.Log10(lo), Math.Log10(hi)).Select(t => t.Label));
        Assert.Equal("0.3 0.4 0.5 0.6 0.7 0.8", Labels(0.25, 0.85));
        Assert.Equal("0.01 0.02 0.05 0.1 0.2 0.5 1", Labels(0.006, 1.2));
        Assert.Equal("0.24 0.25 0.26 0.27 0.28 0.29", Labels(0.235, 0.295)); // no 1-2-5 value inside: round values of the loss
    }

    [Fact]
    public void InfoDescribesCheckpointAndBackends()
    {
        var (code, output, err) = Run("info", "--checkpoint", _run.Checkpoint);
        Assert.True(code == 0, err);
        Assert.Contains("training checkpoint", output);
        Assert.Contains("step      4", output);
        Assert.Contains("cuda", output);
        Assert.Contains("cpu-reference", output);
    }

    // ---- bad input: one clear line, the right exit code, nothing lost ----------------------------------

    [Theory]
    [InlineData(new[] { "train", "--bogus" }, "unknown option 'bogus'")]
    [InlineData(new[] { "train", "--steps", "abc" }, "bad value for --steps")]
    [InlineData(new[] { "frobnicate" }, "unknown verb 'frobnicate'")]
    [InlineData(new[] { "eval" }, "give --checkpoint (to sample) or --images")]
    [InlineData(new[] { "train", "--steps", "0" }, "--steps must be between 1 and")]
    [InlineData(new[] { "train", "--preset", "huge" }, "--preset 'huge' is not a preset; known: tiny, small")]
    [InlineData(new[] { "train", "--lr-schedule", "wavy" }, "bad value for --lr-schedule")]
    [InlineData(new[] { "train", "--prediction", "x0" }, "bad value for --prediction")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--sampler", "euler" }, "--sampler is ddim, dpm++ or ddpm, not 'euler'")]
    [InlineData(new[] { "train", "--variance", "medium" }, "bad value for --variance")]
    [InlineData(new[] { "train", "--prediction", "v", "--labml-exact" }, "--labml-exact trains labml's eps prediction")]
    [InlineData(new[] { "train", "--warmup", "-1" }, "--warmup must be >= 0")]
    [InlineData(new[] { "sample", "--checkpoint", "c", "--scale", "0" }, "--scale must be between 1 and")]
    [InlineData(new[] { "train", "--steps", "50", "--warmup", "80" }, "--warmup 80: the warm-up must be shorter than the run (50 steps)")]
    [InlineData(new[] { "train", "--backend", "tpu" }, "unknown backend 'tpu'")]
    [InlineData(new[] { "train", "--ch-mults", "1,x" }, "--ch-mults takes comma-separated integers")]
    [InlineData(new[] { "train", "--image-size", "30" }, "--image-size 30 must be divisible by 4")]
    [InlineData(new[] { "bench", "--mode", "fly" }, "bad value for --mode")]
    [InlineData(new[] { "bench", "--mode", "allreduce", "--distributed", "none" }, "start it with an MPI launcher")]
    [InlineData(new[] { "bench", "--mode", "gemm", "--distributed", "mpi" }, "--distributed mpi applies to --mode train and allreduce")]
    public void BadUsageIsOneLineAndExitCode2(string[] args, string message) => AssertBadUsage(args, message);

    /// <summary>The tool refuses <paramref name="args"/> with exit code 2 and one line containing <paramref name="message"/>.</summary>
    internal static void AssertBadUsage(string[] args, string message)
    {
        var (code, output, err) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains(message, err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.DoesNotContain("   at ", err + output);
    }

    [Fact]
    public void MissingAndCorruptFilesNameThePath()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run("sample", "--checkpoint", dir.File("nope.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("nope.safetensors", err);

        File.WriteAllBytes(dir.File("bad.safetensors"), [1, 2, 3]);
        (code, _, err) = Run("sample", "--checkpoint", dir.File("bad.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("bad.safetensors", err);
        Assert.DoesNotContain("   at ", err);

        Directory.CreateDirectory(dir.File("empty"));
        (code, _, err) = Run("train", "--data", dir.File("empty"), "--preset", "tiny", "--steps", "1", "--out", dir.File("o"));
        Assert.Equal(1, code);
        Assert.Contains("empty", err);

        (code, _, err) = Run("train", "--data", dir.File("missing.gz"), "--preset", "tiny", "--steps", "1", "--out", dir.File("o"));
        Assert.Equal(1, code);
        Assert.Contains("missing.gz", err);
    }

    [Fact]
    public void ACheckpointOfAnotherModelIsRejectedAndKept()
    {
        using var dir = new TempDir();
        string g = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny");
        string weights = dir.File("w.safetensors");
        File.Copy(Path.Combine(g, "model.safetensors"), weights);
        // A weights file without a config, read with options that describe another UNet.
        var (code, _, err) = Run("forward", "--weights", weights, "--inputs", Path.Combine(g, "io.safetensors"), "--preset", "tiny",
            "--image-size", "16", "--out", dir.File("o.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("w.safetensors", err);
        Assert.Contains("image_proj.weight", err);
        Assert.False(File.Exists(dir.File("o.safetensors")));
        string copy = dir.File("ck.safetensors");
        File.Copy(_run.Checkpoint, copy);
        byte[] before = File.ReadAllBytes(copy);
        // Resuming on data of another channel count (a CIFAR-10 batch: 3 channels) is refused before anything is written.
        string cifar = dir.File("cifar");
        Directory.CreateDirectory(cifar);
        File.WriteAllBytes(Path.Combine(cifar, "data_batch_1.bin"), new byte[8 * 3073]);
        (code, _, err) = Run("train", "--resume", copy, "--data", cifar, "--steps", "8", "--out", dir.Path);
        Assert.Equal(1, code);
        Assert.Contains("3-channel", err);
        Assert.Equal(before, File.ReadAllBytes(copy));
    }
}
