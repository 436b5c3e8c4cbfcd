namespace Ddpm.Tool.Serve;

public enum JobState
{
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// <summary>
/// What the page is told of a drawing; <c>Ahead</c>: drawings before it (the running one included) while it waits;
/// <c>Png</c>: the newest frame or the grid, base64, in the event stream only.</summary>
public sealed record JobStatus(string Id, string State, string What, int Images, int Ahead, int Step, int Of, int Frames,
    string? Error, double? Seconds, long? StartedMs, long? EndedMs, int? Width, int? Height, string? Model, string? Png = null);

/// <summary>
/// One drawing: its request, its state, the latest predicted-x0 frame and the finished grid (PNGs at the model's
/// pixels). Written by the queue's worker, read by any request; every change wakes the readers waiting in
/// <see cref="ChangedAsync"/>.
/// </summary>
public sealed class SampleJob(string id, SampleRequest request, int images, string what)
{
    private readonly object _lock = new();
    private readonly CancellationTokenSource _cancel = new();
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private JobState _state = JobState.Queued;
    private int _step, _of, _frames, _version, _width, _height;
    private byte[]? _frame, _image;
    private string? _error, _model;
    private long? _startedMs, _endedMs;

    public string Id { get; } = id;
    public SampleRequest Request { get; } = request;
    public int Images { get; } = images;
    public string What { get; } = what;

    /// <summary>Cancelled when the page stops the drawing or the server stops.</summary>
    public CancellationToken Cancellation => _cancel.Token;

    public JobState State { get { lock (_lock) return _state; } }

    public bool IsFinished => State is JobState.Done or JobState.Failed or JobState.Cancelled;

    /// <summary>Counts the changes: a reader that saw version v waits for a later one.</summary>
    public int Version { get { lock (_lock) return _version; } }

    public JobStatus Status(int ahead)
    {
        lock (_lock)
            return new JobStatus(Id, _state.ToString().ToLowerInvariant(), What, Images, _state == JobState.Queued ? ahead : 0, _step, _of,
                _frames, _error, _startedMs is { } s && _endedMs is { } e ? (e - s) / 1000.0 : null, _startedMs, _endedMs,
                _image is null ? null : _width, _image is null ? null : _height, _model);
    }

    /// <summary>The latest predicted-x0 frame (or the finished grid), with the frame count it belongs to.</summary>
    public (byte[]? Png, int Frame) LatestFrame()
    {
        lock (_lock) return (_image ?? _frame, _frames);
    }

    /// <summary>The finished grid, or null until the drawing is done.</summary>
    public byte[]? Image { get { lock (_lock) return _image; } }

    /// <summary>Completes when the job changes after <paramref name="seenVersion"/>.</summary>
    public Task ChangedAsync(int seenVersion)
    {
        lock (_lock) return _version != seenVersion ? Task.CompletedTask : _changed.Task;
    }

    /// <summary>Moves a queued job to running, at step 0 of <paramref name="steps"/>; false when it was cancelled while it waited.</summary>
    internal bool Start(long nowMs, string model, int steps)
    {
        lock (_lock)
        {
            if (_state != JobState.Queued) return false;
            _state = JobState.Running;
            _startedMs = nowMs;
            _model = model;
            _of = steps;
            Changed();
            return true;
        }
    }

    internal void Progress(int step, int of)
    {
        lock (_lock)
        {
            (_step, _of) = (step, of);
            Changed();
        }
    }

    internal void Frame(byte[] png)
    {
        lock (_lock)
        {
            _frame = png;
            _frames++;
            Changed();
        }
    }

    internal void Done(byte[] png, int width, int height, long nowMs)
    {
        lock (_lock)
        {
            (_image, _width, _height) = (png, width, height);
            _frame = null;
            Finish(JobState.Done, null, nowMs);
        }
    }

    internal void Fail(string error, long nowMs)
    {
        lock (_lock) Finish(JobState.Failed, error, nowMs);
    }

    /// <summary>
    /// Stops the job: a queued one ends at once (returns true), a running one after its current step (the worker
    /// then calls <see cref="Cancelled"/>); a finished one is left as it is.
    /// </summary>
    internal bool Cancel(long nowMs)
    {
        lock (_lock)
        {
            if (_state is JobState.Done or JobState.Failed or JobState.Cancelled) return false;
            _cancel.Cancel();
            if (_state != JobState.Queued) return false;
            Finish(JobState.Cancelled, "stopped before it started", nowMs);
            return true;
        }
    }

    internal void Cancelled(long nowMs)
    {
        lock (_lock) Finish(JobState.Cancelled, $"stopped at step {_step} of {_of}", nowMs);
    }

    private void Finish(JobState state, string? error, long nowMs)
    {
        _state = state;
        _error = error;
        _endedMs = nowMs;
        Changed();
    }

    private void Changed()
    {
        _version++;
        var done = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        done.SetResult();
    }
}
