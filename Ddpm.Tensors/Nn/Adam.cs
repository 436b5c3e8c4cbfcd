namespace Ddpm.Tensors.Nn;

/// <summary>
/// Adam with PyTorch's semantics (torch.optim.Adam, or AdamW when <see cref="DecoupledWeightDecay"/> is set):
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps).
/// The moments are named after the parameters so checkpoints can hold them. When the parameters all live in
/// one <see cref="ParameterStore"/> (all of it or some of it), the moments are two flat buffers in the store's
/// layout and a step is one AdamStep per run of adjacent stepped parameters that have a gradient (one in all
/// when every parameter of the store is stepped and has one); otherwise one per parameter.
/// </summary>
public sealed class Adam : IDisposable
{
    private readonly (string Name, Parameter Param, Tensor M, Tensor V)[] _state;
    private readonly ParameterStore? _store;
    private readonly FlatState? _m, _v;
    private readonly bool[]? _stepped;

    public Adam(IEnumerable<(string Name, Parameter Param)> parameters, float lr = 1e-3f, float beta1 = 0.9f,
        float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f)
    {
        if (lr < 0 || beta1 < 0 || beta1 >= 1 || beta2 < 0 || beta2 >= 1 || eps < 0 || weightDecay < 0)
            throw new ArgumentException($"Adam: invalid hyper-parameters lr={lr} betas=({beta1}, {beta2}) eps={eps} weight_decay={weightDecay}.");
        LearningRate = lr;
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
        var list = parameters.ToList();
        var store = list.Count > 0 ? list[0].Param.Store : null;
        int[]? index = store is null ? null : list.Select(p => store.IndexOf(p.Param)).ToArray();
        if (store is not null && index!.All(i => i >= 0) && index!.Distinct().Count() == index!.Length)
        {
            _store = store;
            _m = store.CreateState(0f);
            _v = store.CreateState(0f);
            _stepped = new bool[store.Slots.Count];
            foreach (int i in index) _stepped[i] = true;
            _state = list.Select((p, k) => (p.Name, p.Param, _m.Views[index[k]], _v.Views[index[k]])).ToArray();
            return;
        }
        _state = list.Select(p =>
        {
            var m = Tensor.EmptyUntracked(p.Param.Backend, p.Param.Shape);
            var v = Tensor.EmptyUntracked(p.Param.Backend, p.Param.Shape);
            p.Param.Backend.Fill(0f, m.Buffer, m.Size);
            p.Param.Backend.Fill(0f, v.Buffer, v.Size);
            return (p.Name, p.Param, m, v);
        }).ToArray();
    }

    public float LearningRate { get; set; }
    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Eps { get; }
    public float WeightDecay { get; }

    /// <summary>Weight decay as AdamW (p *= 1 - lr*wd) rather than added to the gradient.</summary>
    public bool DecoupledWeightDecay { get; init; } = true;

    /// <summary>Steps taken so far (t in the bias corrections).</summary>
    public long StepCount { get; set; }

    /// <summary>The store whose flat buffers this optimiser steps, or null when it works per parameter.</summary>
    public ParameterStore? Store => _store;

    /// <summary>With a store: the flat first and second moments, in its layout (null otherwise).</summary>
    public DeviceBuffer? FirstMoments => _m?.Buffer;

    /// <inheritdoc cref="FirstMoments"/>
    public DeviceBuffer? SecondMoments => _v?.Buffer;

    /// <summary>First and second moments by parameter name, for checkpoints.</summary>
    public IEnumerable<(string Name, Tensor M, Tensor V)> State => _state.Select(s => (s.Name, s.M, s.V));

    /// <summary>Applies one update to every parameter that has a gradient.</summary>
    public void Step()
    {
        StepCount++;
        double bc1 = 1.0 - Math.Pow(Beta1, StepCount);
        double bc2 = 1.0 - Math.Pow(Beta2, StepCount);
        var p = new AdamStepParams(LearningRate, Beta1, Beta2, Eps, DecoupledWeightDecay ? WeightDecay : 0f, (float)bc1, (float)bc2);
        if (_store is not null)
        {
            StepFlat(_store, p);
            return;
        }
        foreach (var (_, param, m, v) in _state)
        {
            if (param.Grad is null) continue;
            Update(param.Backend, param.Buffer, param.Grad.Buffer, m.Buffer, v.Buffer, param.Size, p);
        }
    }

    private void StepFlat(ParameterStore store, in AdamStepParams p)
    {
        var be = store.Backend;
        foreach (var (_, _, offset, length) in store.RunsWithGradient(_stepped))
        {
            if (length == store.Count)
            {
                Update(be, store.Parameters, store.Gradients, _m!.Buffer, _v!.Buffer, length, p);
                continue;
            }
            var pw = be.Slice(store.Parameters, offset, length);
            var g = be.Slice(store.Gradients, offset, length);
            var m = be.Slice(_m!.Buffer, offset, length);
            var v = be.Slice(_v!.Buffer, offset, length);
            try
            {
                Update(be, pw, g, m, v, length, p);
            }
            finally
            {
                pw.Release();
                g.Release();
                m.Release();
                v.Release();
            }
        }
    }

    private void Update(IBackend be, DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, int n, in AdamStepParams p)
    {
        if (!DecoupledWeightDecay && WeightDecay != 0f)
        {
            // Coupled decay steps on g + wd * p; as in PyTorch that sum is a temporary, so the stored
            // gradient (logged, clipped, accumulated) is left as the backward pass wrote it.
            var g = be.Allocate(n);
            try
            {
                be.Copy(grad, 0, n, g, 0);
                be.Axpby(param, n, WeightDecay, 1f, g);
                be.AdamStep(g, n, p, param, m, v);
            }
            finally
            {
                g.Release();
            }
        }
        else be.AdamStep(grad, n, p, param, m, v);
    }

    public void Dispose()
    {
        if (_store is not null)
        {
            _m!.Dispose();
            _v!.Dispose();
            return;
        }
        foreach (var s in _state) { s.M.Dispose(); s.V.Dispose(); }
    }
}

public static class GradClip
{
    /// <summary>
    /// torch.nn.utils.clip_grad_norm_: scales all gradients by max_norm / (norm + 1e-6) when the global L2
    /// norm exceeds max_norm. Returns the norm before clipping.
    /// </summary>
    public static double ClipGradNorm(IEnumerable<Parameter> parameters, double maxNorm)
    {
        var withGrad = parameters.Where(p => p.Grad is not null).ToList();
        double norm = GlobalNorm(withGrad);
        double coef = maxNorm / (norm + 1e-6);
        if (coef < 1.0)
            foreach (var p in withGrad)
                p.Backend.Affine(p.Grad!.Buffer, p.Size, (float)coef, 0f, p.Grad.Buffer);
        return norm;
    }

    /// <summary>
    /// clip_grad_norm_ over a store's whole gradient buffer without waiting for the device: completes the
    /// gradients (<see cref="ParameterStore.CompleteGradients()"/>), writes the sum of their squares as a hi/lo pair
    /// to result[index], result[index + 1] (<see cref="IBackend.SumOfSquaresTo"/>; the norm is
    /// sqrt(<see cref="NormMath.Join"/>)), and when <paramref name="maxNorm"/> &gt; 0 scales the gradients by
    /// max_norm / (norm + 1e-6) if that is below 1. Two launches plus a fill per parameter the backward pass
    /// did not reach.
    /// </summary>
    public static void ClipGradNorm(ParameterStore store, double maxNorm, DeviceBuffer result, int index)
    {
        store.CompleteGradients();
        var be = store.Backend;
        be.SumOfSquaresTo(store.Gradients, store.Count, result, index);
        if (maxNorm > 0) be.ClipScale(result, index, maxNorm, store.Gradients, store.Count);
    }

    /// <summary>The L2 norm of all gradients together (parameters without a gradient count as zero).</summary>
    public static double GlobalNorm(IEnumerable<Parameter> parameters)
    {
        double sq = 0;
        foreach (var p in parameters)
            if (p.Grad is not null) sq += p.Backend.SumOfSquares(p.Grad.Buffer, p.Size);
        return Math.Sqrt(sq);
    }
}
