using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Ddpm.Tests.Golden;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Diffusion;

/// <summary>
/// Recorded training steps (train --save-spikes): the record holds exactly what the step computed on, so replaying
/// it gives the step's loss and gradient again; hostile files are refused naming the tensor or key.
/// </summary>
public sealed class StepRecordTests(ITestOutputHelper output)
{
    // The same backend and inputs give the same floats; the double-accumulating reference backend differs by
    // float32 summation order only (parity's gradient tolerance, relative L2).
    private const double ReferenceTol = 1e-4;

    private static StepRecord Record(UNetConfig model, DiffusionConfig diffusion, int steps, float dropout)
    {
        var be = new CpuBackend();
        using var unet = new UNet(be, model with { Dropout = dropout }, new PhiloxGenerator(4));
        var config = new TrainingConfig { BatchSize = 4, LearningRate = 2e-3f, WarmupSteps = 1, EmaDecay = 0.9f, GradClip = 0.5f, Seed = 7, ClassDropout = 0.5f };
        using var trainer = new Trainer(new DenoiseDiffusion(unet, diffusion), new SyntheticBatches(1, model.ImageSize, 2, model.NumClasses), config);
        trainer.RecordSteps = true;
        TrainStep s = default;
        for (int i = 0; i < steps; i++) s = trainer.Step();
        var record = trainer.RecordLastStep(s);
        // A record is of the last step only, and only while recording.
        Assert.Throws<InvalidOperationException>(() => trainer.RecordLastStep(s with { Step = s.Step - 1 }));
        return record;
    }

    public static TheoryData<bool, string> Cases => new()
    {
        { false, "eps" }, { true, "v" }, { true, "min-snr" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void ReplayingARecordedStepGivesItsLossAndGradientAgain(bool conditional, string kind)
    {
        var model = conditional ? GoldenTestsBase.TinyConfig with { NumClasses = 3, ClassNames = ["a", "b", "c"] } : GoldenTestsBase.TinyConfig;
        var diffusion = new DiffusionConfig
        {
            NSteps = 50, Prediction = kind == "eps" ? Prediction.Eps : Prediction.V,
            LossWeighting = kind == "min-snr" ? LossWeighting.MinSnr : LossWeighting.Uniform,
        };
        var rec = Record(model, diffusion, steps: 3, dropout: 0.2f);
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "step.safetensors");
        rec.Save(path);
        var loaded = StepRecord.Load(path);
        Assert.Equal(3, loaded.Step);
        Assert.Equal(rec.Timesteps, loaded.Timesteps);
        Assert.Equal(rec.Labels, loaded.Labels);
        if (conditional) Assert.Contains(3, loaded.Labels!); // seed 7 drops at least one label at p = 0.5 (and keeps one)
        if (conditional) Assert.Contains(loaded.Labels!, l => l < 3);

        // The backend that trained gives the same floats: the record holds the step's weights, batch, noise, labels and dropout stream.
        var (loss, grads) = loaded.Replay(new CpuBackend());
        Assert.Equal(rec.Loss, loss);
        foreach (var (name, g) in rec.Gradients) Assert.Equal(g, grads[name]);
        double norm = Math.Sqrt(rec.Gradients.Values.Sum(g => g.Sum(v => (double)v * v)));
        Assert.Equal(rec.GradNorm, norm, 1e-5 * norm);

        // The reference backend agrees to float32 summation order.
        var (lossRef, gradsRef) = loaded.Replay(new CpuReferenceBackend());
        Assert.Equal(rec.Loss, lossRef, 1e-5 * rec.Loss);
        double num = 0, den = 0;
        foreach (var (name, g) in rec.Gradients)
            for (int i = 0; i < g.Length; i++) { num += Math.Pow(g[i] - gradsRef[name][i], 2); den += (double)g[i] * g[i]; }
        output.WriteLine($"{kind}, conditional {conditional}: loss {rec.Loss}, |g| {rec.GradNorm:G6}, reference rel L2 {Math.Sqrt(num / den):E2}");
        Assert.True(Math.Sqrt(num / den) < ReferenceTol);

        // The largest gradients add up to the whole norm.
        Assert.Equal(1.0, rec.LargestGradients().Sum(g => g.Share), 1e-9);
    }

    [Fact]
    public void AnotherStepsNoiseDoesNotReplayTheStep()
    {
        // The check above can fail: the same weights with the noise of the step before give another gradient.
        var rec = Record(GoldenTestsBase.TinyConfig, new DiffusionConfig { NSteps = 50 }, steps: 2, dropout: 0f);
        var shifted = new float[rec.Noise.Length];
        Philox.FillNormal(shifted, new TrainingConfig { Seed = 7 }.NoiseKey, 0);
        var (loss, _) = new StepRecord
        {
            Model = rec.Model, Diffusion = rec.Diffusion, Step = rec.Step, Loss = rec.Loss, GradNorm = rec.GradNorm, LearningRate = rec.LearningRate,
            DropoutSeed = rec.DropoutSeed, DropoutOffset = rec.DropoutOffset, Weights = rec.Weights, Gradients = rec.Gradients,
            Batch = rec.Batch, X0 = rec.X0, Timesteps = rec.Timesteps, Noise = shifted,
        }.Replay(new CpuBackend());
        Assert.NotEqual(rec.Loss, loss);
    }

    public static TheoryData<string, string> Hostile => new()
    {
        { "format", "ddpm_format" },
        { "t out of range", "'t'" },
        { "x0 shape", "'x0'" },
        { "grad shape", "'grad.final.weight'" },
        { "nan noise", "'noise'" },
        { "missing weight", "parameters" },
        { "labels float", "'labels'" },
        { "grad alone", "'grad.extra'" },
    };

    [Theory]
    [MemberData(nameof(Hostile))]
    public void AHostileRecordIsRefusedNamingWhatIsWrong(string change, string named)
    {
        var model = GoldenTestsBase.TinyConfig with { NumClasses = 3, ClassNames = ["a", "b", "c"] };
        var rec = Record(model, new DiffusionConfig { NSteps = 50 }, steps: 1, dropout: 0f);
        using var dir = new TempDir();
        string good = Path.Combine(dir.Path, "good.safetensors"), bad = Path.Combine(dir.Path, "bad.safetensors");
        rec.Save(good);
        var file = SafeTensorsFile.Read(good);
        var meta = file.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
        var entries = file.Entries.ToList();
        void Replace(string name, SafeTensorEntry e) => entries[entries.FindIndex(x => x.Name == name)] = e;
        switch (change)
        {
            case "format": meta["ddpm_format"] = "ddpm-checkpoint/1"; break;
            case "t out of range": Replace("t", SafeTensorEntry.I64("t", [4], [0, 1, 50, 2])); break;
            case "x0 shape": Replace("x0", SafeTensorEntry.F32("x0", [4, 1, 16, 15], new float[4 * 16 * 15])); break;
            case "grad shape": Replace("grad.final.weight", SafeTensorEntry.F32("grad.final.weight", [1], [0f])); break;
            case "nan noise":
                var n = rec.Noise.ToArray();
                n[7] = float.NaN;
                Replace("noise", SafeTensorEntry.F32("noise", rec.ImageShape, n));
                break;
            case "missing weight": entries.RemoveAll(e => e.Name == "model.final.weight"); break;
            case "labels float": Replace("labels", SafeTensorEntry.F32("labels", [4], new float[4])); break;
            case "grad alone": entries.Add(SafeTensorEntry.F32("grad.extra", [2], [1f, 2f])); break;
        }
        SafeTensorsFile.Write(bad, entries, meta);
        var e = Assert.Throws<SafeTensorsFormatException>(() => StepRecord.Load(bad));
        output.WriteLine(e.Message);
        Assert.Contains(bad, e.Message);
        Assert.Contains(named, e.Message);
        StepRecord.Load(good);
    }
}
