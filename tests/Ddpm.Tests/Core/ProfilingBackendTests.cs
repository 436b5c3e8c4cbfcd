using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// The profiling decorator computes exactly what its inner backend computes (bit for bit: it only forwards),
/// counts calls and floating-point operations per op and shape, and records only while started.
/// </summary>
public sealed class ProfilingBackendTests
{
    /// <summary>conv 3x3 -> SiLU -> conv 1x1 -> sum, forward and backward; returns the loss and both weight gradients.</summary>
    private static (float Loss, float[] GradW1, float[] GradW2) Run(IBackend be)
    {
        var gen = new PhiloxGenerator(5);
        var w1 = new Parameter(be, new Shape(6, 3, 3, 3));
        var w2 = new Parameter(be, new Shape(4, 6, 1, 1));
        using (var r1 = Tensor.RandN(be, w1.Shape, gen)) w1.CopyFrom(r1);
        using (var r2 = Tensor.RandN(be, w2.Shape, gen)) w2.CopyFrom(r2);
        float loss;
        using (var scope = new TensorScope())
        {
            var x = Tensor.RandN(be, new Shape(2, 3, 7, 9), gen);
            var y = Ops.Conv2d(Ops.Silu(Ops.Conv2d(x, w1, null, stride: 1, padding: 1)), w2, null);
            var l = Ops.Sum(y);
            l.Backward();
            loss = l.ToArray()[0];
        }
        var result = (loss, w1.Grad!.ToArray(), w2.Grad!.ToArray());
        w1.Dispose();
        w2.Dispose();
        return result;
    }

    [Fact]
    public void ForwardsExactlyAndCountsOpsAndFlops()
    {
        using var plain = new CpuBackend(2);
        var expected = Run(plain);

        using var profiler = new ProfilingBackend(new CpuBackend(2));
        profiler.Start();
        var got = Run(profiler);
        profiler.Stop();

        Assert.Equal(expected.Loss, got.Loss);
        Assert.Equal(expected.GradW1, got.GradW1);
        Assert.Equal(expected.GradW2, got.GradW2);

        var rows = profiler.Entries.ToDictionary(e => e.Op);
        var fwd = rows["conv2d forward 3x3 s1 [2,3,7,9]->6"];
        Assert.Equal(1, fwd.Calls);
        Assert.Equal(2.0 * 2 * 6 * 7 * 9 * 3 * 9, fwd.Flops);
        Assert.Equal(1, rows["conv2d bwd-weight 1x1 s1 [2,6,7,9]->4"].Calls);
        Assert.Equal(1, rows["unary silu"].Calls);
        Assert.Equal(1, rows["unary silu backward"].Calls);
        Assert.True(profiler.Entries.Sum(e => e.Seconds) <= profiler.WallSeconds);
        // The table is sorted by time: its first row is the slowest op of this run, whichever that was.
        string report = profiler.Report(top: 3);
        Assert.Contains(profiler.Entries.MaxBy(e => e.Seconds)!.Op, report);
        Assert.Contains("other rows", report);
        Assert.Contains("between ops", report);
    }

    [Fact]
    public void RecordsOnlyWhileStarted()
    {
        using var profiler = new ProfilingBackend(new CpuBackend(1));
        Run(profiler);
        Assert.Empty(profiler.Entries);
        profiler.Start();
        Run(profiler);
        profiler.Stop();
        long calls = profiler.Entries.Sum(e => e.Calls);
        Assert.True(calls > 0);
        Run(profiler);
        Assert.Equal(calls, profiler.Entries.Sum(e => e.Calls));
        profiler.Reset();
        Assert.Empty(profiler.Entries);
    }
}
