using System.Text.Json.Nodes;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// A checkpoint's stored values are checked by what they mean, not only by shape and finiteness: each hostile file
/// below is built from a real checkpoint with one value out of its range and refused by the tool with one line that
/// names the file and the key or tensor, exit code 1.
/// </summary>
public sealed class StoredValueToolTests : IClassFixture<TrainedRun>
{
    private readonly TrainedRun _run;

    public StoredValueToolTests(TrainedRun run) => _run = run;

    /// <summary>A copy of the run's checkpoint with header key <paramref name="key"/> (or "config.key") set, or removed when null.</summary>
    private string WithHeader(string key, string? value, string copy)
    {
        var file = SafeTensorsFile.Read(_run.Checkpoint);
        var meta = new Dictionary<string, string>(file.Metadata);
        int dot = key.IndexOf('.');
        if (dot > 0)
        {
            var config = JsonNode.Parse(meta[key[..dot]])!.AsObject();
            config[key[(dot + 1)..]] = JsonNode.Parse(value!);
            meta[key[..dot]] = config.ToJsonString();
        }
        else if (value is null) Assert.True(meta.Remove(key));
        else meta[key] = value;
        SafeTensorsFile.Write(copy, file.Entries, meta);
        return copy;
    }

    public static TheoryData<string, string?, string> BadHeaderValues() => new()
    {
        // key, value (null: removed), what the line says after the file
        { "step", "1000000001", "header key \"step\": 1000000001 is more than the 1,000,000,000 steps a run may have" },
        { "data_epoch", "100000000000", "header keys \"data_epoch\" 100000000000 and \"data_index\" 4: a run at step 4 has read 4 batches and cannot have reached that position" },
        { "data_index", "5", "header keys \"data_epoch\" 0 and \"data_index\" 5: a run at step 4" },
        { "training.batch_size", "100000", "header key \"training.batch_size\": 100000 is not between 1 and 65536." },
        { "training.decay_steps", "2000000000", "header key \"training.decay_steps\": 2000000000 is not between 0 and 1000000000." },
        { "training.ema_decay", "1", "header key \"training.ema_decay\": 1 is not in [0, 1) (EMA decay)." },
        { "training.ema_decay", "-0.5", "header key \"training.ema_decay\": -0.5 is not in [0, 1) (EMA decay)." },
        { "training.lr", "0", "header key \"training.lr\": 0 is not a positive learning rate." },
        { "training.lr_final", "1.5", "header key \"training.lr_final\": 1.5 is not in [0, 1] (the final learning-rate fraction)." },
        { "training.warmup_steps", "-1", "header key \"training.warmup_steps\": -1 is not >= 0 (warm-up steps)." },
        { "training.beta2", "1", "header key \"training.beta2\": 1 is not in [0, 1)." },
    };

    [Theory]
    [MemberData(nameof(BadHeaderValues))]
    public void AStoredValueOutOfItsRangeIsRefusedNamingTheKey(string key, string? value, string message)
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        string bad = WithHeader(key, value, dir.File("bad.safetensors"));
        foreach (var args in new[]
        {
            new[] { "info", "--checkpoint", bad },
            ["train", "--resume", bad, "--steps", "6", "--max-images", "64", "--threads", "2", "--out", dir.File("run")],
        })
        {
            var (code, output, err) = Run(args);
            Assert.True(code == 1, $"{args[0]}: exit {code}: {err}{output}");
            Assert.StartsWith($"ddpm-tool: error: safetensors '{bad}': {message}", err);
            Assert.Single(err.Trim().Split('\n'));
        }
        Assert.Null(Ddpm.Diffusion.Training.RunFolder.Latest(dir.File("run")));
    }

    [Fact]
    public void NegativeAdamSecondMomentsAreRefusedBeforeAResume()
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        const string Name = "adam.v.final.weight";
        var v = SafeTensorsFile.Read(_run.Checkpoint)[Name];
        string bad = ReliabilityToolTests.WithValue(_run.Checkpoint, Name, -0.5f, dir.File("bad.safetensors"));
        foreach (var args in new[]
        {
            new[] { "train", "--resume", bad, "--steps", "6", "--max-images", "64", "--threads", "2", "--out", dir.File("run") },
            ["info", "--checkpoint", bad],
        })
        {
            var (code, output, err) = Run(args);
            Assert.True(code == 1, $"{args[0]}: exit {code}: {err}{output}");
            Assert.Equal($"ddpm-tool: error: safetensors '{bad}', tensor '{Name}': value {v.Count / 2} of {v.ShapeText} is -0.5; "
                + "Adam's second moments are running means of squared gradients and cannot be negative", err.Trim());
        }
        Assert.Null(Ddpm.Diffusion.Training.RunFolder.Latest(dir.File("run")));
    }

    [Fact]
    public void ATrainingCheckpointWithoutItsStepIsNotResumedFromStepZero()
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        string bad = WithHeader("step", null, dir.File("bad.safetensors"));
        var (code, output, err) = Run("train", "--resume", bad, "--steps", "6", "--max-images", "64", "--threads", "2", "--out", dir.File("run"));
        Assert.True(code == 1, $"exit {code}: {err}{output}");
        Assert.Equal($"ddpm-tool: error: {bad}: header key \"step\" is missing; a training checkpoint records it.", err.Trim());
    }
}
