using System.Diagnostics;
using System.Globalization;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

/// <summary><c>train</c>: options -> <see cref="TrainPlan"/> -> the training loop and its files.</summary>
public static class TrainCommand
{
    public static int Run(TrainOptions o, ToolConsole con)
    {
        CollectiveChoice job;
        try
        {
            job = ToolCollective.Create(o.Distributed, o.Backend);
        }
        catch (Exception e) when ((e is UsageError or UserError) && ToolCollective.LaunchedAsOtherRank())
        {
            // Every rank meets a bad --distributed alike: rank 0 prints it, the others leave with the same code.
            return e is UsageError ? ExitCodes.Usage : ExitCodes.Failed;
        }
        using var collective = job.Host;
        var dp = new DataParallel(collective, BucketMegabytes: o.BucketMb);
        if (dp.IsRoot && job.Warning is not null) con.Err.WriteLine($"ddpm-tool: warning: {job.Warning}");
        if (dp.Size == 1)
        {
            var single = TrainPlan.Resolve(o);
            using var folder = OutputFolder.Lock(single.OutFolder);
            return RunRoot(o, single, folder, con, dp, job);
        }

        // Before any other collective the ranks agree on the plan (options, data, resume file, rank 0's output
        // folder): a rank that cannot start must not leave the others waiting for it in a collective.
        TrainPlan? plan = null;
        OutputFolder? held = null;
        Exception? error = null;
        try
        {
            plan = TrainPlan.Resolve(o);
            CheckForRanks(o, plan, dp.Size);
            if (dp.IsRoot) held = OutputFolder.Lock(plan.OutFolder);
        }
        catch (Exception e)
        {
            // Whatever it is, the other ranks must hear of it before it ends this one.
            error = e;
        }
        using var _ = held;
        int[] codes = dp.GatherCodes(error switch
        {
            null => ExitCodes.Ok,
            UsageError => ExitCodes.Usage,
            UserError or IOException or UnauthorizedAccessException or InvalidDataException => ExitCodes.Failed,
            _ => ExitCodes.Internal,
        });
        if (codes[0] != ExitCodes.Ok)
        {
            // Rank 0 speaks for the job: an error every rank meets alike (a bad option) is printed once, by it.
            if (dp.IsRoot) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(error!).Throw();
            return codes[0];
        }
        int failed = Array.FindIndex(codes, c => c != ExitCodes.Ok);
        if (failed > 0)
        {
            if (error is not null) con.Err.WriteLine($"ddpm-tool: rank {dp.Rank} of {dp.Size}: {error.Message}");
            return codes[failed];
        }
        try
        {
            return dp.IsRoot ? RunRoot(o, plan!, held!, con, dp, job) : RunWorker(o, plan!, dp, job, con);
        }
        catch (Exception e)
        {
            // Past the agreement an error is this rank's alone (the others are in, or on their way to, a
            // collective that waits for it): it names itself and ends the job.
            con.Err.WriteLine($"ddpm-tool: rank {dp.Rank} of {dp.Size}: {e.Message}");
            collective.Abort(e is UsageError ? ExitCodes.Usage : ExitCodes.Failed);
            throw;
        }
    }

    /// <summary>What a data-parallel run needs of its plan, checked alike on every rank.</summary>
    private static void CheckForRanks(TrainOptions o, TrainPlan plan, int ranks)
    {
        if (plan.Training.BatchSize % ranks != 0)
            throw new UsageError($"--batch {plan.Training.BatchSize} (the global batch) does not divide over {ranks} ranks; use a multiple of {ranks}.");
        if (o.SaveSpikes > 0)
            throw new UsageError("--save-spikes records the steps of a single-process run; drop --distributed or --save-spikes.");
    }

    /// <summary>Rank 0 (or the only process): trains, writes the files and speaks for the job.</summary>
    private static int RunRoot(TrainOptions o, TrainPlan plan, OutputFolder folder, ToolConsole con, DataParallel dp, CollectiveChoice job)
    {
        int stale = folder.RemoveStaleTemporaries();
        using var be = ToolBackends.Create(o, job.LocalRank);
        using var onDevice = job.ForBackend(be);
        dp = dp with { Collective = onDevice };
        using var unet = new UNet(be, plan.Model, new PhiloxGenerator(plan.Training.InitKey));
        var diffusion = new DenoiseDiffusion(unet, plan.Diffusion);
        using var trainer = new Trainer(diffusion, new LoaderBatchSource(plan.Loader), plan.Training, dp);
        if (plan.Resume is not null)
        {
            try { plan.Resume.RestoreInto(trainer); }
            catch (InvalidDataException e) { throw new UserError(e.Message, e); }
        }
        trainer.RecordSteps = o.SaveSpikes > 0;
        PrintHeader(plan, unet, be, trainer, con);
        if (dp.Size > 1)
            con.Out.WriteLine($"  data-parallel: {dp.Size} ranks over {CollectiveChoice.Describe(dp.Collective)}, {plan.Training.BatchSize / dp.Size} images per rank per step");
        if (stale > 0) con.Out.WriteLine($"  removed {stale} temporary file(s) a stopped run left in {plan.OutFolder}");
        var samples = new SampleGrids(o.Samples, o.SampleSteps, o.Scale ?? ImageGrid.AutoScale);

        var log = new LossLog(Path.Combine(plan.OutFolder, "loss.csv"), plan.Resume?.Step);
        var saved = new SavedState(plan, log, SameFile(plan.Resume?.Path, plan.CheckpointPath) ? plan.Resume!.Step : null);
        var progress = new ProgressLine(con, trainer.StepCount, o.LogEvery);
        var loss = new SmoothedLoss();
        var spikes = new SpikeRecorder(o.SaveSpikes, Path.Combine(plan.OutFolder, "spikes"));
        bool interrupted = false;
        string? diverged = null;
        var iteration = Stopwatch.StartNew();
        try
        {
            while (trainer.StepCount < plan.TotalSteps)
            {
                // A step with its grid and checkpoint is what a stop request may have to wait for.
                con.Signals?.StepTook(iteration.Elapsed);
                iteration.Restart();
                if (dp.AnyRank(con.Cancel.IsCancellationRequested))
                {
                    con.Signals?.StoppingCleanly();
                    interrupted = true;
                    break;
                }
                var s = trainer.Step();
                if (!float.IsFinite(s.Loss)) { diverged = $"the loss became {s.Loss} at step {s.Step}"; break; }
                log.Add(s);
                loss.Add(s.Loss);
                spikes.Check(trainer, s, progress);
                progress.Report(s.Step, plan.TotalSteps, string.Create(CultureInfo.InvariantCulture,
                    $"loss {loss.Value:F4}  {progress.Rate(s.Step) * plan.Training.BatchSize,6:F1} img/s  lr {s.LearningRate:G3}  |g| {s.GradNorm:F2}"));
                if (o.CheckpointEvery > 0 && s.Step % o.CheckpointEvery == 0 && s.Step < plan.TotalSteps)
                {
                    diverged = saved.Save(trainer);
                    if (diverged is not null) break;
                }
                if (o.SampleEvery > 0 && s.Step % o.SampleEvery == 0 && s.Step < plan.TotalSteps)
                    samples.Write(trainer, Path.Combine(plan.OutFolder, $"samples-{s.Step:D7}.png"), con);
            }
        }
        catch
        {
            // Keep what was trained when something else fails (a sample grid, an I/O error), unless it diverged.
            progress.Finish();
            try { saved.Save(trainer); }
            catch (Exception e) when (e is UserError or IOException or UnauthorizedAccessException) { }
            throw;
        }
        progress.Finish();
        // A run that diverged keeps the last checkpoint written before it; its state is not saved.
        if (diverged is null) diverged = saved.Save(trainer);
        if (diverged is not null)
        {
            // The rows up to the divergence stay for inspection; a resume cuts the log back to its checkpoint.
            log.Flush(durable: false);
            throw new UserError($"{diverged}; lower --lr or keep --grad-clip on. {saved.Describe()}");
        }
        if (interrupted)
        {
            con.Out.WriteLine($"interrupted at step {trainer.StepCount:N0}; checkpoint saved to {plan.CheckpointPath}. Resume with --resume {plan.CheckpointPath}.");
            return 130;
        }
        log.Plot(Path.Combine(plan.OutFolder, "loss.png"));
        samples.Write(trainer, Path.Combine(plan.OutFolder, "samples.png"), con);
        using (trainer.UseEmaWeights())
            Checkpoint.SaveWeights(Path.Combine(plan.OutFolder, "model.safetensors"), unet, plan.Model);
        con.Out.WriteLine($"done: {trainer.StepCount:N0} steps in {Duration.Format(progress.Elapsed)}; final loss (smoothed) {loss.Value:F4}.");
        con.Out.WriteLine($"  {Path.Combine(plan.OutFolder, "samples.png")}, loss.png, loss.csv, checkpoint.safetensors, model.safetensors ({(trainer.HasEma ? "EMA " : "")}weights)");
        return 0;
    }

    /// <summary>A rank other than 0: the same steps and collectives as rank 0, and no files.</summary>
    private static int RunWorker(TrainOptions o, TrainPlan plan, DataParallel dp, CollectiveChoice job, ToolConsole con)
    {
        using var be = ToolBackends.Create(o, job.LocalRank);
        using var onDevice = job.ForBackend(be);
        dp = dp with { Collective = onDevice };
        using var unet = new UNet(be, plan.Model, new PhiloxGenerator(plan.Training.InitKey));
        using var trainer = new Trainer(new DenoiseDiffusion(unet, plan.Diffusion), new LoaderBatchSource(plan.Loader), plan.Training, dp);
        plan.Resume?.RestoreInto(trainer);
        var iteration = Stopwatch.StartNew();
        while (trainer.StepCount < plan.TotalSteps)
        {
            con.Signals?.StepTook(iteration.Elapsed);
            iteration.Restart();
            if (dp.AnyRank(con.Cancel.IsCancellationRequested)) return ExitCodes.Interrupted;
            // The loss is the global mean, so rank 0 sees the same divergence and reports it.
            if (!float.IsFinite(trainer.Step().Loss)) return ExitCodes.Failed;
        }
        return ExitCodes.Ok;
    }

    /// <summary>
    /// --save-spikes: a step whose gradient norm exceeds the threshold is written as a <see cref="StepRecord"/>
    /// (the first <see cref="TrainOptions.MaxSpikeFiles"/> of a run) and named in one line with its largest gradients.
    /// </summary>
    private sealed class SpikeRecorder(double threshold, string folder)
    {
        private int _saved;

        public void Check(Trainer trainer, TrainStep s, ProgressLine progress)
        {
            // A non-finite norm is a divergence, which the run reports itself; a record holds finite numbers only.
            if (threshold <= 0 || !double.IsFinite(s.GradNorm) || !(s.GradNorm > threshold)) return;
            if (_saved == TrainOptions.MaxSpikeFiles)
            {
                progress.Note($"step {s.Step}: gradient norm {s.GradNorm:G4} > {threshold:G4}; not saved ({TrainOptions.MaxSpikeFiles} steps of this run already are, in {folder})");
                _saved++;
                return;
            }
            if (_saved > TrainOptions.MaxSpikeFiles) return;
            var record = trainer.RecordLastStep(s);
            string path = Path.Combine(folder, $"step-{s.Step:D7}.safetensors");
            try
            {
                Directory.CreateDirectory(folder);
                record.Save(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new UserError($"could not write {path}: {e.Message}", e);
            }
            _saved++;
            var top = string.Join(", ", record.LargestGradients().Take(3).Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Name} {g.Share * 100:F0} %")));
            progress.Note(string.Create(CultureInfo.InvariantCulture, $"step {s.Step}: gradient norm {s.GradNorm:G4} > {threshold:G4}, saved {path}; largest: {top}"));
        }
    }

    private static bool SameFile(string? a, string b) =>
        a is not null && string.Equals(Path.GetFullPath(a), Path.GetFullPath(b), OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);

    private static void PrintHeader(TrainPlan plan, UNet unet, IBackend be, Trainer trainer, ToolConsole con)
    {
        var (t, d, data, loader) = (plan.Training, plan.Diffusion, plan.Data, plan.Loader);
        con.Out.WriteLine($"ddpm-tool train: {plan.Model}");
        con.Out.WriteLine($"  {unet.ParameterCount():N0} parameters on {be.Description}");
        con.Out.WriteLine($"  data {plan.DataPath}: {data.Count:N0} images {data.Channels}x{data.Height}x{data.Width}{(loader.Height != data.Height ? $" padded to {loader.Height}x{loader.Width}" : "")}, {loader.BatchesPerEpoch} batches of {t.BatchSize} per epoch");
        string lrText = t.LrSchedule == LrSchedule.Cosine
            ? $"lr {t.LearningRate:G3} (warm-up {t.WarmupSteps}, cosine to {t.LearningRate * t.LrFinal:G3})"
            : $"lr {t.LearningRate:G3} (warm-up {t.WarmupSteps}, then constant)";
        con.Out.WriteLine($"  {plan.TotalSteps:N0} steps{(plan.Resume is not null ? $" (resuming at {trainer.StepCount:N0})" : "")}, {lrText}, EMA {t.EmaDecay:G4}, T {d.NSteps}, {d.Prediction.ToString().ToLowerInvariant()} prediction{(d.LossWeighting == LossWeighting.MinSnr ? $", Min-SNR-{d.MinSnrGamma:G4} loss weighting" : "")}, output {plan.OutFolder}");
        if (plan.Model.IsConditional)
            con.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  class-conditional ({plan.Model.NumClasses} classes, label drop {t.ClassDropout * 100:0.#} %); sample grids: one row per class, guidance {ClassCondition.DefaultGuidance:0.#}"));
        foreach (var note in plan.Notes) con.Out.WriteLine("  " + note);
    }

    /// <summary>
    /// The run's checkpoint writes: the loss log is made durable up to the step first, so the log on disk always
    /// covers the checkpoint on disk; a state that is not finite is never written, so the last good checkpoint stays.
    /// </summary>
    private sealed class SavedState(TrainPlan plan, LossLog log, long? resumedStep)
    {
        /// <summary>The step of the checkpoint at <see cref="TrainPlan.CheckpointPath"/> written by this run (or resumed from it).</summary>
        public long? Step { get; private set; } = resumedStep;

        /// <summary>Writes the checkpoint unless it is already current; returns why it was refused (diverged), or null.</summary>
        public string? Save(Trainer trainer)
        {
            if (trainer.StepCount == 0 || trainer.StepCount == Step) return null;
            try
            {
                log.Flush(durable: true);
                Checkpoint.Save(plan.CheckpointPath, trainer);
                Step = trainer.StepCount;
                return null;
            }
            catch (NonFiniteStateException e)
            {
                return $"training diverged by step {trainer.StepCount} ('{e.Tensor}' is not finite)";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new UserError($"could not write the checkpoint {plan.CheckpointPath}: {e.Message} (the previous checkpoint, if any, is intact).", e);
            }
        }

        public string Describe() => Step is { } step
            ? $"The last good checkpoint is step {step} ({plan.CheckpointPath}); resume from it with --resume {plan.CheckpointPath}."
            : plan.Resume is { } resumed
                ? $"No checkpoint of this run was written before it diverged; the one it resumed from (step {resumed.Step}, {resumed.Path}) is unchanged."
                : "No checkpoint of this run was written before it diverged (--checkpoint-every N writes one every N steps).";
    }

    /// <summary>
    /// The sample grids a run writes: DDIM from the EMA weights, the same noise every time. A conditional model's
    /// grid has one row per class, ceil(Count / classes) images each, guided with the default weight.
    /// </summary>
    private sealed record SampleGrids(int Count, int Steps, int Scale)
    {
        public void Write(Trainer trainer, string path, ToolConsole con)
        {
            var sw = Stopwatch.StartNew();
            var mc = trainer.Model.Config;
            using var ema = trainer.UseEmaWeights();
            trainer.Model.Eval();
            using var scope = new TensorScope();
            int perClass = mc.IsConditional ? (Count + mc.NumClasses - 1) / mc.NumClasses : 0;
            var condition = mc.IsConditional ? ClassCondition.Rows(mc.NumClasses, perClass, ClassCondition.DefaultGuidance) : null;
            int n = condition?.Labels.Length ?? Count;
            var x = new Sampler(trainer.Diffusion, condition).Sample(n, SamplerKind.Ddim, Math.Min(Steps, trainer.Diffusion.Steps), 0f, trainer.Config.Seed + 1000);
            ImageGrid.SavePng(path, x.ToArray(), n, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
                mc.IsConditional ? perClass : ImageGrid.SquareRow(n), trainer.Diffusion.Config.DataRange, scale: Scale);
            trainer.Model.Train();
            if (!con.Interactive) con.Out.WriteLine($"  wrote {path} ({Steps} DDIM steps, {sw.Elapsed.TotalSeconds:F1}s)");
        }
    }

    /// <summary>Bias-corrected moving average of the loss (as Adam corrects its moments), so early values are not dragged toward 0.</summary>
    private sealed class SmoothedLoss
    {
        private double _ema, _weight;
        public double Value => _weight > 0 ? _ema / _weight : double.NaN;
        public void Add(double loss)
        {
            _ema = 0.95 * _ema + 0.05 * loss;
            _weight = 0.95 * _weight + 0.05;
        }
    }
}
