using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Core;

public sealed class OptimizerTests : IDisposable
{
    private readonly CpuReferenceBackend _be = new();

    public void Dispose() => _be.Dispose();

    private Parameter Param(float[] values)
    {
        var p = new Parameter(_be, new Shape(values.Length));
        p.CopyFrom(values);
        return p;
    }

    private void SetGrad(Parameter p, float[] g)
    {
        p.Grad?.Dispose();
        var t = Tensor.EmptyUntracked(_be, p.Shape);
        t.CopyFrom(g);
        p.Grad = t;
    }

    /// <summary>
    /// torch.optim.Adam / AdamW written out in double: AdamW decays p *= 1 - lr wd first; Adam (coupled) adds
    /// wd p to the gradient.
    /// </summary>
    private static double[] ReferenceAdam(float[] p0, float[][] grads, double lr, double b1, double b2, double eps,
        double wd, bool decoupled)
    {
        var p = p0.Select(v => (double)v).ToArray();
        var m = new double[p.Length];
        var v = new double[p.Length];
        for (int t = 1; t <= grads.Length; t++)
        {
            double bc1 = 1 - Math.Pow(b1, t), bc2 = 1 - Math.Pow(b2, t);
            for (int i = 0; i < p.Length; i++)
            {
                double g = grads[t - 1][i];
                if (decoupled) p[i] *= 1 - lr * wd;
                else g += wd * p[i];
                m[i] = b1 * m[i] + (1 - b1) * g;
                v[i] = b2 * v[i] + (1 - b2) * g * g;
                p[i] -= lr * (m[i] / bc1) / (Math.Sqrt(v[i]) / Math.Sqrt(bc2) + eps);
            }
        }
        return p;
    }

    [Theory]
    [InlineData(1, 0.0, true)]
    [InlineData(7, 0.0, true)]
    [InlineData(7, 0.1, true)]
    [InlineData(7, 0.1, false)]
    public void AdamMatchesAHandComputedReference(int steps, double wd, bool decoupled)
    {
        // Tolerance: 1e-6 absolute on parameters of size ~1 (float32 storage of p, m and v between steps).
        // Gradients span several magnitudes, one is 0, so eps and the bias corrections matter.
        float[] p0 = [0.5f, -1.25f, 2f, 0.001f, -0.3f];
        var grads = Enumerable.Range(0, steps)
            .Select(t => new[] { 0.1f * (t + 1), -2f, 1e-4f * (t % 2 == 0 ? 1 : -1), 0f, 3f - t }).ToArray();
        var p = Param(p0);
        using var adam = new Adam([("w", p)], lr: 0.01f, beta1: 0.9f, beta2: 0.999f, eps: 1e-8f, weightDecay: (float)wd)
        {
            DecoupledWeightDecay = decoupled,
        };
        foreach (var g in grads)
        {
            SetGrad(p, g);
            adam.Step();
            // The step must not alter the stored gradient (coupled decay works on a temporary).
            Assert.Equal(g, p.Grad!.ToArray());
        }
        var expected = ReferenceAdam(p0, grads, 0.01, 0.9, 0.999, 1e-8, wd, decoupled);
        Closeness.AssertElementwise($"Adam after {steps} steps (wd {wd}, decoupled {decoupled})", p.ToArray(), expected, 1e-6, 0);
        Assert.Equal(steps, adam.StepCount);
        p.Grad?.Dispose();
        p.Dispose();
    }

    [Fact]
    public void AdamSkipsParametersWithoutGradient()
    {
        var a = Param([1f, 2f]);
        var b = Param([3f]);
        using var adam = new Adam([("a", a), ("b", b)], lr: 0.1f);
        SetGrad(a, [1f, -1f]);
        adam.Step();
        // The first step moves each coordinate by lr * sign(g) (m / bc1 = g, sqrt(v / bc2) = |g|).
        Closeness.AssertElementwise("a", a.ToArray(), new double[] { 0.9, 2.1 }, 1e-6, 0);
        Assert.Equal(new float[] { 3f }, b.ToArray());
    }

    [Fact]
    public void ClipGradNormScalesToTheMaximum()
    {
        // Gradients [3, 4] and [12]: global norm 13.
        var a = Param([0f, 0f]);
        var b = Param([0f]);
        SetGrad(a, [3f, 4f]);
        SetGrad(b, [12f]);
        Assert.Equal(13.0, GradClip.ClipGradNorm([a, b], 20.0), 12);
        Assert.Equal(new float[] { 3f, 4f }, a.Grad!.ToArray());

        double norm = GradClip.ClipGradNorm([a, b], 6.5);
        Assert.Equal(13.0, norm, 12);
        double coef = 6.5 / (13 + 1e-6);
        Closeness.AssertElementwise("clipped a", a.Grad!.ToArray(), new[] { 3 * coef, 4 * coef }, 0, 1e-7);
        Closeness.AssertElementwise("clipped b", b.Grad!.ToArray(), new[] { 12 * coef }, 0, 1e-7);
        Assert.Equal(6.5, GradClip.ClipGradNorm([a, b], 100.0), 5);
    }
}
