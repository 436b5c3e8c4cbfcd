using Ddpm.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;

namespace Ddpm.Tool.Commands;

/// <summary>
/// <c>train</c>'s plan: the options (over <c>--config</c>) as a <see cref="TrainingRecipe"/>, the checkpoint it
/// resumes, the data it opens, and the library's <see cref="RunPlan"/> of them. Every problem is one line: a bad
/// option is a <see cref="UsageError"/> naming it, a bad file a <see cref="UserError"/> naming the file.
/// </summary>
internal sealed record TrainPlan(RunPlan Run, TrainingRecipe Recipe, string DataPath, string OutFolder)
{
    public UNetConfig Model => Run.Model;
    public TrainingConfig Training => Run.Training;
    public IReadOnlyList<string> Notes => Run.Notes;

    /// <summary>
    /// The main job's --eval-every: one measurement of its 2,000 steps, of its final weights (a longer run on the bundled
    /// data measures every 2,000 steps). A measurement halfway took 14 s, 2.5 % of the job, and its weights never scored
    /// better than the final ones (docs/sample-quality.md).
    /// </summary>
    public const int MainJobEvalEvery = 2000;

    /// <summary>The plan of <paramref name="o"/> for a job of <paramref name="ranks"/> ranks; <paramref name="hostMemory"/>: the backend trains in host memory (its size is checked first).</summary>
    public static TrainPlan Resolve(TrainOptions o, int ranks = 1, bool hostMemory = true)
    {
        o.Check();
        var recipe = o.Config is null ? o.ToRecipe() : ModelLoading.Open(o.Config, TrainingRecipe.Load, "configuration file").Then(o.ToRecipe());
        var resume = ResumeCheckpoint(o);
        var configs = Explained(recipe, () => Recipes.Resolve(recipe, resume));
        // The main job (the bundled data) measures its samples every 2,000 steps (once, at its end) unless told otherwise.
        if (resume is null && configs.Run.Data is null && !recipe.Has("run", "eval_every"))
            configs = configs with { Run = configs.Run with { EvalEvery = MainJobEvalEvery } };
        if (hostMemory)
        {
            // The CPU backends keep the model and a micro-batch's activations in host memory; refuse a run that
            // cannot fit before the data is read or the model built (a device backend reports its own
            // out-of-memory, as one line). The channel count may still be fitted to the data; it changes only the
            // first and last convolutions.
            var (model, t, run) = (configs.Model, configs.Training, configs.Run);
            int micro = Math.Max(1, t.BatchSize / ranks / run.GradAccum);
            long bytes = Math.Max(MemoryEstimate.TrainingBytes(model, micro),
                4 * (model.ParameterCount() * 5 + (long)(run.Samples ?? RunSettings.DefaultUnconditionalSamples) * 10 * MemoryEstimate.SamplingValuesPerImage(model)));
            MemoryEstimate.Require(bytes, $"training a {model.ParameterCount():N0}-parameter model with --batch {t.BatchSize}{(run.GradAccum > 1 ? $" in {run.GradAccum} micro-batches" : "")}");
        }
        var (data, dataPath) = Datasets.OpenForTraining(configs.Run.Data, configs.Model.ImageSize, configs.Model.ImageChannels);
        var plan = Explained(recipe, () => Recipes.Fit(configs, data, dataPath));
        int batch = plan.Training.BatchSize, accum = plan.Run.GradAccum;
        if (batch % ranks != 0)
            throw new UsageError($"--batch {batch} (the global batch) does not divide over {ranks} ranks; use a multiple of {ranks}.");
        if (batch / ranks % accum != 0)
            throw new UsageError($"--grad-accum {accum} does not divide the {(ranks > 1 ? $"{batch / ranks} images of each rank's share of --batch {batch}" : $"--batch {batch}")} into equal micro-batches.");
        if (o.SaveSpikes > 0 && ranks > 1)
            throw new UsageError("--save-spikes records the steps of a single-process run; drop --distributed or --save-spikes.");
        return new TrainPlan(plan, recipe, dataPath, o.Out);
    }

    /// <summary>
    /// The checkpoint --resume names: the latest in --out (--resume alone or "latest"), the latest in a run folder, or a file.
    /// </summary>
    private static Checkpoint? ResumeCheckpoint(TrainOptions o)
    {
        if (o.Resume is null) return null;
        string path = o.Resume.Length == 0 || string.Equals(o.Resume, "latest", StringComparison.OrdinalIgnoreCase) ? o.Out : o.Resume;
        if (Directory.Exists(path))
            path = RunFolder.Latest(path) ?? throw new UserError(RunFolder.EarlierRun(path) is { } what
                ? $"--resume: {path} holds no checkpoint to resume (checkpoint-NNNNNNN.safetensors): its run ({what}) stopped before its first checkpoint; start it again with --overwrite."
                : $"--resume: {path} holds no checkpoint to resume (checkpoint-NNNNNNN.safetensors); start a new run without --resume.");
        var resume = ModelLoading.OpenCheckpoint(path);
        if (!resume.IsTrainingCheckpoint)
            throw new UserError($"{path} is a weights file, not a training checkpoint; it cannot be resumed.");
        return resume;
    }

    /// <summary>Runs a step of the library's planning, telling its errors where the value came from: an option, a file.</summary>
    private static T Explained<T>(TrainingRecipe recipe, Func<T> plan)
    {
        try
        {
            return plan();
        }
        catch (ConfigValueException e)
        {
            string? origin = recipe.OriginOf(e.Key);
            if (origin is null) throw OptionText.ConfigError(e);
            if (origin.StartsWith("--", StringComparison.Ordinal))
            {
                // A switch (--classes, --no-classes) has no value to quote: its problem follows the option.
                string problem = e.Problem;
                if (problem.StartsWith("true:", StringComparison.Ordinal) || problem.StartsWith("false:", StringComparison.Ordinal))
                    throw new UsageError(origin + problem[problem.IndexOf(':')..]);
                throw new UsageError($"{origin} {problem}");
            }
            throw new UserError($"{origin}: \"{e.Key}\" {e.Problem}", e);
        }
        catch (InvalidDataException e)
        {
            throw new UserError(e.Message, e);
        }
    }
}
