using System.Text.Json;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>Class-conditional training on the bundled labels, sampling by class with guidance, info and eval --class-accuracy.</summary>
public sealed class ClassToolTests : IClassFixture<ClassToolTests.ConditionalRun>
{
    private readonly ConditionalRun _run;

    public ClassToolTests(ConditionalRun run) => _run = run;

    /// <summary>A two-step run on the bundled set, which has labels, so the model is conditional by default (T = 20).</summary>
    public sealed class ConditionalRun() : ToolRun("train", "--preset", "tiny", "--steps", "2", "--batch", "4", "--max-images", "32",
        "--diffusion-steps", "20", "--samples", "3", "--sample-steps", "2", "--warmup", "0", "--threads", "2");

    private string[] Sample(string outFile, params string[] extra) =>
        ["sample", "--checkpoint", _run.Checkpoint, "--steps", "2", "--scale", "1", "--threads", "2", "--out", outFile, .. extra];

    [Fact]
    public void TrainingOnTheBundledSetIsConditionalOnItsTenClasses()
    {
        Assert.True(_run.Code == 0, _run.Err + _run.Out);
        Assert.Contains("class-conditional (10 classes, label drop 10 %)", _run.Out);
        var ckpt = Checkpoint.Load(_run.Checkpoint);
        Assert.Equal(10, ckpt.Model!.NumClasses);
        Assert.Equal(KnownClassNames.FashionMnist, ckpt.Model.ClassNames);
        // The exported weights keep labml's names and add the class embedding [4 n_channels, K + 1].
        var weights = SafeTensorsFile.Read(_run.Dir.File("model.safetensors"));
        Assert.Contains(weights.Entries, e => e.Name == "image_proj.weight");
        Assert.Equal(new long[] { 64, 11 }, weights.Entries.Single(e => e.Name == "class_emb.weight").Shape.Select(d => (long)d));
        // The run's grid: one row per class, --samples 3 images each, 32-pixel images with 2-pixel gaps.
        var grid = ImageFile.Load(_run.Dir.File("samples.png"), 1);
        int width = 3 * 34 + 2, scale = (512 + width - 1) / width;
        Assert.Equal((scale * width, scale * (10 * 34 + 2)), (grid.Width, grid.Height));
    }

    [Fact]
    public void ASampleByNameEqualsTheSampleByIndexAndAllDrawsOneRowPerClass()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run(Sample(dir.File("trouser.png"), "--n", "2", "--class", "tROUSER"));
        Assert.True(code == 0, err + output);
        Assert.Contains("of class 1 (Trouser), guidance 3", output);
        (code, output, err) = Run(Sample(dir.File("one.png"), "--n", "2", "--class", "1"));
        Assert.True(code == 0, err + output);
        Assert.Equal(File.ReadAllBytes(dir.File("trouser.png")), File.ReadAllBytes(dir.File("one.png")));
        (code, output, err) = Run(Sample(dir.File("w0.png"), "--n", "2", "--class", "1", "--guidance", "0"));
        Assert.True(code == 0, err + output);
        (code, output, err) = Run(Sample(dir.File("uncond.png"), "--n", "2"));
        Assert.True(code == 0, err + output);
        Assert.Contains("from the unconditional branch", output);
        // Guidance 0 is the unconditional model; guidance 3 is not.
        Assert.Equal(File.ReadAllBytes(dir.File("uncond.png")), File.ReadAllBytes(dir.File("w0.png")));
        Assert.NotEqual(File.ReadAllBytes(dir.File("uncond.png")), File.ReadAllBytes(dir.File("one.png")));

        (code, output, err) = Run(Sample(dir.File("all.png"), "--n", "2", "--class", "all", "--sampler", "ddpm"));
        Assert.True(code == 0, err + output);
        Assert.Contains("one row per class", output);
        var grid = ImageFile.Load(dir.File("all.png"), 1);
        Assert.Equal((2 * 34 + 2, 10 * 34 + 2), (grid.Width, grid.Height));
    }

    [Theory]
    [InlineData("Hat", "--class 'Hat' is not a class of")]
    [InlineData("10", "--class '10' is not a class of")]
    public void AnUnknownClassIsRefusedListingTheClasses(string name, string message)
    {
        using var dir = new TempDir();
        AssertBadUsage(Sample(dir.File("x.png"), "--class", name), message);
        var (_, _, err) = Run(Sample(dir.File("x.png"), "--class", name));
        Assert.Contains("0 T-shirt/top, 1 Trouser, 2 Pullover", err);
        Assert.False(File.Exists(dir.File("x.png")));
    }

    [Fact]
    public void GuidanceWithoutAClassOrNegativeIsRefused()
    {
        using var dir = new TempDir();
        AssertBadUsage(Sample(dir.File("x.png"), "--guidance", "2"), "--guidance needs --class");
        AssertBadUsage(Sample(dir.File("x.png"), "--class", "1", "--guidance", "-1"), "--guidance must be a number >= 0");
    }

    [Fact]
    public void AClassOfAnUnconditionalModelIsOneClearLine()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run("train", "--preset", "tiny", "--no-classes", "--steps", "1", "--batch", "2", "--max-images", "8",
            "--diffusion-steps", "20", "--samples", "1", "--sample-steps", "1", "--out", dir.Path, "--threads", "2");
        Assert.True(code == 0, err + output);
        Assert.DoesNotContain("class-conditional", output);
        string ckpt = RunFolder.Latest(dir.Path)!;
        Assert.Equal(0, Checkpoint.Load(ckpt).Model!.NumClasses);
        AssertBadUsage(["sample", "--checkpoint", ckpt, "--steps", "2", "--class", "Trouser", "--out", dir.File("x.png")], "holds an unconditional model");
        AssertBadUsage(["sample", "--checkpoint", ckpt, "--steps", "2", "--class", "all", "--out", dir.File("x.png")], "holds an unconditional model");
        AssertBadUsage(["eval", "--checkpoint", ckpt, "--class-accuracy", "--n", "2", "--steps", "2"], "holds an unconditional model");
        AssertBadUsage(["eval", "--checkpoint", ckpt, "--guidance", "3", "--n", "2", "--steps", "2"], "holds an unconditional model");
        (code, output, err) = Run("info", "--checkpoint", ckpt);
        Assert.True(code == 0, err);
        Assert.Contains("classes   none (unconditional)", output);
    }

    [Fact]
    public void InfoListsTheClasses()
    {
        var (code, output, err) = Run("info", "--checkpoint", _run.Checkpoint);
        Assert.True(code == 0, err);
        Assert.Contains("classes   10, class-conditional", output);
        Assert.Contains("9 Ankle boot", output);
    }

    [Fact]
    public void FidAtAGuidanceDrawsEveryClassInTurn()
    {
        string[] common = ["eval", "--checkpoint", _run.Checkpoint, "--n", "20", "--steps", "2", "--batch", "20", "--json", "--threads", "2"];
        var (code, output, err) = Run([.. common, "--guidance", "0"]);
        Assert.True(code == 0, err + output);
        var zero = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.Contains("class-balanced at guidance 0", zero.GetProperty("sampler").GetString());
        Assert.Equal(0.0, zero.GetProperty("guidance").GetDouble());
        // Guidance 0 is the unconditional branch whatever the labels: the FID of the run without --guidance.
        (code, output, err) = Run(common);
        Assert.True(code == 0, err + output);
        var plain = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.Equal(plain.GetProperty("fid").GetDouble(), zero.GetProperty("fid").GetDouble());
        Assert.Equal(JsonValueKind.Null, plain.GetProperty("guidance").ValueKind);
        (code, output, err) = Run([.. common, "--guidance", "3"]);
        Assert.True(code == 0, err + output);
        var guided = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.NotEqual(plain.GetProperty("fid").GetDouble(), guided.GetProperty("fid").GetDouble());
    }

    [Fact]
    public void ClassAccuracyReportsEveryClassAndTheMean()
    {
        var (code, output, err) = Run("eval", "--checkpoint", _run.Checkpoint, "--class-accuracy", "--n", "2", "--steps", "2", "--batch", "8",
            "--guidance", "2", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var j = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        var acc = j.GetProperty("class_accuracy").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(10, acc.Length);
        // Two samples per class: each share is 0, 1/2 or 1, and the mean is their average.
        Assert.All(acc, a => Assert.Contains(a, new[] { 0.0, 0.5, 1.0 }));
        Assert.Equal(acc.Average(), j.GetProperty("mean_class_accuracy").GetDouble(), 12);
        Assert.Equal(2.0, j.GetProperty("guidance").GetDouble());
        Assert.Contains("Ankle boot", output);
    }

    [Theory]
    [InlineData(new string[0], 10)]
    [InlineData(new[] { "--no-classes" }, 0)]
    [InlineData(new[] { "--labml-exact" }, 0)]
    [InlineData(new[] { "--class-dropout", "0.25" }, 10)]
    public void TheBundledSetTrainsConditionallyUnlessTurnedOff(string[] extra, int classes)
    {
        var args = new List<string> { "train", "--preset", "tiny", "--steps", "20", "--max-images", "8" };
        args.AddRange(extra);
        var plan = Plan(args.ToArray());
        Assert.Equal(classes, plan.Model.NumClasses);
        Assert.Equal(classes, plan.Run.Loader.NumClasses);
        if (extra.Length == 2 && extra[0] == "--class-dropout") Assert.Equal(0.25f, plan.Training.ClassDropout);
    }

    [Fact]
    public void ClassesOnDataWithoutLabelsAreRefused()
    {
        string images = Path.Combine(TestFiles.RepoRoot, "data", "fashion-mnist", "t10k-images-idx3-ubyte.gz");
        using var dir = new TempDir();
        AssertBadUsage(["train", "--data", images, "--classes", "--preset", "tiny", "--steps", "1", "--out", dir.Path], "--classes: ");
        AssertBadUsage(["train", "--classes", "--no-classes"], "give --classes or --no-classes, not both");
        AssertBadUsage(["train", "--class-dropout", "1.5"], "--class-dropout must be in [0, 1]");
        // A resumed run keeps its model: conditional or not.
        AssertBadUsage(["train", "--resume", _run.Checkpoint, "--no-classes", "--steps", "3", "--max-images", "32", "--out", dir.File("r")],
            "--no-classes: the checkpoint's model is class-conditional");
    }
}
