using System.Diagnostics;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tool.Commands;
using Microsoft.AspNetCore.Http;

namespace Ddpm.Tool.Serve;

/// <summary>
/// The server's drawings: one runs at a time on a thread of its own (the model's thread), at most
/// <see cref="ServeLimits.Queue"/> wait, and the last <see cref="Kept"/> are kept for the page to read. A drawing is
/// exactly <c>sample</c>'s with the same options and seed (the same plan, chunks and seeds), with the predicted x0
/// of its steps published as frames along the way. While no drawing waits, a run folder's newer checkpoint is
/// loaded. Owned by the server; disposing it stops the running drawing after its step and ends the thread.
/// </summary>
public sealed class SampleQueue : IDisposable
{
    /// <summary>Finished drawings kept for the page (their grids), oldest dropped first.</summary>
    public const int Kept = 16;

    /// <summary>Frames are published at most this often (and at the first step), so slow pages and fast models both keep up.</summary>
    public static readonly TimeSpan FrameInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>How often an idle worker looks for a run folder's newer checkpoint.</summary>
    public static readonly TimeSpan RefreshInterval = TimeSpan.FromSeconds(2);

    private readonly ModelSource _models;
    private readonly TextWriter _log;
    private readonly object _lock = new();
    private readonly LinkedList<SampleJob> _waiting = new();
    private readonly List<SampleJob> _jobs = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Thread _worker;
    private SampleJob? _running;
    private long _nextId;
    private bool _stopping;

    internal SampleQueue(ModelSource models, ServeLimits limits, SampleDefaults defaults, TextWriter log)
    {
        _models = models;
        Limits = limits;
        Defaults = defaults;
        _log = log;
        _worker = new Thread(Work) { IsBackground = true, Name = "ddpm-serve sampler" };
        _worker.Start();
    }

    public ServeLimits Limits { get; }
    public SampleDefaults Defaults { get; }

    /// <summary>The model drawings use now, or null (with <see cref="Problem"/> saying why).</summary>
    public ModelInfo? Model => _models.Info;

    public string? Problem => _models.Problem;

    /// <summary>The run folder's checkpoints a drawing may name (see <see cref="ModelSource.Choices"/>).</summary>
    public string[] Checkpoints => _models.Choices();

    /// <summary>
    /// Queues a drawing checked against the model and the limits: a bad value is a 400, no model a 503, a full queue
    /// a 429, each with one line.
    /// </summary>
    public SampleJob Submit(SampleRequest request)
    {
        var model = _models.Info ?? throw new ApiException(StatusCodes.Status503ServiceUnavailable, $"there is no model to draw from yet: {_models.Problem}");
        int images = request.Check(model, Limits);
        _models.CheckChoice(request.Checkpoint);
        lock (_lock)
        {
            if (_stopping) throw new ApiException(StatusCodes.Status503ServiceUnavailable, "the server is stopping.");
            int busy = _waiting.Count + (_running is null ? 0 : 1);
            if (busy > Limits.Queue)
                throw new ApiException(StatusCodes.Status429TooManyRequests,
                    $"the server is busy: {busy} drawings are running or waiting, the most it takes (one running, --queue {Limits.Queue} waiting); try again when one is done.");
            var job = new SampleJob((++_nextId).ToString(System.Globalization.CultureInfo.InvariantCulture), request, images, request.Describe(model));
            _waiting.AddLast(job);
            _jobs.Add(job);
            Forget();
            Monitor.PulseAll(_lock);
            return job;
        }
    }

    public SampleJob? Find(string id)
    {
        lock (_lock) return _jobs.FirstOrDefault(j => j.Id == id);
    }

    /// <summary>The job's status, with the drawings before it while it waits.</summary>
    public JobStatus Status(SampleJob job)
    {
        lock (_lock)
        {
            int ahead = 0;
            for (var node = _waiting.First; node is not null && node.Value != job; node = node.Next) ahead++;
            return job.Status(ahead + (_running is null ? 0 : 1));
        }
    }

    /// <summary>Stops a job: a waiting one leaves the queue, a running one stops after its current step.</summary>
    public void Cancel(SampleJob job)
    {
        lock (_lock)
            if (job.Cancel(_clock.ElapsedMilliseconds)) _waiting.Remove(job);
    }

    /// <summary>Drops the oldest finished jobs beyond <see cref="Kept"/> (under the lock).</summary>
    private void Forget()
    {
        int finished = _jobs.Count(j => j.IsFinished);
        for (int i = 0; i < _jobs.Count && finished > Kept;)
        {
            if (_jobs[i].IsFinished) { _jobs.RemoveAt(i); finished--; }
            else i++;
        }
    }

    private void Work()
    {
        while (true)
        {
            SampleJob? job = null;
            lock (_lock)
            {
                if (_waiting.Count == 0 && !_stopping) Monitor.Wait(_lock, RefreshInterval);
                if (_stopping) return;
                if (_waiting.First is { } first)
                {
                    _waiting.RemoveFirst();
                    job = _running = first.Value;
                }
            }
            if (job is null)
            {
                Guard(null, _models.Refresh);
                continue;
            }
            Guard(job, () => Draw(job));
            lock (_lock)
            {
                _running = null;
                Forget();
            }
        }
    }

    /// <summary>Runs <paramref name="action"/>; whatever it throws fails the job (or is logged), never the thread.</summary>
    private void Guard(SampleJob? job, Action action)
    {
        try
        {
            action();
        }
        catch (OperationCanceledException) when (job is not null && (job.Cancellation.IsCancellationRequested || _stopping))
        {
            job.Cancelled(_clock.ElapsedMilliseconds);
        }
        catch (Exception e) when (e is UserError or UsageError or ApiException or IOException or InvalidDataException or UnauthorizedAccessException
            or NonFiniteOutputException)
        {
            job?.Fail(e.Message, _clock.ElapsedMilliseconds);
        }
        catch (Exception e)
        {
            job?.Fail($"internal error: {e.GetType().Name}: {e.Message}", _clock.ElapsedMilliseconds);
            lock (_log) _log.WriteLine($"ddpm-tool: serve: internal error{(job is null ? "" : $" in drawing {job.Id}")}: {e}");
        }
    }

    /// <summary>
    /// Draws the job as <c>sample</c> draws the same options: the same plan (images, labels, grid rows), chunks and
    /// seeds, through <see cref="ModelLoading.Draw"/>; the grid at the model's pixels (scale 1).
    /// </summary>
    private void Draw(SampleJob job)
    {
        var model = _models.Current(job.Request.Checkpoint);
        var info = model.Info;
        if (!job.Start(_clock.ElapsedMilliseconds, info.Source, job.Request.AsOptions().StepsFor(info.T))) return;
        // The model may have changed since the request was checked (a run's newer checkpoint): check it again.
        job.Request.Check(info, Limits);
        var mc = model.Model.Config;
        var r = job.Request;
        var o = r.AsOptions();
        var plan = SampleCommand.Plan(mc, r.Class, r.N, r.Guidance, null, info.File);
        var range = model.Diffusion.Config.DataRange;
        plan.RequireMemory(mc, MemoryEstimate.GridBytes(plan.Count, plan.NRow, mc.ImageChannels, mc.ImageSize, 1));
        var token = job.Cancellation;
        long lastFrame = long.MinValue;
        var data = ModelLoading.Draw(model.Diffusion, o, plan.Count, plan.Chunk, plan.Labels, plan.Guidance,
            (_, _, p) =>
            {
                token.ThrowIfCancellationRequested();
                job.Progress(p.Step, p.Of);
            },
            predictedX0: (first, x0) =>
            {
                long now = _clock.ElapsedMilliseconds;
                if (first != 0 || (lastFrame != long.MinValue && now - lastFrame < FrameInterval.TotalMilliseconds)) return;
                lastFrame = now;
                job.Frame(ImageGrid.EncodePng("frame", x0.ToArray(), x0.Shape[0], mc.ImageChannels, mc.ImageSize, mc.ImageSize, plan.NRow, range).Png);
            }, recordings: model.Recordings);
        var (png, w, h) = ImageGrid.EncodePng("the grid", data, plan.Count, mc.ImageChannels, mc.ImageSize, mc.ImageSize, plan.NRow, range);
        job.Done(png, w, h, _clock.ElapsedMilliseconds);
    }

    public void Dispose()
    {
        SampleJob[] all;
        lock (_lock)
        {
            _stopping = true;
            all = [.. _jobs];
            Monitor.PulseAll(_lock);
        }
        foreach (var job in all) job.Cancel(_clock.ElapsedMilliseconds);
        _worker.Join();
    }
}
