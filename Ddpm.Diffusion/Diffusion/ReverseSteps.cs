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
/// </summary>
public sealed class ReverseSteps : IDisposable
{
    private readonly Sampler _sampler;
    private readonly SamplerKind _kind;
    private readonly float _eta;
    private Tensor? _prevD;
    private int _prevFrom = int.MinValue;

    public ReverseSteps(Sampler sampler, SamplerKind kind, int steps, float eta)
    {
        _sampler = sampler;
        _kind = kind;
        _eta = eta;
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
    /// Moves x from position <paramref name="from"/> up to <paramref name="to"/> &gt; from by the forward process:
    /// x_to = sqrt(ab_to / ab_from) x_from + sqrt(1 - ab_to / ab_from) z, z from <paramref name="gen"/> (the same
    /// law as the single forward steps between them). Consumes <paramref name="x"/>.
    /// </summary>
    public Tensor Renoise(Tensor x, int from, int to, PhiloxGenerator gen)
    {
        if (from < 0 || to <= from || to >= Timesteps.Length)
            throw new ArgumentOutOfRangeException(nameof(to), $"Cannot re-noise from position {from} to {to} of {Timesteps.Length}.");
        using var scope = new TensorScope();
        var ab = _sampler.Diffusion.Schedule.AlphaBar;
        double ratio = ab[Timesteps[to]] / ab[Timesteps[from]];
        var z = Tensor.RandN(x.Backend, x.Shape, gen);
        var next = x * (float)Math.Sqrt(ratio) + z * (float)Math.Sqrt(1 - ratio);
        x.Dispose();
        return scope.Keep(next);
    }

    private Tensor DpmSolverStep(Tensor x, int i, Action<int, Tensor, Tensor>? onStep, TensorScope scope, StepPosition at)
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
            // First order where there is no earlier prediction on this path (the first step, or after a jump).
            bool second = _prevD is not null && _prevFrom == i + 1;
            var c = Sampler.DpmSolverStep(ab[t], ab[seq[i - 1]], second ? ab[seq[i + 1]] : null);
            using var a = x * (float)c.X;
            using var b = dPred * (float)c.D0;
            next = a + b;
            if (second)
            {
                using var e = _prevD! * (float)c.D1;
                using var sum = next;
                next = sum + e;
            }
        }
        at.RequireFinite(eps, next);
        onStep?.Invoke(t, next, dPred);
        _prevD?.Dispose();
        _prevD = scope.Keep(dPred);
        _prevFrom = i;
        return next;
    }

    public void Dispose()
    {
        _prevD?.Dispose();
        _prevD = null;
    }
}

/// <summary>
/// Where a reverse step stands (step <see cref="Step"/> of <see cref="Of"/> of its sampler's sequence, at timestep
/// <see cref="T"/>), to name it when the model's output or the next x stops being finite: sampling stops there and
/// no image is written.
/// </summary>
internal readonly record struct StepPosition(int Step, int Of, int T)
{
    public void RequireFinite(Tensor eps, Tensor next)
    {
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
