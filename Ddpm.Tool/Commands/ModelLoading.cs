using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool.Commands;

/// <summary>Builds a model and its diffusion from a training checkpoint or a plain labml-named weights file.</summary>
public static class ModelLoading
{
    public static Checkpoint OpenCheckpoint(string path)
    {
        if (!File.Exists(path)) throw new UserError($"{path}: no such checkpoint or weights file.");
        try
        {
            return Checkpoint.Load(path);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new UserError(e is DataFormatException ? e.Message : $"{path}: {e.Message}", e);
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
        var config = ckpt.Model ?? o.ResolveModel(Presets.Get("small").Model);
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
}
