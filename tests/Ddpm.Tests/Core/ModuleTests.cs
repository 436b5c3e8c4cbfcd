using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Xunit;

namespace Ddpm.Tests.Core;

public sealed class ModuleTests : IDisposable
{
    private readonly CpuReferenceBackend _be = new();

    public void Dispose() => _be.Dispose();

    /// <summary>A small stack with a nested list, registered out of alphabetical order on purpose.</summary>
    private sealed class Stack : Module
    {
        public Stack(IBackend be, PhiloxGenerator init)
        {
            Conv = Register("conv_in", new Conv2d(be, 3, 8, 3, init, padding: 1));
            var blocks = new ModuleList();
            blocks.Add(new GroupNorm(be, 2, 8));
            blocks.Add(new Linear(be, 8, 4, init));
            Blocks = Register("blocks", blocks);
            Up = Register("up", new ConvTranspose2d(be, 8, 3, 4, init, stride: 2, padding: 1));
            Scale = Register("scale", new Parameter(be, new Shape(1)));
        }

        public Conv2d Conv { get; }
        public ModuleList Blocks { get; }
        public ConvTranspose2d Up { get; }
        public Parameter Scale { get; }
    }

    [Fact]
    public void NamesFollowRegistrationOrder()
    {
        using var m = new Stack(_be, new PhiloxGenerator(1));
        string[] expected =
        [
            // A module's own parameters come before its children's, as in PyTorch's state_dict.
            "scale",
            "conv_in.weight", "conv_in.bias",
            "blocks.0.weight", "blocks.0.bias",
            "blocks.1.weight", "blocks.1.bias",
            "up.weight", "up.bias",
        ];
        Assert.Equal(expected, m.NamedParameters().Select(p => p.Name));
        Assert.Equal(3 * 8 * 9 + 8 + 8 + 8 + 8 * 4 + 4 + 8 * 3 * 16 + 3 + 1, m.ParameterCount());
        // Depth-first: the stack, conv_in, blocks, blocks.0, blocks.1, up.
        Assert.Same(m.Blocks[1], m.Modules().ElementAt(4));
        m.Eval();
        Assert.All(m.Modules(), x => Assert.False(x.Training));
    }

    /// <summary>
    /// U(-b, b) with b = 1/sqrt(fan_in): every value within the bound, the largest close to it, the mean and
    /// the second moment b^2/3 within 5 standard errors.
    /// </summary>
    private static void AssertUniform(float[] v, double bound, string what)
    {
        int n = v.Length;
        double maxAbs = v.Max(x => Math.Abs((double)x));
        Assert.True(maxAbs <= bound, $"{what}: max |w| {maxAbs} exceeds the bound {bound}");
        // P(max |w| < (1 - 4/n) b) = (1 - 4/n)^n ~ e^-4: loose enough never to flake for these fixed seeds,
        // tight enough to tell the bound from a smaller one.
        Assert.True(maxAbs >= (1 - 4.0 / n) * bound, $"{what}: max |w| {maxAbs} is far below the bound {bound}");
        double mean = v.Average(x => (double)x);
        Assert.True(Math.Abs(mean) < 5 * bound / Math.Sqrt(3.0 * n), $"{what}: mean {mean}");
        double m2 = v.Average(x => (double)x * x);
        double se = bound * bound * Math.Sqrt(4.0 / 45 / n);
        Assert.True(Math.Abs(m2 - bound * bound / 3) < 5 * se, $"{what}: second moment {m2}, expected {bound * bound / 3}");
    }

    [Fact]
    public void DefaultInitialisationMatchesPyTorch()
    {
        var init = new PhiloxGenerator(2024);
        using var conv = new Conv2d(_be, 16, 32, 3, init);
        AssertUniform(conv.Weight.ToArray(), 1 / Math.Sqrt(16 * 9), "conv weight");
        Assert.All(conv.Bias!.ToArray(), b => Assert.True(Math.Abs(b) <= 1 / Math.Sqrt(16 * 9)));

        using var lin = new Linear(_be, 50, 80, init);
        AssertUniform(lin.Weight.ToArray(), 1 / Math.Sqrt(50), "linear weight");
        AssertUniform(lin.Bias!.ToArray(), 1 / Math.Sqrt(50), "linear bias");

        // fan_in of a transposed conv is weight.size(1) * k * k = Cout * k * k, here 16 * 16 (not 8 * 16).
        using var up = new ConvTranspose2d(_be, 8, 16, 4, init, stride: 2, padding: 1);
        AssertUniform(up.Weight.ToArray(), 1 / Math.Sqrt(16 * 16), "conv-transpose weight");

        using var gn = new GroupNorm(_be, 4, 12);
        Assert.All(gn.Weight.ToArray(), w => Assert.Equal(1f, w));
        Assert.All(gn.Bias.ToArray(), b => Assert.Equal(0f, b));

        // Each layer draws fresh numbers from the shared generator.
        Assert.NotEqual(conv.Weight.ToArray().Take(10), lin.Weight.ToArray().Take(10));
    }
}
