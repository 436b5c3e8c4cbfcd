namespace Ddpm.Tensors.Nn;

/// <summary>
/// Adam with PyTorch's semantics (torch.optim.Adam, or AdamW when <see cref="DecoupledWeightDecay"/> is set):
/// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps).
/// The moments are named after the parameters so checkpoints can hold them.
/// </summary>
public sealed class Adam : IDisposable
{
    private readonly (string Name, Parameter Param, Tensor M, Tensor V)[] _state;

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
        _state = parameters.Select(p =>
        {
            var m = Tensor.EmptyUntracked(p.Param.Backend, p.Param.Shape);
            var v = Tensor.EmptyUntracked(p.Param.Backend, p.Param.Shape);
            p.Param.Backend.Fill(m.Buffer, m.Size, 0f);
            p.Param.Backend.Fill(v.Buffer, v.Size, 0f);
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

    /// <summary>First and second moments by parameter name, for checkpoints.</summary>
    public IEnumerable<(string Name, Tensor M, Tensor V)> State => _state.Select(s => (s.Name, s.M, s.V));

    /// <summary>Applies one update to every parameter that has a gradient.</summary>
    public void Step()
    {
        StepCount++;
        double bc1 = 1.0 - Math.Pow(Beta1, StepCount);
        double bc2 = 1.0 - Math.Pow(Beta2, StepCount);
        var p = new AdamStepParams(LearningRate, Beta1, Beta2, Eps, DecoupledWeightDecay ? WeightDecay : 0f, (float)bc1, (float)bc2);
        foreach (var (_, param, m, v) in _state)
        {
            if (param.Grad is null) continue;
            var be = param.Backend;
            if (!DecoupledWeightDecay && WeightDecay != 0f)
            {
                // Coupled decay steps on g + wd * p; as in PyTorch that sum is a temporary, so the stored
                // gradient (logged, clipped, accumulated) is left as the backward pass wrote it.
                var g = be.Allocate(param.Size);
                try
                {
                    be.Copy(param.Grad.Buffer, 0, g, 0, param.Size);
                    be.Axpby(param.Buffer, g, param.Size, WeightDecay, 1f);
                    be.AdamStep(param.Buffer, g, m.Buffer, v.Buffer, param.Size, p);
                }
                finally
                {
                    g.Release();
                }
            }
            else be.AdamStep(param.Buffer, param.Grad.Buffer, m.Buffer, v.Buffer, param.Size, p);
        }
    }

    public void Dispose()
    {
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
                p.Backend.Affine(p.Grad!.Buffer, p.Grad.Buffer, p.Size, (float)coef, 0f);
        return norm;
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
