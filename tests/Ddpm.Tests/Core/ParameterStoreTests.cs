using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// Flat parameter storage against the per-tensor path it replaces: the same model built twice from one seed,
/// one adopted by a <see cref="ParameterStore"/>, must get the same gradients, Adam updates and clipping.
/// </summary>
public sealed class ParameterStoreTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly CpuReferenceBackend _ref = new();

    private IBackend Get(string name) => name == "cpu" ? _cpu : _ref;

    public static IEnumerable<object[]> Backends => [["cpu"], ["cpu-reference"]];

    /// <summary>Two layers around an optional middle one, and a parameter that never trains in between.</summary>
    private sealed class Net : Module
    {
        public Net(IBackend be, ulong seed)
        {
            var g = new PhiloxGenerator(seed);
            A = Register("a", new Linear(be, 5, 7, g));
            Middle = Register("middle", new Linear(be, 7, 7, g));
            Frozen = Register("frozen", new Parameter(be, new Shape(3)));
            Init.Constant(Frozen, 0.5f);
            Frozen.RequiresGrad = false;
            B = Register("b", new Linear(be, 7, 2, g));
        }

        public Linear A { get; }
        public Linear Middle { get; }
        public Parameter Frozen { get; }
        public Linear B { get; }
        public bool UseMiddle { get; set; } = true;

        public Tensor Forward(Tensor x)
        {
            var h = Ops.Silu(A.Forward(x));
            if (UseMiddle) h = Ops.Tanh(Middle.Forward(h));
            return B.Forward(h);
        }
    }

    private static Tensor Loss(Net net, IBackend be, ulong seed)
    {
        var x = Tensor.FromArray(be, TestData.Normal(6 * 5, seed), 6, 5);
        var y = net.Forward(x);
        return Ops.Mean(Ops.Square(y));
    }

    private static float[] Values(Tensor? t) => t?.ToArray() ?? [];

    [Theory]
    [MemberData(nameof(Backends))]
    public void AdoptionKeepsValuesAndMakesEveryParameterAViewOfOneBuffer(string name)
    {
        var be = Get(name);
        using var net = new Net(be, 5);
        var before = net.NamedParameters().Select(p => (p.Name, Values: p.Param.ToArray())).ToList();
        using var store = ParameterStore.Adopt(net);

        Assert.Equal(before.Select(b => b.Name), store.Slots.Select(s => s.Name));
        int offset = 0;
        var flat = new float[store.Count];
        be.Download(store.Parameters, 0, flat);
        foreach (var ((n, values), slot) in before.Zip(store.Slots))
        {
            // Each slot at the next multiple of 64 floats (256 bytes), the padding before it zero.
            int aligned = (offset + ParameterStore.SlotAlignment - 1) / ParameterStore.SlotAlignment * ParameterStore.SlotAlignment;
            Assert.All(flat[offset..aligned], v => Assert.Equal(0f, v));
            offset = aligned;
            Assert.Equal(offset, slot.Offset);
            Assert.Equal(values.Length, slot.Size);
            Assert.Equal(values, slot.Parameter.ToArray());
            Assert.Equal(values, flat[offset..(offset + slot.Size)]);
            Assert.Same(store, slot.Parameter.Store);
            offset += slot.Size;
        }
        Assert.Equal(offset, store.Count);
        Assert.True(store.Count > net.ParameterCount(), "the test's parameters have sizes that need padding");

        // Writing the flat buffer is writing the parameters.
        var ramp = Enumerable.Range(0, store.Count).Select(i => (float)i).ToArray();
        be.Upload(ramp, store.Parameters, 0);
        var b = store.Slots[^1];
        Assert.Equal(ramp[b.Offset..(b.Offset + b.Size)], b.Parameter.ToArray());
        Assert.Throws<InvalidOperationException>(() => ParameterStore.Adopt(net));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void BackwardWritesTheSameGradientsIntoTheFlatBuffer(string name)
    {
        var be = Get(name);
        using var plain = new Net(be, 9);
        using var flat = new Net(be, 9);
        using var store = ParameterStore.Adopt(flat);
        foreach (bool middle in new[] { true, false, true })
        {
            plain.UseMiddle = flat.UseMiddle = middle;
            foreach (var net in new[] { plain, flat })
            {
                using var scope = new TensorScope();
                net.ZeroGrad();
                Loss(net, be, 3).Backward();
                // A second backward accumulates, as it does per tensor.
                Loss(net, be, 4).Backward();
            }
            // The frozen parameter never has a gradient.
            Assert.False(store.CompleteGradients());
            var grads = new float[store.Count];
            be.Download(store.Gradients, 0, grads);
            foreach (var ((pn, pp), slot) in plain.NamedParameters().Zip(store.Slots))
            {
                var fp = slot.Parameter;
                Assert.Equal(pp.Grad is null, fp.Grad is null);
                var expected = pp.Grad?.ToArray() ?? new float[pp.Size];
                Assert.Equal(expected, grads[slot.Offset..(slot.Offset + slot.Size)]);
                if (fp.Grad is not null) Assert.Equal(expected, fp.Grad.ToArray());
            }
        }
    }

    [Theory]
    [InlineData("cpu", true, 0f)]
    [InlineData("cpu", true, 0.1f)]
    [InlineData("cpu", false, 0.1f)]
    [InlineData("cpu-reference", true, 0.1f)]
    [InlineData("cpu-reference", false, 0.1f)]
    public void FlatAdamStepsLikePerTensorAdamInFewLaunches(string name, bool decoupled, float weightDecay)
    {
        var inner = Get(name);
        var plainBe = new ForwardingBackend(inner);
        var flatBe = new ForwardingBackend(inner);
        using var plain = new Net(plainBe, 11);
        using var flat = new Net(flatBe, 11);
        using var store = ParameterStore.Adopt(flat);
        Adam MakeAdam(Net n) => new(n.NamedParameters().Where(p => p.Param.RequiresGrad), lr: 0.05f, weightDecay: weightDecay)
        {
            DecoupledWeightDecay = decoupled,
        };
        using var plainAdam = MakeAdam(plain);
        using var flatAdam = MakeAdam(flat);
        Assert.Null(plainAdam.Store);
        Assert.Same(store, flatAdam.Store);
        Assert.Equal(plainAdam.State.Select(s => s.Name), flatAdam.State.Select(s => s.Name));

        // The middle layer drops out for a step: its moments are non-zero then, and it must be skipped.
        foreach (bool middle in new[] { true, false, true, true })
        {
            long flatAdamCalls = flatBe.CallsOf(nameof(IBackend.AdamStep));
            plain.UseMiddle = flat.UseMiddle = middle;
            foreach (var (net, adam) in new[] { (plain, plainAdam), (flat, flatAdam) })
            {
                using var scope = new TensorScope();
                net.ZeroGrad();
                Loss(net, net == plain ? plainBe : flatBe, 21).Backward();
                adam.Step();
            }
            // Runs of stepped parameters with a gradient (frozen comes first, in state_dict order): a, middle,
            // b in one; a | b when the middle has none.
            Assert.Equal(middle ? 1 : 2, flatBe.CallsOf(nameof(IBackend.AdamStep)) - flatAdamCalls);
            foreach (var ((pn, pp), (fn, fp)) in plain.NamedParameters().Zip(flat.NamedParameters()))
                Assert.True(pp.ToArray().SequenceEqual(fp.ToArray()), $"{pn} differs after a step (middle {middle})");
            foreach (var (ps, fs) in plainAdam.State.Zip(flatAdam.State))
            {
                Assert.Equal(ps.M.ToArray(), fs.M.ToArray());
                Assert.Equal(ps.V.ToArray(), fs.V.ToArray());
            }
        }
        Assert.Equal(0.5f, flat.Frozen.ToArray()[0]);
    }

    [Fact]
    public void OneLaunchWhenEveryParameterTrains()
    {
        var be = new ForwardingBackend(_cpu);
        using var net = new Net(be, 2);
        net.Frozen.RequiresGrad = true;
        using var store = ParameterStore.Adopt(net);
        using var adam = new Adam(net.NamedParameters());
        using (var scope = new TensorScope())
        {
            net.ZeroGrad();
            var extra = Ops.Sum(Ops.Mul(net.Frozen, net.Frozen));
            var loss = Ops.Add(Loss(net, be, 1), extra);
            loss.Backward();
        }
        Assert.True(store.CompleteGradients());
        be.ResetCounts();
        adam.Step();
        Assert.Equal(1, be.CallsOf(nameof(IBackend.AdamStep)));
        Assert.Equal(0, be.CallsOf(nameof(IBackend.Slice)));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void DeviceClippingMatchesPerTensorClipping(string name)
    {
        var be = Get(name);
        using var plain = new Net(be, 13);
        using var flat = new Net(be, 13);
        using var store = ParameterStore.Adopt(flat);
        plain.UseMiddle = flat.UseMiddle = false;
        foreach (var net in new[] { plain, flat })
        {
            using var scope = new TensorScope();
            net.ZeroGrad();
            Loss(net, be, 8).Backward();
        }
        // A clip below the norm scales; one above it does not.
        double norm0 = GradClip.GlobalNorm(plain.Parameters());
        foreach (double maxNorm in new[] { 0.3 * norm0, 10 * norm0 })
        {
            double plainNorm = GradClip.ClipGradNorm(plain.Parameters(), maxNorm);
            var stats = be.Allocate(2);
            GradClip.ClipGradNorm(store, maxNorm, stats, 0);
            var pair = new float[2];
            be.Download(stats, 0, pair);
            stats.Release();
            double flatNorm = Math.Sqrt(NormMath.Join(pair[0], pair[1]));
            Assert.True(Math.Abs(flatNorm - plainNorm) <= 1e-6 * plainNorm, $"norm {flatNorm:R} vs {plainNorm:R}");
            foreach (var ((pn, pp), (_, fp)) in plain.NamedParameters().Zip(flat.NamedParameters()))
            {
                Assert.Equal(pp.Grad is null, fp.Grad is null);
                if (pp.Grad is null) continue;
                var a = pp.Grad.ToArray();
                var b = fp.Grad!.ToArray();
                for (int i = 0; i < a.Length; i++)
                    Assert.True(Math.Abs(a[i] - b[i]) <= 1e-6 * Math.Abs(a[i]), $"{pn}[{i}]: {b[i]:R} vs {a[i]:R}");
            }
        }
    }

    [Fact]
    public void DisposingTheStoreLeavesWorkingPerTensorParameters()
    {
        using var net = new Net(_cpu, 4);
        var store = ParameterStore.Adopt(net);
        using (var scope = new TensorScope())
        {
            net.ZeroGrad();
            Loss(net, _cpu, 2).Backward();
        }
        var values = net.A.Weight.ToArray();
        store.Dispose();
        Assert.True(store.IsDisposed);
        Assert.Null(net.A.Weight.Store);
        Assert.Null(net.A.Weight.Grad);
        Assert.Equal(values, net.A.Weight.ToArray());
        using (var scope = new TensorScope())
        {
            net.ZeroGrad();
            Loss(net, _cpu, 2).Backward();
        }
        Assert.NotNull(net.A.Weight.Grad);
        // A new store can take the parameters again.
        using var again = ParameterStore.Adopt(net);
        Assert.Equal(values, net.A.Weight.ToArray());
    }

    [Fact]
    public void AGradientMovedOutOfTheBufferIsReported()
    {
        using var net = new Net(_cpu, 4);
        using var store = ParameterStore.Adopt(net);
        using (var scope = new TensorScope())
        {
            net.ZeroGrad();
            Loss(net, _cpu, 2).Backward();
        }
        net.B.Bias!.Grad = Tensor.Zeros(_cpu, net.B.Bias.Shape);
        var e = Assert.Throws<InvalidOperationException>(() => store.CompleteGradients());
        Assert.Contains("'b.bias'", e.Message);
    }

    public void Dispose()
    {
        _cpu.Dispose();
        _ref.Dispose();
    }
}
