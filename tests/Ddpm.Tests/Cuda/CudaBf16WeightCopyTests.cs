using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;
using static Ddpm.Tests.Cuda.CudaGraphTests;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// bf16's weight copies (CudaBackend.WeightCopies.cs): an operand inside a weight buffer is read from a bfloat16 copy cast
/// once after each write. The copy changes no bit (training with it equals training with a cast at every use, checkpoint
/// for checkpoint, eagerly and replayed from a CUDA graph), saves casts, and never goes stale: every way of writing into
/// the weights makes the next product see the new values.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBf16WeightCopyTests(ITestOutputHelper output)
{
    [Fact]
    public void WhatAKernelMayWriteIsReadFromItsSignature()
    {
        const string header = "struct Dims { int n; int size[4]; };\nstruct Hidden { float* p; };";
        const string source = """
            extern "C" __global__ void step(float* param, const float* grad, float const* m, float* const v, int n, float lr, Dims d)
            {
            }
            extern "C" __global__ void hides(const float* x, Hidden h, int n)
            {
            }
            extern "C" __global__ void unknown(const float* x, Mystery q)
            {
            }
            """;
        var writes = KernelSources.WritesOf(source, [header]);
        Assert.Equal([0, 3], writes["step"].Pointers);
        Assert.False(writes["step"].Anywhere);
        Assert.True(writes["hides"].Anywhere);
        Assert.True(writes["unknown"].Anywhere);

        // The shipped kernels: each is read, none hides a pointer, and the known ones write what they should.
        var definitions = KernelSources.Headers.Select(h => h.Text).ToList();
        var all = KernelSources.Sources.SelectMany(s => KernelSources.WritesOf(s.Text, definitions)).ToDictionary();
        Assert.Equal(KernelSources.Sources.Sum(s => s.Kernels.Count), all.Count);
        Assert.All(all, k => Assert.False(k.Value.Anywhere, $"{k.Key} takes a parameter that could hide a pointer"));
        Assert.Equal([0, 2, 3], all["adam_step"].Pointers);
        Assert.Equal([1], all["cast_f32_to_bf16"].Pointers);
        Assert.Equal([9, 10, 11], all["group_norm_forward"].Pointers);
        Assert.Equal([1], all["axpby"].Pointers);
    }

    private static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    // The weight buffer: a [M, K] matrix at Offset (a slot of a parameter store), a conv filter [O, C, 3, 3] after it.
    private const int M = 5, K = 7, N = 6, Offset = 64, O = 3, C = 2, Img = 5;
    private const int FilterOffset = 128, Length = 256;
    private static readonly ConvGeometry Conv = new(2, C, Img, Img, O, 3, 3, 1, 1, 1, 1);

    /// <summary>
    /// The products that read the weights (a GEMM with the [M, K] matrix, a convolution's forward and backward-data passes
    /// with the filter), computed from the weight buffer and from a plain buffer holding the same values (cast at the use):
    /// equal bit for bit while the copy is current.
    /// </summary>
    private static void AssertProductsSeeTheWeights(CudaBackend be, DeviceBuffer weights, string after)
    {
        var host = new float[Length];
        be.Download(weights, 0, host);
        var plain = be.Allocate(Length);
        be.Upload(host, plain, 0);
        var x = be.Allocate(K * N);
        be.Upload(Random(K * N, 3), x, 0);
        var image = be.Allocate(Conv.InputSize);
        be.Upload(Random(Conv.InputSize, 4), image, 0);
        var grad = be.Allocate(Conv.OutputSize);
        be.Upload(Random(Conv.OutputSize, 5), grad, 0);
        float[] Products(DeviceBuffer w)
        {
            var a = be.Slice(w, Offset, M * K);
            var f = be.Slice(w, FilterOffset, Conv.WeightSize);
            var c = be.Allocate(M * N);
            var y = be.Allocate(Conv.OutputSize);
            var dx = be.Allocate(Conv.InputSize);
            be.Gemm(false, false, a, 0, x, 0, 1, M, N, K, 1f, 0f, c, 0);
            be.Conv2dForward(image, f, null, Conv, y);
            be.Conv2dBackwardData(grad, f, Conv, dx);
            var result = new float[M * N + Conv.OutputSize + Conv.InputSize];
            be.Download(c, 0, result.AsSpan(0, M * N));
            be.Download(y, 0, result.AsSpan(M * N, Conv.OutputSize));
            be.Download(dx, 0, result.AsSpan(M * N + Conv.OutputSize));
            foreach (var buffer in new[] { a, f, c, y, dx }) buffer.Release();
            return result;
        }
        var fromCopy = Products(weights);
        var fromPlain = Products(plain);
        AssertBitIdentical(fromPlain, fromCopy, $"products after {after}");
        foreach (var buffer in new[] { plain, x, image, grad }) buffer.Release();
    }

    public static TheoryData<ConvolutionEngine> Engines => new() { ConvolutionEngine.Cudnn, ConvolutionEngine.Im2col };

    [CudaTheory]
    [MemberData(nameof(Engines))]
    public void EveryWriteIntoTheWeightsReachesTheNextProduct(ConvolutionEngine engine)
    {
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Bf16 }, engine);
        var weights = be.Allocate(Length);
        be.Upload(Random(Length, 1), weights, 0);
        be.HoldsWeights(weights);
        Assert.Equal(2L * Length, be.WeightCopyBytes);
        var scratch = be.Allocate(Length);
        be.Upload(Random(Length, 2), scratch, 0);
        var inMatrix = be.Slice(weights, Offset, M * K);
        var inFilter = be.Slice(weights, FilterOffset, Conv.WeightSize);
        AssertProductsSeeTheWeights(be, weights, "the first cast");

        // Reads of the weights leave the copy current: the products cast their activations only.
        var before = be.ReadCounters();
        be.Unary(UnaryOp.Exp, weights, Length, scratch);
        be.Axpby(weights, Length, 0.5f, 0.5f, scratch);
        var x = be.Allocate(K * N);
        be.Upload(Random(K * N, 6), x, 0);
        var c = be.Allocate(M * N);
        var square = be.Slice(weights, Offset, K * K);
        var (m, v) = (Zeros(), Zeros());
        be.Gemm(false, false, inMatrix, 0, x, 0, 1, M, N, K, 1f, 0f, c, 0);
        var reads = DeviceCounters.Between(before, be.ReadCounters());
        Assert.Equal(1, reads.CastKernels);
        Assert.Equal(K * N, reads.CastElements);

        var writes = new (string What, Action Write)[]
        {
            ("an upload", () => be.Upload(Random(M * K, 10), weights, Offset)),
            ("a fill", () => be.Fill(0.25f, inFilter, Conv.WeightSize)),
            ("a device copy", () => be.Copy(scratch, 0, Length, weights, 0)),
            ("a kernel writing a view", () => be.Unary(UnaryOp.Sin, scratch, M * K, inMatrix)),
            ("axpby", () => be.Axpby(scratch, Length, 0.5f, 0.5f, weights)),
            ("an Adam step", () => be.AdamStep(scratch, Length, new AdamStepParams(0.1f, 0.9f, 0.999f, 1e-8f, 0f, 0.1f, 0.001f), weights, m, v)),
            ("a GEMM's result", () => be.Gemm(false, true, x, 0, x, 0, 1, K, K, N, 1f, 0f, square, 0)),
            ("a convolution's result", () => ConvInto(be, inFilter)),
            ("a clip", () => ClipInto(be, weights)),
        };
        var missed = new List<string>();
        foreach (var (what, write) in writes)
        {
            write();
            try
            {
                AssertProductsSeeTheWeights(be, weights, what);
            }
            catch (Xunit.Sdk.XunitException e)
            {
                missed.Add(e.Message);
            }
        }
        Assert.True(missed.Count == 0, $"products read stale weights after {missed.Count} of {writes.Length} writes: {string.Join("; ", missed)}");
        output.WriteLine($"{writes.Length} ways of writing into the weights, each seen by the next GEMM and convolution ({be.ConvolutionPath})");

        DeviceBuffer Zeros()
        {
            var z = be.Allocate(Length);
            be.Fill(0f, z, Length);
            return z;
        }
        foreach (var buffer in new[] { inMatrix, inFilter, square, scratch, x, c, m, v }) buffer.Release();
        weights.Release();
        Assert.Equal(0, be.WeightCopyBytes);
    }

    private static void ConvInto(CudaBackend be, DeviceBuffer filter)
    {
        // A 1x1 convolution whose output [1, O*C, 3, 3] is the filter's [O, C, 3, 3].
        var g = new ConvGeometry(1, 1, 3, 3, O * C, 1, 1, 1, 1, 0, 0);
        var x = be.Allocate(g.InputSize);
        be.Upload(Random(g.InputSize, 20), x, 0);
        var w = be.Allocate(g.WeightSize);
        be.Upload(Random(g.WeightSize, 21), w, 0);
        be.Conv2dForward(x, w, null, g, filter);
        x.Release();
        w.Release();
    }

    private static void ClipInto(CudaBackend be, DeviceBuffer weights)
    {
        var sum = be.Allocate(2);
        be.SumOfSquaresTo(weights, Length, sum, 0);
        be.ClipScale(sum, 0, 0.5, weights, Length);
        sum.Release();
    }

    // The same run as CudaBf16TrainingTests' model, with two micro-batches per step so that a weight is read in four
    // passes between two Adam steps.
    private static UNetConfig Tiny => Presets.Get("tiny").Model with { ImageSize = 8, Dropout = 0.1f };

    private sealed record Run(byte[] Checkpoint, float[] Losses, DeviceCounters Work, bool Graphs);

    private static Run Train(bool perUse, bool graphs, ConvolutionEngine engine, Action<CudaBackend, Trainer, int>? afterStep = null)
    {
        const int steps = 4;
        using var be = new CudaBackend(new BackendOptions { Precision = Precision.Bf16, StepGraphs = graphs }, engine, CudaMemoryChecks.FromEnvironment())
        {
            CastWeightsPerUse = perUse,
        };
        using var model = new UNet(be, Tiny, new PhiloxGenerator(1));
        var tc = new TrainingConfig { BatchSize = 4, LearningRate = 1e-3f, WarmupSteps = 1, GradClip = 1f, EmaDecay = 0.99f };
        using var trainer = new Trainer(new DenoiseDiffusion(model, new DiffusionConfig { NSteps = 50 }), new SyntheticBatches(1, Tiny.ImageSize, 99), tc)
        {
            MicroBatches = 2,
        };
        var losses = new float[steps];
        var before = be.ReadCounters();
        for (int i = 0; i < steps; i++)
        {
            losses[i] = trainer.Step().Loss;
            afterStep?.Invoke(be, trainer, i);
            if (i == 0) before = be.ReadCounters();
        }
        var work = DeviceCounters.Between(before, be.ReadCounters());
        string path = Path.Combine(Path.GetTempPath(), $"ddpm-bf16-copy-{Environment.ProcessId}-{Guid.NewGuid():N}.ckpt");
        try
        {
            Checkpoint.Save(path, trainer);
            return new Run(File.ReadAllBytes(path), losses, work, trainer.UsesStepGraph);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [CudaTheory]
    [InlineData(true, ConvolutionEngine.Cudnn)]
    [InlineData(false, ConvolutionEngine.Cudnn)]
    [InlineData(false, ConvolutionEngine.Im2col)]
    public void TrainingWithWeightCopiesEqualsCastingAtEveryUse(bool graphs, ConvolutionEngine engine)
    {
        var perUse = Train(perUse: true, graphs, engine);
        var copies = Train(perUse: false, graphs, engine);
        Assert.Equal(graphs, copies.Graphs);
        AssertBitIdentical(perUse.Losses, copies.Losses, "loss");
        Assert.True(perUse.Checkpoint.AsSpan().SequenceEqual(copies.Checkpoint), "the checkpoints differ: the weight copies changed a bit");
        int steps = perUse.Losses.Length - 1;
        string Describe(Run r) => graphs
            ? $"{r.Work.GraphLaunches / steps} graph launch"
            : $"{r.Work.KernelLaunches / steps} launches, {r.Work.CastKernels / steps} casts of {r.Work.CastElements / steps} elements";
        output.WriteLine($"per step ({engine}, graphs {(graphs ? "on" : "off")}): cast at every use {Describe(perUse)}; with weight copies {Describe(copies)}");
        if (graphs) return;
        // One cast of the weight buffer per step replaces the weights' casts in the forward and backward-data passes of
        // both micro-batches.
        Assert.True(copies.Work.CastKernels < perUse.Work.CastKernels, "the weight copies saved no cast");
        Assert.True(copies.Work.KernelLaunches < perUse.Work.KernelLaunches, "the weight copies saved no launch");
    }

    /// <summary>
    /// A product reading the weights between steps leaves the copy current when the next step starts: after the eager
    /// step (so before the step is recorded) and after the first replay, not after the others. Each recorded or replayed
    /// run still makes the recorded calls (its cast included) and computes the same bits.
    /// </summary>
    [CudaFact]
    public void ReadingTheWeightsBetweenStepsChangesNoReplay()
    {
        var plain = Train(perUse: false, graphs: true, ConvolutionEngine.Cudnn);
        var read = Train(perUse: false, graphs: true, ConvolutionEngine.Cudnn, (be, trainer, step) =>
        {
            if (step % 2 == 1) return;
            var slot = trainer.Store.Slots.First(s => s.Parameter.Shape.Rank == 2);
            int rows = slot.Parameter.Shape[0], cols = slot.Parameter.Shape[1];
            var w = be.Slice(trainer.Store.Parameters, slot.Offset, slot.Size);
            var x = be.Allocate(cols);
            be.Fill(1f, x, cols);
            var y = be.Allocate(rows);
            be.Gemm(false, false, w, 0, x, 0, 1, rows, 1, cols, 1f, 0f, y, 0);
            be.Download(y, 0, new float[rows]);
            foreach (var buffer in new[] { w, x, y }) buffer.Release();
        });
        Assert.True(read.Graphs);
        AssertBitIdentical(plain.Losses, read.Losses, "loss");
        Assert.True(plain.Checkpoint.AsSpan().SequenceEqual(read.Checkpoint), "reading the weights between steps changed the checkpoint");
    }

    /// <summary>A bf16 step replayed from its CUDA graph (the weight cast recorded in it) gives the eager bf16 step's bits.</summary>
    [CudaFact]
    public void AReplayedBf16StepEqualsTheEagerStep()
    {
        var eager = Train(perUse: false, graphs: false, ConvolutionEngine.Cudnn);
        var replayed = Train(perUse: false, graphs: true, ConvolutionEngine.Cudnn);
        Assert.False(eager.Graphs);
        Assert.True(replayed.Graphs);
        Assert.Equal(replayed.Losses.Length - 1, replayed.Work.GraphLaunches);
        AssertBitIdentical(eager.Losses, replayed.Losses, "loss");
        Assert.True(eager.Checkpoint.AsSpan().SequenceEqual(replayed.Checkpoint), "the replayed bf16 steps' checkpoint differs from the eager steps'");
    }
}
