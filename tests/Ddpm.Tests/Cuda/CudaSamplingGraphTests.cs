using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Sampling steps recorded once per kind and replayed (CUDA Graphs) on the simulated device: the replayed run draws
/// the eager run's images bit for bit with every sampler, with and without guidance; a step whose values stop being
/// finite is still named; and a replayed step is one graph launch with no other launches from the host.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaSamplingGraphTests(ITestOutputHelper output)
{
    private static UNetConfig Model(bool conditional) => new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8,
        NumClasses = conditional ? 3 : 0,
    };

    private sealed record Drawn(float[] Images, bool Graphs, long GraphLaunches);

    private static Drawn Draw(bool graphs, SamplerKind kind, int steps, float eta, float? guidance, bool clip)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
        using var model = new UNet(be, Model(guidance is not null), new PhiloxGenerator(11));
        model.Eval();
        var diffusion = new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 12, ClipX0 = clip });
        var condition = guidance is { } w ? new ClassCondition([0, 2, 1], w) : null;
        var sampler = new Sampler(diffusion, condition);
        using (var probe = new ReverseSteps(sampler, kind, steps, eta)) Assert.Equal(graphs, probe.UsesStepGraphs);
        var before = be.ReadCounters();
        using var images = sampler.Sample(3, kind, steps, eta, seed: 5);
        return new Drawn(images.ToArray(), graphs, be.ReadCounters().GraphLaunches - before.GraphLaunches);
    }

    [SimulatorTheory]
    [InlineData(SamplerKind.Ddpm, 12, 0f, null, true)]
    [InlineData(SamplerKind.Ddpm, 12, 0f, null, false)]
    [InlineData(SamplerKind.Ddpm, 12, 0f, 3f, true)]
    [InlineData(SamplerKind.Ddim, 6, 0f, null, true)]
    [InlineData(SamplerKind.Ddim, 6, 0.5f, null, true)]
    [InlineData(SamplerKind.Ddim, 6, 1f, 3f, true)]
    [InlineData(SamplerKind.Ddim, 6, 0f, 1f, false)]
    [InlineData(SamplerKind.DpmSolver, 6, 0f, null, true)]
    [InlineData(SamplerKind.DpmSolver, 6, 0f, 3f, false)]
    public void ReplayedSamplingDrawsTheEagerImagesBitForBit(SamplerKind kind, int steps, float eta, float? guidance, bool clip)
    {
        var eager = Draw(graphs: false, kind, steps, eta, guidance, clip);
        var replayed = Draw(graphs: true, kind, steps, eta, guidance, clip);
        Assert.Equal(0, eager.GraphLaunches);
        // Every kind of step used more than once is replayed from its second use on (the first is the eager warm-up).
        Assert.True(replayed.GraphLaunches >= steps - 4, $"{replayed.GraphLaunches} graph launches in {steps} steps");
        output.WriteLine($"{kind}, {steps} steps, eta {eta}, guidance {guidance?.ToString() ?? "none"}, clip {clip}: {replayed.GraphLaunches} graph launches");
        CudaGraphTests.AssertBitIdentical(eager.Images, replayed.Images, "images");
        Assert.All(replayed.Images, v => Assert.True(float.IsFinite(v)));
    }

    /// <summary>A network whose output is infinite at timestep <paramref name="bad"/> (a per-sample factor uploaded with t) and finite elsewhere.</summary>
    private static DenoiseDiffusion.NetworkFunction InfiniteAt(IBackend be, int bad) => (xt, t) =>
    {
        var f = new float[t.Length];
        for (int i = 0; i < t.Length; i++) f[i] = t[i] == bad ? float.PositiveInfinity : 0.5f;
        using var factor = Tensor.FromArray(be, f, t.Length, 1, 1, 1);
        return factor * xt;
    };

    /// <summary>DDIM's 10 steps of 100 through a network infinite at timestep <paramref name="bad"/>.</summary>
    private static NonFiniteOutputException SampleThroughABadStep(bool graphs, int bad, int checkEvery, List<int> progress)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
        using var model = new UNet(be, Model(false), new PhiloxGenerator(11));
        var diffusion = new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 100 }, InfiniteAt(be, bad));
        var gen = new PhiloxGenerator(3);
        using var noGrad = GradMode.NoGrad();
        using var run = new ReverseSteps(new Sampler(diffusion), SamplerKind.Ddim, 10, 0f) { FiniteCheckEvery = checkEvery };
        Assert.Equal(graphs, run.UsesStepGraphs);
        var x = Tensor.RandN(be, new Shape(2, 1, 8, 8), gen);
        return Assert.Throws<NonFiniteOutputException>(() => run.Run(x, run.Timesteps.Length - 1, gen, p => progress.Add(p.Step), null));
    }

    [SimulatorFact]
    public void AReplayedStepThatStopsBeingFiniteIsNamedAsTheEagerRunNamesIt()
    {
        // DDIM over t = 90, 80, ..., 0: t = 40 is step 6 of 10, well into the replays.
        var eager = SampleThroughABadStep(graphs: false, bad: 40, checkEvery: 20, []);
        Assert.Matches(@"^sampling step 6 of 10 \(t = 40\): the model's output is (Infinity|NaN) in image 0 \(value \d+ of 64\)", eager.Message);
        var atTheEnd = new List<int>();
        var replayed = SampleThroughABadStep(graphs: true, bad: 40, checkEvery: 20, atTheEnd);
        Assert.Equal(eager.Message, replayed.Message);
        // Checked after the last step only: steps 1 to 9 were reported, the check after step 10 failed.
        Assert.Equal(9, atTheEnd.Count);
        // Checked every 2 steps, the run stops at the check after step 6, before reporting it, as the eager run does.
        var eagerProgress = new List<int>();
        SampleThroughABadStep(graphs: false, bad: 40, checkEvery: 20, eagerProgress);
        var everyTwo = new List<int>();
        var early = SampleThroughABadStep(graphs: true, bad: 40, checkEvery: 2, everyTwo);
        Assert.Equal(eager.Message, early.Message);
        Assert.Equal(eagerProgress, everyTwo);
    }

    [SimulatorTheory]
    [InlineData(SamplerKind.Ddpm)]
    [InlineData(SamplerKind.Ddim)]
    [InlineData(SamplerKind.DpmSolver)]
    public void ReplayedStepsShowTheEagerPredictedX0Frames(SamplerKind kind)
    {
        // animate's and serve's path: every step's predicted x0 read on the host.
        List<float[]> Frames(bool graphs)
        {
            using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
            using var model = new UNet(be, Model(true), new PhiloxGenerator(11));
            model.Eval();
            var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 12 }), new ClassCondition([2, 0], 2f));
            var before = be.ReadCounters();
            var frames = Evaluation.PredictedX0Frames(sampler, 2, kind, 6, 0.3f, seed: 9, frames: 4);
            Assert.Equal(graphs, be.ReadCounters().GraphLaunches > before.GraphLaunches);
            return frames;
        }
        var eager = Frames(graphs: false);
        var replayed = Frames(graphs: true);
        Assert.Equal(eager.Count, replayed.Count);
        for (int f = 0; f < eager.Count; f++) CudaGraphTests.AssertBitIdentical(eager[f], replayed[f], $"frame {f}");
    }

    /// <summary>RePaint on a [2, 1, 8, 8] image with its left half known, guided, jumps of 2: the images and the graph launches.</summary>
    private static (float[] Images, long GraphLaunches) Inpaint(bool graphs, SamplerKind kind, int steps, int resamples)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
        using var model = new UNet(be, Model(true), new PhiloxGenerator(11));
        model.Eval();
        var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 12 }), new ClassCondition([2, 0], 2f));
        using var image = Tensor.FromArray(be, TestData.Uniform(2 * 64, 4, -1f, 1f), 2, 1, 8, 8);
        using var mask = Tensor.FromArray(be, Enumerable.Range(0, 64).Select(i => i % 8 < 4 ? 1f : 0f).ToArray(), 1, 1, 8, 8);
        var before = be.ReadCounters();
        using var y = Inpainting.Inpaint(sampler, image, mask, kind, steps, 0.5f, new RePaintOptions(jumpLength: 2, resamples), seed: 4);
        return (y.ToArray(), be.ReadCounters().GraphLaunches - before.GraphLaunches);
    }

    [SimulatorTheory]
    [InlineData(SamplerKind.Ddpm, 12, 1)]
    [InlineData(SamplerKind.Ddpm, 12, 3)]
    [InlineData(SamplerKind.Ddim, 6, 1)]
    [InlineData(SamplerKind.Ddim, 6, 3)]
    [InlineData(SamplerKind.DpmSolver, 6, 1)]
    [InlineData(SamplerKind.DpmSolver, 6, 3)]
    public void ReplayedInpaintingDrawsTheEagerImagesBitForBit(SamplerKind kind, int steps, int resamples)
    {
        var eager = Inpaint(graphs: false, kind, steps, resamples);
        var replayed = Inpaint(graphs: true, kind, steps, resamples);
        Assert.Equal(0, eager.GraphLaunches);
        int reverse = Inpainting.ReverseSteps(Inpainting.Schedule(kind == SamplerKind.Ddpm ? 12 : steps, new RePaintOptions(2, resamples)));
        output.WriteLine($"{kind}, {steps} steps, resamples {resamples}: {reverse} reverse steps, {replayed.GraphLaunches} graph launches");
        // Each reverse step and its merge, and each jump back, are a launch once their kind has been used eagerly once.
        Assert.True(replayed.GraphLaunches >= 2 * reverse - 8, $"{replayed.GraphLaunches} graph launches for {reverse} reverse steps");
        CudaGraphTests.AssertBitIdentical(eager.Images, replayed.Images, "inpainted images");
        Assert.All(replayed.Images, v => Assert.True(float.IsFinite(v)));
    }

    [SimulatorFact]
    public void AReplayedInpaintingStepThatStopsBeingFiniteIsNamedAsTheEagerRunNamesIt()
    {
        NonFiniteOutputException Inpaint(bool graphs)
        {
            using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
            using var model = new UNet(be, Model(false), new PhiloxGenerator(11));
            var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 100 }, InfiniteAt(be, 40)));
            using var image = Tensor.FromArray(be, TestData.Uniform(2 * 64, 4, -1f, 1f), 2, 1, 8, 8);
            using var mask = Tensor.FromArray(be, Enumerable.Range(0, 64).Select(i => i < 32 ? 1f : 0f).ToArray(), 1, 1, 8, 8);
            long before = be.ReadCounters().GraphLaunches;
            var e = Assert.Throws<NonFiniteOutputException>(() =>
                Inpainting.Inpaint(sampler, image, mask, SamplerKind.Ddim, 10, 0f, new RePaintOptions(jumpLength: 2, resamples: 2), seed: 3));
            Assert.Equal(graphs, be.ReadCounters().GraphLaunches > before);
            return e;
        }
        var eager = Inpaint(graphs: false);
        Assert.Matches(@"^sampling step 6 of 10 \(t = 40\): the model's output is (-?Infinity|NaN) in image 0", eager.Message);
        Assert.Equal(eager.Message, Inpaint(graphs: true).Message);
    }

    [SimulatorFact]
    public void AReplayedSamplingStepIsOneGraphLaunchOnTheDevice()
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
        using var model = new UNet(be, Model(true), new PhiloxGenerator(11));
        model.Eval();
        var sampler = new Sampler(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 12 }), new ClassCondition([1, 2], 3f));
        var gen = new PhiloxGenerator(3);
        using var noGrad = GradMode.NoGrad();
        using var run = new ReverseSteps(sampler, SamplerKind.Ddpm, 12, 0f);
        var x = Tensor.RandN(be, new Shape(2, 1, 8, 8), gen);
        DeviceCounters at3 = default, at10 = default;
        var sim = SimulatorCounters.Open()!;
        SimulatorCounters.Snapshot simAt3 = default, simAt10 = default;
        using var images = run.Run(x, run.Timesteps.Length - 1, gen, p =>
        {
            // After step 3 (one eager warm-up, one recording, one replay) the noisy steps are replays, up to step 10.
            if (p.Step == 3) (at3, simAt3) = (be.ReadCounters(), sim.Read());
            if (p.Step == 10) (at10, simAt10) = (be.ReadCounters(), sim.Read());
        }, null);
        var work = DeviceCounters.Between(at3, at10);
        var simWork = simAt10 - simAt3;
        output.WriteLine($"7 replayed DDPM steps with guidance: {work}; simulator: {simWork}");
        Assert.Equal(7, work.GraphLaunches);
        Assert.Equal(0, work.KernelLaunches);
        Assert.Equal(0, work.BlasCalls);
        Assert.Equal(0, work.DnnCalls);
        Assert.Equal(0, work.HostSynchronizations);
        Assert.Equal(7UL, simWork.GraphLaunches);
        Assert.Equal(0UL, simWork.Launches);
        Assert.Equal(0UL, simWork.HostSyncs);
        Assert.True(simWork.GraphKernels > 7 * 20, $"{simWork.GraphKernels} kernels ran in the graphs");
    }

    [SimulatorFact]
    public void BenchSampleCountsOneGraphLaunchAndNoKernelLaunchesPerStep()
    {
        JsonWork Bench(params string[] extra)
        {
            var (code, text, err) = Run(["bench", "--backend", "cuda", "--preset", "tiny", "--batch", "1", "--mode", "sample", "--warmup", "2",
                "--steps", "2", "--precision", "fp32", "--json", .. extra]);
            Assert.True(code == 0, err + text);
            using var json = System.Text.Json.JsonDocument.Parse(text.Trim().Split('\n')[^1]);
            var w = json.RootElement.GetProperty("device_work_per_step");
            output.WriteLine(w.ToString());
            return new JsonWork(w.GetProperty("graph_launches").GetDouble(), w.GetProperty("kernel_launches").GetDouble(),
                w.GetProperty("blas_calls").GetDouble(), w.GetProperty("dnn_calls").GetDouble(), w.GetProperty("host_syncs").GetDouble(),
                json.RootElement.GetProperty("step_graphs").GetBoolean());
        }
        var replayed = Bench();
        Assert.Equal(new JsonWork(1, 0, 0, 0, 1, true), replayed);
        var eager = Bench("--no-cuda-graphs");
        Assert.False(eager.Graphs);
        Assert.Equal(0, eager.GraphLaunches);
        Assert.True(eager.KernelLaunches > 0, eager.ToString());
        // Eagerly a step waits for its two finite checks, and bench waits once more to time it.
        Assert.Equal(3, eager.HostSyncs);
    }

    private sealed record JsonWork(double GraphLaunches, double KernelLaunches, double BlasCalls, double DnnCalls, double HostSyncs, bool Graphs);
}
