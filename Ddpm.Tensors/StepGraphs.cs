namespace Ddpm.Tensors;

/// <summary>
/// An optional capability of a backend (ask with <c>backend as IStepGraphs</c>; the CPU backends do not offer it):
/// the device work of a step that repeats with the same shapes is recorded once and then replayed as one launch
/// (CUDA Graphs on the cuda backend), so the host makes no kernel launches for it.
/// </summary>
public interface IStepGraphs
{
    /// <summary>Whether steps are recorded and replayed (the driver supports it and the backend's options did not turn it off).</summary>
    bool StepGraphsEnabled { get; }

    /// <summary>
    /// A recorder for one kind of step (<paramref name="name"/> names it in errors): its first
    /// <paramref name="warmupRuns"/> runs are eager, so lazy set-up (algorithm choice, workspaces, optimiser state)
    /// happens outside the recording.
    /// </summary>
    IStepGraph CreateStepGraph(string name, int warmupRuns = 1);
}

/// <summary>
/// One kind of step, recorded and replayed. The step's code runs on every <see cref="Run"/>: on the run that records
/// its device work is captured; on later runs the backend only checks that each call is the captured one (same
/// kernel, buffers, shapes and scalars) and collects the step's uploads, then replays the recording. So a step
/// must: make the same calls with the same buffers every time; release every buffer it allocates before it returns
/// (those come from a pool the recording keeps); not wait for the device (no Download, SumOfSquares or Synchronize);
/// and bring whatever changes from step to step to the device as data: uploads, the Philox ops' seeds and offsets,
/// <see cref="IBackend.AdamStep"/>'s scalars, <see cref="IBackend.Axpby"/>'s and <see cref="IBackend.Affine"/>'s factors (which the backend reads
/// from device memory inside a recording). A call that differs from the recording is an
/// <see cref="InvalidOperationException"/> naming it. Dispose releases the recording and its memory.
/// </summary>
public interface IStepGraph : IDisposable
{
    /// <summary>Runs <paramref name="step"/> eagerly (warm-up), or records it, or replays the recording.</summary>
    void Run(Action step);

    /// <summary>How many runs replayed the recording (the recording run included).</summary>
    long Replays { get; }
}
