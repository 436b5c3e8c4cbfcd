using System.Text.Json;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;

namespace Ddpm.Diffusion.Training;

/// <summary>The model, diffusion, training and run settings of a run, resolved from a recipe before its data is read.</summary>
public sealed record RunConfigs(UNetConfig Model, DiffusionConfig Diffusion, TrainingConfig Training, RunSettings Run, TrainingRecipe Recipe, Checkpoint? Resume)
{
    /// <summary>Whether the model is labml's own (labml's DDPM, or the labml preset): no attention norm, no classes by default.</summary>
    public bool IsLabmlModel => Run.LabmlExact || string.Equals(Run.Preset, "labml", StringComparison.OrdinalIgnoreCase);
}

/// <summary>
/// Everything a training run needs: the configurations, the opened data and its loader, the length of the run,
/// the checkpoint it resumes (or null), and notes about defaults that were adjusted to the run.
/// </summary>
public sealed record RunPlan(UNetConfig Model, DiffusionConfig Diffusion, TrainingConfig Training, RunSettings Run,
    IImageDataset Data, DataLoader Loader, Checkpoint? Resume, IReadOnlyList<string> Notes)
{
    /// <summary>The step the run ends at.</summary>
    public long TotalSteps => Run.Steps;

    /// <summary>The resolved configuration as config.json writes it.</summary>
    public string ConfigJson() => TrainingRecipe.Write(Model, Diffusion, Training, Run);
}

/// <summary>
/// The recipes of training runs: the defaults <c>ddpm-tool train</c> applies, in the library, so a program that
/// plans a run with the same recipe trains the same model, bit for bit. A new run starts from its preset's model
/// with the attention blocks' norm applied (labml's own model, <c>--labml-exact</c> or the labml preset, skips it),
/// v prediction (eps for labml's DDPM), Adam at 1e-3 after a warm-up of 100 steps (a tenth of runs under 1,000
/// steps), a cosine decay to 0 at the run's last step, gradient clipping at 1, an EMA of 0.995, a batch of the
/// preset's benchmark batch but at most 32, and a class-conditional model (10 % of labels dropped) when the data
/// has labels. A resumed run keeps its checkpoint's configurations; only the run settings (length, cadence) may change.
/// </summary>
public static class Recipes
{
    /// <summary>The warm-up of a run that does not set one, when the run is long enough for it.</summary>
    public const int DefaultWarmup = 100;

    /// <summary>The batch a run uses when neither the recipe nor a small preset sets a smaller one.</summary>
    public const int DefaultBatch = 32;

    /// <summary>The training defaults of a new run of <paramref name="preset"/>.</summary>
    public static TrainingConfig DefaultTraining(Presets.Preset preset) => new()
    {
        BatchSize = Math.Min(preset.Batch, DefaultBatch), LearningRate = 1e-3f, WarmupSteps = DefaultWarmup, GradClip = 1f, EmaDecay = 0.995f,
        LrSchedule = LrSchedule.Cosine, LrFinal = 0f, ClassDropout = 0.1f,
    };

    /// <summary>
    /// The configurations of <paramref name="recipe"/> (laid over <paramref name="resume"/>'s when it is given).
    /// A value that cannot work is a <see cref="ConfigValueException"/> naming its key; a resumed run refuses a
    /// model, diffusion or training value that differs from its checkpoint's.
    /// </summary>
    public static RunConfigs Resolve(TrainingRecipe recipe, Checkpoint? resume = null)
    {
        if (resume is not null) return ResolveResumed(recipe, resume);
        var run = Checked(recipe.Apply("run", new RunSettings()), r => r.Validate());
        var preset = Presets.Get(run.Preset);
        bool labml = run.LabmlExact || string.Equals(preset.Name, "labml", StringComparison.OrdinalIgnoreCase);
        if (run.LabmlExact)
        {
            // labml's DDPM is one fixed recipe: the values that would change it are refused rather than mixed in.
            foreach (var (section, key, allowed) in new (string, string, object)[]
            {
                ("model", "attn_norm", false), ("diffusion", "prediction", Prediction.Eps), ("diffusion", "loss_weighting", LossWeighting.Uniform), ("run", "classes", false),
            })
                if (recipe.Value(section, key) is { } asked && asked.ToJsonString() != JsonSerializer.Serialize(allowed, allowed.GetType(), TrainingRecipe.Json))
                    throw new ConfigValueException(key, $"{asked.ToJsonString()} is not labml's ({allowed}); labml_exact trains labml's DDPM exactly.");
        }
        var model = Checked(recipe.Apply("model", preset.Model with { AttnNorm = !labml }), m => m.Validate());
        var diffusionBase = run.LabmlExact ? DiffusionConfig.LabmlExact : new DiffusionConfig { Prediction = Prediction.V };
        var diffusion = Checked(recipe.Apply("diffusion", diffusionBase), d => d.Validate());
        // Each value is checked now, before the data is read; the warm-up and decay are fitted to the run's length later.
        var training = Checked(recipe.Apply("training", DefaultTraining(preset)), t => t.ValidateValues());
        return new RunConfigs(model, diffusion, training, run, recipe, null);
    }

    private static RunConfigs ResolveResumed(TrainingRecipe recipe, Checkpoint resume)
    {
        if (!resume.IsTrainingCheckpoint || resume.Model is null || resume.Diffusion is null || resume.Training is null)
            throw new InvalidDataException($"{resume.Path} is a weights file, not a training checkpoint; it cannot be resumed.");
        // The run settings of the checkpoint (older checkpoints have none: the defaults) with the recipe's laid over them.
        var run = Checked(recipe.Apply("run", resume.Run ?? new RunSettings { Steps = Math.Max(resume.Training.DecaySteps, resume.Step) }), r => r.Validate());
        foreach (var (section, config) in new (string, object)[] { ("model", resume.Model), ("diffusion", resume.Diffusion), ("training", resume.Training) })
            foreach (var key in recipe.Keys(section))
            {
                if (section == "training" && key == "decay_steps") continue;
                object asked = section switch
                {
                    "model" => recipe.Apply("model", resume.Model),
                    "diffusion" => recipe.Apply("diffusion", resume.Diffusion),
                    _ => recipe.Apply("training", resume.Training),
                };
                string was = ValueOf(config, key), now = ValueOf(asked, key);
                if (was != now)
                    throw new ConfigValueException(key, $"{now}: the checkpoint {resume.Path} has {was}, and a resumed run keeps its checkpoint's configuration; drop it or start a new run.");
            }
        if (run.Classes is { } classes && classes != resume.Model.IsConditional)
            throw new ConfigValueException("classes", $"{(classes ? "true" : "false")}: the checkpoint's model is {(resume.Model.IsConditional ? "class-conditional" : "unconditional")} and stays so when resumed; drop it.");
        return new RunConfigs(resume.Model, resume.Diffusion, resume.Training, run, recipe, resume);
    }

    /// <summary>
    /// The plan of a run on <paramref name="data"/>: a labelled set (<see cref="ILabelledDataset"/>; see
    /// <see cref="TrainingData.WithLabels"/>) trains a class-conditional model unless the run says otherwise, the
    /// model's channels follow the data unless the recipe sets them, smaller images are padded, the length is
    /// the run's steps (or epochs), and the warm-up and the cosine decay fit that length.
    /// Problems with the data are <see cref="InvalidDataException"/>s naming <paramref name="dataName"/>; with a
    /// value, <see cref="ConfigValueException"/>s naming its key.
    /// </summary>
    public static RunPlan Fit(RunConfigs configs, IImageDataset data, string dataName)
    {
        var (model, diffusion, training, run, recipe, resume) = configs;
        bool resuming = resume is not null;
        var labelled = data as ILabelledDataset;
        bool wantClasses = resuming ? model.IsConditional : run.Classes ?? !configs.IsLabmlModel;
        if (!wantClasses) labelled = null;
        if (run.Classes == true && !resuming && labelled is null)
            throw new ConfigValueException("classes", $"true: {dataName} has no class labels (image folders with one sub-folder per class and CIFAR-10 have them).");
        if (resuming && model.IsConditional && labelled?.NumClasses != model.NumClasses)
            throw new InvalidDataException($"the checkpoint's model is conditional on {model.NumClasses} classes but {dataName} has {(labelled is null ? "no labels" : $"{labelled.NumClasses} classes")}.");
        if (run.MaxImages is { } max)
        {
            int n = Math.Min(max, data.Count);
            data = labelled is null
                ? new SubsetDataset(data, n)
                : new LabelledDataset(new SubsetDataset(data, n), Enumerable.Range(0, n).Select(labelled.LabelOf).ToArray(), labelled.NumClasses, labelled.ClassNames);
        }
        else data = labelled ?? data;
        var fitted = data as ILabelledDataset;
        if (fitted is not null && !resuming)
            model = model with { NumClasses = fitted.NumClasses, ClassNames = fitted.ClassNames?.ToArray() };
        else if (!resuming && model.IsConditional && fitted is null)
            model = model with { NumClasses = 0, ClassNames = null };
        if (data.Channels != model.ImageChannels)
        {
            if (!resuming && !recipe.Has("model", "image_channels")) model = model with { ImageChannels = data.Channels };
            else throw new InvalidDataException($"{dataName} has {data.Channels}-channel images but the model takes {model.ImageChannels}.");
        }
        if (data.Height > model.ImageSize || data.Width > model.ImageSize || data.Height != data.Width)
            throw new InvalidDataException($"{dataName} has {data.Height}x{data.Width} images; the model is {model.ImageSize}x{model.ImageSize} (square, at least as large: smaller images are padded).");
        Checked(model, m => m.Validate());
        DataLoader loader;
        try
        {
            loader = new DataLoader(data, new DataLoaderOptions
            {
                BatchSize = training.BatchSize, Seed = training.Seed, RandomHorizontalFlip = training.HorizontalFlip,
                PadTo = data.Height == model.ImageSize ? 0 : model.ImageSize, Range = diffusion.DataRange,
            });
        }
        catch (ArgumentException e) { throw new InvalidDataException($"{dataName}: {e.Message}", e); }

        var notes = new List<string>();
        long totalSteps = run.Epochs is { } epochs ? (long)epochs * loader.BatchesPerEpoch : run.Steps;
        if (totalSteps > RunSettings.MaxSteps)
            throw new ConfigValueException("epochs", $"{run.Epochs} makes {totalSteps:N0} steps; at most {RunSettings.MaxSteps:N0} are allowed.");
        run = run with { Steps = totalSteps, Epochs = null };
        // A short first run (a smoke test) keeps a warm-up of a tenth of its length rather than failing on the
        // default's 100 steps; a warm-up the recipe sets is kept and checked.
        if (!resuming && !recipe.Has("training", "warmup_steps") && totalSteps < 10L * DefaultWarmup)
        {
            training = training with { WarmupSteps = (int)(totalSteps / 10) };
            notes.Add($"warm-up shortened to {training.WarmupSteps} steps for a {totalSteps:N0}-step run (--warmup sets it)");
        }
        // A new run decays over its length; a resumed run that is extended stretches its decay to the new end.
        if (training.LrSchedule == LrSchedule.Cosine && (!resuming || totalSteps > training.DecaySteps) && !(!resuming && recipe.Has("training", "decay_steps")))
        {
            if (resuming) notes.Add($"the cosine learning-rate decay now ends at step {totalSteps:N0} instead of {training.DecaySteps:N0}");
            training = training with { DecaySteps = totalSteps };
        }
        if (training.LrSchedule == LrSchedule.Cosine && training.DecaySteps <= training.WarmupSteps)
        {
            // The value the recipe set is the one to change: a decay it ends too early, else the warm-up.
            if (!resuming && recipe.Has("training", "decay_steps") && !recipe.Has("training", "warmup_steps"))
                throw training.DecayEndsInWarmup();
            throw new ConfigValueException("warmup_steps", $"{training.WarmupSteps}: the warm-up must be shorter than the run ({totalSteps:N0} steps) for the cosine decay; lower it or use a constant learning rate.");
        }
        Checked(training, t => t.Validate());
        return new RunPlan(model, diffusion, training, run, data, loader, resume, notes);
    }

    /// <summary><see cref="Resolve"/> then <see cref="Fit"/>: the plan of a new run of <paramref name="recipe"/> on <paramref name="data"/>.</summary>
    public static RunPlan Plan(TrainingRecipe recipe, IImageDataset data, string dataName = "the data") => Fit(Resolve(recipe), data, dataName);

    private static T Checked<T>(T config, Action<T> validate)
    {
        validate(config);
        return config;
    }

    private static string ValueOf(object config, string key)
    {
        var node = JsonSerializer.SerializeToNode(config, config.GetType(), TrainingRecipe.Json)!.AsObject();
        return node.TryGetPropertyValue(key, out var v) && v is not null ? v.ToJsonString() : DefaultOf(config.GetType(), key);
    }

    // Keys left out when they hold their default (attn_norm, num_classes, ...) compare as the default's JSON.
    private static string DefaultOf(Type type, string key) => key switch
    {
        "attn_norm" => "false",
        "num_classes" => "0",
        _ => "null",
    };
}
