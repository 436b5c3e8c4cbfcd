using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// The reverse process of one sampler as single steps between positions of its timestep sequence, for loops that
/// do more than go down it once (SDEdit starts part-way, RePaint goes back up). <see cref="Timesteps"/> holds the
/// timesteps in increasing order; position i is x at timestep Timesteps[i], position -1 the data. DDPM visits
/// every t; DDIM and DPM-Solver++ the uniform subsequence of <see cref="Sampler.DdimTimesteps"/>. DPM-Solver++(2M)
/// keeps the previous step's data prediction: it is used only when the previous step came from position i + 1,
/// so after a jump back up the solver restarts at first order.
/// On a backend that records steps (<see cref="IStepGraphs"/>), <see cref="Run"/> and RePaint's loop replay each kind
/// of step from its recording (see <see cref="UsesStepGraphs"/>); single
/// <see cref="Step(Tensor, int, PhiloxGenerator, Action{int, Tensor, Tensor}?)"/> and <see cref="Renoise"/> calls run eagerly.
/// </summary>
public sealed class ReverseSteps : IDisposable
{
    private readonly Sampler _sampler;
    private readonly SamplerKind _kind;
    private readonly float _eta;
    private readonly IStepGraphs? _graphs;
    private Tensor? _prevD;
    private int _prevFrom = int.MinValue;

    public ReverseSteps(Sampler sampler, SamplerKind kind, int steps, float eta)
    {
        _sampler = sampler;
        _kind = kind;
        _eta = eta;
        if (sampler.Diffusion.EpsModel.Backend is IStepGraphs { StepGraphsEnabled: true } graphs) _graphs = graphs;
        int T = sampler.Diffusion.Steps;
        Timesteps = kind switch
        {
            SamplerKind.Ddpm => Enumerable.Range(0, T).ToArray(),
            SamplerKind.Ddim or SamplerKind.DpmSolver => Sampler.DdimTimesteps(T, steps),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown sampler."),
        };
    }

    /// <summary>The sampler's timesteps, increasing: position i holds Timesteps[i].</summary>
    public int[] Timesteps { get; }

    /// <summary>
    /// Whether <see cref="Run"/> records each kind of step once and replays it (CUDA Graphs on the cuda backend): the
    /// backend offers <see cref="IStepGraphs"/> with recording on. A run with an onStep callback reads the finite
    /// check after every step, before the callback sees the step's values.
    /// </summary>
    public bool UsesStepGraphs => _graphs is not null;

    /// <summary>
    /// In a replayed run, how many steps run between two reads of the finite check (the last step is always
    /// checked). Replayed steps do not wait for the device: each adds its model output and next x times 0 into a
    /// mask that stays 0 while every value is finite, and that mask is read every this many steps; a run that finds
    /// it non-finite runs its steps again eagerly, each checked as an eager run checks it, to name the step.
    /// </summary>
    public int FiniteCheckEvery
    {
        get => _finiteCheckEvery;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value);
            _finiteCheckEvery = value;
        }
    }

    private int _finiteCheckEvery = 20;

    /// <summary>
    /// One step from position <paramref name="i"/> to i - 1 (the data when i = 0). Consumes <paramref name="x"/>
    /// (disposes it) and returns the next x, handed to the enclosing <see cref="TensorScope"/>. Noise, where the
    /// step has any, comes from <paramref name="gen"/>. <paramref name="onStep"/> sees the timestep, the next x
    /// and the predicted x0.
    /// </summary>
    public Tensor Step(Tensor x, int i, PhiloxGenerator gen, Action<int, Tensor, Tensor>? onStep = null) =>
        Step(x, i, gen, onStep, Timesteps.Length - 1);

    /// <summary>
    /// <see cref="Step(Tensor, int, PhiloxGenerator, Action{int, Tensor, Tensor}?)"/> within a run that started at
    /// position <paramref name="start"/>, which numbers the step if its values stop being finite.
    /// </summary>
    private Tensor Step(Tensor x, int i, PhiloxGenerator gen, Action<int, Tensor, Tensor>? onStep, int start)
    {
        if ((uint)i >= (uint)Timesteps.Length) throw new ArgumentOutOfRangeException(nameof(i), $"Position {i} is outside [0, {Timesteps.Length}).");
        using var scope = new TensorScope();
        int t = Timesteps[i], tPrev = i > 0 ? Timesteps[i - 1] : -1;
        var at = new StepPosition(start + 1 - i, start + 1, t);
        var next = _kind switch
        {
            SamplerKind.Ddpm => _sampler.DdpmStep(x, t, gen, onStep, at),
            SamplerKind.Ddim => _sampler.DdimStep(x, t, tPrev, _eta, gen, onStep, at),
            _ => DpmSolverStep(x, i, onStep, scope, at),
        };
        x.Dispose();
        return scope.Keep(next);
    }

    /// <summary>
    /// Steps from position <paramref name="start"/> down to the data; consumes <paramref name="x"/>. Progress
    /// counts the steps of this run (start + 1).
    /// </summary>
    public Tensor Run(Tensor x, int start, PhiloxGenerator gen, Action<SampleProgress>? progress, Action<int, Tensor, Tensor>? onStep)
    {
        if ((uint)start >= (uint)Timesteps.Length)
        {
            x.Dispose();
            throw new ArgumentOutOfRangeException(nameof(start), $"Position {start} is outside [0, {Timesteps.Length}).");
        }
        if (_graphs is not null && _prevD is null) return RunReplayed(x, start, gen, progress, onStep, _graphs);
        try
        {
            for (int i = start; i >= 0; i--)
            {
                x = Step(x, i, gen, onStep, start);
                progress?.Invoke(new SampleProgress(start + 1 - i, start + 1, Timesteps[i]));
            }
            return x;
        }
        catch
        {
            x.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <see cref="Run"/> with each kind of step recorded once and replayed: x (and DPM-Solver++'s previous data
    /// prediction, and with <paramref name="onStep"/> the predicted x0) live in buffers made with the recordings,
    /// which every step reads and overwrites; the finite check is read every <see cref="FiniteCheckEvery"/> steps, or
    /// after every step where <paramref name="onStep"/> is to see its values (which an eager run has checked first).
    /// The recordings and buffers are the sampler's <see cref="Sampler.Recordings"/> of this run's key, kept for the
    /// next run, or made for this run alone. Consumes <paramref name="x"/>, which is kept until the run ends so that
    /// a non-finite run can be repeated eagerly from it.
    /// </summary>
    private Tensor RunReplayed(Tensor x, int start, PhiloxGenerator gen, Action<SampleProgress>? progress, Action<int, Tensor, Tensor>? onStep,
        IStepGraphs graphs)
    {
        ulong offset = gen.Offset;
        var own = _sampler.Recordings is null ? new SamplingRecordings(capacity: 1) : null;
        var recordings = _sampler.Recordings ?? own!;
        var key = new RecordingKey(_sampler.Diffusion, _kind, x.Shape, DenoiseDiffusion.ForwardOf(_sampler.Condition), KeepX0: onStep is not null);
        var (steps, held) = recordings.Rent(key, graphs);
        try
        {
            steps.Begin(x);
            int checkedSteps = 0;
            for (int i = start; i >= 0; i--)
            {
                try
                {
                    steps.Step(this, i, gen, start);
                }
                catch
                {
                    // A step that failed part-way may have left its recording unusable: the key is recorded again next time.
                    recordings.Drop(steps);
                    held = false;
                    throw;
                }
                int done = start + 1 - i;
                if (onStep is not null || done - checkedSteps == FiniteCheckEvery || i == 0)
                {
                    if (!steps.AllFinite()) throw NameTheNonFiniteStep(x, start, i, checkedSteps, offset, gen);
                    checkedSteps = done;
                }
                if (onStep is not null) steps.Show(Timesteps[i], onStep);
                progress?.Invoke(new SampleProgress(done, start + 1, Timesteps[i]));
            }
            return steps.CopyX();
        }
        finally
        {
            steps.End();
            if (!held) steps.Dispose();
            own?.Dispose();
            x.Dispose();
        }
    }

    /// <summary>
    /// Runs positions <paramref name="start"/> down to <paramref name="end"/> again eagerly from
    /// <paramref name="x"/> and the generator's <paramref name="offset"/>, each step checked as an eager run checks
    /// it, so the step whose values stopped being finite is named as an eager run names it. The eager steps compute
    /// the replayed steps' bits, so they stop at the same step; should they not, the exception names the steps
    /// replayed since the last check (the first <paramref name="checkedSteps"/> were finite).
    /// </summary>
    private NonFiniteOutputException NameTheNonFiniteStep(Tensor x, int start, int end, int checkedSteps, ulong offset, PhiloxGenerator gen)
    {
        gen.Offset = offset;
        ForgetPrediction();
        var y = x.Detach();
        try
        {
            for (int i = start; i >= end; i--) y = Step(y, i, gen, null, start);
        }
        finally
        {
            y.Dispose();
        }
        return new NonFiniteOutputException(
            $"sampling steps {checkedSteps + 1} to {start + 1 - end} of {start + 1}: the values stopped being finite in the replayed steps but not when run again eagerly, so no image was written");
    }

    /// <summary>
    /// Moves x from position <paramref name="from"/> up to <paramref name="to"/> &gt; from by the forward process:
    /// x_to = sqrt(ab_to / ab_from) x_from + sqrt(1 - ab_to / ab_from) z, z from <paramref name="gen"/> (the same
    /// law as the single forward steps between them). Consumes <paramref name="x"/>.
    /// </summary>
    public Tensor Renoise(Tensor x, int from, int to, PhiloxGenerator gen)
    {
        if (from < 0 || to <= from || to >= Timesteps.Length)
            throw new ArgumentOutOfRangeException(nameof(to), $"Cannot re-noise from position {from} to {to} of {Timesteps.Length}.");
        using var scope = new TensorScope();
        var next = Renoised(x, from, to, gen);
        x.Dispose();
        return scope.Keep(next);
    }

    /// <summary><see cref="Renoise"/>'s result, <paramref name="x"/> kept.</summary>
    private Tensor Renoised(Tensor x, int from, int to, PhiloxGenerator gen)
    {
        var ab = _sampler.Diffusion.Schedule.AlphaBar;
        double ratio = ab[Timesteps[to]] / ab[Timesteps[from]];
        var z = Tensor.RandN(x.Backend, x.Shape, gen);
        return x * (float)Math.Sqrt(ratio) + z * (float)Math.Sqrt(1 - ratio);
    }

    /// <summary>
    /// RePaint's moves (<see cref="Inpainting.Schedule"/>) with each kind recorded once and replayed: the reverse
    /// steps as in <see cref="Run"/>, each followed by <paramref name="merge"/> (which makes x's next value from x and
    /// the position reached: the known region noised to it, or the image itself at the data), and each jump back up
    /// (a re-noising, after which DPM-Solver++ restarts at first order). The merges read the caller's buffers, so
    /// these recordings are this call's alone. The finite check (the steps' model outputs and next x, as the eager
    /// loop checks them) is read every <see cref="FiniteCheckEvery"/> steps and after the last; a check that fails
    /// runs the loop again with <paramref name="eager"/> from <paramref name="x"/> and the generator's first offset,
    /// to name the step as the eager loop names it. Consumes <paramref name="x"/>.
    /// </summary>
    internal Tensor RePaint(Tensor x, int[] schedule, Func<Tensor, int, Tensor> merge, PhiloxGenerator gen, Action<SampleProgress>? progress,
        Func<Tensor, Tensor> eager)
    {
        if (_graphs is null) throw new InvalidOperationException("The backend does not record steps.");
        ulong offset = gen.Offset;
        int start = Timesteps.Length - 1, total = Inpainting.ReverseSteps(schedule);
        using var recordings = new SamplingRecordings(capacity: 1);
        var (steps, _) = recordings.Rent(new RecordingKey(_sampler.Diffusion, _kind, x.Shape, DenoiseDiffusion.ForwardOf(_sampler.Condition), KeepX0: false), _graphs);
        try
        {
            steps.Begin(x);
            int done = 0, checkedSteps = 0;
            foreach (var (from, to) in Inpainting.Moves(schedule))
            {
                if (to > from)
                {
                    steps.Apply(StepKind.JumpBack, "RePaint jump back", y => Renoised(y, from, to, gen), restartsSolver: true);
                    continue;
                }
                steps.Step(this, from, gen, start);
                steps.Apply(to >= 0 ? StepKind.Merge : StepKind.FinalMerge, to >= 0 ? "RePaint merge with the known region noised" : "RePaint final merge", y => merge(y, to),
                    restartsSolver: false);
                done++;
                if (done - checkedSteps == FiniteCheckEvery || done == total)
                {
                    if (!steps.AllFinite()) throw NameTheNonFiniteRePaintStep(x, checkedSteps, done, total, offset, gen, eager);
                    checkedSteps = done;
                }
                progress?.Invoke(new SampleProgress(done, total, Timesteps[from]));
            }
            return steps.CopyX();
        }
        finally
        {
            steps.End();
            x.Dispose();
        }
    }

    /// <summary><see cref="NameTheNonFiniteStep"/> for <see cref="RePaint"/>: the whole loop again with <paramref name="eager"/>.</summary>
    private NonFiniteOutputException NameTheNonFiniteRePaintStep(Tensor x, int checkedSteps, int done, int total, ulong offset, PhiloxGenerator gen,
        Func<Tensor, Tensor> eager)
    {
        gen.Offset = offset;
        ForgetPrediction();
        eager(x.Detach()).Dispose();
        return new NonFiniteOutputException(
            $"inpainting steps {checkedSteps + 1} to {done} of {total}: the values stopped being finite in the replayed steps but not when run again eagerly, so no image was written");
    }

    private Tensor DpmSolverStep(Tensor x, int i, Action<int, Tensor, Tensor>? onStep, TensorScope scope, StepPosition at)
    {
        // First order where there is no earlier prediction on this path (the first step, or after a jump).
        bool second = _prevD is not null && _prevFrom == i + 1;
        var (next, dPred) = DpmSolverUpdate(x, i, second ? _prevD : null, at);
        onStep?.Invoke(Timesteps[i], next, dPred);
        _prevD?.Dispose();
        _prevD = scope.Keep(dPred);
        _prevFrom = i;
        return next;
    }

    /// <summary>
    /// The DPM-Solver++(2M) step from position <paramref name="i"/>: the next x and this step's data prediction,
    /// second order when <paramref name="prevD"/> (the prediction of position i + 1) is given.
    /// </summary>
    private (Tensor Next, Tensor DPred) DpmSolverUpdate(Tensor x, int i, Tensor? prevD, StepPosition at)
    {
        var d = _sampler.Diffusion;
        var seq = Timesteps;
        var ab = d.Schedule.AlphaBar;
        var (lo, hi) = d.Config.Range;
        int t = seq[i];
        var ts = Sampler.Fill(x.Shape[0], t);
        using var eps = d.PredictEps(x, ts, _sampler.Condition);
        using var x0Raw = d.PredictX0(x, ts, eps);
        var dPred = d.Config.ClipX0 ? Ops.Clamp(x0Raw, lo, hi) : x0Raw.Detach();
        Tensor next;
        // The last step lands on the data (alpha_bar 1): the result is the data prediction itself.
        if (i == 0) next = dPred.Detach();
        else
        {
            var c = Sampler.DpmSolverStep(ab[t], ab[seq[i - 1]], prevD is not null ? ab[seq[i + 1]] : null);
            using var a = x * (float)c.X;
            using var b = dPred * (float)c.D0;
            next = a + b;
            if (prevD is not null)
            {
                using var e = prevD * (float)c.D1;
                using var sum = next;
                next = sum + e;
            }
        }
        at.RequireFinite(eps, next);
        return (next, dPred);
    }

    /// <summary>
    /// The kinds of step, one recording each. A sampler's reverse steps: <see cref="Plain"/> (DDPM's and DDIM's
    /// steps without noise, DPM-Solver++'s first-order step), <see cref="Further"/> (the steps with noise,
    /// DPM-Solver++'s second-order step), <see cref="Final"/> (DPM-Solver++'s step to the data); RePaint's moves:
    /// the merge with the known region noised, the final merge with the image, the jump back up.
    /// </summary>
    internal enum StepKind { Plain, Further, Final, Merge, FinalMerge, JumpBack }

    /// <summary>
    /// The state of replayed runs of one <see cref="RecordingKey"/>: x, DPM-Solver++'s previous data prediction, the
    /// finite mask and (where kept) the predicted x0 in buffers made once, and one recording per kind of step (steps
    /// with and without noise, the solver's first- and second-order and final steps differ in their calls, and
    /// RePaint's merges and jumps back are kinds of their own). Each step
    /// runs the sampler's own step code on these buffers and writes its results back into them, so the recorded calls
    /// are the same at every step of every run; what changes (timesteps, labels, per-sample coefficients, the
    /// solver's factors, the guidance weight, the noise's Philox offsets) reaches the device as data.
    /// </summary>
    internal sealed class ReplayedSteps : IDisposable
    {
        private readonly IStepGraphs _graphs;
        private readonly Action _recorded;
        private readonly Dictionary<StepKind, IStepGraph> _recordings = [];
        private readonly Tensor _x, _finite;
        private readonly Tensor? _prevD, _x0;
        private bool _havePrev, _disposed;

        /// <summary>
        /// Buffers for runs of <paramref name="key"/> on the model's backend; <paramref name="recorded"/> is told of
        /// each kind of step recorded.
        /// </summary>
        public ReplayedSteps(IStepGraphs graphs, RecordingKey key, Action recorded)
        {
            _graphs = graphs;
            _recorded = recorded;
            // Owned here, not by the scope of the run that made them: they serve later runs.
            var be = key.Diffusion.EpsModel.Backend;
            _x = Tensor.EmptyUntracked(be, key.Shape);
            _finite = Tensor.EmptyUntracked(be, key.Shape);
            if (key.Kind == SamplerKind.DpmSolver) _prevD = Tensor.EmptyUntracked(be, key.Shape);
            if (key.KeepX0) _x0 = Tensor.EmptyUntracked(be, key.Shape);
        }

        /// <summary>Whether a run is using these buffers (between <see cref="Begin"/> and <see cref="End"/>).</summary>
        public bool InUse { get; private set; }

        /// <summary>Starts a run from <paramref name="x"/> (copied): a clear finite mask, no previous prediction.</summary>
        public void Begin(Tensor x)
        {
            InUse = true;
            _x.CopyFrom(x);
            _finite.Backend.Fill(0f, _finite.Buffer, _finite.Size);
            _havePrev = false;
        }

        /// <summary>Ends the run; the buffers may serve the next.</summary>
        public void End() => InUse = false;

        /// <summary>The step from position <paramref name="i"/> to i - 1 of <paramref name="run"/>, which started at <paramref name="start"/>.</summary>
        public void Step(ReverseSteps run, int i, PhiloxGenerator gen, int start)
        {
            var x = _x;
            var seq = run.Timesteps;
            var sampler = run._sampler;
            int t = seq[i], tPrev = i > 0 ? seq[i - 1] : -1;
            var at = new StepPosition(start + 1 - i, start + 1, t, _finite);
            bool second = _havePrev;
            var (key, name) = run._kind switch
            {
                SamplerKind.Ddpm => sampler.Diffusion.NoiseStd(t) == 0 ? (StepKind.Plain, "DDPM step without noise") : (StepKind.Further, "DDPM step"),
                SamplerKind.Ddim => sampler.DdimDrawsNoise(t, tPrev, run._eta) ? (StepKind.Further, "DDIM step with noise") : (StepKind.Plain, "DDIM step"),
                _ => i == 0 ? (StepKind.Final, "DPM-Solver++ final step")
                    : second ? (StepKind.Further, "DPM-Solver++ second-order step") : (StepKind.Plain, "DPM-Solver++ first-order step"),
            };
            var recording = Recording(key, name);
            var x0 = _x0;
            var prevD = _prevD;
            Action<int, Tensor, Tensor>? keep = x0 is null ? null : (_, _, predicted) => x0.CopyFrom(predicted);
            recording.Run(() =>
            {
                using var scope = new TensorScope();
                Tensor next;
                switch (run._kind)
                {
                    case SamplerKind.Ddpm:
                        next = sampler.DdpmStep(x, t, gen, keep, at);
                        break;
                    case SamplerKind.Ddim:
                        next = sampler.DdimStep(x, t, tPrev, run._eta, gen, keep, at);
                        break;
                    default:
                        var (n, d) = run.DpmSolverUpdate(x, i, second ? prevD : null, at);
                        prevD!.CopyFrom(d);
                        keep?.Invoke(t, n, d);
                        next = n;
                        break;
                }
                x.CopyFrom(next);
            });
            _havePrev = true;
        }

        /// <summary>
        /// Replaces x by <paramref name="f"/>(x) (whose temporaries it releases), recorded as the kind of step
        /// <paramref name="kind"/> (one of RePaint's; <see cref="Step"/> uses the reverse steps' kinds); with <paramref name="restartsSolver"/>
        /// the next DPM-Solver++ step is first order.
        /// </summary>
        public void Apply(StepKind kind, string name, Func<Tensor, Tensor> f, bool restartsSolver)
        {
            var x = _x;
            Recording(kind, name).Run(() =>
            {
                using var scope = new TensorScope();
                x.CopyFrom(f(x));
            });
            if (restartsSolver) _havePrev = false;
        }

        private IStepGraph Recording(StepKind kind, string name)
        {
            if (!_recordings.TryGetValue(kind, out var recording))
            {
                _recordings[kind] = recording = _graphs.CreateStepGraph("sampling: " + name);
                _recorded();
            }
            return recording;
        }

        /// <summary>Hands the last step's x and predicted x0 to <paramref name="onStep"/> (views, released after the call).</summary>
        public void Show(int t, Action<int, Tensor, Tensor> onStep)
        {
            using var x = _x.Detach();
            using var x0 = _x0!.Detach();
            onStep(t, x, x0);
        }

        /// <summary>Whether every model output and x so far was finite (waits for the device).</summary>
        public bool AllFinite() => double.IsFinite(_finite.Backend.SumOfSquares(_finite.Buffer, _finite.Size));

        /// <summary>A copy of the final x, handed to the caller.</summary>
        public Tensor CopyX()
        {
            var x = Tensor.Empty(_x.Backend, _x.Shape);
            x.CopyFrom(_x);
            return x;
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var r in _recordings.Values) r.Dispose();
            _recordings.Clear();
            _x.Dispose();
            _finite.Dispose();
            _prevD?.Dispose();
            _x0?.Dispose();
        }
    }

    /// <summary>Drops DPM-Solver++'s previous data prediction: the next solver step is first order.</summary>
    private void ForgetPrediction()
    {
        _prevD?.Dispose();
        _prevD = null;
        _prevFrom = int.MinValue;
    }

    public void Dispose() => ForgetPrediction();
}

/// <summary>
/// Where a reverse step stands (step <see cref="Step"/> of <see cref="Of"/> of its sampler's sequence, at timestep
/// <see cref="T"/>), to name it when the model's output or the next x stops being finite: sampling stops there and
/// no image is written.
/// </summary>
internal readonly record struct StepPosition(int Step, int Of, int T, Tensor? FiniteMask = null)
{
    /// <summary>
    /// Checks that the model's output <paramref name="eps"/> and the next x are finite now (a wait for the device),
    /// or, with a <see cref="FiniteMask"/> (a replayed step, which must not wait), adds both times 0 into the mask,
    /// which stays 0 while they are finite and becomes NaN where one is not.
    /// </summary>
    public void RequireFinite(Tensor eps, Tensor next)
    {
        if (FiniteMask is { } mask)
        {
            mask.Backend.Axpby(eps.Buffer, mask.Size, 0f, 1f, mask.Buffer);
            mask.Backend.Axpby(next.Buffer, mask.Size, 0f, 1f, mask.Buffer);
            return;
        }
        RequireFinite(eps, "the model's output");
        RequireFinite(next, "x");
    }

    private void RequireFinite(Tensor v, string what)
    {
        if (double.IsFinite(v.Backend.SumOfSquares(v.Buffer, v.Size))) return;
        var host = v.ToArray();
        long bad = Finite.FirstNonFinite(host), per = host.Length / v.Shape[0];
        throw new NonFiniteOutputException(
            $"sampling step {Step} of {Of} (t = {T}): {what} is {host[bad]} in image {bad / per} (value {bad % per} of {per}); the values stopped being finite there, so no image was written");
    }
}
