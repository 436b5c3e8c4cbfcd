using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tool.Commands;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Sampling steps recorded once per shape and kept (<see cref="SamplingRecordings"/>) on the simulated device: a later
/// run with the same key replays every step from its first and records nothing, with the eager run's images bit for
/// bit although its labels, guidance weight, eta and seed differ; a run of another key (batch, guidance's forward
/// passes, kept predicted x0, capacity) records its own; disposing the recordings gives their device memory back.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaSamplingRecordingsTests(ITestOutputHelper output)
{
    private static UNetConfig Model => new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8, NumClasses = 3,
    };

    /// <summary>One drawing: batch, labels (null: unconditional) and guidance weight, eta and seed; with frames each step's predicted x0 is read.</summary>
    private sealed record Drawing(int[]? Labels, float Guidance, float Eta, ulong Seed, bool Frames = false, int N = 0)
    {
        public int Count => Labels?.Length ?? N;
    }

    /// <summary>A model on a backend of its own, its weights from a fixed seed, so an eager and a replayed one hold the same weights.</summary>
    private sealed class Setup : IDisposable
    {
        public Setup(bool graphs, bool clip = true)
        {
            Backend = new CudaBackend(new BackendOptions { Precision = Precision.Fp32, StepGraphs = graphs });
            Net = new UNet(Backend, Model, new PhiloxGenerator(11));
            Net.Eval();
            Diffusion = new DenoiseDiffusion(Net, new DiffusionConfig { NSteps = 12, ClipX0 = clip });
        }

        public CudaBackend Backend { get; }
        public UNet Net { get; }
        public DenoiseDiffusion Diffusion { get; }

        /// <summary>The images of <paramref name="d"/> (and its frames), and the graph launches it made.</summary>
        public (float[] Images, long GraphLaunches) Draw(Drawing d, SamplerKind kind, int steps, SamplingRecordings? recordings)
        {
            var condition = d.Labels is null ? null : new ClassCondition(d.Labels, d.Guidance);
            var sampler = new Sampler(Diffusion, condition, recordings);
            var before = Backend.ReadCounters().GraphLaunches;
            var frames = new List<float>();
            using var images = sampler.Sample(d.Count, kind, steps, d.Eta, d.Seed, onStep: d.Frames ? (_, _, x0) => frames.AddRange(x0.ToArray()) : null);
            return ([.. images.ToArray(), .. frames], Backend.ReadCounters().GraphLaunches - before);
        }

        public void Dispose()
        {
            Net.Dispose();
            Backend.Dispose();
        }
    }

    [SimulatorTheory]
    [InlineData(SamplerKind.Ddpm, 12)]
    [InlineData(SamplerKind.Ddim, 6)]
    [InlineData(SamplerKind.DpmSolver, 6)]
    public void ASecondRunOfTheSameShapeReplaysFromItsFirstStepAndDrawsTheEagerImages(SamplerKind kind, int steps)
    {
        using var eager = new Setup(graphs: false);
        using var replayed = new Setup(graphs: true);
        using var recordings = new SamplingRecordings();
        // Labels, guidance weight (both through one forward of 2N), eta and seed all differ: each reaches the device as data.
        var first = new Drawing([0, 2, 1], 3f, 0.5f, 5);
        var second = new Drawing([1, 1, 0], 2f, 1f, 8);
        var a = replayed.Draw(first, kind, steps, recordings);
        long recorded = recordings.Recorded;
        Assert.True(recorded > 0);
        var b = replayed.Draw(second, kind, steps, recordings);
        output.WriteLine($"{kind}, {steps} steps: first run {a.GraphLaunches} graph launches and {recorded} recordings, second run {b.GraphLaunches} graph launches and {recordings.Recorded - recorded} recordings");
        Assert.Equal(recorded, recordings.Recorded);
        Assert.Equal(steps, b.GraphLaunches);
        Assert.True(a.GraphLaunches < steps);
        Assert.Equal(1, recordings.Count);
        CudaGraphTests.AssertBitIdentical(eager.Draw(first, kind, steps, null).Images, a.Images, "first run");
        CudaGraphTests.AssertBitIdentical(eager.Draw(second, kind, steps, null).Images, b.Images, "second run");
    }

    [SimulatorFact]
    public void EachKeyMakesItsOwnRecordingsAndTheLeastRecentlyUsedGoesFirst()
    {
        const SamplerKind kind = SamplerKind.Ddim;
        const int steps = 6;
        using var eager = new Setup(graphs: false);
        using var replayed = new Setup(graphs: true);
        using var recordings = new SamplingRecordings(capacity: 3);
        // DDIM with eta 0 draws no noise: one kind of step, one recording per key.
        var guided = new Drawing([0, 2, 1], 3f, 0f, 5);
        var keys = new (string What, Drawing Drawing)[]
        {
            ("guided, batch 3", guided),
            ("guided, batch 2", new Drawing([2, 0], 3f, 0f, 6)),
            ("the labels' forward only (guidance 1)", new Drawing([0, 2, 1], 1f, 0f, 7)),
            ("the null class's forward only (guidance 0)", new Drawing([0, 2, 1], 0f, 0f, 7)),
            ("unconditional", new Drawing(null, 0f, 0f, 7, N: 3)),
            ("guided, batch 3, predicted x0 kept", guided with { Frames = true }),
        };
        foreach (var (what, d) in keys)
        {
            long before = recordings.Recorded;
            var (images, launches) = replayed.Draw(d, kind, steps, recordings);
            output.WriteLine($"{what}: {recordings.Recorded - before} recording(s), {launches} graph launches");
            Assert.True(recordings.Recorded == before + 1, $"{what}: {recordings.Recorded - before} recordings");
            // One eager warm-up, then the recording and its replays.
            Assert.Equal(steps - 1, launches);
            CudaGraphTests.AssertBitIdentical(eager.Draw(d, kind, steps, null).Images, images, what);
            Assert.Equal(Math.Min((int)before + 1, 3), recordings.Count);
            // Run again at once: every step replayed, nothing recorded.
            var again = replayed.Draw(d, kind, steps, recordings);
            Assert.Equal(before + 1, recordings.Recorded);
            Assert.Equal(steps, again.GraphLaunches);
            CudaGraphTests.AssertBitIdentical(images, again.Images, what + ", again");
        }
        // The first keys were released to hold the last three: the first is recorded again, the last is still held.
        long held = recordings.Recorded;
        replayed.Draw(keys[^1].Drawing, kind, steps, recordings);
        Assert.Equal(held, recordings.Recorded);
        replayed.Draw(keys[0].Drawing, kind, steps, recordings);
        Assert.Equal(held + 1, recordings.Recorded);
    }

    [SimulatorFact]
    public void DisposingTheRecordingsGivesTheirDeviceMemoryBack()
    {
        using var setup = new Setup(graphs: true);
        var be = setup.Backend;
        var drawing = new Drawing([0, 2, 1], 3f, 0f, 5);
        // A first run without kept recordings: its recordings go when it ends.
        setup.Draw(drawing, SamplerKind.DpmSolver, 6, null);
        long inUse = be.MemoryUse.InUse;
        Assert.Equal(0, be.StepGraphBytes);
        var recordings = new SamplingRecordings();
        setup.Draw(drawing, SamplerKind.DpmSolver, 6, recordings);
        setup.Draw(drawing with { Labels = [1, 2] }, SamplerKind.DpmSolver, 6, recordings);
        output.WriteLine($"two keys held: {be.StepGraphBytes} bytes in recordings, {be.MemoryUse.InUse - inUse} bytes of buffers");
        Assert.True(be.StepGraphBytes > 0);
        Assert.True(be.MemoryUse.InUse > inUse);
        recordings.Dispose();
        Assert.Equal(0, be.StepGraphBytes);
        Assert.Equal(inUse, be.MemoryUse.InUse);
        Assert.Throws<ObjectDisposedException>(() => setup.Draw(drawing, SamplerKind.DpmSolver, 6, recordings));
    }

    [SimulatorFact]
    public void DrawKeepsTheCallersRecordingsAcrossChunksAndCalls()
    {
        // eval's and serve's path: chunks of one batch size replay one recording; a later call (a request) records nothing.
        var o = new SampleOptions { SamplerText = "ddim", Steps = 6, Eta = 0.3f, Seed = 5 };
        int[] labels = [0, 1, 2, 0, 1];
        float[] Eager()
        {
            using var eager = new Setup(graphs: false);
            return ModelLoading.Draw(eager.Diffusion, o, 5, 2, labels, 3f);
        }
        using var setup = new Setup(graphs: true);
        using var recordings = new SamplingRecordings();
        var first = ModelLoading.Draw(setup.Diffusion, o, 5, 2, labels, 3f, recordings: recordings);
        // Batches of 2 and a last one of 1, each with steps with and without noise.
        Assert.Equal(4, recordings.Recorded);
        Assert.Equal(2, recordings.Count);
        long launches = setup.Backend.ReadCounters().GraphLaunches;
        var second = ModelLoading.Draw(setup.Diffusion, o, 5, 2, labels, 3f, recordings: recordings);
        Assert.Equal(4, recordings.Recorded);
        Assert.Equal(3 * 6, setup.Backend.ReadCounters().GraphLaunches - launches);
        var expected = Eager();
        CudaGraphTests.AssertBitIdentical(expected, first, "first call");
        CudaGraphTests.AssertBitIdentical(expected, second, "second call");
    }
}
