using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// The backward pass's leaf-ready callback: once per leaf that gets a gradient, after its last contribution,
/// with the gradient the pass without a callback computes, and as early as the graph allows.
/// </summary>
public sealed class LeafReadyTests : IDisposable
{
    private readonly CpuReferenceBackend _be = new();

    public void Dispose() => _be.Dispose();

    private static readonly float[] X = [0.3f, -1.2f, 0.7f], W0 = [0.9f, -0.4f, 1.3f], W1 = [-0.6f, 0.8f, 0.25f], W2 = [1.1f, 0.5f, -0.9f];

    /// <summary>
    /// loss = sum(w0 * (w1 * tanh(w2 * (x + w1)))): w0 is the first input of the last op (so the plain walk reaches
    /// it last), w1 is used twice (at the top and at the bottom), w3 not at all, x needs no gradient.
    /// </summary>
    private (Parameter W0, Parameter W1, Parameter W2, Parameter W3, Tensor Loss) Graph()
    {
        Parameter P(float[] v)
        {
            var p = new Parameter(_be, new Shape(3));
            p.CopyFrom(v);
            return p;
        }
        var (w0, w1, w2, w3) = (P(W0), P(W1), P(W2), P([1f, 2f, 3f]));
        var x = Tensor.FromArray(_be, X, 3);
        var t = Ops.Tanh(Ops.Mul(w2, Ops.Add(x, w1)));
        var loss = Ops.Sum(Ops.Mul(w0, Ops.Mul(w1, t)));
        return (w0, w1, w2, w3, loss);
    }

    [Fact]
    public void EachLeafIsReportedOnceAfterItsLastContributionWithTheFullGradient()
    {
        // The gradients in float64 closed form: with u = x + w1, t = tanh(w2 u), p = w1 t:
        // d/dw0 = p, d/dw1 = w0 t + w0 w1 (1 - t^2) w2, d/dw2 = w0 w1 (1 - t^2) u.
        var (g0, g1, g2) = (new double[3], new double[3], new double[3]);
        for (int i = 0; i < 3; i++)
        {
            double u = X[i] + W1[i], t = Math.Tanh(W2[i] * u), s = 1 - t * t;
            g0[i] = W1[i] * t;
            g1[i] = W0[i] * t + W0[i] * W1[i] * s * W2[i];
            g2[i] = W0[i] * W1[i] * s * u;
        }

        float[][] plain;
        using (new TensorScope())
        {
            var (w0, w1, w2, w3, loss) = Graph();
            loss.Backward();
            plain = [w0.Grad!.ToArray(), w1.Grad!.ToArray(), w2.Grad!.ToArray()];
            Assert.Null(w3.Grad);
            foreach (var p in new[] { w0, w1, w2, w3 }) { p.Grad?.Dispose(); p.Dispose(); }
        }

        using (new TensorScope())
        {
            var (w0, w1, w2, w3, loss) = Graph();
            var reported = new List<(Tensor Leaf, float[] Grad)>();
            loss.Backward(null, leaf => reported.Add((leaf, leaf.Grad!.ToArray())));

            // w0's only edge is walked first, w2's before w1's second one (at the bottom of the graph).
            Assert.Equal(new Tensor[] { w0, w2, w1 }, reported.Select(r => r.Leaf).ToArray());
            // At the callback the gradient is already the whole one: bit for bit what the plain pass leaves.
            Assert.Equal(plain[0], reported[0].Grad);
            Assert.Equal(plain[2], reported[1].Grad);
            Assert.Equal(plain[1], reported[2].Grad);
            Assert.Null(w3.Grad);
            // And it is the gradient: float32 ops on values of order 1 against float64, a few ulps.
            foreach (var (got, want) in new[] { (plain[0], g0), (plain[1], g1), (plain[2], g2) })
                for (int i = 0; i < 3; i++) Assert.Equal(want[i], got[i], 1e-6);
            foreach (var p in new[] { w0, w1, w2, w3 }) { p.Grad?.Dispose(); p.Dispose(); }
        }
    }
}
