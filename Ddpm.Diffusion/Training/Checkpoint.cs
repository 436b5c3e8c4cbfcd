using System.Globalization;
using System.Text.Json;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// A training checkpoint in one safetensors file: <c>model.NAME</c> (weights under labml's state_dict names),
/// <c>ema.NAME</c>, <c>adam.m.NAME</c>, <c>adam.v.NAME</c>, and in the header metadata the model, diffusion and
/// training configs (JSON), the step, Philox offsets and data position. A plain labml-named weights file (no
/// prefixes) is read too. Files are written to a temporary file and renamed.
/// </summary>
public sealed class Checkpoint
{
    public const string Format = "ddpm-checkpoint/1";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    private Checkpoint(string path, SafeTensorsFile file)
    {
        Path = path;
        File = file;
        var m = file.Metadata;
        IsTrainingCheckpoint = m.TryGetValue("format", out var f) && f == Format;
        Model = Parse<UNetConfig>(m, "model");
        Diffusion = Parse<DiffusionConfig>(m, "diffusion");
        Training = Parse<TrainingConfig>(m, "training");
        Step = m.TryGetValue("step", out var s) ? long.Parse(s, CultureInfo.InvariantCulture) : 0;
    }

    public string Path { get; }
    public SafeTensorsFile File { get; }
    public bool IsTrainingCheckpoint { get; }
    public UNetConfig? Model { get; }
    public DiffusionConfig? Diffusion { get; }
    public TrainingConfig? Training { get; }
    public long Step { get; }
    public bool HasEma => File.Entries.Any(e => e.Name.StartsWith("ema.", StringComparison.Ordinal));
    private string WeightPrefix => IsTrainingCheckpoint ? "model." : "";

    private T? Parse<T>(IReadOnlyDictionary<string, string> m, string key) where T : class
    {
        if (!m.TryGetValue(key, out var json)) return null;
        try
        {
            return JsonSerializer.Deserialize<T>(json, Json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{Path}: the '{key}' config in the header is not valid: {e.Message}", e);
        }
    }

    public static Checkpoint Load(string path) => new(path, SafeTensorsFile.Read(path));

    /// <summary>Writes the whole training state atomically.</summary>
    public static void Save(string path, Trainer trainer, IReadOnlyDictionary<string, string>? extra = null)
    {
        var entries = new List<SafeTensorEntry>();
        foreach (var (name, p, ema) in trainer.Parameters)
        {
            entries.Add(SafeTensorEntry.F32("model." + name, p.Shape.ToArray(), p.ToArray()));
            if (ema is not null) entries.Add(SafeTensorEntry.F32("ema." + name, p.Shape.ToArray(), ema.ToArray()));
        }
        foreach (var (name, m, v) in trainer.Optimizer.State)
        {
            entries.Add(SafeTensorEntry.F32("adam.m." + name, m.Shape.ToArray(), m.ToArray()));
            entries.Add(SafeTensorEntry.F32("adam.v." + name, v.Shape.ToArray(), v.ToArray()));
        }
        var (epoch, index) = trainer.Data.Position;
        var meta = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["model"] = JsonSerializer.Serialize(trainer.Model.Config, Json),
            ["diffusion"] = JsonSerializer.Serialize(trainer.Diffusion.Config, Json),
            ["training"] = JsonSerializer.Serialize(trainer.Config, Json),
            ["step"] = trainer.StepCount.ToString(CultureInfo.InvariantCulture),
            ["noise_offset"] = trainer.NoiseGenerator.Offset.ToString(CultureInfo.InvariantCulture),
            ["dropout_offset"] = trainer.DropoutGenerator.Offset.ToString(CultureInfo.InvariantCulture),
            ["data_epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["data_index"] = index.ToString(CultureInfo.InvariantCulture),
        };
        if (extra is not null) foreach (var kv in extra) meta[kv.Key] = kv.Value;
        SafeTensorsFile.Write(path, entries, meta);
    }

    /// <summary>Writes a model's weights alone under labml's names (interchange with PyTorch).</summary>
    public static void SaveWeights(string path, Module model, UNetConfig? config = null)
    {
        var entries = model.NamedParameters().Select(p => SafeTensorEntry.F32(p.Name, p.Param.Shape.ToArray(), p.Param.ToArray())).ToList();
        var meta = new Dictionary<string, string>();
        if (config is not null) meta["model"] = JsonSerializer.Serialize(config, Json);
        SafeTensorsFile.Write(path, entries, meta);
    }

    /// <summary>
    /// Copies weights (or the EMA weights) into <paramref name="model"/>. Every parameter must be present with
    /// the same shape; the error lists what is missing, extra or of another shape.
    /// </summary>
    public void LoadWeightsInto(Module model, bool ema = false)
    {
        string prefix = ema ? "ema." : WeightPrefix;
        if (ema && !HasEma) throw new InvalidDataException($"{Path} holds no EMA weights.");
        var problems = new List<string>();
        var expected = model.NamedParameters().ToList();
        foreach (var (name, p) in expected)
        {
            if (!File.TryGet(prefix + name, out var e)) { problems.Add($"missing '{prefix + name}' {p.Shape}"); continue; }
            if (!e.Shape.AsSpan().SequenceEqual(p.Shape.Dims)) problems.Add($"'{prefix + name}' is {e.ShapeText}, the model has {p.Shape}");
        }
        var names = expected.Select(e => prefix + e.Name).ToHashSet();
        foreach (var e in File.Entries)
            if (e.Name.StartsWith(prefix, StringComparison.Ordinal) && !e.Name.StartsWith("adam.", StringComparison.Ordinal)
                && !(prefix == "" && e.Name.StartsWith("ema.", StringComparison.Ordinal)) && !names.Contains(e.Name))
                problems.Add($"unexpected '{e.Name}' {e.ShapeText}");
        if (problems.Count > 0)
            throw new InvalidDataException($"{Path} does not fit the model: {string.Join("; ", problems.Take(12))}{(problems.Count > 12 ? $"; and {problems.Count - 12} more" : "")}.");
        foreach (var (name, p) in expected) p.CopyFrom(File[prefix + name].AsFloats());
    }

    /// <summary>Restores the whole training state into a trainer built with compatible configs.</summary>
    public void RestoreInto(Trainer trainer)
    {
        if (!IsTrainingCheckpoint) throw new InvalidDataException($"{Path} is a weights file, not a training checkpoint; it cannot be resumed.");
        if (Model is not null) RequireSame("model", Model, trainer.Model.Config);
        if (Diffusion is not null && Diffusion != trainer.Diffusion.Config)
            throw new InvalidDataException($"{Path}: the diffusion config differs: checkpoint {JsonSerializer.Serialize(Diffusion, Json)}, now {JsonSerializer.Serialize(trainer.Diffusion.Config, Json)}.");
        LoadWeightsInto(trainer.Model);
        foreach (var (name, _, ema) in trainer.Parameters)
        {
            if (ema is null) continue;
            if (!File.TryGet("ema." + name, out var e)) throw new InvalidDataException($"{Path} has no EMA weights but EMA is on.");
            ema.CopyFrom(e.AsFloats());
        }
        foreach (var (name, m, v) in trainer.Optimizer.State)
        {
            if (!File.TryGet("adam.m." + name, out var em) || !File.TryGet("adam.v." + name, out var ev))
                throw new InvalidDataException($"{Path} lacks the Adam moments of '{name}'.");
            m.CopyFrom(em.AsFloats());
            v.CopyFrom(ev.AsFloats());
        }
        trainer.Optimizer.StepCount = Step;
        trainer.SetRandomState(ULong("noise_offset"), ULong("dropout_offset"));
        trainer.Data.Position = (Long("data_epoch"), Long("data_index"));
    }

    private static void RequireSame(string what, UNetConfig a, UNetConfig b)
    {
        string ja = JsonSerializer.Serialize(a, Json), jb = JsonSerializer.Serialize(b, Json);
        if (ja != jb) throw new InvalidDataException($"The checkpoint's {what} config differs from the one asked for: checkpoint {ja}, asked {jb}.");
    }

    private ulong ULong(string key) =>
        File.Metadata.TryGetValue(key, out var s) && ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v)
            ? v : throw new InvalidDataException($"{Path}: header entry '{key}' is missing or not a number.");

    private long Long(string key) =>
        File.Metadata.TryGetValue(key, out var s) && long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v)
            ? v : throw new InvalidDataException($"{Path}: header entry '{key}' is missing or not a number.");
}
