using System.Globalization;
using System.Text.Json;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// One training step, complete enough to be computed again anywhere: the weights it started from, its batch
/// (images, timesteps, noise, class labels after the label drop), the dropout stream's position, and the loss and
/// gradient (before clipping) the trainer computed. <see cref="Replay"/> recomputes the loss and gradient on any
/// backend; the file (one safetensors, <see cref="Format"/>) holds the weights under labml's names
/// (<c>model.NAME</c>), the gradients as <c>grad.NAME</c>, and <c>x0</c>, <c>noise</c> (F32 [B, C, H, W]),
/// <c>t</c> and <c>labels</c> (I64 [B]), so PyTorch can replay it too
/// (<c>tests/Ddpm.Benchmarks/pytorch/replay_step.py</c>).
/// </summary>
public sealed class StepRecord
{
    public const string Format = "ddpm-step/1";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    public required UNetConfig Model { get; init; }
    public required DiffusionConfig Diffusion { get; init; }
    /// <summary>The 1-based step this record is of (the weights are those before it).</summary>
    public required long Step { get; init; }
    public required float Loss { get; init; }
    /// <summary>The gradient norm before clipping, as the trainer logged it.</summary>
    public required double GradNorm { get; init; }
    public required float LearningRate { get; init; }
    public required ulong DropoutSeed { get; init; }
    public required ulong DropoutOffset { get; init; }
    /// <summary>Every parameter, in the model's order, under its labml name.</summary>
    public required IReadOnlyList<(string Name, int[] Shape, float[] Values)> Weights { get; init; }
    /// <summary>The gradient of every trainable parameter, before clipping.</summary>
    public required IReadOnlyDictionary<string, float[]> Gradients { get; init; }
    public required int Batch { get; init; }
    public required float[] X0 { get; init; }
    public required int[] Timesteps { get; init; }
    public required float[] Noise { get; init; }
    /// <summary>The labels the step trained on (the null class where dropped); null for an unconditional model.</summary>
    public int[]? Labels { get; init; }

    public int[] ImageShape => [Batch, Model.ImageChannels, Model.ImageSize, Model.ImageSize];

    /// <summary>The parameters by their share of the squared gradient norm, largest first.</summary>
    public IEnumerable<(string Name, double Norm, double Share)> LargestGradients()
    {
        var norms = Gradients.Select(kv => (kv.Key, Norm: Math.Sqrt(kv.Value.Sum(v => (double)v * v)))).ToList();
        double total = norms.Sum(n => n.Norm * n.Norm);
        return norms.OrderByDescending(n => n.Norm).Select(n => (n.Key, n.Norm, total > 0 ? n.Norm * n.Norm / total : 0));
    }

    /// <summary>
    /// The step's loss and gradients computed again on <paramref name="backend"/>: the model in training mode
    /// with the recorded weights, dropout stream and batch. Returns the gradients of the trainable parameters.
    /// </summary>
    public (float Loss, Dictionary<string, float[]> Gradients) Replay(IBackend backend)
    {
        using var unet = new UNet(backend, Model, new PhiloxGenerator(0));
        var byName = Weights.ToDictionary(w => w.Name);
        var problems = new List<string>();
        var expected = unet.NamedParameters().ToList();
        foreach (var (name, p) in expected)
        {
            if (!byName.TryGetValue(name, out var w)) problems.Add($"missing 'model.{name}' {p.Shape}");
            else if (!w.Shape.AsSpan().SequenceEqual(p.Shape.Dims)) problems.Add($"'model.{name}' is [{string.Join(",", w.Shape)}], the model has {p.Shape}");
            else if (p.RequiresGrad && !Gradients.ContainsKey(name)) problems.Add($"missing 'grad.{name}' {p.Shape}");
        }
        var names = expected.Select(e => e.Name).ToHashSet();
        problems.AddRange(byName.Keys.Where(n => !names.Contains(n)).Select(n => $"unexpected 'model.{DataFormatException.Quote(n)}'"));
        if (problems.Count > 0)
            throw new InvalidDataException($"The recorded step does not fit its model config: {string.Join("; ", problems.Take(12))}{(problems.Count > 12 ? $"; and {problems.Count - 12} more" : "")}.");
        foreach (var (name, p) in expected) p.CopyFrom(byName[name].Values);
        unet.Train();
        unet.SetDropoutGenerator(new PhiloxGenerator(DropoutSeed, DropoutOffset));
        var diffusion = new DenoiseDiffusion(unet, Diffusion);
        unet.ZeroGrad();
        float loss;
        using (var scope = new TensorScope())
        {
            var x0 = Tensor.FromArray(backend, X0, ImageShape);
            var noise = Tensor.FromArray(backend, Noise, ImageShape);
            var l = diffusion.Loss(x0, Timesteps, noise, Labels);
            l.Backward();
            loss = l.ToArray()[0];
        }
        var grads = new Dictionary<string, float[]>();
        foreach (var (name, p) in unet.NamedParameters())
            if (p.RequiresGrad) grads[name] = p.Grad?.ToArray() ?? new float[p.Size];
        unet.ZeroGrad();
        return (loss, grads);
    }

    /// <summary>Writes the record atomically through <paramref name="files"/> (null: the disk).</summary>
    public void Save(string path, IOutputFiles? files = null)
    {
        var entries = new List<SafeTensorEntry>();
        foreach (var (name, shape, values) in Weights)
        {
            entries.Add(SafeTensorEntry.F32("model." + name, shape, values));
            if (Gradients.TryGetValue(name, out var g)) entries.Add(SafeTensorEntry.F32("grad." + name, shape, g));
        }
        entries.Add(SafeTensorEntry.F32("x0", ImageShape, X0));
        entries.Add(SafeTensorEntry.F32("noise", ImageShape, Noise));
        entries.Add(SafeTensorEntry.I64("t", [Batch], Timesteps.Select(t => (long)t).ToArray()));
        if (Labels is not null) entries.Add(SafeTensorEntry.I64("labels", [Batch], Labels.Select(l => (long)l).ToArray()));
        var meta = new Dictionary<string, string>
        {
            ["model"] = JsonSerializer.Serialize(Model, Json),
            ["diffusion"] = JsonSerializer.Serialize(Diffusion, Json),
            ["step"] = Step.ToString(CultureInfo.InvariantCulture),
            ["loss"] = Loss.ToString("R", CultureInfo.InvariantCulture),
            ["grad_norm"] = GradNorm.ToString("R", CultureInfo.InvariantCulture),
            ["lr"] = LearningRate.ToString("R", CultureInfo.InvariantCulture),
            ["dropout_seed"] = DropoutSeed.ToString(CultureInfo.InvariantCulture),
            ["dropout_offset"] = DropoutOffset.ToString(CultureInfo.InvariantCulture),
        };
        Checkpoint.AddFormat(meta, Format);
        SafeTensorsFile.Write(path, entries, meta, files);
    }

    /// <summary>
    /// Reads a record. The header is checked before any tensor is read (format, configs by their own rules, the
    /// parameter count against the file); then every tensor's shape, the timesteps and labels against their
    /// ranges, and every float for finiteness. Problems throw <see cref="SafeTensorsFormatException"/> naming the
    /// file and the key or tensor.
    /// </summary>
    public static StepRecord Load(string path)
    {
        UNetConfig? model = null;
        DiffusionConfig? diffusion = null;
        IReadOnlyDictionary<string, string> meta = new Dictionary<string, string>();
        var file = SafeTensorsFile.Read(path, h =>
        {
            meta = h.Metadata;
            if (!Checkpoint.IsFormat(h.Metadata, Format))
                throw new SafeTensorsFormatException(path, null, $"header key \"{Checkpoint.FormatKey}\" is not \"{Format}\"; this is not a recorded training step (train --save-spikes writes them)");
            model = Checkpoint.ParseConfig<UNetConfig>(path, h.Metadata, "model", c => c.Validate())
                ?? throw new SafeTensorsFormatException(path, null, "header key \"model\" is missing");
            diffusion = Checkpoint.ParseConfig<DiffusionConfig>(path, h.Metadata, "diffusion", c => c.Validate())
                ?? throw new SafeTensorsFormatException(path, null, "header key \"diffusion\" is missing");
            Checkpoint.CheckParameterCount(path, model, h, training: true);
        });
        var m = model!;
        var d = diffusion!;
        SafeTensorEntry Need(string name, SafeTensorsDType? kind = null)
        {
            if (!file.TryGet(name, out var e)) throw new SafeTensorsFormatException(path, name, "is missing");
            if (kind == SafeTensorsDType.I64 ? e.IsFloat : !e.IsFloat)
                throw new SafeTensorsFormatException(path, name, $"dtype {e.DType} is not {(kind == SafeTensorsDType.I64 ? "an integer type" : "a floating-point type")}");
            if (e.IsFloat && e.FirstNonFinite() is var bad and >= 0)
                throw new SafeTensorsFormatException(path, name, $"value {bad} of {e.ShapeText} is {e.Floats![bad]}; a recorded step is finite");
            return e;
        }
        var x0 = Need("x0");
        if (x0.Shape.Length != 4 || x0.Shape[0] < 1 || x0.Shape[1] != m.ImageChannels || x0.Shape[2] != m.ImageSize || x0.Shape[3] != m.ImageSize)
            throw new SafeTensorsFormatException(path, "x0", $"is {x0.ShapeText}; the model takes [B,{m.ImageChannels},{m.ImageSize},{m.ImageSize}]");
        int batch = x0.Shape[0];
        var noise = Need("noise");
        if (!noise.Shape.AsSpan().SequenceEqual(x0.Shape)) throw new SafeTensorsFormatException(path, "noise", $"is {noise.ShapeText}, x0 is {x0.ShapeText}");
        int[] Ints(string name, int max, string what)
        {
            var e = Need(name, SafeTensorsDType.I64);
            if (e.Shape.Length != 1 || e.Shape[0] != batch) throw new SafeTensorsFormatException(path, name, $"is {e.ShapeText}; the batch has {batch} samples");
            var v = e.AsLongs();
            for (int i = 0; i < v.Length; i++)
                if (v[i] < 0 || v[i] > max) throw new SafeTensorsFormatException(path, name, $"value {i} is {v[i]}, not {what} (0 .. {max})");
            return v.Select(x => (int)x).ToArray();
        }
        var t = Ints("t", d.NSteps - 1, "a timestep");
        int[]? labels = m.IsConditional ? Ints("labels", m.NullClass, "a class or the null class") : null;

        // Names and shapes are checked against the model when it is built (Replay); here every weight is a finite
        // float tensor and every gradient has the shape of its weight.
        var weights = new List<(string, int[], float[])>();
        var grads = new Dictionary<string, float[]>();
        foreach (var e in file.Entries)
        {
            if (!e.Name.StartsWith("model.", StringComparison.Ordinal)) continue;
            string name = e.Name["model.".Length..];
            weights.Add((name, e.Shape, Need(e.Name).AsFloats()));
            if (!file.Contains("grad." + name)) continue;
            var g = Need("grad." + name);
            if (!g.Shape.AsSpan().SequenceEqual(e.Shape)) throw new SafeTensorsFormatException(path, g.Name, $"is {g.ShapeText}, its weight is {e.ShapeText}");
            grads[name] = g.AsFloats();
        }
        foreach (var e in file.Entries)
            if (e.Name.StartsWith("grad.", StringComparison.Ordinal) && !file.Contains("model." + e.Name["grad.".Length..]))
                throw new SafeTensorsFormatException(path, e.Name, "has no weight (model." + e.Name["grad.".Length..] + ")");
        float Number(string key)
        {
            if (meta.TryGetValue(key, out var s) && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v)) return (float)v;
            throw new SafeTensorsFormatException(path, null, $"header key \"{key}\" is missing or not a finite number");
        }
        ulong Count(string key)
        {
            if (meta.TryGetValue(key, out var s) && ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v)) return v;
            throw new SafeTensorsFormatException(path, null, $"header key \"{key}\" is missing or not a non-negative integer");
        }
        return new StepRecord
        {
            Model = m, Diffusion = d, Step = (long)Math.Min(Count("step"), long.MaxValue), Loss = Number("loss"), GradNorm = Number("grad_norm"),
            LearningRate = Number("lr"), DropoutSeed = Count("dropout_seed"), DropoutOffset = Count("dropout_offset"),
            Weights = weights, Gradients = grads, Batch = batch, X0 = x0.AsFloats(), Noise = noise.AsFloats(), Timesteps = t, Labels = labels,
        };
    }
}
