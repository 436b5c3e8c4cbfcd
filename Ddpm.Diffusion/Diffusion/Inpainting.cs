using Ddpm.Tensors;

namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// RePaint's resampling (Lugmayr et al. 2022): after a reverse step the sampler goes back up
/// <see cref="JumpLength"/> steps by the forward process and comes down again, <see cref="Resamples"/> times in
/// all for each stretch, so the generated region can agree with the known one. Resamples 1 is plain replacement
/// (no going back). Both count steps of the sampler's timestep sequence.
/// </summary>
public sealed record RePaintOptions
{
    public RePaintOptions(int jumpLength = 10, int resamples = 10)
    {
        if (jumpLength <= 0) throw new ArgumentOutOfRangeException(nameof(jumpLength), $"The jump length must be positive, got {jumpLength}.");
        if (resamples <= 0) throw new ArgumentOutOfRangeException(nameof(resamples), $"Resamples must be positive, got {resamples}.");
        JumpLength = jumpLength;
        Resamples = resamples;
    }

    public int JumpLength { get; }
    public int Resamples { get; }
}

/// <summary>
/// Inpainting by RePaint (Lugmayr et al. 2022) on an unconditionally trained model: at every reverse step the
/// known region of x is replaced by the known image put through q(x_t | x_0) at the step's new timestep (fresh
/// noise each time), the unknown region comes from the model, and RePaint's resampling harmonises the two.
/// Works with each <see cref="SamplerKind"/>: DDPM (all T steps, as in the paper), DDIM and DPM-Solver++ on their
/// subsequence (DPM-Solver++ restarts at first order after each jump back). After the last step the known region
/// is the image itself: with a mask of 0s and 1s, m x_known + (1 - m) x is x_known exactly where m = 1.
/// On a backend that records steps (<see cref="IStepGraphs"/>) each kind of move (the reverse steps, the merges with
/// the known region, the jumps back) is recorded once in a call and replayed, drawing the eager loop's bits.
/// </summary>
public static class Inpainting
{
    /// <summary>
    /// RePaint's schedule (its get_schedule_jump) over positions n-1 .. 0 of a sampler's <paramref name="n"/>
    /// timesteps, ending at -1 (the data): the positions x visits in order. Going down is a reverse step, going up a
    /// jump back by the forward process. At each multiple j of the jump length below n - jump length, the stretch
    /// j + jump length .. j is done <paramref name="options"/>.Resamples times.
    /// </summary>
    public static int[] Schedule(int n, RePaintOptions options)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), $"A sampler has at least one step, got {n}.");
        int jl = options.JumpLength;
        var jumps = new Dictionary<int, int>();
        for (int j = 0; j < n - jl; j += jl) jumps[j] = options.Resamples - 1;
        var path = new List<int>();
        int t = n;
        while (t >= 1)
        {
            t--;
            path.Add(t);
            if (jumps.TryGetValue(t, out int left) && left > 0)
            {
                jumps[t] = left - 1;
                for (int k = 0; k < jl; k++) path.Add(++t);
            }
        }
        path.Add(-1);
        return path.ToArray();
    }

    /// <summary>
    /// The moves of <see cref="Schedule"/> from position to position: a reverse step down by one, or a jump back up
    /// (consecutive upward moves are one, a single draw of q(x_to | x_from)).
    /// </summary>
    internal static IEnumerable<(int From, int To)> Moves(int[] schedule)
    {
        for (int k = 1; k < schedule.Length; k++)
        {
            int from = schedule[k - 1], to = schedule[k];
            if (to > from)
                while (k + 1 < schedule.Length && schedule[k + 1] > schedule[k]) to = schedule[++k];
            yield return (from, to);
        }
    }

    /// <summary>The model evaluations of <see cref="Schedule"/>: its downward moves.</summary>
    public static int ReverseSteps(int[] schedule)
    {
        int count = 0;
        for (int k = 1; k < schedule.Length; k++) if (schedule[k] < schedule[k - 1]) count++;
        return count;
    }

    /// <summary>
    /// Inpaints <paramref name="image"/> ([n, C, H, W] in the data range) where <paramref name="mask"/> ([n or 1,
    /// 1 or C, H, W], 1 = keep, 0 = generate; nothing else) is 0, with the <paramref name="sampler"/>'s model (and
    /// its class condition, one label per image, when it has one). Deterministic given <paramref name="seed"/>.
    /// Returns [n, C, H, W]; where the mask is 1 the values are the image's.
    /// </summary>
    public static Tensor Inpaint(Sampler sampler, Tensor image, Tensor mask, SamplerKind kind, int steps, float eta, RePaintOptions options,
        ulong seed, Action<SampleProgress>? progress = null)
    {
        var d = sampler.Diffusion;
        var cfg = d.EpsModel.Config;
        if (image.Rank != 4 || image.Shape[1] != cfg.ImageChannels || image.Shape[2] != cfg.ImageSize || image.Shape[3] != cfg.ImageSize)
            throw new ArgumentException($"The image must be [N, {cfg.ImageChannels}, {cfg.ImageSize}, {cfg.ImageSize}]; got {image.Describe()}.", nameof(image));
        int n = image.Shape[0];
        if (mask.Rank != 4 || (mask.Shape[0] != n && mask.Shape[0] != 1) || (mask.Shape[1] != 1 && mask.Shape[1] != cfg.ImageChannels)
            || mask.Shape[2] != cfg.ImageSize || mask.Shape[3] != cfg.ImageSize)
            throw new ArgumentException($"The mask must be [{n} or 1, 1 or {cfg.ImageChannels}, {cfg.ImageSize}, {cfg.ImageSize}]; got {mask.Describe()}.", nameof(mask));
        if (mask.ToArray().Any(v => v is not (0f or 1f))) throw new ArgumentException("The mask must hold only 0 (generate) and 1 (keep).", nameof(mask));
        if (sampler.Condition is { } c && c.Labels.Length != n)
            throw new ArgumentException($"The sampler's condition has {c.Labels.Length} labels for {n} images.", nameof(image));

        var gen = new PhiloxGenerator(seed);
        using var noGrad = GradMode.NoGrad();
        using var run = new ReverseSteps(sampler, kind, steps, eta);
        var seq = run.Timesteps;
        var schedule = Schedule(seq.Length, options);
        int total = ReverseSteps(schedule);
        using var keep = mask.Detach();
        using var fill = Ops.Affine(keep, -1f, 1f);
        // x after the step to position `to`: the known region put through q(x_to | x_0) with fresh noise (the image
        // itself at the data), the rest from the model.
        Tensor Merge(Tensor x, int to)
        {
            var known = to >= 0 ? d.QSample(image, Sampler.Fill(n, seq[to]), Tensor.RandN(image.Backend, image.Shape, gen)) : image.Detach();
            return keep * known + fill * x;
        }
        Tensor Eager(Tensor x, Action<SampleProgress>? report)
        {
            int done = 0;
            try
            {
                foreach (var (from, to) in Moves(schedule))
                {
                    if (to > from)
                    {
                        x = run.Renoise(x, from, to, gen);
                        continue;
                    }
                    x = run.Step(x, from, gen);
                    using (var scope = new TensorScope())
                    {
                        var merged = Merge(x, to);
                        x.Dispose();
                        x = scope.Keep(merged);
                    }
                    report?.Invoke(new SampleProgress(++done, total, seq[from]));
                }
                return x;
            }
            catch
            {
                x.Dispose();
                throw;
            }
        }
        var x0 = Tensor.RandN(image.Backend, image.Shape, gen);
        return run.UsesStepGraphs ? run.RePaint(x0, schedule, Merge, gen, progress, y => Eager(y, null)) : Eager(x0, progress);
    }
}
