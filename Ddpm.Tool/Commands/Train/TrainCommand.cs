using System.Globalization;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Quality;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool.Commands;

/// <summary><c>train</c>: options -> <see cref="TrainPlan"/> -> the library's <see cref="TrainingRun"/>, with the console as rank 0's observer.</summary>
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
        bool hostMemory = ToolBackends.IsHostMemory(o.Backend);
        // Before any other collective the ranks agree on the plan (options, data, resume file, rank 0's run
        // folder): a rank that cannot start must not leave the others waiting for it in a collective.
        (TrainPlan Plan, RunFolder? Folder) start;
        try
        {
            start = TrainingRun.Agree(dp, () =>
            {
                var plan = TrainPlan.Resolve(o, dp.Size, hostMemory);
                return (plan, dp.IsRoot ? OpenFolder(o, plan, con.Files) : null);
            }, ExitCodes.Of);
        }
        catch (RankStartException e) when (e.Rank != 0 || !dp.IsRoot)
        {
            // Rank 0 speaks for the job: an error every rank meets alike (a bad option) is printed once, by it.
            if (e.InnerException is not null && e.Rank != 0) con.Err.WriteLine($"ddpm-tool: rank {dp.Rank} of {dp.Size}: {e.Message}");
            return e.Code;
        }
        using var folder = start.Folder;
        try
        {
            return Train(o, start.Plan, folder, con, dp, job);
        }
        catch (Exception e) when (dp.Size > 1)
        {
            // Past the agreement an error is this rank's alone (the others are in, or on their way to, a
            // collective that waits for it): it names itself and ends the job.
            con.Err.WriteLine($"ddpm-tool: rank {dp.Rank} of {dp.Size}: {e.Message}");
            collective.Abort(e is UsageError ? ExitCodes.Usage : ExitCodes.Failed);
            throw;
        }
    }

    /// <summary>Rank 0's run folder: locked, and refused when it holds another run that this one neither continues nor replaces.</summary>
    private static RunFolder OpenFolder(TrainOptions o, TrainPlan plan, IOutputFiles files)
    {
        if (string.IsNullOrWhiteSpace(o.Out)) throw new UsageError("--out is empty; give a folder.");
        var resume = plan.Run.Resume;
        try
        {
            return RunFolder.Open(o.Out, resuming: resume is not null, overwrite: o.Overwrite, files, resume?.Path);
        }
        catch (RunFolderInUseException e)
        {
            throw new UserError($"--out {e.Message}; give another --out or wait for it to end.", e);
        }
        catch (RunFolderOccupiedException e) when (resume is not null)
        {
            throw new UserError($"--out {e.Folder} holds another run ({e.What}) than {resume.Path}'s; give another --out to continue that checkpoint, or continue the folder's own run with --resume alone.", e);
        }
        catch (RunFolderOccupiedException e)
        {
            throw new UserError($"--out {e.Message}; continue it with --resume, give another --out, or replace it with --overwrite.", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UserError($"--out {o.Out}: cannot use the folder ({e.Message})", e);
        }
    }

    /// <summary>Every rank: builds the run on its backend and trains; rank 0 reports.</summary>
    private static int Train(TrainOptions o, TrainPlan plan, RunFolder? folder, ToolConsole con, DataParallel dp, CollectiveChoice job)
    {
        using var be = ToolBackends.Create(o, job.LocalRank);
        using var onDevice = job.ForBackend(be);
        dp = dp with { Collective = onDevice };
        var console = new ConsoleObserver(o, plan, con, be, dp);
        using var probe = dp.IsRoot && plan.Run.Run.EvalEvery > 0 && plan.Run.Run.EvalEvery <= plan.Run.TotalSteps ? QualityProbes.Create(plan, be) : null;
        TrainingRun run;
        try
        {
            run = new TrainingRun(plan.Run, be, dp, folder, [console]) { SampleScale = o.Scale ?? ImageGrid.AutoScale, Quality = probe?.Probe };
        }
        catch (InvalidDataException e) { throw new UserError(e.Message, e); }
        catch (OutputFileException e) { throw CouldNotWrite(e, o, plan); }
        using var _ = run;
        run.Trainer.RecordSteps = o.SaveSpikes > 0;
        RunOutcome outcome;
        try
        {
            // A step with its grid and checkpoint is what a stop request may have to wait for (every rank says so).
            outcome = run.Run(con.Cancel, con.Signals is { } signals ? new RunPacing(signals.StepTook, signals.StoppingCleanly) : null);
        }
        catch (TrainingDivergedException e) { throw new UserError(e.Message, e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw CouldNotWrite(e, o, plan); }
        if (outcome.Status == RunStatus.Finished && o.Bundle is not null && dp.IsRoot) WriteBundle(o.Bundle, run, plan, con);
        return outcome.Status switch
        {
            RunStatus.Finished => ExitCodes.Ok,
            RunStatus.Interrupted => ExitCodes.Interrupted,
            _ => ExitCodes.Failed,
        };
    }

    /// <summary>
    /// A file of the run that could not be written, in one line: the file and the cause (a full disk, an I/O error),
    /// and the checkpoint a rerun continues from, which is intact (checkpoints are written whole or not at all).
    /// </summary>
    private static UserError CouldNotWrite(Exception e, TrainOptions o, TrainPlan plan)
    {
        string what = e is OutputFileException ? e.Message : $"could not write in {o.Out}: {e.Message}";
        string latest = RunFolder.Latest(o.Out) is { } c
            ? $"the latest checkpoint, {c}, is intact; continue with --resume once the cause is fixed"
            : plan.Run.Resume is { } r
                ? $"the checkpoint it resumed, {r.Path}, is unchanged"
                : "no checkpoint of this run was written";
        return new UserError($"{what}; {latest}.", e);
    }

    /// <summary>
    /// --bundle: the final EMA weights in fp16 with the model and diffusion configs, what they are, and the run's last
    /// FID (when it measured one), as the tool's bundled model is made.
    /// </summary>
    private static void WriteBundle(string path, TrainingRun run, TrainPlan plan, ToolConsole con)
    {
        var p = plan.Run;
        var meta = new Dictionary<string, string>
        {
            ["description"] = string.Create(CultureInfo.InvariantCulture,
                $"{(p.Model.IsConditional ? "class-conditional " : "")}{run.Model.ParameterCount():N0}-parameter UNet (preset {p.Run.Preset}), EMA weights after {run.Trainer.StepCount:N0} steps on {Path.GetFileName(plan.DataPath)}, fp16"),
        };
        if (run.Metrics is { Fids.Count: > 0 } m)
        {
            var (step, fid) = m.Fids[^1];
            meta["fid"] = fid.ToString("F2", CultureInfo.InvariantCulture);
            meta["fid_measure"] = string.Create(CultureInfo.InvariantCulture,
                $"step {step}: {p.Run.EvalSamples} samples, DPM-Solver++ {QualityProbe.SamplerSteps} steps, class-balanced at guidance 1, against the bundled test set on the bundled classifier's features");
        }
        try
        {
            using (run.Trainer.UseEmaWeights())
                Checkpoint.SaveWeights(path, run.Model, p.Model, p.Diffusion, half: true, extra: meta, files: con.Files);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NonFiniteStateException)
        {
            throw new UserError($"--bundle {path}: {e.Message}", e);
        }
        con.Out.WriteLine($"  bundle: {path} ({new FileInfo(path).Length / 1e6:F1} MB, fp16)");
    }

    /// <summary>Rank 0's console and plots: the header, progress lines, spikes, grids written, the closing summary.</summary>
    private sealed class ConsoleObserver(TrainOptions o, TrainPlan plan, ToolConsole con, IBackend be, DataParallel dp) : ITrainingObserver
    {
        private ProgressLine _progress = null!;
        private SpikeRecorder _spikes = null!;

        public void OnStart(TrainingRun run)
        {
            PrintHeader(run);
            _progress = new ProgressLine(con, run.Trainer.StepCount, o.LogEvery);
            _spikes = new SpikeRecorder(o.SaveSpikes, Path.Combine(plan.OutFolder, RunFolder.SpikesName), con.Files);
        }

        public void OnStep(TrainingRun run, TrainStep s)
        {
            _spikes.Check(run.Trainer, s, _progress);
            _progress.Report(s.Step, plan.Run.TotalSteps, string.Create(CultureInfo.InvariantCulture,
                $"loss {run.SmoothedLoss:F4}  {_progress.Rate(s.Step) * plan.Training.BatchSize,6:F1} img/s  lr {s.LearningRate:G3}  |g| {s.GradNorm:F2}"));
        }

        public void OnSamples(TrainingRun run, SampleGrid grid)
        {
            if (!con.Interactive) con.Out.WriteLine($"  wrote {grid.Path} ({grid.SamplerSteps} {SamplerOptions.Name(grid.Sampler)} steps, {grid.Took.TotalSeconds:F1}s)");
        }

        public void OnEval(TrainingRun run, QualityResult r, bool best) =>
            _progress.Note(string.Create(CultureInfo.InvariantCulture,
                $"  step {r.Step:N0}: FID {r.Fid:F2}, IS {r.InceptionScore:F2}{(r.ClassAccuracy is { } a ? $", class accuracy {a * 100:F1} %" : "")} ({r.Samples} samples, {r.Seconds:F0}s){(best ? $"; best so far: {RunFolder.BestName}" : "")}"));

        public void OnFinished(TrainingRun run, RunOutcome outcome)
        {
            _progress.Finish();
            if (outcome.Status == RunStatus.Interrupted)
            {
                con.Out.WriteLine(outcome.Checkpoint is { } path
                    ? $"interrupted at step {outcome.Step:N0}; checkpoint saved to {path}. Resume with: ddpm-tool train --resume --out {plan.OutFolder}"
                    : $"interrupted at step {outcome.Step:N0}; no step was trained.");
                return;
            }
            if (outcome.Status != RunStatus.Finished) return;
            LossPlot.Save(Path.Combine(plan.OutFolder, "loss.png"), run.Log!.Points, con.Files);
            if (run.Metrics is { Fids.Count: > 0 } m) FidPlot.Save(Path.Combine(plan.OutFolder, "fid.png"), m.Fids, con.Files);
            con.Out.WriteLine($"done: {outcome.Step:N0} steps in {Duration.Format(outcome.Elapsed.TotalSeconds)}; final loss (smoothed) {outcome.SmoothedLoss:F4}.");
            con.Out.WriteLine($"  {plan.OutFolder}: {RunFolder.SamplesName}, loss.png, {RunFolder.LossName}, {RunFolder.ConfigName}, {(outcome.Checkpoint is { } c ? Path.GetFileName(c) : "")}, {RunFolder.ModelName} ({(run.Trainer.HasEma ? "EMA " : "")}weights)");
        }

        private void PrintHeader(TrainingRun run)
        {
            var p = plan.Run;
            var (t, d, data, loader) = (p.Training, p.Diffusion, p.Data, p.Loader);
            con.Out.WriteLine($"ddpm-tool train: {p.Model}");
            con.Out.WriteLine($"  {run.Model.ParameterCount():N0} parameters on {be.Description}");
            con.Out.WriteLine($"  data {plan.DataPath}: {data.Count:N0} images {data.Channels}x{data.Height}x{data.Width}{(loader.Height != data.Height ? $" padded to {loader.Height}x{loader.Width}" : "")}, {loader.BatchesPerEpoch} batches of {t.BatchSize} per epoch{(p.Run.GradAccum > 1 ? $", each as {p.Run.GradAccum} micro-batches of {t.BatchSize / dp.Size / p.Run.GradAccum}" : "")}");
            string lrText = t.LrSchedule == LrSchedule.Cosine
                ? $"lr {t.LearningRate:G3} (warm-up {t.WarmupSteps}, cosine to {t.LearningRate * t.LrFinal:G3})"
                : $"lr {t.LearningRate:G3} (warm-up {t.WarmupSteps}, then constant)";
            con.Out.WriteLine($"  {p.TotalSteps:N0} steps{(p.Resume is not null ? $" (resuming at {run.Trainer.StepCount:N0})" : "")}, {lrText}, EMA {t.EmaDecay:G4}, T {d.NSteps}, {d.Prediction.ToString().ToLowerInvariant()} prediction{(d.LossWeighting == LossWeighting.MinSnr ? $", Min-SNR-{d.MinSnrGamma:G4} loss weighting" : "")}, output {plan.OutFolder}");
            if (p.Model.IsConditional)
                con.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  class-conditional ({p.Model.NumClasses} classes, label drop {t.ClassDropout * 100:0.#} %); sample grids: one row per class, guidance {ClassCondition.DefaultGuidance:0.#}"));
            if (dp.Size > 1)
                con.Out.WriteLine($"  data-parallel: {dp.Size} ranks over {CollectiveChoice.Describe(dp.Collective)}, {t.BatchSize / dp.Size} images per rank per step");
            foreach (var note in p.Notes) con.Out.WriteLine("  " + note);
            if (run.StaleTemporaries > 0) con.Out.WriteLine($"  removed {run.StaleTemporaries} temporary file(s) a stopped run left in {plan.OutFolder}");
        }
    }

    /// <summary>The bundled classifier and test images as a run's <see cref="QualityProbe"/> (the classifier disposed with it).</summary>
    private sealed class QualityProbes(FeatureClassifier classifier, QualityProbe probe) : IDisposable
    {
        public QualityProbe Probe => probe;

        public static QualityProbes? Create(TrainPlan plan, IBackend be)
        {
            string path = BundledFiles.Model(BundledFiles.Classifier);
            var (classifier, _) = ModelLoading.Open(path, p => FeatureClassifier.Load(p, be), "classifier weights file");
            try
            {
                var mc = plan.Model;
                SampleQuality.CheckFits(classifier.Config, mc.ImageChannels, mc.ImageSize, mc.ImageSize, "the model");
                var real = Datasets.Open(BundledFiles.Data(BundledFiles.TestImages), mc.ImageSize, mc.ImageChannels);
                return new QualityProbes(classifier, new QualityProbe(classifier, real, real.Count, plan.Run.Run.EvalSamples, plan.Training.Seed + 2000));
            }
            catch (ArgumentException e)
            {
                classifier.Dispose();
                throw new UsageError($"--eval-every: {e.Message}");
            }
        }

        public void Dispose() => classifier.Dispose();
    }

    /// <summary>
    /// --save-spikes: a step whose gradient norm exceeds the threshold is written as a <see cref="StepRecord"/>
    /// (the first <see cref="TrainOptions.MaxSpikeFiles"/> of a run) and named in one line with its largest gradients.
    /// </summary>
    private sealed class SpikeRecorder(double threshold, string folder, IOutputFiles files)
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
                record.Save(path, files);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new UserError(e is OutputFileException ? e.Message : $"could not write {path}: {e.Message}", e);
            }
            _saved++;
            var top = string.Join(", ", record.LargestGradients().Take(3).Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Name} {g.Share * 100:F0} %")));
            progress.Note(string.Create(CultureInfo.InvariantCulture, $"step {s.Step}: gradient norm {s.GradNorm:G4} > {threshold:G4}, saved {path}; largest: {top}"));
        }
    }
}
