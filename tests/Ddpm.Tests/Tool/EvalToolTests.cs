using System.Text.Json;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// The eval and train-classifier verbs in-process: the known answers of the committed Fashion-MNIST classifier
/// (the test set against itself, against its scrambled self), sampling a tiny checkpoint, and bad input.
/// </summary>
public sealed class EvalToolTests : IClassFixture<TrainedRun>
{
    private readonly TrainedRun _run;

    public EvalToolTests(TrainedRun run) => _run = run;

    private static string Bundled(string file) => Path.Combine(TestFiles.RepoRoot, "data", "fashion-mnist", file);

    private static JsonElement LastJson(string output) =>
        JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;

    [Fact]
    public void RealTestSetAgainstItselfIsZeroAndScrambledIsFar()
    {
        string test = Bundled("t10k-images-idx3-ubyte.gz");
        var (code, output, err) = Run("eval", "--images", test, "--n", "1000", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var same = LastJson(output);
        Assert.InRange(same.GetProperty("fid").GetDouble(), -1e-6, 1e-6);
        // The same images give the same predictions: equal histograms and scores.
        Assert.Equal(same.GetProperty("real_class_histogram").ToString(), same.GetProperty("class_histogram").ToString());
        Assert.Equal(same.GetProperty("real_inception_score").GetDouble(), same.GetProperty("inception_score").GetDouble(), 9);
        Assert.Contains("FID", output);

        (code, output, err) = Run("eval", "--images", test, "--n", "1000", "--scramble", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var scrambled = LastJson(output);
        Assert.True(scrambled.GetProperty("scrambled").GetBoolean());
        double fid = scrambled.GetProperty("fid").GetDouble();
        Assert.True(fid > ScrambledFloor, $"scrambled FID {fid}");
    }

    /// <summary>A bound far below what scrambled pixels measure and far above the real-vs-real noise floor (see README).</summary>
    private const double ScrambledFloor = 50;

    [Fact]
    public void ByTimestepReportsTheErrorAcrossTheWholeRange()
    {
        Assert.True(_run.Code == 0, _run.Err);
        var (code, output, err) = Run("eval", "--checkpoint", _run.Checkpoint, "--by-t", "--n", "8", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var j = LastJson(output);
        var t = j.GetProperty("t").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        // The fixture's T is 50: the 14 points of 0..999 scaled to 0..49, first and last included, in order.
        Assert.Equal(0, t[0]);
        Assert.Equal(49, t[^1]);
        Assert.True(t.Zip(t.Skip(1)).All(p => p.First < p.Second));
        var mse = j.GetProperty("eps_mse").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(t.Length, mse.Length);
        Assert.All(mse, m => Assert.True(double.IsFinite(m) && m > 0));
        Assert.Equal(8, j.GetProperty("n").GetInt32());

        (code, _, err) = Run("eval", "--images", Bundled("t10k-images-idx3-ubyte.gz"), "--by-t");
        Assert.Equal(2, code);
        Assert.Contains("--by-t measures a model: give --checkpoint", err);
    }

    [Fact]
    public void EvalSamplesACheckpointAndReportsEveryField()
    {
        Assert.True(_run.Code == 0, _run.Err);
        var (code, output, err) = Run("eval", "--checkpoint", _run.Checkpoint, "--n", "6", "--batch", "4", "--steps", "2",
            "--seed", "3", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var j = LastJson(output);
        Assert.True(double.IsFinite(j.GetProperty("fid").GetDouble()) && j.GetProperty("fid").GetDouble() > 0);
        double isScore = j.GetProperty("inception_score").GetDouble();
        Assert.InRange(isScore, 1.0 - 1e-9, 10.0);
        Assert.Equal(6, j.GetProperty("class_histogram").EnumerateArray().Sum(e => e.GetInt32()));
        Assert.Equal(10, j.GetProperty("class_histogram").GetArrayLength());
        Assert.Equal(1000, j.GetProperty("real_class_histogram").EnumerateArray().Sum(e => e.GetInt32()));
        Assert.Equal("Trouser", j.GetProperty("class_names")[1].GetString());
        Assert.Equal(6, j.GetProperty("n").GetInt32());
        Assert.Equal(1000, j.GetProperty("real_n").GetInt32());
        Assert.Equal("samples", j.GetProperty("kind").GetString());
        Assert.StartsWith("DDIM (2 steps", j.GetProperty("sampler").GetString());
        Assert.True(j.GetProperty("sampling_s").GetDouble() > 0);
        Assert.Contains("class histogram", output);
        Assert.Contains("Ankle boot", output);
        // The same seed gives the same samples, so the same numbers.
        var (code2, output2, _) = Run("eval", "--checkpoint", _run.Checkpoint, "--n", "6", "--batch", "4", "--steps", "2",
            "--seed", "3", "--json", "--threads", "2");
        Assert.Equal(0, code2);
        Assert.Equal(j.GetProperty("fid").GetDouble(), LastJson(output2).GetProperty("fid").GetDouble());
    }

    [Fact]
    public void TrainClassifierIsDeterministicAndItsOutputFeedsEval()
    {
        using var dir = new TempDir();
        // 96 random 12x12 images in 3 classes: a tiny but complete run.
        var pixels = new byte[96 * 144];
        new Random(5).NextBytes(pixels);
        var labels = Enumerable.Range(0, 96).Select(i => (byte)(i % 3)).ToArray();
        File.WriteAllBytes(dir.File("img"), TestFiles.Idx([96, 12, 12], pixels));
        File.WriteAllBytes(dir.File("lab"), TestFiles.Idx([96], labels));
        string[] args = ["train-classifier", "--data", dir.File("img"), "--labels", dir.File("lab"), "--test-data", dir.File("img"),
            "--test-labels", dir.File("lab"), "--image-size", "16", "--widths", "4,4,8", "--features", "6", "--epochs", "2",
            "--batch", "16", "--seed", "9", "--threads", "2", "--out"];
        var (code, output, err) = Run([.. args, dir.File("a.safetensors")]);
        Assert.True(code == 0, err + output);
        Assert.Contains("test accuracy", output);
        (code, _, err) = Run([.. args, dir.File("b.safetensors")]);
        Assert.True(code == 0, err);
        Assert.Equal(File.ReadAllBytes(dir.File("a.safetensors")), File.ReadAllBytes(dir.File("b.safetensors")));
        var meta = SafeTensorsFile.Read(dir.File("a.safetensors")).Metadata;
        Assert.Equal("ddpm-classifier/1", meta["ddpm_format"]);
        Assert.Equal("pt", meta["format"]);
        Assert.Equal("0,1,2", meta["class_names"]);
        Assert.InRange(double.Parse(meta["test_accuracy"], System.Globalization.CultureInfo.InvariantCulture), 0, 1);

        (code, output, err) = Run("eval", "--images", dir.File("img"), "--real", dir.File("img"), "--classifier", dir.File("a.safetensors"),
            "--n", "50", "--json", "--threads", "2");
        Assert.True(code == 0, err + output);
        var j = LastJson(output);
        Assert.Equal(3, j.GetProperty("class_histogram").GetArrayLength());
        Assert.Equal(6, j.GetProperty("feature_dim").GetInt32());
    }

    [Theory]
    [InlineData(new[] { "eval" }, "give --checkpoint (to sample) or --images")]
    [InlineData(new[] { "eval", "--images", "x", "--checkpoint", "y" }, "give --checkpoint (to sample) or --images")]
    [InlineData(new[] { "eval", "--images", "x", "--n", "1" }, "-n must be at least 2")]
    [InlineData(new[] { "train-classifier", "--data", "x" }, "give --data and --labels together")]
    [InlineData(new[] { "train-classifier", "--widths", "4,4" }, "three --widths")]
    public void BadUsageIsExitCode2(string[] args, string message)
    {
        var (code, _, err) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains(message, err);
    }

    [Fact]
    public void ImagesTheClassifierCannotTakeAndNonClassifierFilesAreNamed()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("big"), TestFiles.Idx([4, 40, 40], new byte[4 * 1600]));
        var (code, _, err) = Run("eval", "--images", dir.File("big"), "--n", "4");
        Assert.Equal(1, code);
        Assert.Contains("40x40", err);
        Assert.Contains("train-classifier", err);

        (code, _, err) = Run("eval", "--images", Bundled("t10k-images-idx3-ubyte.gz"), "--classifier", _run.Checkpoint, "--n", "4");
        Assert.Equal(1, code);
        Assert.Contains(Path.GetFileName(_run.Checkpoint), err);
        Assert.Contains("not a classifier", err);
    }
}
