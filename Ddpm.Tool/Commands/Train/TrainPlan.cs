using Ddpm.Diffusion;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;

namespace Ddpm.Tool.Commands;

/// <summary>
/// Everything a training run needs, resolved from the options (and the checkpoint it resumes): the model,
/// diffusion and training configurations, the opened data and its loader, the length of the run, and the notes
/// the header line prints about defaults that were adjusted.
/// </summary>
internal sealed record TrainPlan(
    UNetConfig Model,
    DiffusionConfig Diffusion,
    TrainingConfig Training,
    long TotalSteps,
    string DataPath,
    IImageDataset Data,
    DataLoader Loader,
    Checkpoint? Resume,
    string OutFolder,
    IReadOnlyList<string> Notes)
{
    public string CheckpointPath => Path.Combine(OutFolder, "checkpoint.safetensors");

    public static TrainPlan Resolve(TrainOptions o)
    {
        o.Check();
        var range = OptionText.Range(o.DataRangeText, "--data-range");
        Checkpoint? resume = o.Resume is null ? null : ModelLoading.OpenCheckpoint(o.Resume);
        if (resume is not null && !resume.IsTrainingCheckpoint)
            throw new UserError($"{o.Resume} is a weights file, not a training checkpoint; it cannot be resumed.");

        var preset = Presets.Get(o.Preset ?? "small");
        var model = resume?.Model ?? o.ResolveModel(preset.Model);
        // A new run normalises its attention blocks' input (the original DDPM's attention; with labml's, which
        // declares the norm and skips it, attention logits grow until the gradients spike), unless it trains
        // labml's own model (--labml-exact, --preset labml) or says --attn-norm 0.
        if (resume is null && o.AttnNorm is null && !o.LabmlExact && !string.Equals(o.Preset, "labml", StringComparison.OrdinalIgnoreCase))
            model = model with { AttnNorm = true };
        var prediction = o.Prediction ?? (o.LabmlExact ? Prediction.Eps : Prediction.V);
        var diffusion = resume?.Diffusion ?? o.Resolve() with
        {
            DataRange = o.LabmlExact ? DataRange.ZeroToOne : range, ClipX0 = !o.NoClip && !o.LabmlExact, Prediction = prediction,
            LossWeighting = o.LossWeighting, MinSnrGamma = o.MinSnrGamma,
        };
        var training = resume?.Training ?? new TrainingConfig
        {
            BatchSize = o.Batch ?? Math.Min(preset.Batch, 32), LearningRate = o.Lr, WarmupSteps = o.Warmup ?? TrainOptions.DefaultWarmup,
            GradClip = o.GradClip, EmaDecay = o.Ema, Seed = o.Seed, HorizontalFlip = o.HFlip, LrSchedule = o.LrSchedule, LrFinal = o.LrFinal,
            ClassDropout = o.ClassDropout,
        };

        // The CPU backends keep the model and the batch's activations in host memory; refuse a run that cannot fit
        // before the data is read or the model built (a device backend reports its own out-of-memory, as one line).
        // The channel count may still be fitted to the data; it changes only the first and last convolutions.
        if (o.Backend.StartsWith("cpu", StringComparison.OrdinalIgnoreCase))
        {
            long bytes = Math.Max(MemoryEstimate.TrainingBytes(model, training.BatchSize),
                4 * (model.ParameterCount() * 5 + (long)o.Samples * MemoryEstimate.SamplingValuesPerImage(model)));
            MemoryEstimate.Require(bytes, $"training a {model.ParameterCount():N0}-parameter model with --batch {training.BatchSize}");
        }
        string dataPath = o.Data ?? BundledFiles.Data();
        var (data, loader, fittedModel) = OpenData(dataPath, o, model, resume is not null, training, diffusion.DataRange);
        model = fittedModel;

        var notes = new List<string>();
        long totalSteps = o.Steps ?? (o.Epochs is { } ep ? (long)ep * loader.BatchesPerEpoch : 2000);
        if (totalSteps > TrainOptions.MaxSteps)
            throw new UsageError($"--epochs {o.Epochs} makes {totalSteps:N0} steps; at most {TrainOptions.MaxSteps:N0} are allowed.");
        // A short first run (a smoke test) keeps a warm-up of a tenth of its length rather than failing on the
        // default's 100 steps; a warm-up the user asked for is kept and checked.
        if (resume is null && o.Warmup is null && totalSteps < 10L * TrainOptions.DefaultWarmup)
        {
            training = training with { WarmupSteps = (int)(totalSteps / 10) };
            notes.Add($"warm-up shortened to {training.WarmupSteps} steps for a {totalSteps:N0}-step run (--warmup sets it)");
        }
        // A new run decays over its length; a resumed run that is extended stretches its decay to the new end.
        if (training.LrSchedule == LrSchedule.Cosine && (resume is null || totalSteps > training.DecaySteps))
        {
            if (resume is not null)
                notes.Add($"the cosine learning-rate decay now ends at step {totalSteps:N0} instead of {training.DecaySteps:N0}");
            training = training with { DecaySteps = totalSteps };
        }
        if (training.LrSchedule == LrSchedule.Cosine && training.DecaySteps <= training.WarmupSteps)
            throw new UsageError($"the warm-up ({training.WarmupSteps} steps) must be shorter than the run ({totalSteps:N0} steps) for the cosine decay; lower --warmup or use --lr-schedule constant.");
        try { training.Validate(); }
        catch (ConfigValueException e) { throw OptionText.ConfigError(e); }
        return new TrainPlan(model, diffusion, training, totalSteps, dataPath, data, loader, resume, o.Out, notes);
    }

    /// <summary>Opens the images, fits the model's channel count to them where the user did not fix it, and builds the loader.</summary>
    private static (IImageDataset, DataLoader, UNetConfig) OpenData(string dataPath, TrainOptions o, UNetConfig model, bool resuming,
        TrainingConfig training, DataRange range)
    {
        IImageDataset data = Datasets.Open(dataPath, model.ImageSize, model.ImageChannels);
        bool presetIsLabml = string.Equals(o.Preset, "labml", StringComparison.OrdinalIgnoreCase);
        if (resuming && (o.Classes && !model.IsConditional || o.NoClasses && model.IsConditional))
            throw new UsageError($"{(o.Classes ? "--classes" : "--no-classes")}: the checkpoint's model is {(model.IsConditional ? "class-conditional" : "unconditional")} and stays so when resumed; drop the option.");
        bool wantClasses = resuming ? model.IsConditional : o.Classes || (!o.NoClasses && !o.LabmlExact && !presetIsLabml);
        var labelled = wantClasses ? Labels(data, o.Data is null) : null;
        if (o.Classes && labelled is null)
            throw new UsageError($"--classes: {dataPath} has no class labels (the bundled set, CIFAR-10 and image folders with one sub-folder per class have them).");
        if (resuming && model.IsConditional && labelled?.NumClasses != model.NumClasses)
            throw new UserError($"the checkpoint's model is conditional on {model.NumClasses} classes but {dataPath} has {(labelled is null ? "no labels" : $"{labelled.NumClasses} classes")}.");
        if (o.MaxImages is { } max)
        {
            int n = Math.Min(max, data.Count);
            data = labelled is null
                ? new SubsetDataset(data, n)
                : new LabelledDataset(new SubsetDataset(data, n), Enumerable.Range(0, n).Select(labelled.LabelOf).ToArray(), labelled.NumClasses, labelled.ClassNames);
        }
        else if (labelled is not null) data = labelled;
        if (labelled is not null && !resuming)
            model = model with { NumClasses = labelled.NumClasses, ClassNames = labelled.ClassNames?.ToArray() };
        if (data.Channels != model.ImageChannels)
        {
            if (!resuming && o.ImageChannels is null)
                model = model with { ImageChannels = data.Channels };
            else
                throw new UserError($"{dataPath} has {data.Channels}-channel images but the model takes {model.ImageChannels}.");
        }
        if (data.Height > model.ImageSize || data.Width > model.ImageSize || data.Height != data.Width)
            throw new UserError($"{dataPath} has {data.Height}x{data.Width} images; the model is {model.ImageSize}x{model.ImageSize} (square, at least as large: smaller images are padded).");
        try
        {
            var loader = new DataLoader(data, new DataLoaderOptions
            {
                BatchSize = training.BatchSize, Seed = training.Seed, RandomHorizontalFlip = training.HorizontalFlip,
                PadTo = data.Height == model.ImageSize ? 0 : model.ImageSize, Range = range,
            });
            return (data, loader, model);
        }
        catch (ArgumentException e) { throw new UserError($"{dataPath}: {e.Message}"); }
    }

    /// <summary>
    /// The images with their labels, when the data has them: the bundled set's IDX labels (Fashion-MNIST's names),
    /// CIFAR-10's, or an image folder's sub-folders; null otherwise.
    /// </summary>
    private static LabelledDataset? Labels(IImageDataset data, bool bundled)
    {
        switch (data)
        {
            case IdxDataset when bundled:
                string path = BundledFiles.Data(BundledFiles.TrainLabels);
                IdxLabels labels;
                try { labels = IdxLabels.Load(path, KnownClassNames.FashionMnist.Count); }
                catch (Exception e) when (e is IOException or InvalidDataException) { throw new UserError(e.Message, e); }
                if (labels.Count != data.Count)
                    throw new UserError($"{path} has {labels.Count} labels for the {data.Count} bundled images.");
                return new LabelledDataset(data, labels.Values.ToArray().Select(b => (int)b).ToArray(), KnownClassNames.FashionMnist.Count, KnownClassNames.FashionMnist);
            case Cifar10Dataset c:
                return new LabelledDataset(c, c.Labels.ToArray().Select(b => (int)b).ToArray(), KnownClassNames.Cifar10.Count, KnownClassNames.Cifar10);
            case ImageFolderDataset f:
                return f.ByFolder();
            default:
                return null;
        }
    }
}
