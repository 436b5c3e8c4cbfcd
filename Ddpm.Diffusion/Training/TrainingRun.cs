using System.Diagnostics;
using System.Runtime.ExceptionServices;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// What a run does that only rank 0 shows: its progress, its files, its measurements. Every method does nothing
/// by default; a run calls its observers on rank 0 only (llm.c's printf0), so other ranks run the same loop and
/// leave no trace.
/// </summary>
public interface ITrainingObserver
{
    /// <summary>The run has built its model and restored its checkpoint; nothing is trained yet.</summary>
    void OnStart(TrainingRun run) { }

    /// <summary>One optimisation step ended (its loss is finite).</summary>
    void OnStep(TrainingRun run, TrainStep step) { }

    /// <summary>A checkpoint of <paramref name="step"/> was written to <paramref name="path"/>.</summary>
    void OnCheckpoint(TrainingRun run, string path, long step) { }

    /// <summary>A sample grid of the EMA weights was written (<see cref="SampleGrid.Path"/>, at <see cref="SampleGrid.Step"/>).</summary>
    void OnSamples(TrainingRun run, SampleGrid grid) { }

    /// <summary>The samples' quality was measured (<paramref name="best"/>: the lowest FID of the run so far, saved as best.safetensors).</summary>
    void OnEval(TrainingRun run, Quality.QualityResult result, bool best) { }

    /// <summary>The run ended: finished, interrupted or diverged (its last checkpoint is written, if any).</summary>
    void OnFinished(TrainingRun run, RunOutcome outcome) { }
}

/// <summary>How a run ended.</summary>
public enum RunStatus
{
    /// <summary>It trained to its last step and wrote its final files.</summary>
    Finished,

    /// <summary>It was asked to stop (on any rank) and saved a checkpoint of the step every rank stopped after.</summary>
    Interrupted,

    /// <summary>Its loss or state stopped being finite; the last good checkpoint stays (rank 0 throws <see cref="TrainingDivergedException"/>).</summary>
    Diverged,
}

/// <summary>How a run ended, at which step, with which checkpoint, and its smoothed final loss.</summary>
public sealed record RunOutcome(RunStatus Status, long Step, string? Checkpoint, double SmoothedLoss, TimeSpan Elapsed);

/// <summary>A sample grid written by a run: where, at which step, of how many images, and how long it took.</summary>
public sealed record SampleGrid(string Path, long Step, int Images, SamplerKind Sampler, int SamplerSteps, TimeSpan Took, int Width, int Height, int Channels);

/// <summary>
/// What a run tells whoever ends a process that does not stop in time (every rank): how long each step (with its
/// grid and checkpoint) took, and that it saw the stop request and now stops cleanly (writing its checkpoint).
/// </summary>
public sealed record RunPacing(Action<TimeSpan> StepTook, Action StoppingCleanly);

/// <summary>A run that diverged; the message says why and which checkpoint is the last good one.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);

/// <summary>A rank that could not start a data-parallel run, reported on every rank (rank 0 rethrows its own error).</summary>
public sealed class RankStartException(int rank, int code, Exception? own)
    : Exception(own?.Message ?? $"rank {rank} could not start the run", own)
{
    /// <summary>The first rank that failed (0 when rank 0 did).</summary>
    public int Rank { get; } = rank;

    /// <summary>That rank's exit code, as the caller's classification gave it.</summary>
    public int Code { get; } = code;
}

/// <summary>
/// One training run, the same loop on every rank of a data-parallel job: the model and trainer built from a
/// <see cref="RunPlan"/>, the checkpoint it resumes restored, then steps until the plan's last step with the
/// checkpoints, sample grids and final files of <see cref="RunSettings"/>. Rank 0 writes its
/// <see cref="RunFolder"/> and tells its observers; other ranks take the same steps and collectives and write
/// nothing. A stop request on any rank stops every rank after the same step, with a checkpoint. A loss or state
/// that is not finite stops the run; the last finite checkpoint stays on disk and is named. A step's checkpoint is
/// the last file the step writes (after its log rows, events, measurement and grid; at the end, after samples.png
/// and model.safetensors), so a run killed at any moment resumes from a checkpoint whose step left everything it
/// writes on disk, and redoes the rest exactly.
/// </summary>
public sealed class TrainingRun : IDisposable
{
    private readonly RunFolder? _folder;
    private readonly IReadOnlyList<ITrainingObserver> _observers;
    private readonly LossLog? _log;
    private readonly EventFile? _events;
    private MetricsLog? _metrics;
    private long? _savedStep;

    // Whether the state is at a step whose files are written (or are rewritten by a run resuming it), so that a
    // checkpoint of it may be saved when something fails.
    private bool _atBoundary = true;

    /// <summary>
    /// Builds the run on this rank: the model (its initial weights from the seed), the trainer, and the resumed
    /// state. <paramref name="folder"/> is rank 0's locked run folder (null on other ranks, where
    /// <paramref name="observers"/> are ignored too).
    /// </summary>
    public TrainingRun(RunPlan plan, IBackend backend, DataParallel parallel, RunFolder? folder, IEnumerable<ITrainingObserver>? observers = null)
    {
        if (parallel.IsRoot && folder is null) throw new ArgumentNullException(nameof(folder), "Rank 0 of a run writes its run folder.");
        Plan = plan;
        Parallel = parallel;
        _folder = parallel.IsRoot ? folder : null;
        _observers = parallel.IsRoot ? (observers ?? []).ToList() : [];
        Model = new UNet(backend, plan.Model, new PhiloxGenerator(plan.Training.InitKey));
        try
        {
            Trainer = new Trainer(new DenoiseDiffusion(Model, plan.Diffusion), new LoaderBatchSource(plan.Loader), plan.Training, parallel)
            {
                MicroBatches = plan.Run.GradAccum,
            };
            plan.Resume?.RestoreInto(Trainer);
            if (_folder is not null)
            {
                StaleTemporaries = _folder.RemoveStaleTemporaries();
                _log = new LossLog(_folder.File(RunFolder.LossName), plan.Resume?.Step, _folder.Files);
                _folder.WriteText(RunFolder.ConfigName, plan.ConfigJson());
                _events = new EventFile(_folder.File(RunFolder.LogsName), _folder.Files);
                // TensorBoard drops what earlier files logged at and after the step of a restart record (its SessionLog START): a stopped run's
                // events after its checkpoint go, the checkpoint's own step stays.
                if (plan.Resume is { } resumed) _events.SessionStart(resumed.Step + 1);
                _events.Text("config", Trainer.StepCount, "```\n" + plan.ConfigJson() + "```");
                if (plan.Resume is { } r && SameFile(r.Path, _folder.CheckpointPath(r.Step))) _savedStep = r.Step;
            }
        }
        catch
        {
            _events?.Dispose();
            Trainer?.Dispose();
            Model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Rank 0's sample-quality measurement every <see cref="RunSettings.EvalEvery"/> steps and at the last (null: none): its rows go
    /// to metrics.csv and the event file, and the EMA weights of the lowest FID to best.safetensors.
    /// </summary>
    public Quality.QualityProbe? Quality { get; init; }

    /// <summary>The measurements so far (rank 0 with <see cref="RunSettings.EvalEvery"/> on), for plots.</summary>
    public MetricsLog? Metrics => _metrics;

    /// <summary>The run's TensorBoard event file (rank 0), under the folder's logs/.</summary>
    public EventFile? Events => _events;

    /// <summary>
    /// The agreement that starts a data-parallel run: every rank runs <paramref name="prepare"/> (resolving its
    /// plan, opening its data, locking rank 0's folder), then the ranks exchange their outcome before any other
    /// collective, so a rank that cannot start never leaves the others waiting. Each error is classified by
    /// <paramref name="codeOf"/> (0: none). When any rank failed every rank throws: rank 0 its own error, or a
    /// <see cref="RankStartException"/> naming the first failed rank.
    /// </summary>
    public static T Agree<T>(DataParallel parallel, Func<T> prepare, Func<Exception, int> codeOf)
    {
        T? result = default;
        Exception? error = null;
        try { result = prepare(); }
        catch (Exception e) { error = e; }
        if (parallel.Size == 1)
        {
            if (error is not null) ExceptionDispatchInfo.Capture(error).Throw();
            return result!;
        }
        int[] codes = parallel.GatherCodes(error is null ? 0 : codeOf(error));
        int failed = Array.FindIndex(codes, c => c != 0);
        if (failed < 0) return result!;
        if (result is IDisposable d) d.Dispose();
        if (parallel.IsRoot && error is not null) ExceptionDispatchInfo.Capture(error).Throw();
        throw new RankStartException(failed, codes[failed], error);
    }

    public RunPlan Plan { get; }
    public DataParallel Parallel { get; }
    public UNet Model { get; }
    public Trainer Trainer { get; }

    /// <summary>Rank 0's run folder (null on other ranks).</summary>
    public RunFolder? Folder => _folder;

    /// <summary>Temporary files a killed run left in the folder, removed at the start.</summary>
    public int StaleTemporaries { get; }

    /// <summary>The loss log (rank 0), for plots.</summary>
    public LossLog? Log => _log;

    /// <summary>Time since <see cref="Run"/> started.</summary>
    public TimeSpan Elapsed => _clock.Elapsed;

    private readonly Stopwatch _clock = new();
    private readonly MovingAverage _loss = new();

    /// <summary>The loss averaged over recent steps (a bias-corrected moving average).</summary>
    public double SmoothedLoss => _loss.Value;

    /// <summary>
    /// Trains to the plan's last step. Returns how the run ended; on rank 0 a divergence throws
    /// <see cref="TrainingDivergedException"/> instead (its message names the last good checkpoint). Another
    /// failure (an I/O error) is rethrown after saving what was trained when the failure came after the step's
    /// other files (writing its checkpoint, or at the end); otherwise the latest checkpoint stays the one to resume.
    /// </summary>
    public RunOutcome Run(CancellationToken cancel = default, RunPacing? pacing = null)
    {
        _clock.Restart();
        var run = Plan.Run;
        long total = Plan.TotalSteps;
        var loss = _loss;
        bool interrupted = false, stop = false;
        string? diverged = null;
        foreach (var o in _observers) o.OnStart(this);
        var iteration = Stopwatch.StartNew();
        try
        {
            while (Trainer.StepCount < total)
            {
                pacing?.StepTook(iteration.Elapsed);
                iteration.Restart();
                // One flag from every rank: a stop asked of any of them (or rank 0's refusal to save a non-finite
                // state) stops all of them after the same step.
                if (Parallel.AnyRank(cancel.IsCancellationRequested || stop))
                {
                    if (cancel.IsCancellationRequested) pacing?.StoppingCleanly();
                    interrupted = diverged is null;
                    break;
                }
                _atBoundary = false;
                var s = Trainer.Step();
                // The loss is the global mean, so every rank sees the same divergence.
                if (!float.IsFinite(s.Loss)) { diverged = $"the loss became {s.Loss} at step {s.Step}"; break; }
                _log?.Add(s);
                loss.Add(s.Loss);
                if (_events is not null)
                {
                    _events.Scalar("train/loss", s.Step, s.Loss);
                    _events.Scalar("train/grad_norm", s.Step, s.GradNorm);
                    _events.Scalar("train/lr", s.Step, s.LearningRate);
                    _events.Scalar("train/images_per_s", s.Step, s.Batch / Math.Max(s.Seconds, 1e-9));
                }
                foreach (var o in _observers) o.OnStep(this, s);
                // Every EvalEvery steps and at the last step, so the final weights are always measured.
                if (run.EvalEvery > 0 && (s.Step % run.EvalEvery == 0 || s.Step >= total)) Evaluate();
                if (s.Step >= total)
                {
                    _atBoundary = true;
                    break;
                }
                // The step's state is captured (and checked) first, written last.
                Checkpoint.State? state = null;
                if (run.CheckpointEvery > 0 && s.Step % run.CheckpointEvery == 0)
                {
                    (state, diverged) = Capture();
                    stop = diverged is not null;
                }
                if (!stop && run.SampleEvery > 0 && s.Step % run.SampleEvery == 0)
                    WriteSamples(_folder?.File($"samples-{s.Step:D7}.png"));
                _atBoundary = true;
                if (state is not null) Write(state);
            }
            // A run that diverged keeps the last checkpoint written before it; its state is not saved. A finished
            // run writes its final files before its last checkpoint, so a run resumed at its last step has nothing left to do.
            if (diverged is null)
            {
                var (state, refused) = Capture();
                diverged = refused;
                if (state is not null && diverged is null)
                {
                    if (!interrupted)
                    {
                        _atBoundary = false;
                        WriteSamples(_folder!.File(RunFolder.SamplesName));
                        using (Trainer.UseEmaWeights())
                            Checkpoint.SaveWeights(_folder.File(RunFolder.ModelName), Model, Plan.Model, Plan.Diffusion, files: _folder.Files);
                        _atBoundary = true;
                    }
                    Write(state);
                }
            }
        }
        catch
        {
            // Keep what was trained when something else fails (an I/O error), if the step's files are written.
            if (_atBoundary)
            {
                try { Save(); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            }
            throw;
        }
        _events?.Flush();
        if (diverged is not null)
        {
            // The rows up to the divergence stay for inspection; a resume cuts the log back to its checkpoint.
            _log?.Flush(durable: false);
            var failed = new RunOutcome(RunStatus.Diverged, Trainer.StepCount, SavedPath, loss.Value, _clock.Elapsed);
            foreach (var o in _observers) o.OnFinished(this, failed);
            if (Parallel.IsRoot) throw new TrainingDivergedException($"{diverged}; lower the learning rate or keep gradient clipping on. {DescribeSaved()}");
            return failed;
        }
        if (interrupted)
        {
            var stopped = new RunOutcome(RunStatus.Interrupted, Trainer.StepCount, SavedPath, loss.Value, _clock.Elapsed);
            foreach (var o in _observers) o.OnFinished(this, stopped);
            return stopped;
        }
        var done = new RunOutcome(RunStatus.Finished, Trainer.StepCount, SavedPath, loss.Value, _clock.Elapsed);
        foreach (var o in _observers) o.OnFinished(this, done);
        return done;
    }

    /// <summary>The checkpoint this run wrote last (or resumed from, in its folder).</summary>
    public string? SavedPath => _savedStep is { } s && _folder is not null ? _folder.CheckpointPath(s) : null;

    /// <summary>
    /// Rank 0 captures the state of the current step unless its checkpoint is written already. A state that is not
    /// finite is never written, so the last good checkpoint stays: returns why it was refused instead.
    /// </summary>
    private (Checkpoint.State? State, string? Refused) Capture()
    {
        if (_folder is null || Trainer.StepCount == 0 || Trainer.StepCount == _savedStep) return (null, null);
        try
        {
            return (Checkpoint.Capture(_folder.CheckpointPath(Trainer.StepCount), Trainer, Plan.Run), null);
        }
        catch (NonFiniteStateException e)
        {
            return (null, $"training diverged by step {Trainer.StepCount} ('{e.Tensor}' is not finite)");
        }
    }

    /// <summary>
    /// Rank 0 writes a captured checkpoint: the loss log and the event file are made durable up to its step first,
    /// so the logs on disk always cover the checkpoint on disk; the oldest checkpoints beyond
    /// <see cref="RunSettings.Keep"/> are removed after.
    /// </summary>
    private void Write(Checkpoint.State state)
    {
        _log!.Flush(durable: true);
        _events!.Flush(durable: true);
        state.Write(_folder!.Files);
        _savedStep = state.Step;
        _folder.Prune(Plan.Run.Keep);
        foreach (var o in _observers) o.OnCheckpoint(this, state.Path, state.Step);
    }

    /// <summary>Rank 0 writes the checkpoint of the current step unless it is written already; returns why a non-finite state was refused, or null.</summary>
    private string? Save()
    {
        var (state, refused) = Capture();
        if (state is not null) Write(state);
        return refused;
    }

    /// <summary>Rank 0 measures the EMA weights' samples and records them; a new lowest FID saves best.safetensors.</summary>
    private void Evaluate()
    {
        if (_folder is null || Quality is null) return;
        // Opened at the first measurement: a resumed run's rows after its checkpoint are dropped then.
        _metrics ??= new MetricsLog(_folder.File(RunFolder.MetricsName), Plan.Resume?.Step, _folder.Files);
        Quality.QualityResult r;
        using (Trainer.UseEmaWeights())
        {
            r = Quality.Measure(Trainer.Diffusion, Trainer.StepCount);
            bool best = r.Fid < _metrics.BestFid;
            if (best) Checkpoint.SaveWeights(_folder.File(RunFolder.BestName), Model, Plan.Model, Plan.Diffusion, files: _folder.Files);
            Model.Train();
            _metrics.Add(r);
            if (_events is not null)
            {
                _events.Scalar("eval/fid", r.Step, r.Fid);
                _events.Scalar("eval/inception_score", r.Step, r.InceptionScore);
                if (r.ClassAccuracy is { } a) _events.Scalar("eval/class_accuracy", r.Step, a);
                _events.Scalar("eval/seconds", r.Step, r.Seconds);
                _events.Flush();
            }
            foreach (var o in _observers) o.OnEval(this, r, best);
        }
    }

    private string DescribeSaved() => SavedPath is { } path
        ? $"The last good checkpoint is step {_savedStep} ({path}); resume from it with --resume."
        : Plan.Resume is { } resumed
            ? $"No checkpoint of this run was written before it diverged; the one it resumed from (step {resumed.Step}, {resumed.Path}) is unchanged."
            : "No checkpoint of this run was written before it diverged (checkpoint_every N writes one every N steps).";

    /// <summary>
    /// A grid of the EMA weights' samples (<see cref="RunSettings.SampleSampler"/>, the same noise every time): one row per class of a conditional
    /// model, <see cref="RunSettings.Samples"/> images each (guided with the default weight), or that many images.
    /// </summary>
    private void WriteSamples(string? path)
    {
        if (path is null) return;
        var sw = Stopwatch.StartNew();
        var mc = Model.Config;
        int perRow = Plan.Run.Samples ?? (mc.IsConditional ? RunSettings.DefaultSamplesPerClass : RunSettings.DefaultUnconditionalSamples);
        var sampler = Plan.Run.SampleSampler;
        int steps = sampler == SamplerKind.Ddpm ? Trainer.Diffusion.Steps : Math.Min(Plan.Run.SampleSteps, Trainer.Diffusion.Steps);
        using (Trainer.UseEmaWeights())
        {
            Model.Eval();
            using var scope = new TensorScope();
            var condition = mc.IsConditional ? ClassCondition.Rows(mc.NumClasses, perRow, ClassCondition.DefaultGuidance) : null;
            int n = condition?.Labels.Length ?? perRow;
            var x = new Sampler(Trainer.Diffusion, condition).Sample(n, sampler, steps, 0f, Trainer.Config.Seed + 1000);
            var (width, height) = ImageGrid.SavePng(path, x.ToArray(), n, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
                mc.IsConditional ? perRow : ImageGrid.SquareRow(n), Trainer.Diffusion.Config.DataRange, scale: SampleScale, files: _folder!.Files);
            Model.Train();
            var grid = new SampleGrid(path, Trainer.StepCount, n, sampler, steps, sw.Elapsed, width, height, mc.ImageChannels);
            _events?.Image("samples", grid.Step, File.ReadAllBytes(path), width, height, mc.ImageChannels);
            _events?.Flush();
            foreach (var o in _observers) o.OnSamples(this, grid);
        }
    }

    /// <summary>Pixel scale of the sample grids (<see cref="ImageGrid.AutoScale"/>: at least 512 pixels wide).</summary>
    public int SampleScale { get; init; } = ImageGrid.AutoScale;

    private static bool SameFile(string a, string b) =>
        string.Equals(System.IO.Path.GetFullPath(a), System.IO.Path.GetFullPath(b), OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);

    public void Dispose()
    {
        _events?.Dispose();
        Trainer.Dispose();
        Model.Dispose();
    }

    /// <summary>Bias-corrected moving average of the loss (as Adam corrects its moments), so early values are not dragged toward 0.</summary>
    private sealed class MovingAverage
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
