using System.Globalization;
using System.Text.Json.Nodes;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Ddpm.Tool;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// Run folders as a user meets them: a second train into a folder keeps the first run, --resume continues it
/// (with no path, also after a kill), --keep and --overwrite, config.json in and out, and the library's run
/// against the tool's.
/// </summary>
public sealed class RunFolderToolTests
{
    private static string[] Tiny(string outDir, params string[] extra) =>
    [
        "train", "--preset", "tiny", "--batch", "4", "--max-images", "32", "--diffusion-steps", "20", "--samples", "1",
        "--sample-steps", "1", "--sample-every", "0", "--log-every", "1", "--threads", "1", "--out", outDir, .. extra,
    ];

    private static string[] Losses(string folder) =>
        File.ReadAllLines(Path.Combine(folder, RunFolder.LossName)).Skip(1).Select(l => l.Split(',')[1]).ToArray();

    /// <summary>The bundled training images with their labels, as the tool opens them for the main job.</summary>
    private static LabelledDataset BundledImagesWithLabels()
    {
        string fashion = Path.Combine(TestFiles.RepoRoot, "data", "fashion-mnist");
        var images = IdxDataset.Load(Path.Combine(fashion, "train-images-idx3-ubyte.gz"));
        var labels = IdxLabels.Load(Path.Combine(fashion, "train-labels-idx1-ubyte.gz"), 10);
        return new LabelledDataset(images, labels.Values.ToArray().Select(v => (int)v).ToArray(), 10, KnownClassNames.FashionMnist);
    }

    private static long[] Steps(string folder) => RunFolder.Checkpoints(folder).Select(c => c.Step).ToArray();

    /// <summary>Every tensor of two safetensors files, bit for bit.</summary>
    private static void SameTensors(string a, string b)
    {
        var fa = SafeTensorsFile.Read(a);
        var fb = SafeTensorsFile.Read(b);
        Assert.Equal(fa.Entries.Select(e => e.Name), fb.Entries.Select(e => e.Name));
        foreach (var e in fa.Entries) Assert.True(e.AsFloats().AsSpan().SequenceEqual(fb[e.Name].AsFloats()), $"{e.Name} differs");
    }

    [Fact]
    public void ASecondTrainKeepsTheFirstRunAndResumeContinuesIt()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run(Tiny(dir.Path, "--steps", "4", "--checkpoint-every", "1", "--keep", "2"));
        Assert.True(code == 0, err);
        // Step-numbered checkpoints, the last two kept; the configuration beside them.
        Assert.Equal([3, 4], Steps(dir.Path));
        Assert.True(File.Exists(dir.File(RunFolder.ConfigName)));
        var before = Directory.GetFiles(dir.Path).ToDictionary(f => f, File.ReadAllBytes);

        // The natural second command: refused with one line, nothing changed.
        (code, _, err) = Run(Tiny(dir.Path, "--steps", "4"));
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains($"--out {dir.Path} holds a run (checkpoint-0000004.safetensors and 1 older, model.safetensors, config.json, loss.csv)", err);
        Assert.Contains("--resume", err);
        Assert.Contains("--overwrite", err);
        foreach (var (f, bytes) in before) Assert.Equal(bytes, File.ReadAllBytes(f));

        // --resume with no path continues the run in --out; --steps extends it.
        (code, var output, err) = Run(Tiny(dir.Path, "--resume", "--steps", "6", "--keep", "2"));
        Assert.True(code == 0, err);
        Assert.Contains("resuming at 4", output);
        // The resumed run keeps its checkpoint cadence (every step) and --keep 2.
        Assert.Equal([5, 6], Steps(dir.Path));
        Assert.Equal(6, Losses(dir.Path).Length);

        // --overwrite replaces it.
        (code, _, err) = Run(Tiny(dir.Path, "--steps", "2", "--overwrite"));
        Assert.True(code == 0, err);
        Assert.Equal([2], Steps(dir.Path));
        Assert.Equal(2, Losses(dir.Path).Length);
        Assert.Equal(2, Checkpoint.Load(RunFolder.Latest(dir.Path)!).Step);
    }

    [Fact]
    public void AStoppedRunContinuesWithResumeAloneToTheLossesOfAnUninterruptedRun()
    {
        using var whole = new TempDir();
        Assert.Equal(0, Run(Tiny(whole.Path, "--steps", "6")).Code);
        using var split = new TempDir();
        using var cts = new CancellationTokenSource();
        int code = Program.Run(Tiny(split.Path, "--steps", "6"), new ToolConsole(new ReliabilityToolTests.StopOn("step       3/", cts), new StringWriter(), interactive: false) { Cancel = cts.Token });
        Assert.Equal(ExitCodes.Interrupted, code);
        Assert.Equal([3], Steps(split.Path));
        // The stopped run's plan (6 steps, its schedule) is in its checkpoint: --resume alone finishes it.
        var (rc, _, err) = Run("train", "--resume", "--out", split.Path, "--threads", "1", "--log-every", "1");
        Assert.True(rc == 0, err);
        Assert.Equal(Losses(whole.Path), Losses(split.Path));
        SameTensors(RunFolder.Latest(whole.Path)!, RunFolder.Latest(split.Path)!);
    }

    [Fact]
    public void AResumeWithoutACheckpointOrOfAnotherModelIsOneLine()
    {
        using var dir = new TempDir();
        var (code, _, err) = Run(Tiny(dir.Path, "--resume", "--steps", "2"));
        Assert.Equal(1, code);
        Assert.Contains("holds no checkpoint to resume", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Equal(0, Run(Tiny(dir.Path, "--steps", "2")).Code);
        AssertBadUsage(Tiny(dir.Path, "--resume", "--steps", "3", "--lr", "0.5"), "--lr 0.5: the checkpoint");

        // A run stopped before its first checkpoint has nothing to resume: the line says how to start it again.
        using var early = new TempDir();
        File.Copy(dir.File(RunFolder.ConfigName), early.File(RunFolder.ConfigName));
        File.WriteAllText(early.File(RunFolder.LossName), "step,loss,grad_norm,lr,seconds\n");
        (code, _, err) = Run(Tiny(early.Path, "--resume"));
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains($"--resume: {early.Path} holds no checkpoint to resume (checkpoint-NNNNNNN.safetensors): its run (config.json, loss.csv) stopped before its first checkpoint; start it again with --overwrite.", err);
        Assert.Equal(0, Run(Tiny(early.Path, "--steps", "2", "--overwrite")).Code);
    }

    [Fact]
    public void AnotherFoldersCheckpointIsNotResumedIntoAFolderThatHoldsARun()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        Assert.Equal(0, Run(Tiny(a.Path, "--steps", "2")).Code);
        Assert.Equal(0, Run(Tiny(b.Path, "--steps", "2", "--seed", "5")).Code);
        var before = Directory.GetFiles(b.Path).ToDictionary(f => f, File.ReadAllBytes);
        string other = RunFolder.Latest(a.Path)!;

        var (code, _, err) = Run(Tiny(b.Path, "--resume", other, "--steps", "3"));
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains($"--out {b.Path} holds another run (checkpoint-0000002.safetensors, model.safetensors, config.json, loss.csv) than {other}'s", err);
        Assert.Contains("give another --out", err);
        foreach (var (f, bytes) in before) Assert.Equal(bytes, File.ReadAllBytes(f));

        // One of the folder's own checkpoints continues its run; an empty folder takes the other's continuation.
        (code, _, err) = Run(Tiny(b.Path, "--resume", RunFolder.Latest(b.Path)!, "--steps", "3"));
        Assert.True(code == 0, err);
        Assert.Equal(["1", "2", "3"], File.ReadAllLines(b.File(RunFolder.LossName)).Skip(1).Select(l => l.Split(',')[0]));
        using var c = new TempDir();
        (code, _, err) = Run(Tiny(c.Path, "--resume", other, "--steps", "3"));
        Assert.True(code == 0, err);
        Assert.Equal([3], Steps(c.Path));
        Assert.Equal(["3"], File.ReadAllLines(c.File(RunFolder.LossName)).Skip(1).Select(l => l.Split(',')[0]));
    }

    [Fact]
    public void ConfigJsonTrainsTheSameRunAndOptionsOverrideIt()
    {
        using var a = new TempDir();
        Assert.Equal(0, Run(Tiny(a.Path, "--steps", "2", "--lr", "5e-4", "--seed", "3", "--no-classes")).Code);
        var config = JsonNode.Parse(File.ReadAllText(a.File(RunFolder.ConfigName)))!;
        Assert.Equal(TrainingRecipe.Sections, config.AsObject().Select(kv => kv.Key));
        // The same values the checkpoint's metadata holds.
        var meta = SafeTensorsFile.Read(RunFolder.Latest(a.Path)!).Metadata;
        foreach (var section in new[] { "model", "diffusion", "training", "run" })
            Assert.True(JsonNode.DeepEquals(JsonNode.Parse(meta[section]), config[section]), section);
        Assert.Equal(5e-4, config["training"]!["lr"]!.GetValue<double>(), 6);

        // The file alone trains the same run, bit for bit.
        using var b = new TempDir();
        var (code, _, err) = Run("train", "--config", a.File(RunFolder.ConfigName), "--out", b.Path, "--threads", "1");
        Assert.True(code == 0, err);
        Assert.Equal(Losses(a.Path), Losses(b.Path));
        SameTensors(RunFolder.Latest(a.Path)!, RunFolder.Latest(b.Path)!);

        // An option overrides the file's value; the rest stays.
        using var c = new TempDir();
        (code, _, err) = Run("train", "--config", a.File(RunFolder.ConfigName), "--lr", "1e-4", "--out", c.Path, "--threads", "1");
        Assert.True(code == 0, err);
        var cc = Checkpoint.Load(RunFolder.Latest(c.Path)!);
        Assert.Equal(1e-4f, cc.Training!.LearningRate);
        Assert.Equal(3ul, cc.Training.Seed);
        Assert.Equal(2, cc.Step);
    }

    [Theory]
    [InlineData("{\"training\": {\"lrr\": 1}}", "unknown key \"training.lrr\"")]
    [InlineData("{\"trainig\": {}}", "unknown section \"trainig\"")]
    [InlineData("{\"training\": {\"lr\": -1}}", "\"lr\" -1 is not a positive learning rate")]
    [InlineData("{\"model\": {\"n_channels\": \"wide\"}}", "\"n_channels\" \"wide\" is not a valid value")]
    [InlineData("[1, 2]", "a configuration is a JSON object")]
    [InlineData("{", "not JSON")]
    [InlineData("{\"training\": {\"lr\": 1e-3, \"lr\": 2e-3}}", "Duplicate property 'lr'")]
    [InlineData("{\"model\": {\"IsConditional\": true}}", "unknown key \"model.IsConditional\"")]
    [InlineData("{\"training\": {\"NoiseKey\": 5}}", "unknown key \"training.NoiseKey\"")]
    [InlineData("{\"training\": {\"batch_size\": 0}}", "\"batch_size\" 0 is not between 1 and 65536")]
    [InlineData("{\"training\": {\"decay_steps\": -1}}", "\"decay_steps\" -1 is not between 0")]
    [InlineData("{\"training\": {\"lr_schedule\": \"Cosine\", \"decay_steps\": 3}, \"run\": {\"preset\": \"tiny\", \"steps\": 200}}",
        "\"decay_steps\" 3 does not end the cosine decay after the warm-up of 20 steps")]
    [InlineData("{\"run\": {\"preset\": \"ti\\nny\"}}", "\"preset\" 'ti\\u000Any' is not a preset")]
    [InlineData("{\"trai\\u0000ning\": {}}", "unknown section \"trai\\u0000ning\"")]
    [InlineData("{\"run\": null}", "\"run\" is not an object of keys")]
    [InlineData("{\"run\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", "maximum configured depth")]
    public void ABadConfigFileIsOneLineNamingTheFileAndTheKey(string json, string message)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.json"), json);
        // The file's own preset and steps are not overridden.
        AssertBadConfig(dir, message, ["--max-images", "8", .. json.Contains("\"run\": {", StringComparison.Ordinal) ? (string[])[] : ["--preset", "tiny", "--steps", "1"]]);
    }

    /// <summary>A config file that is not UTF-8 text, too large, or has a byte-order mark (read as UTF-8).</summary>
    [Fact]
    public void AConfigFileIsReadAsBoundedUtf8()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("c.json"), [.. "{\"run\": {\"preset\": \"t"u8, 0xFF, .. "iny\"}}"u8]);
        AssertBadConfig(dir, "at byte 21: not UTF-8 text", "--steps", "1");
        File.WriteAllText(dir.File("c.json"), "{\"run\": {\"preset\": \"tiny\"}}" + new string(' ', TrainingRecipe.MaxFileBytes));
        AssertBadConfig(dir, $"more than the {TrainingRecipe.MaxFileBytes} bytes a configuration file may hold", "--steps", "1");
        File.WriteAllBytes(dir.File("c.json"), [0xEF, 0xBB, 0xBF, .. "{\"training\": {\"lr\": 2e-3}}"u8]);
        Assert.Equal(2e-3f, Plan("train", "--config", dir.File("c.json")).Training.LearningRate);
    }

    /// <summary>train --config c.json is refused with exit 1 and one line naming the file and what is wrong; nothing is written.</summary>
    private static void AssertBadConfig(TempDir dir, string message, params string[] more)
    {
        var (code, output, err) = Run(["train", "--config", dir.File("c.json"), "--out", dir.File("o"), "--threads", "1", .. more]);
        Assert.True(code == 1, $"exit {code}: {err}{output}");
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains(dir.File("c.json"), err);
        // The file is named once.
        Assert.Equal(err.IndexOf(dir.File("c.json"), StringComparison.Ordinal), err.LastIndexOf(dir.File("c.json"), StringComparison.Ordinal));
        Assert.Contains(message, err);
        Assert.False(Directory.Exists(dir.File("o")));
    }

    [Fact]
    public void AHandWrittenConfigSetsOnlyItsKeys()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.json"), "{\"run\": {\"preset\": \"tiny\", \"steps\": 20, \"max_images\": 8}, \"training\": {\"lr\": 0.002}}");
        var plan = Plan("train", "--config", dir.File("c.json"));
        Assert.Equal(2e-3f, plan.Training.LearningRate);
        // The rest is the recipe's: the tiny preset with the attention norm, the default batch, a shortened warm-up.
        Assert.Equal(16, plan.Model.NChannels);
        Assert.True(plan.Model.AttnNorm);
        Assert.Equal(8, plan.Training.BatchSize);
        Assert.Equal(2, plan.Training.WarmupSteps);
        Assert.Equal(0.995f, plan.Training.EmaDecay);
    }

    [Fact]
    public void GradAccumTrainsTheStepsOfOneBatch()
    {
        using var one = new TempDir();
        Assert.Equal(0, Run(Tiny(one.Path, "--steps", "3", "--no-classes")).Code);
        using var four = new TempDir();
        var (code, output, err) = Run(Tiny(four.Path, "--steps", "3", "--no-classes", "--grad-accum", "4"));
        Assert.True(code == 0, err);
        Assert.Contains("each as 4 micro-batches of 1", output);
        var a = Losses(one.Path).Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        var b = Losses(four.Path).Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5 * Math.Abs(a[i]), $"step {i + 1}: {a[i]} vs {b[i]}");
        AssertBadUsage(Tiny(four.Path + "-x", "--steps", "3", "--grad-accum", "3"), "--grad-accum 3 does not divide the --batch 4 into equal micro-batches");
    }

    [Fact]
    public void TheLibraryTrainsBitForBitWhatTheToolTrains()
    {
        using var tool = new TempDir();
        var (code, _, err) = Run(Tiny(tool.Path, "--steps", "3", "--lr", "2e-3"));
        Assert.True(code == 0, err);

        // The same recipe through the library alone: the bundled images with their labels, a CPU backend of one thread.
        var data = BundledImagesWithLabels();
        var recipe = new TrainingRecipe()
            .Set("run", "preset", "tiny").Set("run", "steps", 3L).Set("run", "max_images", 32).Set("run", "samples", 1)
            .Set("run", "sample_steps", 1).Set("run", "sample_every", 0).Set("run", "eval_every", Ddpm.Tool.Commands.TrainPlan.MainJobEvalEvery)
            .Set("diffusion", "n_steps", 20).Set("training", "batch_size", 4).Set("training", "lr", 2e-3f);
        using var library = new TempDir();
        var plan = Recipes.Plan(recipe, data);
        using (var folder = RunFolder.Open(library.Path, resuming: false, overwrite: false))
        using (var be = new CpuBackend(1))
        using (var run = new TrainingRun(plan, be, DataParallel.None, folder))
            Assert.Equal(RunStatus.Finished, run.Run().Status);

        Assert.Equal(Losses(tool.Path), Losses(library.Path));
        SameTensors(RunFolder.Latest(tool.Path)!, RunFolder.Latest(library.Path)!);
        SameTensors(tool.File(RunFolder.ModelName), library.File(RunFolder.ModelName));
        Assert.Equal(File.ReadAllText(tool.File(RunFolder.ConfigName)), File.ReadAllText(library.File(RunFolder.ConfigName)));
    }

    /// <summary>
    /// train's default recipe is compact for 2,000 steps with DPM-Solver++ grids; the small preset is that model
    /// with two blocks per level, and the bundled model is small's recipe (architecture and diffusion).
    /// </summary>
    [Fact]
    public void TrainsDefaultIsCompactAndTheBundledModelIsSmallsRecipe()
    {
        var main = Recipes.Resolve(new TrainingRecipe());
        Assert.Equal(("compact", 2000L, SamplerKind.DpmSolver, 10), (main.Run.Preset, main.Run.Steps, main.Run.SampleSampler, main.Run.SampleSteps));
        Assert.Equal(1, main.Model.NBlocks);

        var small = Recipes.Resolve(new TrainingRecipe().Set("run", "preset", "small"));
        Assert.Equal(2, small.Model.NBlocks);
        Assert.Equal((main.Model with { NBlocks = 2 }).ToString(), small.Model.ToString());

        var bundled = Checkpoint.Load(Path.Combine(TestFiles.RepoRoot, "Ddpm.Tool", "models", "fashion-ddpm.safetensors"));
        var m = bundled.Model!;
        Assert.Equal((m.NChannels, m.NBlocks, m.NGroups, m.AttnNorm, m.Dropout),
            (small.Model.NChannels, small.Model.NBlocks, small.Model.NGroups, small.Model.AttnNorm, small.Model.Dropout));
        Assert.Equal(m.ChMults, small.Model.ChMults);
        Assert.Equal(m.IsAttn, small.Model.IsAttn);
        Assert.Equal(bundled.Diffusion!, small.Diffusion);
    }

    /// <summary>
    /// The grid a run writes is its EMA weights sampled by the sampler its settings name (one row per class at
    /// guidance 3, the run's seed + 1000): sampled again here from model.safetensors, pixel for pixel, and the two
    /// samplers' grids differ, so a setting the run ignored would fail one of them.
    /// </summary>
    [Fact]
    public void TheSampleGridIsDrawnByTheSamplerTheRunNames()
    {
        var data = BundledImagesWithLabels();
        var grids = new Dictionary<SamplerKind, byte[]>();
        foreach (var kind in new[] { SamplerKind.DpmSolver, SamplerKind.Ddim })
        {
            var recipe = new TrainingRecipe()
                .Set("run", "preset", "tiny").Set("run", "steps", 2L).Set("run", "max_images", 32).Set("run", "samples", 1)
                .Set("run", "sample_sampler", kind).Set("run", "sample_steps", 3).Set("run", "sample_every", 0).Set("run", "eval_every", 0)
                .Set("diffusion", "n_steps", 20).Set("training", "batch_size", 4);
            using var dir = new TempDir();
            var plan = Recipes.Plan(recipe, data);
            Assert.Equal(kind, plan.Run.SampleSampler);
            using (var folder = RunFolder.Open(dir.Path, resuming: false, overwrite: false))
            using (var be = new CpuBackend(1))
            using (var run = new TrainingRun(plan, be, DataParallel.None, folder) { SampleScale = 1 })
                Assert.Equal(RunStatus.Finished, run.Run().Status);

            using var backend = new CpuBackend(1);
            var checkpoint = Checkpoint.Load(dir.File(RunFolder.ModelName));
            using var unet = new UNet(backend, checkpoint.Model!, new PhiloxGenerator(0));
            checkpoint.LoadWeightsInto(unet);
            unet.Eval();
            var condition = ClassCondition.Rows(10, 1, ClassCondition.DefaultGuidance);
            var x = new Sampler(new DenoiseDiffusion(unet, checkpoint.Diffusion!), condition).Sample(10, kind, 3, 0f, plan.Training.Seed + 1000);
            string expected = dir.File("expected.png");
            ImageGrid.SavePng(expected, x.ToArray(), 10, 1, 32, 32, 1, checkpoint.Diffusion!.DataRange, scale: 1);
            var written = ImageFile.Load(dir.File("samples.png"), 1);
            var drawn = ImageFile.Load(expected, 1);
            Assert.Equal((drawn.Width, drawn.Height), (written.Width, written.Height));
            Assert.Equal(drawn.Pixels, written.Pixels);
            grids[kind] = written.Pixels;
        }
        Assert.NotEqual(grids[SamplerKind.DpmSolver], grids[SamplerKind.Ddim]);
    }

    /// <summary>A run whose length is not a multiple of --eval-every measures its final weights too.</summary>
    [Fact]
    public void EvalEveryAlsoMeasuresTheLastStep()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run(Tiny(dir.Path, "--steps", "3", "--eval-every", "2", "--eval-samples", "4"));
        Assert.True(code == 0, err + output);
        Assert.Equal(["2", "3"], File.ReadAllLines(dir.File(RunFolder.MetricsName)).Skip(1).Select(r => r.Split(',')[0]));
    }

    [Fact]
    public void EvalEveryMeasuresWhatEvalMeasuresAndKeepsTheBest()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run(Tiny(dir.Path, "--steps", "4", "--eval-every", "2", "--eval-samples", "6", "--seed", "1"));
        Assert.True(code == 0, err + output);
        var rows = File.ReadAllLines(dir.File(RunFolder.MetricsName));
        Assert.Equal(MetricsLog.Header, rows[0]);
        Assert.Equal(["2", "4"], rows.Skip(1).Select(r => r.Split(',')[0]));
        Assert.Contains("step 2: FID ", output);
        Assert.True(File.Exists(dir.File("fid.png")));
        // The measurement is eval's: the same seed (the run's + 2000), DPM-Solver++ 10 steps, class-balanced at
        // guidance 1, in chunks of 125, against the bundled test set with the bundled classifier. best.safetensors
        // holds the EMA weights of the lowest FID, with the configs to sample them.
        var fids = rows.Skip(1).Select(r => double.Parse(r.Split(',')[1], CultureInfo.InvariantCulture)).ToArray();
        (code, output, err) = Run("eval", "--checkpoint", dir.File(RunFolder.BestName), "--n", "6", "--batch", "125", "--sampler", "dpm++",
            "--steps", "10", "--guidance", "1", "--seed", "2001", "--threads", "1", "--json");
        Assert.True(code == 0, err + output);
        double evalFid = JsonNode.Parse(output.Trim().Split('\n')[^1])!["fid"]!.GetValue<double>();
        Assert.Equal(fids.Min(), evalFid, 9);
    }

    [Fact]
    public void ABundledModelSamplesWithoutACheckpoint()
    {
        // The tool finds its bundled model beside its binary (here: the test's output folder), then in a checkout's
        // Ddpm.Tool/models. The copy beside the binary is set aside for the test and put back after; where the
        // checkout carries a model too, the message for a tool without one cannot be seen from here.
        string bundled = Path.Combine(AppContext.BaseDirectory, "models", BundledFiles.DdpmModelFile);
        string aside = bundled + ".aside";
        bool carried = File.Exists(bundled);
        if (carried) File.Move(bundled, aside, overwrite: true);
        try
        {
            SamplesFromABundle(bundled);
        }
        finally
        {
            if (carried) File.Move(aside, bundled, overwrite: true);
        }
    }

    private void SamplesFromABundle(string bundled)
    {
        int code;
        string err;
        if (BundledFiles.TryModel(BundledFiles.DdpmModelFile) is null)
        {
            (code, _, err) = Run("sample", "--n", "1", "--steps", "1", "--out", Path.Combine(Path.GetTempPath(), "never.png"));
            Assert.Equal(1, code);
            Assert.Contains("carries no bundled model", err);
            Assert.Single(err.Trim().Split('\n'));
        }

        using var dir = new TempDir();
        (code, var output, err) = Run(Tiny(dir.Path, "--steps", "2", "--ema", "0.9", "--bundle", dir.File("bundle.safetensors")));
        Assert.True(code == 0, err);
        var file = SafeTensorsFile.Read(dir.File("bundle.safetensors"));
        Assert.All(file.Entries, e => Assert.Equal(SafeTensorsDType.F16, e.DType));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Contains("EMA weights after 2 steps", file.Metadata["description"]);
        // fp16 on disk, float32 in memory: the EMA weights of model.safetensors rounded to half, and nothing else.
        var full = SafeTensorsFile.Read(dir.File(RunFolder.ModelName));
        foreach (var e in full.Entries)
            Assert.Equal(e.AsFloats().Select(v => (float)(Half)v), file[e.Name].AsFloats());
        try
        {
            File.Copy(dir.File("bundle.safetensors"), bundled);
            (code, output, err) = Run("sample", "--class", "Sneaker", "--n", "2", "--steps", "2", "--out", dir.File("s.png"), "--threads", "1");
            Assert.True(code == 0, err);
            Assert.Contains($"from {bundled}", output);
            Assert.Contains("of class 7 (Sneaker)", output);
            (code, output, err) = Run("info");
            Assert.True(code == 0, err);
            Assert.Contains($"bundled model: {bundled}: class-conditional", output);
        }
        finally
        {
            File.Delete(bundled);
        }
    }
}
