using System.Text.Json;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Microsoft.ML.OnnxRuntime;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>inpaint, sample --init and export through the tool, on a two-step class-conditional tiny model.</summary>
public sealed class InpaintExportToolTests(ClassToolTests.ConditionalRun run) : IClassFixture<ClassToolTests.ConditionalRun>
{
    private const int Size = 32;

    private string[] Inpaint(params string[] extra) =>
        ["inpaint", "--checkpoint", run.Checkpoint, "--steps", "4", "--jump-length", "2", "--resamples", "2", "--threads", "2", .. extra];

    /// <summary>A grey test picture: a bright diagonal gradient with a dark square.</summary>
    private static byte[] Picture()
    {
        var p = new byte[Size * Size];
        for (int y = 0; y < Size; y++)
            for (int x = 0; x < Size; x++)
                p[y * Size + x] = (byte)(x >= 10 && x < 20 && y >= 4 && y < 12 ? 7 : 40 + 5 * (x + y) % 200);
        return p;
    }

    [Fact]
    public void TheKnownPixelsOfTheWrittenImagesAreTheInputsBytes()
    {
        Assert.True(run.Code == 0, run.Err);
        using var dir = new TempDir();
        var picture = Picture();
        ImageGrid.WritePng(dir.File("in.png"), picture, Size, Size, 1);
        // The mask: white (keep) but for a black band of rows 8..19 (to be filled in).
        var mask = new byte[Size * Size];
        for (int i = 0; i < mask.Length; i++) mask[i] = (byte)(i / Size is >= 8 and < 20 ? 0 : 255);
        ImageGrid.WritePng(dir.File("mask.png"), mask, Size, Size, 1);
        var (code, output, err) = Run(Inpaint("--image", dir.File("in.png"), "--mask", dir.File("mask.png"), "--n", "3", "--each", dir.File("each"),
            "--out", dir.File("out.png"), "--class", "Trouser", "--json"));
        Assert.True(code == 0, err + output);
        var files = Directory.GetFiles(dir.File("each"), "*.png").Order().ToArray();
        Assert.Equal(3, files.Length);
        foreach (var f in files)
        {
            var img = ImageFile.Load(f, 1);
            Assert.Equal((Size, Size), (img.Width, img.Height));
            for (int i = 0; i < picture.Length; i++)
                if (mask[i] == 255) Assert.True(img.Pixels[i] == picture[i], $"{Path.GetFileName(f)} pixel {i}: {img.Pixels[i]}, input {picture[i]}");
        }
        var json = JsonDocument.Parse(output.TrimEnd().Split('\n')[^1]).RootElement;
        Assert.Equal(0, json.GetProperty("known_mismatches").GetInt64());
        Assert.Equal(3 * (Size * Size - 12 * Size), json.GetProperty("known_values").GetInt64());
        Assert.Equal(12 * Size, json.GetProperty("masked_pixels").GetInt32());
        Assert.Contains("class 1 (Trouser)", output);
        Assert.Contains("known region: kept exactly", output);
    }

    [Fact]
    public void TheGridHasTheInputTheMaskTheHoleAndTheResultsInEachRow()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run(Inpaint("--image", "data:3..4", "--n", "2", "--grid", "--scale", "1", "--mask", "left", "--out", dir.File("g.png"),
            "--classify", "--json"));
        Assert.True(code == 0, err + output);
        var g = ImageFile.Load(dir.File("g.png"), 1);
        // 2 rows of 3 + 2 cells of 32 pixels with 2 pixels of padding.
        Assert.Equal((5 * 34 + 2, 2 * 34 + 2), (g.Width, g.Height));
        // Row 0: cell 1 is the mask (left half black, right half white), cell 2 the input with a grey left half.
        Assert.Equal(0, g[34 + 2 + 5, 2 + 16, 0]);
        Assert.Equal(255, g[34 + 2 + 25, 2 + 16, 0]);
        Assert.Equal(ImageGrid.ToByte(0.5f), g[2 * 34 + 2 + 5, 2 + 16, 0]);
        for (int y = 0; y < Size; y++)
            for (int x = 16; x < Size; x++)
            {
                // Kept: the right half of each result is the input's.
                Assert.Equal(g[2 + x, 2 + y, 0], g[3 * 34 + 2 + x, 2 + y, 0]);
                Assert.Equal(g[2 + x, 36 + y, 0], g[4 * 34 + 2 + x, 36 + y, 0]);
            }
        var json = JsonDocument.Parse(output.TrimEnd().Split('\n')[^1]).RootElement;
        // The test set's images 3 and 4 are a dress and a shirt; the bundled classifier knows both.
        Assert.Equal(2, json.GetProperty("class_counts").EnumerateArray().Sum(e => e.GetInt32()));
        Assert.True(json.GetProperty("mean_fill_hole_rms").GetDouble() > 0);
        Assert.Contains("classified as their true class", output);
    }

    [Theory]
    [InlineData("--mask", "nowhere.png", 2, "--mask 'nowhere.png' is neither")]
    [InlineData("--resamples", "0", 2, "--resamples must be between 1 and 100")]
    [InlineData("--image", "data:999999", 1, "there is no index 999999")]
    [InlineData("--image", "data:5..2", 2, "the last index is below the first")]
    [InlineData("--image", "missing.png", 1, "missing.png: no such image file")]
    [InlineData("--n", "0", 2, "--n must be positive")]
    public void BadInputIsOneLineNamingIt(string option, string value, int exit, string message)
    {
        string[] args = ["inpaint", "--checkpoint", run.Checkpoint, "--steps", "2", "--out", Path.Combine(Path.GetTempPath(), "never-written.png")];
        if (option != "--image") args = [.. args, "--image", "data:0"];
        var (code, _, err) = Run([.. args, option, value]);
        Assert.Equal(exit, code);
        Assert.Contains(message, err);
        Assert.Single(err.TrimEnd().Split('\n'));
    }

    [Fact]
    public void AnAllWhiteMaskAndClassifyingAFileAreRefused()
    {
        using var dir = new TempDir();
        ImageGrid.WritePng(dir.File("white.png"), Enumerable.Repeat((byte)255, Size * Size).ToArray(), Size, Size, 1);
        var (code, _, err) = Run(Inpaint("--image", "data:0", "--mask", dir.File("white.png"), "--out", dir.File("o.png")));
        Assert.Equal(1, code);
        Assert.Contains("white everywhere", err);
        (code, _, err) = Run(Inpaint("--image", dir.File("white.png"), "--classify", "--out", dir.File("o.png")));
        Assert.Equal(2, code);
        Assert.Contains("--classify needs labelled images", err);
    }

    [Fact]
    public void SampleFromAnImageAtStrengthZeroIsThatImageAndOtherwiseAnEdit()
    {
        using var dir = new TempDir();
        var picture = Picture();
        ImageGrid.WritePng(dir.File("in.png"), picture, Size, Size, 1);
        string[] Sample(string strength, string each) =>
            ["sample", "--checkpoint", run.Checkpoint, "--steps", "4", "--n", "2", "--threads", "2", "--init", dir.File("in.png"),
                "--strength", strength, "--out", dir.File(each + ".png"), "--each", dir.File(each), "--class", "Bag"];
        var (code, output, err) = Run(Sample("0", "zero"));
        Assert.True(code == 0, err);
        foreach (var f in Directory.GetFiles(dir.File("zero"), "*.png")) Assert.Equal(picture, ImageFile.Load(f, 1).Pixels);
        (code, output, err) = Run(Sample("0.5", "half"));
        Assert.True(code == 0, err);
        Assert.Contains("at strength 0.5 (the last 2 steps)", output);
        Assert.All(Directory.GetFiles(dir.File("half"), "*.png"), f => Assert.NotEqual(picture, ImageFile.Load(f, 1).Pixels));
        (code, _, err) = Run(["sample", "--checkpoint", run.Checkpoint, "--strength", "0.5", "--out", dir.File("x.png")]);
        Assert.Equal(2, code);
        Assert.Contains("--strength needs --init", err);
        (code, _, err) = Run(["sample", "--checkpoint", run.Checkpoint, "--init", "data:0", "--strength", "1.5", "--out", dir.File("x.png")]);
        Assert.Equal(2, code);
        Assert.Contains("--strength must be between 0 and 1", err);
    }

    [Fact]
    public void TheExportedCheckpointRunsInOnnxRuntimeAsTheToolsModel()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run("export", "--checkpoint", run.Checkpoint, "--out", dir.File("m.onnx"));
        Assert.True(code == 0, err);
        Assert.Contains("output v", output);
        // The model the sampling verbs use: the checkpoint's EMA weights.
        var ckpt = Checkpoint.Load(run.Checkpoint);
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, ckpt.Model!, new PhiloxGenerator(0));
        ckpt.LoadWeightsInto(model, ema: true);
        model.Eval();
        var x = TestData.Normal(2 * Size * Size, 3);
        int[] t = [15, 2];
        int[] y = [4, ckpt.Model!.NullClass];
        var expected = model.Forward(Tensor.FromArray(be, x, 2, 1, Size, Size), t, y).ToArray();
        using var onnx = new InferenceSession(dir.File("m.onnx"));
        Assert.Equal("v", onnx.ModelMetadata.CustomMetadataMap["ddpm.prediction"]);
        using var results = onnx.Run(new[]
        {
            NamedOnnxValue.CreateFromTensor("x", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<float>(x, [2, 1, Size, Size])),
            NamedOnnxValue.CreateFromTensor("t", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(t.Select(v => (long)v).ToArray(), [2])),
            NamedOnnxValue.CreateFromTensor("y", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(y.Select(v => (long)v).ToArray(), [2])),
        });
        var r = Closeness.RelL2(results.Single().AsEnumerable<float>().ToArray(), expected);
        Assert.True(r.Value <= 1e-5, r.Describe("export through the tool", "relative L2", 1e-5));

        (code, _, err) = Run("export", "--preset", "tiny", "--format", "tflite", "--out", dir.File("m2.onnx"));
        Assert.Equal(2, code);
        Assert.Contains("--format is onnx", err);
        (code, output, err) = Run("export", "--preset", "tiny", "--batch", "3", "--out", dir.File("r.onnx"));
        Assert.True(code == 0, err);
        Assert.Contains("random weights", output);
        using var fixedBatch = new InferenceSession(dir.File("r.onnx"));
        Assert.Equal([3, 1, Size, Size], fixedBatch.InputMetadata["x"].Dimensions);
    }
}
