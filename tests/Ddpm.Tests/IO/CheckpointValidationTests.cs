using System.Text.Json;
using System.Text.Json.Nodes;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.IO;

/// <summary>Every value a checkpoint's header carries is checked, named by file and key, before it is used.</summary>
public sealed class CheckpointValidationTests : IDisposable
{
    private static readonly UNetConfig Tiny = new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 8, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8,
    };

    private readonly TempDir _dir = new();
    private readonly CpuReferenceBackend _be = new();

    public void Dispose()
    {
        _be.Dispose();
        _dir.Dispose();
    }

    /// <summary>A training checkpoint of the tiny model after one step, as the trainer writes it.</summary>
    private (string Path, SafeTensorsFile File) TrainingCheckpoint()
    {
        string idx = _dir.File("images-idx3-ubyte");
        File.WriteAllBytes(idx, TestFiles.Idx([4, 8, 8], Enumerable.Range(0, 256).Select(i => (byte)i).ToArray()));
        string path = _dir.File("checkpoint.safetensors");
        using var trainer = NewTrainer(Tiny, new TrainingConfig { BatchSize = 2, EmaDecay = 0.9f });
        trainer.Step();
        Checkpoint.Save(path, trainer);
        return (path, SafeTensorsFile.Read(path));
    }

    private Trainer NewTrainer(UNetConfig mc, TrainingConfig tc)
    {
        var loader = new DataLoader(IdxDataset.Load(_dir.File("images-idx3-ubyte")), new DataLoaderOptions { BatchSize = 2 });
        var unet = new UNet(_be, mc, new PhiloxGenerator(1));
        return new Trainer(new DenoiseDiffusion(unet, new DiffusionConfig { NSteps = 20 }), new LoaderBatchSource(loader), tc);
    }

    private string Rewrite(SafeTensorsFile file, Func<Dictionary<string, string>, Dictionary<string, string>> meta,
        Func<SafeTensorEntry, SafeTensorEntry>? entry = null)
    {
        string path = _dir.File("mutated.safetensors");
        SafeTensorsFile.Write(path, file.Entries.Select(entry ?? (e => e)).ToList(), meta(new Dictionary<string, string>(file.Metadata)));
        return path;
    }

    [Fact]
    public void TheFormatKeyNamesTheFrameworkAndOlderFilesAreStillRead()
    {
        var (path, file) = TrainingCheckpoint();
        // The Hugging Face convention: "format" is the framework; this project's format has its own key.
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(Checkpoint.Format, file.Metadata[Checkpoint.FormatKey]);
        Assert.True(Checkpoint.Load(path).IsTrainingCheckpoint);
        // A file written before that key existed named the format under "format"; it resumes as before.
        string old = Rewrite(file, m =>
        {
            m.Remove(Checkpoint.FormatKey);
            m["format"] = Checkpoint.Format;
            return m;
        });
        var c = Checkpoint.Load(old);
        Assert.True(c.IsTrainingCheckpoint);
        using var trainer = NewTrainer(Tiny, new TrainingConfig { BatchSize = 2, EmaDecay = 0.9f });
        c.RestoreInto(trainer);
        Assert.Equal(1, trainer.StepCount);
        // Another project's format under the key is not ours, whatever "format" says.
        string other = Rewrite(file, m =>
        {
            m[Checkpoint.FormatKey] = "something-else/1";
            return m;
        });
        Assert.False(Checkpoint.Load(other).IsTrainingCheckpoint);
    }

    private static string SetConfigKey(string json, string key, string value)
    {
        var o = JsonNode.Parse(json)!.AsObject();
        o[key] = JsonNode.Parse(value);
        return o.ToJsonString();
    }

    public static TheoryData<string, string, string, string> BadHeaderValues() => new()
    {
        // config, key, JSON value, what the message says after the file and key
        { "model", "n_blocks", "1000000", "header key \"model.n_blocks\": 1000000 is not between 1 and 64." },
        { "model", "n_groups", "0", "header key \"model.n_groups\": 0 is not a positive divisor of n_channels 8." },
        { "model", "n_groups", "3", "header key \"model.n_groups\": 3 is not a positive divisor of n_channels 8." },
        { "model", "ch_mults", "null", "header key \"model.ch_mults\": null is not a list of 1 to 12 positive integers." },
        { "model", "ch_mults", "[1,65536]", "header key \"model.ch_mults\": [1,65536] gives level 1 524288 channels (n_channels 8); at most 65536 are allowed." },
        { "model", "is_attn", "null", "header key \"model.is_attn\": null; it needs one flag per level." },
        { "model", "n_channels", "7", "header key \"model.n_channels\": 7 is not a positive multiple of 8" },
        { "model", "image_size", "31", "header key \"model.image_size\": 31 must be divisible by 2 (1 downsamplings)." },
        { "model", "image_size", "1024", "header key \"model.image_size\": 1024 with attention at 512x512 and 1 head(s) makes an attention score tensor of 68,719,476,736 elements" },
        { "model", "dropout", "1.5", "header key \"model.dropout\": 1.5 is not in [0, 1)." },
        { "model", "image_channels", "2", "header key \"model.image_channels\": 2 is not 1 (grey) or 3 (RGB)." },
        { "model", "n_heads", "100", "header key \"model\" describes a model of" },
        { "model", "n_blocks", "\"abc\"", "header key \"model\" is not a valid model config (The JSON value could not be converted to System.Int32. Path: $.n_blocks" },
        { "diffusion", "n_steps", "1", "header key \"diffusion.n_steps\": 1 is not between 2 and 1000000." },
        { "diffusion", "beta_end", "2", "header key \"diffusion.beta_end\": 2 is not in [beta_start 0.0001, 1)." },
        { "diffusion", "schedule", "7", "header key \"diffusion.schedule\": 7 is not linear or cosine." },
        { "training", "lr", "-1", "header key \"training.lr\": -1 is not a positive learning rate." },
        { "training", "beta2", "1", "header key \"training.beta2\": 1 is not in [0, 1)." },
        { "training", "ema_decay", "1", "header key \"training.ema_decay\": 1 is not in [0, 1) (EMA decay)." },
    };

    [Theory]
    [MemberData(nameof(BadHeaderValues))]
    public void ABadConfigValueIsRefusedNamingFileAndKey(string config, string key, string value, string message)
    {
        var (_, file) = TrainingCheckpoint();
        string path = Rewrite(file, m =>
        {
            m[config] = SetConfigKey(m[config], key, value);
            return m;
        });
        var ex = Assert.Throws<SafeTensorsFormatException>(() => Checkpoint.Load(path));
        Assert.StartsWith($"safetensors '{path}': ", ex.Message);
        Assert.Contains(message, ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
    }

    [Theory]
    [InlineData("step", "abc")]
    [InlineData("step", "-5")]
    [InlineData("data_index", "-1")]
    [InlineData("data_epoch", "1e3")]
    [InlineData("noise_offset", "18446744073709551616")]
    [InlineData("dropout_offset", " 7")]
    public void ABadCounterIsRefusedNamingFileAndKey(string key, string value)
    {
        var (_, file) = TrainingCheckpoint();
        string path = Rewrite(file, m =>
        {
            m[key] = value;
            return m;
        });
        var ex = Assert.Throws<SafeTensorsFormatException>(() => Checkpoint.Load(path));
        Assert.Equal($"safetensors '{path}': header key \"{key}\": \"{value}\" is not a non-negative integer", ex.Message);
    }

    [Fact]
    public void TheSameRulesServeTheOptionsAndTheHeader()
    {
        var e = Assert.Throws<ConfigValueException>(() => (Tiny with { NGroups = 0 }).Validate());
        Assert.Equal("n_groups", e.Key);
        Assert.Equal("n_groups 0 is not a positive divisor of n_channels 8.", e.Message);
        Assert.IsAssignableFrom<ArgumentException>(e);
        Assert.Equal("n_steps", Assert.Throws<ConfigValueException>(() => new DiffusionConfig { NSteps = 0 }.Validate()).Key);
        Assert.Equal("dropout", Assert.Throws<ConfigValueException>(() => (Tiny with { Dropout = float.NaN }).Validate()).Key);
        Assert.Equal("lr", Assert.Throws<ConfigValueException>(() => new TrainingConfig { LearningRate = float.PositiveInfinity }.Validate()).Key);
    }

    [Fact]
    public void ArithmeticParameterCountMatchesTheBuiltModel()
    {
        var configs = new[]
        {
            Tiny,
            Tiny with { NHeads = 3, NBlocks = 2, ImageChannels = 3 },
            new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 2 },
            new UNetConfig { ImageChannels = 3, ImageSize = 16, NChannels = 16, ChMults = [1, 2, 1, 2], IsAttn = [true, false, true, false], NBlocks = 1, NGroups = 8 },
        };
        foreach (var c in configs)
        {
            c.Validate();
            using var model = new UNet(_be, c, new PhiloxGenerator(0));
            Assert.Equal(model.ParameterCount(), c.ParameterCount());
        }
        // labml's experiment.py model, as its PyTorch state_dict counts it, without building it.
        var labml = new UNetConfig { ImageChannels = 3, ImageSize = 32, NChannels = 64, ChMults = [1, 2, 2, 4], IsAttn = [false, false, false, true], NBlocks = 2 };
        Assert.Equal(167_777_987, labml.ParameterCount());
    }

    [Fact]
    public void AModelTooLargeToHoldIsRefusedWithItsSizeBeforeAnythingIsAllocated()
    {
        // Every tensor fits one array; the whole does not.
        var huge = new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 1024, ChMults = [1, 2, 2, 2], IsAttn = [false, false, false, false], NBlocks = 64 };
        var e = Assert.Throws<ConfigValueException>(() => huge.Validate());
        Assert.Equal("n_blocks", e.Key);
        Assert.Matches(@"^64 with n_channels 1024, ch_mults \[1,2,2,2\] and n_heads 1 gives [0-9,]+ parameters; at most 2,147,483,648 are allowed\.$", e.Problem);
        // One tensor too large for an array.
        var wide = Tiny with { NChannels = 4096, ChMults = [1, 8] };
        Assert.Contains("makes a convolution weight of 19,327,352,832 elements", Assert.Throws<ConfigValueException>(() => wide.Validate()).Message);
    }

    [Fact]
    public void NonFiniteWeightsEmaOrMomentsAreRefusedNamingTheTensor()
    {
        var (_, file) = TrainingCheckpoint();
        foreach (string name in new[] { "model.final.weight", "ema.middle.attn.output.bias", "adam.v.image_proj.weight" })
        {
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
            {
                string path = Rewrite(file, m => m, e =>
                {
                    if (e.Name != name) return e;
                    var v = (float[])e.AsFloats().Clone();
                    v[v.Length / 2] = bad;
                    return SafeTensorEntry.F32(e.Name, e.Shape, v);
                });
                var ex = Assert.Throws<SafeTensorsFormatException>(() => Checkpoint.Load(path));
                Assert.Equal(name, ex.TensorName);
                Assert.Contains($"value {file[name].Count / 2} of {file[name].ShapeText} is {bad}", ex.Message);
            }
        }
    }

    [Fact]
    public void ResumeChecksTheEmaShapeEvenWhenTheCountMatches()
    {
        var (_, file) = TrainingCheckpoint();
        const string name = "ema.time_emb.lin1.weight";
        var shape = file[name].Shape;
        Assert.NotEqual(shape[0], shape[1]);
        string path = Rewrite(file, m => m, e => e.Name == name ? SafeTensorEntry.F32(e.Name, [shape[1], shape[0]], e.AsFloats()) : e);
        var ckpt = Checkpoint.Load(path);
        using var trainer = NewTrainer(ckpt.Model!, ckpt.Training!);
        var before = trainer.Parameters.First().Param.ToArray();
        var ex = Assert.Throws<InvalidDataException>(() => ckpt.RestoreInto(trainer));
        Assert.Contains($"'{name}' is [{shape[1]},{shape[0]}], the model has", ex.Message);
        Assert.Equal(before, trainer.Parameters.First().Param.ToArray());
    }

    [Fact]
    public void ResumeChecksTheDataPosition()
    {
        var (_, file) = TrainingCheckpoint();
        // Reachable in 7 steps, but not in this trainer's epochs of 2 batches (a resume with other data).
        string path = Rewrite(file, m =>
        {
            m["step"] = "7";
            m["data_index"] = "7";
            return m;
        });
        var ckpt = Checkpoint.Load(path);
        using var trainer = NewTrainer(ckpt.Model!, ckpt.Training!);
        var ex = Assert.Throws<InvalidDataException>(() => ckpt.RestoreInto(trainer));
        Assert.Contains("header keys \"data_epoch\", \"data_index\"", ex.Message);
        Assert.Contains("outside an epoch of 2 batches", ex.Message);
    }

    [Fact]
    public void AValidCheckpointStillRestoresExactly()
    {
        var (path, file) = TrainingCheckpoint();
        var ckpt = Checkpoint.Load(path);
        using var trainer = NewTrainer(ckpt.Model!, ckpt.Training!);
        ckpt.RestoreInto(trainer);
        foreach (var (name, p, ema) in trainer.Parameters)
        {
            Assert.Equal(file["model." + name].AsFloats(), p.ToArray());
            Assert.Equal(file["ema." + name].AsFloats(), ema!.ToArray());
        }
        Assert.Equal(1L, trainer.StepCount);
        Assert.Equal(JsonSerializer.Serialize(Tiny), JsonSerializer.Serialize(ckpt.Model));
    }

    [Fact]
    public void TheDiffusionHeaderHoldsOnlyConfigKeys()
    {
        var (_, file) = TrainingCheckpoint();
        var keys = JsonNode.Parse(file.Metadata["diffusion"])!.AsObject().Select(p => p.Key).ToList();
        // The data range's bounds are derived from data_range, not a setting of their own.
        Assert.DoesNotContain("Range", keys);
        Assert.Contains("data_range", keys);
        // A header written with the derived bounds as an empty object still loads.
        string old = Rewrite(file, m =>
        {
            var o = JsonNode.Parse(m["diffusion"])!.AsObject();
            o["Range"] = new JsonObject();
            m["diffusion"] = o.ToJsonString();
            return m;
        });
        Assert.Equal(DataRange.MinusOneToOne, Checkpoint.Load(old).Diffusion!.DataRange);
    }
}
