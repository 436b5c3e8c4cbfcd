using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Recorded training steps (CUDA Graphs) on the simulated device: a replayed step computes the same bits as the
/// eager step, makes no launches outside its one graph launch, and the seam refuses what a graph cannot hold.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaGraphTests(ITestOutputHelper output)
{
    // Class-conditional with dropout, so labels, label drops, dropout masks and noise all change from step to step.
    private static UNetConfig Model => new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 32, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, Dropout = 0.1f,
        NumClasses = 3,
    };

    // Cosine schedule after a warm-up, EMA with its warm-up: the learning rate, Adam's bias corrections and the EMA
    // factor differ at every step.
    private static TrainingConfig Config => new()
    {
        BatchSize = 4, LearningRate = 1e-3f, WarmupSteps = 2, LrSchedule = LrSchedule.Cosine, DecaySteps = 6, LrFinal = 1e-4f,
        GradClip = 1f, EmaDecay = 0.99f, ClassDropout = 0.3f,
    };

    private const int Steps = 5;

    private sealed record Run(float[] Losses, double[] Norms, float[] Weights, float[] Ema, float[] M, float[] V, bool Graphs, DeviceCounters Work);

    private static Run Train(bool graphs)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
        using var model = new UNet(be, Model, new PhiloxGenerator(7));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Model.ImageSize, 5, Model.NumClasses), Config);
        var losses = new float[Steps];
        var norms = new double[Steps];
        var before = be.ReadCounters();
        for (int i = 0; i < Steps; i++)
        {
            var s = trainer.Step();
            (losses[i], norms[i]) = (s.Loss, s.GradNorm);
            // From the third step on (one eager warm-up, one recording) the step is a replay.
            if (i == 1) before = be.ReadCounters();
        }
        var work = DeviceCounters.Between(before, be.ReadCounters());
        float[] Read(DeviceBuffer b)
        {
            var host = new float[trainer.Store.Count];
            be.Download(b, 0, host);
            return host;
        }
        return new Run(losses, norms, Read(trainer.Store.Parameters), Read(trainer.EmaWeights!), Read(trainer.Optimizer.FirstMoments!),
            Read(trainer.Optimizer.SecondMoments!), trainer.UsesStepGraph, work);
    }

    internal static void AssertBitIdentical(float[] eager, float[] replayed, string what)
    {
        Assert.Equal(eager.Length, replayed.Length);
        for (int i = 0; i < eager.Length; i++)
            if (BitConverter.SingleToInt32Bits(eager[i]) != BitConverter.SingleToInt32Bits(replayed[i]))
                Assert.Fail($"{what}[{i}]: eager {eager[i]:R}, replayed {replayed[i]:R} (bit-identical expected)");
    }

    [SimulatorFact]
    public void ReplayedTrainingStepsAreBitIdenticalToEagerSteps()
    {
        var eager = Train(graphs: false);
        var replayed = Train(graphs: true);
        Assert.False(eager.Graphs);
        Assert.True(replayed.Graphs);
        AssertBitIdentical(eager.Losses, replayed.Losses, "loss");
        Assert.Equal(eager.Norms, replayed.Norms);
        AssertBitIdentical(eager.Weights, replayed.Weights, "weights");
        AssertBitIdentical(eager.Ema, replayed.Ema, "EMA");
        AssertBitIdentical(eager.M, replayed.M, "Adam m");
        AssertBitIdentical(eager.V, replayed.V, "Adam v");
        // Three replayed steps: the counters are per step.
        int replays = Steps - 2;
        output.WriteLine($"eager, per step: {eager.Work.KernelLaunches / replays} launches, {eager.Work.BlasCalls / replays} cuBLAS, " +
            $"{eager.Work.DnnCalls / replays} cuDNN, {eager.Work.HostSynchronizations / replays} host syncs, {eager.Work.GraphLaunches} graph launches");
        output.WriteLine($"graphs, per step: {replayed.Work.KernelLaunches / replays} launches, {replayed.Work.BlasCalls / replays} cuBLAS, " +
            $"{replayed.Work.DnnCalls / replays} cuDNN, {replayed.Work.HostSynchronizations / replays} host syncs, {replayed.Work.GraphLaunches / replays} graph launches");
        Assert.Equal(replays, replayed.Work.GraphLaunches);
        Assert.Equal(0, replayed.Work.KernelLaunches);
        Assert.Equal(0, replayed.Work.BlasCalls);
        Assert.Equal(0, replayed.Work.DnnCalls);
        Assert.True(replayed.Work.HostSynchronizations <= replays, $"{replayed.Work.HostSynchronizations} host synchronisations in {replays} replayed steps");
        Assert.Equal(0, eager.Work.GraphLaunches);
        Assert.True(eager.Work.KernelLaunches > 0);
    }

    [SimulatorFact]
    public void AReplayedStepIsOneGraphLaunchOnTheDevice()
    {
        var counters = SimulatorCounters.Open()!;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        Assert.True(be.StepGraphsEnabled);
        using var model = new UNet(be, Model, new PhiloxGenerator(7));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Model.ImageSize, 5, Model.NumClasses), Config);
        trainer.Step();
        var eagerBefore = counters.Read();
        trainer.Step();  // recorded: the launches are made into the capture
        var recorded = counters.Read() - eagerBefore;
        var before = counters.Read();
        trainer.Step();
        var d = counters.Read() - before;
        output.WriteLine($"recording step: {recorded}; replayed step: {d}");
        Assert.Equal(0UL, d.Launches);
        Assert.Equal(0UL, d.Gemms);
        Assert.Equal(1UL, d.GraphLaunches);
        Assert.Equal(recorded.Launches, d.GraphKernels);
        Assert.True(d.HostSyncs <= 1, $"{d.HostSyncs} host synchronisations in a replayed step");
    }

    [SimulatorFact]
    public void WithGraphsOffTheStepIsEager()
    {
        var counters = SimulatorCounters.Open()!;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = false });
        Assert.False(be.StepGraphsEnabled);
        using var model = new UNet(be, Model, new PhiloxGenerator(7));
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Model.ImageSize, 5, Model.NumClasses), Config);
        Assert.False(trainer.UsesStepGraph);
        for (int i = 0; i < 2; i++) trainer.Step();
        var before = counters.Read();
        trainer.Step();
        var d = counters.Read() - before;
        Assert.Equal(0UL, d.GraphLaunches);
        Assert.True(d.Launches > 0);
    }

    [SimulatorFact]
    public void AStepThatWaitsForTheDeviceIsRefused()
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        var x = be.Allocate(16);
        be.Fill(1f, x, 16);
        using var graph = be.CreateStepGraph("test step", warmupRuns: 0);
        var host = new float[16];
        var e = Assert.Throws<InvalidOperationException>(() => graph.Run(() =>
        {
            be.Affine(x, 16, 2f, 0f, x);
            be.Download(x, 0, host);
        }));
        Assert.Contains("'test step' downloads", e.Message);
        Assert.Contains("must not wait for the device", e.Message);
        // The device is still usable after the refused capture.
        be.Download(x, 0, host);
        Assert.Equal(1f, host[0]);
        x.Release();
    }

    [SimulatorFact]
    public void AScalarThatChangesBetweenReplaysIsNamed()
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        var x = be.Allocate(16);
        be.Fill(5f, x, 16);
        using var graph = be.CreateStepGraph("clamped step", warmupRuns: 0);
        float hi = 2f;
        void Step() => be.Clamp(x, 16, 0f, hi, x);
        graph.Run(Step);
        hi = 3f;  // a kernel scalar: the recording holds 2
        var e = Assert.Throws<InvalidOperationException>(() => graph.Run(Step));
        Assert.Contains("call 0 (clamp_values) is not the recorded one", e.Message);
        var host = new float[16];
        be.Download(x, 0, host);
        Assert.Equal(2f, host[0]);
        x.Release();
    }

    [SimulatorFact]
    public void StepScalarsAndUploadsReachEveryReplay()
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        var y = be.Allocate(8);
        be.Fill(0f, y, 8);
        using var graph = be.CreateStepGraph("axpby step", warmupRuns: 0);
        var host = new float[8];
        for (int i = 1; i <= 3; i++)
        {
            // An upload, affine's and axpby's factors, all different at each replay.
            graph.Run(() =>
            {
                using var x = Tensor.FromArray(be, Enumerable.Repeat((float)i, 8).ToArray(), 8);
                using var shifted = Tensor.Empty(be, x.Shape);
                be.Affine(x.Buffer, 8, 1f, 100f * i, shifted.Buffer);
                be.Axpby(shifted.Buffer, 8, 10f * i, 1f, y);
            });
        }
        be.Download(y, 0, host);
        Assert.Equal(3, graph.Replays);
        Assert.Equal(10f * (101 + 2 * 202 + 3 * 303), host[0]);
        y.Release();
    }
}
