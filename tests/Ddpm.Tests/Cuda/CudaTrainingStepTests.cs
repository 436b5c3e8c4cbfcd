using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// What one training step asks of the device, on both convolution engines: the backend's own counters
/// (<see cref="IDeviceCounters"/>, what bench --json reports) must equal the simulated device's, a step waits for the
/// device once (to read the loss and gradient norm), and no work is per sample: the launches and library calls of a
/// step do not change with the batch size. Skipped where the driver is not the simulator.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaTrainingStepTests(ITestOutputHelper output)
{
    // ddpm-tool's small preset at 8x8 (the same layers and launches as at 32x32, a sixteenth of the arithmetic).
    private static UNetConfig Small => new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 2, Dropout = 0f,
    };

    public static TheoryData<ConvolutionEngine> Engines => new() { ConvolutionEngine.Cudnn, ConvolutionEngine.Im2col };

    [SimulatorTheory]
    [MemberData(nameof(Engines))]
    public void AStepIsTheSameWorkAtEveryBatchSizeAndWaitsOnce(ConvolutionEngine engine)
    {
        var counters = SimulatorCounters.Open()!;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 }, engine);
        var perStep = new List<DeviceCounters>();
        // Batches of 2 and more: at 1 some layout ops have nothing to move (a size-1 dimension) and become copies.
        foreach (int batch in new[] { 2, 3 })
        {
            using var model = new UNet(be, Small, new PhiloxGenerator(1));
            var tc = new TrainingConfig { BatchSize = batch, WarmupSteps = 1, GradClip = 1f, EmaDecay = 0.99f };
            using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(1, Small.ImageSize, 99), tc);
            // The first step makes the convolution plans and fills the allocator's cache.
            trainer.Step();
            var sim = counters.Read();
            var simDnn = counters.ReadCudnn();
            var own = be.ReadCounters();
            trainer.Step();
            var d = counters.Read() - sim;
            var dnn = counters.ReadCudnn() - simDnn;
            var work = DeviceCounters.Between(own, be.ReadCounters());
            output.WriteLine($"{be.ConvolutionPath}, batch {batch}, per step: {work.KernelLaunches} kernel launches, {work.BlasCalls} cuBLAS calls, " +
                $"{work.DnnCalls} cuDNN calls, {work.HostSynchronizations} host synchronisations, peak {work.PeakDeviceBytes / 1e6:F1} MB; simulator: {d}");
            Assert.Equal((long)d.Launches, work.KernelLaunches);
            Assert.Equal((long)d.Gemms, work.BlasCalls);
            Assert.Equal((long)dnn.Calls, work.DnnCalls);
            Assert.Equal((long)d.HostSyncs, work.HostSynchronizations);
            Assert.True(work.HostSynchronizations <= 1, $"batch {batch}: {work.HostSynchronizations} host synchronisations in a step; at most one. {d}");
            Assert.Equal(engine == ConvolutionEngine.Cudnn, work.DnnCalls > 0);
            perStep.Add(work);
        }
        Assert.Equal(perStep[0] with { PeakDeviceBytes = 0 }, perStep[1] with { PeakDeviceBytes = 0 });
        Assert.True(perStep[1].PeakDeviceBytes > perStep[0].PeakDeviceBytes, "a larger batch holds more device memory at its peak");
    }

    [SimulatorFact]
    public void TheGoldenTinyModelStepWaitsOnce()
    {
        var counters = SimulatorCounters.Open()!;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        var config = Golden.GoldenTestsBase.TinyConfig;
        using var model = new UNet(be, config, new PhiloxGenerator(1));
        var tc = new TrainingConfig { BatchSize = 2, WarmupSteps = 1, GradClip = 1f, EmaDecay = 0.99f };
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()), new SyntheticBatches(config.ImageChannels, config.ImageSize, 99), tc);
        trainer.Step();
        var before = counters.Read();
        const int steps = 2;
        for (int i = 0; i < steps; i++) trainer.Step();
        var d = counters.Read() - before;
        Assert.True(d.HostSyncs <= steps, $"{d.HostSyncs} host synchronisations in {steps} steps; at most one per step. {d}");
    }
}

/// <summary>A test that reads the simulated CUDA device's counters; skipped with the reason on any other driver.</summary>
public sealed class SimulatorFactAttribute : FactAttribute
{
    public SimulatorFactAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
        else if (SimulatorCounters.Open() is null) Skip = "The CUDA driver is not the simulator (tests/CudaSim): its counters cannot be read.";
    }
}

/// <summary>A theory that reads the simulated CUDA device's counters; skipped with the reason on any other driver.</summary>
public sealed class SimulatorTheoryAttribute : TheoryAttribute
{
    public SimulatorTheoryAttribute()
    {
        if (!CudaTestEnvironment.Available) Skip = CudaTestEnvironment.SkipReason;
        else if (SimulatorCounters.Open() is null) Skip = "The CUDA driver is not the simulator (tests/CudaSim): its counters cannot be read.";
    }
}
