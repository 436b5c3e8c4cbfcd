using Ddpm.Tensors;

namespace Ddpm.Tests.TestUtil;

/// <summary>One input of a gradient check: its shape and values.</summary>
internal sealed record GradInput(int[] Shape, float[] Data, bool RequiresGrad = true)
{
    public static GradInput Normal(ulong seed, params int[] shape) => new(shape, TestData.Normal(TestData.Size(shape), seed));
}

/// <summary>
/// Finite-difference gradient checker. The loss is L = sum(w * f(inputs)) with a fixed random w of f's output
/// shape. The analytic gradient comes from <see cref="Tensor.Backward"/>; the numerical one from central
/// differences (L(x + h e_j) - L(x - h e_j)) / 2h, where each loss is accumulated in double from the float32
/// outputs. Outputs that do not depend on x_j are bit-identical in both evaluations, so they cancel exactly
/// and the difference only carries the rounding of the outputs that x_j touches.
/// Pass criterion, for every input element: |analytic - fd| &lt;= tol * (1 + |fd|).
/// </summary>
internal static class GradCheck
{
    /// <summary>Runs the check; returns the worst |analytic - fd| / (1 + |fd|) seen, for calibrating tolerances.</summary>
    public static double Check(IBackend be, string name, Func<Tensor[], Tensor> f, GradInput[] inputs, double h, double tol)
    {
        using var scope = new TensorScope();

        // Analytic gradients.
        var leaves = inputs.Select(i =>
        {
            var t = Tensor.FromArray(be, i.Data, i.Shape);
            t.RequiresGrad = i.RequiresGrad;
            return t;
        }).ToArray();
        var y = f(leaves);
        var w = TestData.Normal(y.Size, 0xC0FFEE);
        var wt = Tensor.FromArray(be, w, y.Shape.ToArray());
        var loss = Ops.Sum(Ops.Mul(y, wt));
        loss.Backward();

        double worst = 0;
        for (int k = 0; k < inputs.Length; k++)
        {
            if (!inputs[k].RequiresGrad) continue;
            var grad = leaves[k].Grad ?? throw new Xunit.Sdk.XunitException($"{name}: input {k} received no gradient.");
            Xunit.Assert.Equal(leaves[k].Shape, grad.Shape);
            var analytic = grad.ToArray();
            grad.Dispose();

            var data = (float[])inputs[k].Data.Clone();
            for (int j = 0; j < data.Length; j++)
            {
                float x0 = data[j];
                data[j] = (float)(x0 + h);
                double hp = data[j] - (double)x0;
                double lp = Loss(be, f, inputs, k, data, w);
                data[j] = (float)(x0 - h);
                double hm = x0 - (double)data[j];
                double lm = Loss(be, f, inputs, k, data, w);
                data[j] = x0;
                // The perturbed values are rounded to float32, so divide by the step actually taken.
                double fd = (lp - lm) / (hp + hm);
                double err = Math.Abs(analytic[j] - fd);
                double bound = tol * (1 + Math.Abs(fd));
                if (!(err <= bound))
                    Xunit.Assert.Fail($"{name}: d loss / d input{k}[{j}] analytic {analytic[j]:R} vs finite difference {fd:R} (|err| {err:E3} > {bound:E3}, h {h}).");
                worst = Math.Max(worst, err / (1 + Math.Abs(fd)));
            }
        }
        return worst;
    }

    private static double Loss(IBackend be, Func<Tensor[], Tensor> f, GradInput[] inputs, int k, float[] data, float[] w)
    {
        using var scope = new TensorScope();
        using var noGrad = GradMode.NoGrad();
        var ts = inputs.Select((i, idx) => Tensor.FromArray(be, idx == k ? data : i.Data, i.Shape)).ToArray();
        var y = f(ts).ToArray();
        double l = 0;
        for (int i = 0; i < y.Length; i++) l += (double)w[i] * y[i];
        return l;
    }
}
