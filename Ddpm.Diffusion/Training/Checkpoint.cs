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
/// training configs (JSON), the run's settings, the step, Philox offsets and data position. The metadata key
/// <c>format</c> names the framework as the Hugging Face convention has it (<c>pt</c>: the tensors are laid out as
/// PyTorch's); this project's format is under <see cref="FormatKey"/> (files written before that key existed name
/// it under <c>format</c>, and are read too). A plain labml-named weights file (no prefixes) is read too. Files are
/// written to a temporary file and renamed.
/// </summary>
public sealed class Checkpoint
{
    public const string Format = "ddpm-checkpoint/1";

    /// <summary>The metadata key of this project's file format.</summary>
    public const string FormatKey = "ddpm_format";

    /// <summary>The Hugging Face convention's <c>format</c> value: tensors named and laid out as PyTorch's state_dict.</summary>
    public const string FrameworkFormat = "pt";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    private Checkpoint(string path, SafeTensorsFile file, HeaderValues header)
    {
        Path = path;
        File = file;
        _header = header;
    }

    private readonly HeaderValues _header;

    public string Path { get; }
    public SafeTensorsFile File { get; }
    public bool IsTrainingCheckpoint => _header.IsTrainingCheckpoint;
    public UNetConfig? Model => _header.Model;
    public DiffusionConfig? Diffusion => _header.Diffusion;
    public TrainingConfig? Training => _header.Training;

    /// <summary>The run's settings (length, cadence), when the checkpoint records them.</summary>
    public RunSettings? Run => _header.Run;
    public long Step => _header.Step ?? 0;
    public bool HasEma => File.Entries.Any(e => e.Name.StartsWith("ema.", StringComparison.Ordinal));
    private string WeightPrefix => IsTrainingCheckpoint ? "model." : "";

    /// <summary>What the header's metadata says, every value checked.</summary>
    private sealed record HeaderValues(bool IsTrainingCheckpoint, UNetConfig? Model, DiffusionConfig? Diffusion, TrainingConfig? Training,
        RunSettings? Run, long? Step, ulong? NoiseOffset, ulong? DropoutOffset, long? DataEpoch, long? DataIndex);

    /// <summary>
    /// Reads a checkpoint or weights file. Every header value is checked before any tensor data is read: the
    /// configs by the same <c>Validate</c> rules as the command-line options (including the model's size
    /// bounds), the counters as non-negative integers that agree with each other (<see cref="CheckCounters"/>);
    /// then every tensor must be floating-point and finite, and Adam's second moments not negative. Any problem
    /// throws <see cref="SafeTensorsFormatException"/> naming the file and the key or tensor.
    /// </summary>
    public static Checkpoint Load(string path)
    {
        HeaderValues? header = null;
        var file = SafeTensorsFile.Read(path, h =>
        {
            header = ParseHeader(path, h.Metadata);
            CheckCounters(path, header);
            if (header.Model is { } model) CheckParameterCount(path, model, h, header.IsTrainingCheckpoint);
        });
        foreach (var e in file.Entries)
        {
            if (!e.IsFloat)
                throw new SafeTensorsFormatException(path, e.Name, $"dtype {e.DType} is not a floating-point type; model tensors are F32 (or F16, BF16, F64)");
            long bad = e.FirstNonFinite();
            if (bad >= 0)
                throw new SafeTensorsFormatException(path, e.Name,
                    $"value {bad} of {e.ShapeText} is {e.Floats![bad]}; a model's tensors must be finite (was it saved after training diverged?)");
            if (e.Name.StartsWith("adam.v.", StringComparison.Ordinal) && Array.FindIndex(e.Floats!, v => v < 0) is var negative and >= 0)
                throw new SafeTensorsFormatException(path, e.Name,
                    $"value {negative} of {e.ShapeText} is {e.Floats![negative]}; Adam's second moments are running means of squared gradients and cannot be negative");
        }
        return new Checkpoint(path, file, header!);
    }

    /// <summary>
    /// The config's parameter count (arithmetic, nothing built) must equal the elements the file holds for the
    /// weights and for the EMA weights: a header that describes another model is refused before the model is
    /// built, so the model the header asks for is never larger than the file that carries it.
    /// </summary>
    internal static void CheckParameterCount(string path, UNetConfig model, SafeTensorsHeader h, bool training)
    {
        long expected = model.ParameterCount();
        long weights = 0, ema = 0;
        bool hasEma = false;
        foreach (var t in h.Tensors)
        {
            if (t.Name.StartsWith("ema.", StringComparison.Ordinal)) { ema += t.Count; hasEma = true; }
            else if (training ? t.Name.StartsWith("model.", StringComparison.Ordinal) : !t.Name.StartsWith("adam.", StringComparison.Ordinal)) weights += t.Count;
        }
        if (weights != expected)
            throw new SafeTensorsFormatException(path, null,
                $"header key \"model\" describes a model of {expected:N0} parameters but the file holds {weights:N0} weight values");
        if (hasEma && ema != expected)
            throw new SafeTensorsFormatException(path, null,
                $"header key \"model\" describes a model of {expected:N0} parameters but the file holds {ema:N0} EMA values");
    }

    private static HeaderValues ParseHeader(string path, IReadOnlyDictionary<string, string> m) => new(
        IsFormat(m, Format),
        ParseConfig<UNetConfig>(path, m, "model", c => c.Validate()),
        ParseConfig<DiffusionConfig>(path, m, "diffusion", c => c.Validate()),
        ParseConfig<TrainingConfig>(path, m, "training", c => c.Validate()),
        ParseConfig<RunSettings>(path, m, "run", c => c.Validate()),
        ParseInteger<long>(path, m, "step", s => long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : null),
        ParseInteger<ulong>(path, m, "noise_offset", s => ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : null),
        ParseInteger<ulong>(path, m, "dropout_offset", s => ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : null),
        ParseInteger<long>(path, m, "data_epoch", s => long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : null),
        ParseInteger<long>(path, m, "data_index", s => long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : null));

    /// <summary>Whether metadata <paramref name="m"/> names this project's <paramref name="format"/> (under <see cref="FormatKey"/>, or under <c>format</c> in older files).</summary>
    public static bool IsFormat(IReadOnlyDictionary<string, string> m, string format) =>
        m.TryGetValue(FormatKey, out var f) ? f == format : m.TryGetValue("format", out var old) && old == format;

    /// <summary>The format keys of a file of this project's <paramref name="format"/>.</summary>
    public static void AddFormat(IDictionary<string, string> meta, string format)
    {
        meta["format"] = FrameworkFormat;
        meta[FormatKey] = format;
    }

    /// <summary>
    /// The step and the data position must be reachable together: a step never exceeds
    /// <see cref="TrainingConfig.MaxSteps"/>, and each step takes one batch, so the position (epoch, batch in the
    /// epoch) moves by at most one of the two per step (a resume with other data keeps it) and
    /// data_epoch + data_index never exceeds the step.
    /// </summary>
    private static void CheckCounters(string path, HeaderValues h)
    {
        if (h.Step > TrainingConfig.MaxSteps)
            throw new SafeTensorsFormatException(path, null, $"header key \"step\": {h.Step} is more than the {TrainingConfig.MaxSteps:N0} steps a run may have");
        if (h.Step is not { } step) return;
        long epoch = h.DataEpoch ?? 0, index = h.DataIndex ?? 0;
        if (epoch > step - index)
            throw new SafeTensorsFormatException(path, null,
                $"header keys \"data_epoch\" {epoch} and \"data_index\" {index}: a run at step {step} has read {step} batches and cannot have reached that position");
    }

    internal static T? ParseConfig<T>(string path, IReadOnlyDictionary<string, string> m, string key, Action<T> validate) where T : class
    {
        if (!m.TryGetValue(key, out var json)) return null;
        T? config;
        try
        {
            config = JsonSerializer.Deserialize<T>(json, Json);
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or ArgumentException)
        {
            throw new SafeTensorsFormatException(path, null, $"header key \"{key}\" is not a valid {key} config ({DataFormatException.OneLine(e.Message)})", e);
        }
        if (config is null)
            throw new SafeTensorsFormatException(path, null, $"header key \"{key}\" is null, not a {key} config");
        try
        {
            validate(config);
        }
        catch (ConfigValueException e)
        {
            throw new SafeTensorsFormatException(path, null, $"header key \"{key}.{e.Key}\": {e.Problem}", e);
        }
        return config;
    }

    private static TValue? ParseInteger<TValue>(string path, IReadOnlyDictionary<string, string> m, string key, Func<string, TValue?> parse)
        where TValue : struct
    {
        if (!m.TryGetValue(key, out var s)) return null;
        return parse(s) ?? throw new SafeTensorsFormatException(path, null,
            $"header key \"{key}\": \"{DataFormatException.Quote(s)}\" is not a non-negative integer");
    }

    /// <summary>
    /// Writes the whole training state atomically through <paramref name="files"/> (null: the disk): <see cref="Capture"/>
    /// then <see cref="State.Write"/>. A state with a non-finite weight, EMA weight or Adam moment (training
    /// diverged) is refused with <see cref="NonFiniteStateException"/> before anything is written, so the
    /// checkpoint already on disk stays the last good one.
    /// </summary>
    public static void Save(string path, Trainer trainer, RunSettings? run = null, IReadOnlyDictionary<string, string>? extra = null,
        IOutputFiles? files = null) => Capture(path, trainer, run, extra).Write(files);

    /// <summary>
    /// The whole training state of <paramref name="trainer"/> as it is now, copied to host memory and checked to be
    /// finite (else <see cref="NonFiniteStateException"/>), to be written to <paramref name="path"/> later: a run
    /// captures a step's state, writes that step's other files, then the checkpoint, so a checkpoint on disk
    /// always comes with everything its step wrote.
    /// </summary>
    public static State Capture(string path, Trainer trainer, RunSettings? run = null, IReadOnlyDictionary<string, string>? extra = null)
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
            ["model"] = JsonSerializer.Serialize(trainer.Model.Config, Json),
            ["diffusion"] = JsonSerializer.Serialize(trainer.Diffusion.Config, Json),
            ["training"] = JsonSerializer.Serialize(trainer.Config, Json),
            ["step"] = trainer.StepCount.ToString(CultureInfo.InvariantCulture),
            ["noise_offset"] = trainer.NoiseGenerator.Offset.ToString(CultureInfo.InvariantCulture),
            ["dropout_offset"] = trainer.DropoutGenerator.Offset.ToString(CultureInfo.InvariantCulture),
            ["data_epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["data_index"] = index.ToString(CultureInfo.InvariantCulture),
        };
        AddFormat(meta, Format);
        if (run is not null) meta["run"] = JsonSerializer.Serialize(run, Json);
        if (extra is not null) foreach (var kv in extra) meta[kv.Key] = kv.Value;
        RequireFinite(path, entries);
        return new State(path, trainer.StepCount, entries, meta);
    }

    /// <summary>A captured training state (<see cref="Capture"/>): finite, in host memory, not yet written.</summary>
    public sealed class State
    {
        private readonly List<SafeTensorEntry> _entries;
        private readonly Dictionary<string, string> _meta;

        internal State(string path, long step, List<SafeTensorEntry> entries, Dictionary<string, string> meta)
        {
            Path = path;
            Step = step;
            _entries = entries;
            _meta = meta;
        }

        /// <summary>Where it is written.</summary>
        public string Path { get; }

        /// <summary>The step it is of.</summary>
        public long Step { get; }

        /// <summary>Writes it atomically through <paramref name="files"/> (null: the disk).</summary>
        public void Write(IOutputFiles? files = null) => SafeTensorsFile.Write(Path, _entries, _meta, files);
    }

    /// <summary>
    /// Writes a model's weights alone under labml's names (interchange with PyTorch), with the model's and the
    /// diffusion's configs when given (so the file samples as it was trained), in F16 when <paramref name="half"/>
    /// (float32 again when read); non-finite weights (also after rounding to half) are refused as by <see cref="Save"/>.
    /// </summary>
    public static void SaveWeights(string path, Module model, UNetConfig? config = null, DiffusionConfig? diffusion = null,
        bool half = false, IReadOnlyDictionary<string, string>? extra = null, IOutputFiles? files = null)
    {
        var entries = model.NamedParameters().Select(p => half
            ? SafeTensorEntry.F16(p.Name, p.Param.Shape.ToArray(), p.Param.ToArray())
            : SafeTensorEntry.F32(p.Name, p.Param.Shape.ToArray(), p.Param.ToArray())).ToList();
        var meta = new Dictionary<string, string> { ["format"] = FrameworkFormat };
        if (extra is not null) foreach (var kv in extra) meta[kv.Key] = kv.Value;
        if (config is not null) meta["model"] = JsonSerializer.Serialize(config, Json);
        if (diffusion is not null) meta["diffusion"] = JsonSerializer.Serialize(diffusion, Json);
        RequireFinite(path, entries);
        SafeTensorsFile.Write(path, entries, meta, files);
    }

    /// <summary>One pass over the host copies that are about to be written: the first non-finite value stops the save.</summary>
    private static void RequireFinite(string path, List<SafeTensorEntry> entries)
    {
        if (SafeTensorEntry.FirstNonFinite(entries) is (var e, var bad)) throw new NonFiniteStateException(path, e.Name, bad, e.Floats![bad]);
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
            if (!e.Shape.AsSpan().SequenceEqual(p.Shape.Dims)) problems.Add($"'{Quote(e.Name)}' is {e.ShapeText}, the model has {p.Shape}");
        }
        var names = expected.Select(e => prefix + e.Name).ToHashSet();
        foreach (var e in File.Entries)
            if (e.Name.StartsWith(prefix, StringComparison.Ordinal) && !e.Name.StartsWith("adam.", StringComparison.Ordinal)
                && !(prefix == "" && e.Name.StartsWith("ema.", StringComparison.Ordinal)) && !names.Contains(e.Name))
                problems.Add($"unexpected '{Quote(e.Name)}' {e.ShapeText}");
        if (problems.Count > 0)
            throw new InvalidDataException($"{Path} does not fit the model: {string.Join("; ", problems.Take(12))}{(problems.Count > 12 ? $"; and {problems.Count - 12} more" : "")}.");
        foreach (var (name, p) in expected) p.CopyFrom(File[prefix + name].AsFloats());
    }

    /// <summary>
    /// Restores the whole training state into a trainer built with compatible configs. Every tensor it needs
    /// (weights, EMA, both Adam moments) and the data position are checked against the trainer before anything
    /// is copied, so a refused checkpoint leaves the trainer as it was.
    /// </summary>
    public void RestoreInto(Trainer trainer)
    {
        if (!IsTrainingCheckpoint) throw new InvalidDataException($"{Path} is a weights file, not a training checkpoint; it cannot be resumed.");
        if (Model is not null) RequireSame("model", Model, trainer.Model.Config);
        if (Diffusion is not null && Diffusion != trainer.Diffusion.Config)
            throw new InvalidDataException($"{Path}: the diffusion config differs: checkpoint {JsonSerializer.Serialize(Diffusion, Json)}, now {JsonSerializer.Serialize(trainer.Diffusion.Config, Json)}.");
        var problems = new List<string>();
        void Need(string name, Shape shape)
        {
            if (!File.TryGet(name, out var e)) problems.Add($"missing '{name}' {shape}");
            else if (!e.Shape.AsSpan().SequenceEqual(shape.Dims)) problems.Add($"'{name}' is {e.ShapeText}, the model has {shape}");
        }
        foreach (var (name, p, ema) in trainer.Parameters)
            if (ema is not null) Need("ema." + name, p.Shape);
        foreach (var (name, m, v) in trainer.Optimizer.State)
        {
            Need("adam.m." + name, m.Shape);
            Need("adam.v." + name, v.Shape);
        }
        if (problems.Count > 0)
            throw new InvalidDataException($"{Path} cannot resume this training: {string.Join("; ", problems.Take(12))}{(problems.Count > 12 ? $"; and {problems.Count - 12} more" : "")}.");
        var position = (Required(_header.DataEpoch, "data_epoch"), Required(_header.DataIndex, "data_index"));
        ulong noise = Required(_header.NoiseOffset, "noise_offset"), dropout = Required(_header.DropoutOffset, "dropout_offset");
        long step = Required(_header.Step, "step");
        var saved = trainer.Data.Position;
        try
        {
            trainer.Data.Position = position;
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{Path}: header keys \"data_epoch\", \"data_index\": {e.Message}", e);
        }
        trainer.Data.Position = saved;

        LoadWeightsInto(trainer.Model);
        foreach (var (name, _, ema) in trainer.Parameters)
            if (ema is not null) ema.CopyFrom(File["ema." + name].AsFloats());
        foreach (var (name, m, v) in trainer.Optimizer.State)
        {
            m.CopyFrom(File["adam.m." + name].AsFloats());
            v.CopyFrom(File["adam.v." + name].AsFloats());
        }
        trainer.Optimizer.StepCount = step;
        trainer.SetRandomState(noise, dropout);
        trainer.Data.Position = position;
    }

    private static void RequireSame(string what, UNetConfig a, UNetConfig b)
    {
        string ja = JsonSerializer.Serialize(a, Json), jb = JsonSerializer.Serialize(b, Json);
        if (ja != jb) throw new InvalidDataException($"The checkpoint's {what} config differs from the one asked for: checkpoint {ja}, asked {jb}.");
    }

    private T Required<T>(T? value, string key) where T : struct =>
        value ?? throw new InvalidDataException($"{Path}: header key \"{key}\" is missing; a training checkpoint records it.");

    private static string Quote(string text) => DataFormatException.Quote(text);
}

/// <summary>
/// A save refused because the state holds a non-finite value (training diverged); nothing was written and the
/// file at <see cref="Path"/>, if any, is unchanged.
/// </summary>
public sealed class NonFiniteStateException(string path, string tensor, long index, float value)
    : InvalidOperationException($"{path} was not written: value {index} of '{tensor}' is {value}; a model's tensors must be finite.")
{
    public string Path { get; } = path;
    /// <summary>The tensor as it would have been named in the file (model.*, ema.*, adam.m.*, adam.v.*).</summary>
    public string Tensor { get; } = tensor;
}
