using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// What one training step asks of the device, read from the simulated device's counters: on a GPU the host
/// waits, not the arithmetic, set the speed of small models, so a step may wait for the device once (to read the
/// loss and gradient norm). Skipped where the driver is not the simulator.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaTrainingStepTests(ITestOutputHelper output)
{
    // ddpm-tool's small preset.
    private static UNetConfig Small => new()
    {
        ImageChannels = 1, ImageSize = 32, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 2, Dropout = 0f,
    };

    [SimulatorFact]
    public void ATrainingStepWaitsForTheDeviceOnce()
    {
        var counters = SimulatorCounters.Open()!;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        foreach (var (name, config, batch) in new[] { ("small", Small, 2), ("golden tiny", Golden.GoldenTestsBase.TinyConfig, 2) })
        {
            using var model = new UNet(be, config, new PhiloxGenerator(1));
            var tc = new TrainingConfig { BatchSize = batch, WarmupSteps = 1, GradClip = 1f, EmaDecay = 0.99f };
            using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig()),
                new SyntheticBatches(config.ImageChannels, config.ImageSize, 99), tc);
            trainer.Step();
            var before = counters.Read();
            const int steps = 2;
            for (int i = 0; i < steps; i++) trainer.Step();
            var d = counters.Read() - before;
            output.WriteLine($"{name} ({model.NamedParameters().Count()} parameter tensors), per step: {d.Launches / steps} kernel launches, " +
                $"{d.Gemms / steps} GEMMs, {d.HostSyncs / (double)steps} host synchronisations, {d.BytesDtoH / steps} B read back");
            Assert.True(d.HostSyncs <= steps, $"{name}: {d.HostSyncs} host synchronisations in {steps} steps; at most one per step. {d}");
        }
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
