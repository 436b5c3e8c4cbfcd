using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Core;

/// <summary>Tape and scope behaviour, and one end-to-end training run.</summary>
public sealed class AutogradTests : IDisposable
{
    private readonly CpuReferenceBackend _be = new();
    private readonly ITestOutputHelper _out;

    public AutogradTests(ITestOutputHelper output) => _out = output;

    public void Dispose() => _be.Dispose();

    [Fact]
    public void ScopeDisposesItsTensorsAndKeepHandsThemOn()
    {
        var param = new Parameter(_be, new Shape(3));
        Tensor inner, kept, outer, keptToNobody;
        using (var outerScope = new TensorScope())
        {
            outer = Tensor.Zeros(_be, new Shape(2));
            using (var innerScope = new TensorScope())
            {
                inner = Tensor.Zeros(_be, new Shape(2));
                kept = innerScope.Keep(Tensor.Zeros(_be, new Shape(2)));
                var alsoParam = new Parameter(_be, new Shape(1));
                // Kept tensors leave the scope and parameters never join one: only 'inner' is tracked.
                Assert.Equal(1, innerScope.Count);
                alsoParam.Dispose();
            }
            Assert.True(inner.IsDisposed);
            Assert.False(kept.IsDisposed);
            Assert.False(outer.IsDisposed);
            keptToNobody = outerScope.Keep(Tensor.Zeros(_be, new Shape(1)));
        }
        Assert.True(kept.IsDisposed);
        Assert.True(outer.IsDisposed);
        Assert.False(keptToNobody.IsDisposed);
        Assert.False(param.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => inner.ToArray());
        keptToNobody.Dispose();
        param.Dispose();
    }

    [Fact]
    public void ScopesMustCloseInnermostFirst()
    {
        var a = new TensorScope();
        var b = new TensorScope();
        Assert.Throws<InvalidOperationException>(() => a.Dispose());
        b.Dispose();
        a.Dispose();
    }

    [Fact]
    public void GradientsOutliveTheStepScopeAndAccumulateAcrossBackwardCalls()
    {
        var x = new Parameter(_be, new Shape(3));
        x.CopyFrom([1f, -2f, 3f]);
        for (int pass = 0; pass < 2; pass++)
        {
            using var scope = new TensorScope();
            // y = x * x + x: x is used twice, so the tape must add both paths: dy/dx = 2x + 1.
            var y = Ops.Add(Ops.Mul(x, x), x);
            Ops.Sum(y).Backward();
        }
        Assert.NotNull(x.Grad);
        Assert.False(x.Grad!.IsDisposed);
        Assert.Equal(new float[] { 6f, -6f, 14f }, x.Grad.ToArray());
        var m = new Holder(x);
        m.ZeroGrad();
        Assert.Null(x.Grad);
        x.Dispose();
    }

    private sealed class Holder : Module
    {
        public Holder(Parameter p) => Register("p", p);
    }

    [Fact]
    public void BackwardNeedsAScalarOrAGradientAndNoGradRecordsNothing()
    {
        using var scope = new TensorScope();
        var x = new Parameter(_be, new Shape(2));
        x.CopyFrom([1f, 2f]);
        var y = Ops.Square(x);
        Assert.Throws<InvalidOperationException>(() => y.Backward());
        y.Backward(Tensor.FromArray(_be, [1f, 10f], 2));
        Assert.Equal(new float[] { 2f, 40f }, x.Grad!.ToArray());
        using (GradMode.NoGrad())
        {
            var z = Ops.Square(x);
            Assert.False(z.RequiresGrad);
        }
        x.Grad.Dispose();
        x.Dispose();
    }

    /// <summary>y = sin(x) on [-3, 3] by a 1-32-32-1 SiLU MLP.</summary>
    private sealed class Mlp : Module
    {
        public Mlp(IBackend be, PhiloxGenerator init)
        {
            L1 = Register("l1", new Linear(be, 1, 32, init));
            L2 = Register("l2", new Linear(be, 32, 32, init));
            L3 = Register("l3", new Linear(be, 32, 1, init));
        }

        public Linear L1 { get; }
        public Linear L2 { get; }
        public Linear L3 { get; }

        // x: [B, 1] -> [B, 1]
        public Tensor Forward(Tensor x) => L3.Forward(Ops.Silu(L2.Forward(Ops.Silu(L1.Forward(x)))));
    }

    [Fact]
    public void SmallMlpLearnsSine()
    {
        const int b = 64;
        var xs = Enumerable.Range(0, b).Select(i => -3f + 6f * i / (b - 1)).ToArray();
        var ys = xs.Select(MathF.Sin).ToArray();
        using var model = new Mlp(_be, new PhiloxGenerator(5));
        using var adam = new Adam(model.NamedParameters(), lr: 1e-2f);
        float first = 0, last = 0;
        for (int step = 0; step < 400; step++)
        {
            using var scope = new TensorScope();
            model.ZeroGrad();
            var x = Tensor.FromArray(_be, xs, b, 1);
            var target = Tensor.FromArray(_be, ys, b, 1);
            var loss = Ops.MseLoss(model.Forward(x), target);
            loss.Backward();
            GradClip.ClipGradNorm(model.Parameters(), 1.0);
            adam.Step();
            last = loss.Item();
            if (step == 0) first = last;
        }
        // sin has variance ~0.5 on this grid and the untrained net's loss is about that; 400 full-batch Adam
        // steps bring it to ~5e-5 (bound with a margin of 10).
        _out.WriteLine($"MSE: initial {first}, after 400 steps {last}");
        Assert.True(first > 0.1f, $"initial loss {first}");
        Assert.True(last < 5e-4f, $"loss after training {last} (initial {first})");
    }
}
