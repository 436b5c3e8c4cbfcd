using System.Globalization;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool.Commands;

/// <summary>Builds a model and its diffusion from a training checkpoint or a plain labml-named weights file.</summary>
public static class ModelLoading
{
    /// <summary>A checkpoint or weights file, or the latest checkpoint of a run folder.</summary>
    public static Checkpoint OpenCheckpoint(string path)
    {
        if (Directory.Exists(path))
            path = FolderModel(path) ?? throw new UserError($"{path} is a folder without a checkpoint (checkpoint-NNNNNNN.safetensors) or {RunFolder.ModelName}.");
        return Open(path, Checkpoint.Load, "checkpoint or weights file");
    }

    /// <summary>The file a run folder given as a checkpoint means: its latest checkpoint, else its final weights; null when it has neither.</summary>
    public static string? FolderModel(string folder) =>
        RunFolder.Latest(folder) ?? (File.Exists(Path.Combine(folder, RunFolder.ModelName)) ? Path.Combine(folder, RunFolder.ModelName) : null);

    /// <summary>Reads a file with <paramref name="load"/>; a missing, unreadable or malformed file is one <see cref="UserError"/> line.</summary>
    public static T Open<T>(string path, Func<string, T> load, string what)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such {what}.");
        try
        {
            return load(path);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            // The line names the file once: a reader's message that begins with it is kept as it is.
            bool named = e is DataFormatException || e.Message.StartsWith(path + ":", StringComparison.Ordinal);
            throw new UserError(named ? e.Message : $"{path}: {e.Message}", e);
        }
    }

    /// <summary>
    /// The model described by the checkpoint's header (or, for a weights file without one, by the model options),
    /// with its weights (EMA weights when <paramref name="ema"/> is true, or by default when the file has them).
    /// </summary>
    public static (UNet Model, DenoiseDiffusion Diffusion, bool UsedEma) Load(Checkpoint ckpt, ModelOptions o, IDiffusionOptions d,
        IBackend be, bool? ema)
    {
        if (ckpt.Model is not null && o.HasModelOverrides)
            throw new UsageError($"{ckpt.Path} describes its own model ({ckpt.Model}); drop the model options.");
        var config = ckpt.Model ?? o.ResolveModel(ModelOptions.PresetNamed("small").Model);
        var model = new UNet(be, config, new PhiloxGenerator(0));
        bool useEma = ema ?? ckpt.HasEma;
        try
        {
            ckpt.LoadWeightsInto(model, useEma);
        }
        catch (InvalidDataException e)
        {
            model.Dispose();
            throw new UserError(e.Message + (ckpt.Model is null ? " (a weights file without a model config in its header takes --preset or the model options)" : ""), e);
        }
        model.Eval();
        return (model, new DenoiseDiffusion(model, d.Resolve(ckpt.Diffusion)), useEma);
    }

    /// <summary>
    /// The class <paramref name="text"/> names in a conditional model: a class name (case-insensitive) or an index
    /// 0..K-1. An unconditional model or an unknown class is a usage error naming the option and the classes.
    /// </summary>
    public static int ResolveClass(UNetConfig mc, string text, string path, string option = "--class")
    {
        if (!mc.IsConditional)
            throw new UsageError($"{option} {text}: {path} holds an unconditional model (trained without classes); drop {option} and --guidance.");
        if (mc.ClassNames is { } names)
        {
            int byName = Array.FindIndex(names, n => string.Equals(n, text.Trim(), StringComparison.OrdinalIgnoreCase));
            if (byName >= 0) return byName;
        }
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int index) && index < mc.NumClasses) return index;
        throw new UsageError($"{option} '{text}' is not a class of {path}; give a name or an index: {ClassList(mc)}.");
    }

    /// <summary>"0 T-shirt/top, 1 Trouser, ..." (or "0..9" when the classes have no names).</summary>
    public static string ClassList(UNetConfig mc) => mc.ClassNames is null
        ? $"0..{mc.NumClasses - 1}"
        : string.Join(", ", mc.ClassNames.Select((n, i) => $"{i} {n}"));

    /// <summary>
    /// Draws <paramref name="n"/> images in chunks of at most <paramref name="chunk"/>, chunk k from seed + k, each
    /// chunk guided by its slice of <paramref name="labels"/> when given. <paramref name="progress"/> sees the chunk,
    /// its first image and the sampler's progress (and may throw to stop). With <paramref name="init"/> ([C, H, W])
    /// every image is an SDEdit of it at <paramref name="strength"/>. <paramref name="predictedX0"/>, when given, sees
    /// the chunk's first image and its predicted x0 ([count, C, H, W], valid during the call) at every step; it does
    /// not change what is drawn. The chunks replay the sampling steps recorded in <paramref name="recordings"/> (the
    /// caller's, kept after the call) or in recordings of this call. Returns [n, C, H, W] on the host.
    /// </summary>
    public static float[] Draw(DenoiseDiffusion diffusion, SamplerOptions o, int n, int chunk, int[]? labels, float guidance,
        Action<int, int, SampleProgress>? progress = null, float[]? init = null, float strength = 1f, Action<int, Tensor>? predictedX0 = null,
        SamplingRecordings? recordings = null)
    {
        using var own = recordings is null ? new SamplingRecordings() : null;
        recordings ??= own;
        var mc = diffusion.EpsModel.Config;
        long per = (long)mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        var data = new float[n * per];
        for (int start = 0, k = 0; start < n; start += chunk, k++)
        {
            int count = Math.Min(chunk, n - start), first = start, chunkIndex = k;
            var condition = labels is null ? null : new ClassCondition(labels[start..(start + count)], guidance);
            using var scope = new TensorScope();
            var sampler = new Sampler(diffusion, condition, recordings);
            Action<SampleProgress> report = p => progress?.Invoke(chunkIndex, first, p);
            Action<int, Tensor, Tensor>? onStep = predictedX0 is null ? null : (_, _, x0) => predictedX0(first, x0);
            var x = init is null
                ? sampler.Sample(count, o.Sampler, o.Steps, o.Eta, o.Seed + (ulong)k, report, onStep)
                : sampler.Edit(Tensor.FromArray(diffusion.EpsModel.Backend, Enumerable.Range(0, count).SelectMany(_ => init).ToArray(),
                    count, mc.ImageChannels, mc.ImageSize, mc.ImageSize), strength, o.Sampler, o.Steps, o.Eta, o.Seed + (ulong)k, report, onStep);
            x.ToArray().CopyTo(data, first * per);
        }
        return data;
    }
}
