using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// ddpm-tool on the cuda backend, as a user runs it: train, sample, resume and the parity verb. On a GPU, or on
/// the simulated CUDA device in CI (DDPM_CUDA_LIB_DIR); skipped with the reason where neither is present. On the
/// simulator these whole runs go without its instrumented checks (race, bounds, init), which nearly double their CPU
/// time; their kernels run instrumented in the parity, golden and training-step tests. The schedule and the other
/// checks stay as configured.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaToolTests : IDisposable
{
    private readonly IDisposable? _checks = SimulatorOptions.Open()?.Override("check", UninstrumentedChecks());

    public void Dispose() => _checks?.Dispose();

    /// <summary>The simulator's current checks less the instrumented ones.</summary>
    private static string UninstrumentedChecks() => SimulatorOptions.Open()!.Get("check") + ",-race,-bounds,-init";

    private static string[] Train(string outDir, int steps, params string[] extra) =>
    [
        "train", "--backend", "cuda", "--preset", "tiny", "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
        "--batch", "4", "--max-images", "32", "--diffusion-steps", "50", "--samples", "4", "--sample-steps", "2",
        "--sample-every", "0", "--checkpoint-every", "2", "--log-every", "1", "--warmup", "1", "--lr", "1e-3", "--out", outDir, .. extra,
    ];

    private static string[] LossRows(string dir) => File.ReadAllLines(Path.Combine(dir, "loss.csv")).Skip(1).ToArray();

    [CudaFact]
    public void TrainThenSampleThroughTheTool()
    {
        using var dir = new TempDir();
        var (code, output, err) = Run(Train(dir.Path, 2));
        Assert.True(code == 0, err + output);
        Assert.Contains("cuda", output);
        var ckpt = Checkpoint.Load(RunFolder.Latest(dir.Path)!);
        Assert.Equal(2, ckpt.Step);
        Assert.All(LossRows(dir.Path), row => Assert.True(float.IsFinite(float.Parse(row.Split(',')[1], System.Globalization.CultureInfo.InvariantCulture)), row));

        (code, output, err) = Run("sample", "--backend", "cuda", "--checkpoint", dir.Path, "--n", "4",
            "--steps", "3", "--out", dir.File("s.png"));
        Assert.True(code == 0, err + output);
        var grid = ImageFile.Load(dir.File("s.png"), 1);
        Assert.True(grid.Width > 0 && grid.Height > 0);
        // The sampling steps replayed from their recording (the default) and run eagerly draw the same grid.
        (code, output, err) = Run("sample", "--backend", "cuda", "--checkpoint", dir.Path, "--n", "4",
            "--steps", "3", "--no-cuda-graphs", "--out", dir.File("eager.png"));
        Assert.True(code == 0, err + output);
        Assert.Equal(File.ReadAllBytes(dir.File("eager.png")), File.ReadAllBytes(dir.File("s.png")));
    }

    [CudaFact]
    public void ResumeOnCudaGivesTheLossesOfAnUninterruptedRun()
    {
        // A constant learning rate after the warm-up, so that a 2-step run resumed to 4 steps follows the same
        // schedule as a 4-step run.
        using var whole = new TempDir();
        var (code, output, err) = Run(Train(whole.Path, 4, "--lr-schedule", "constant"));
        Assert.True(code == 0, err + output);
        using var split = new TempDir();
        (code, output, err) = Run(Train(split.Path, 2, "--lr-schedule", "constant"));
        Assert.True(code == 0, err + output);
        (code, output, err) = Run("train", "--backend", "cuda", "--resume", split.Path, "--steps", "4",
            "--max-images", "32", "--samples", "4", "--sample-steps", "2", "--sample-every", "0", "--out", split.Path);
        Assert.True(code == 0, err + output);
        Assert.Equal(4, LossRows(split.Path).Length);
        // Same losses, bit for bit: the noise, timesteps and data order come from Philox positions in the checkpoint.
        Assert.Equal(LossRows(whole.Path).Select(r => r.Split(',')[1]), LossRows(split.Path).Select(r => r.Split(',')[1]));
    }

    private System.Text.Json.JsonElement BenchWork(params string[] options)
    {
        var (code, output, err) = Run(["bench", "--backend", "cuda", "--preset", "tiny", "--batch", "2", "--steps", "2", "--json", .. options]);
        Assert.True(code == 0, err + output);
        Assert.Contains("device work per step (counted by the backend)", output);
        using var json = System.Text.Json.JsonDocument.Parse(output.Trim().Split('\n')[^1]);
        return json.RootElement.GetProperty("device_work_per_step").Clone();
    }

    [CudaFact]
    public void BenchJsonCarriesTheDeviceWorkOfAStep()
    {
        // Eager steps in bf16: every call from the host, the operand casts among the kernels.
        var work = BenchWork("--no-cuda-graphs", "--precision", "bf16");
        Assert.True(work.GetProperty("kernel_launches").GetDouble() > 0);
        Assert.True(work.GetProperty("blas_calls").GetDouble() > 0);
        Assert.True(work.GetProperty("host_syncs").GetDouble() <= 1, work.ToString());
        Assert.True(work.GetProperty("peak_device_bytes").GetInt64() > 0);
        Assert.True(work.GetProperty("dnn_calls").GetDouble() > 0 == CudaTestEnvironment.Backend.UsesCudnn, work.ToString());
        Assert.True(work.GetProperty("cast_kernels").GetDouble() > 0, work.ToString());
        Assert.Equal(0, work.GetProperty("graph_launches").GetDouble());

        // Replayed steps: the eager step and the recording are warm-up, so each timed step is one graph launch.
        var replayed = BenchWork();
        Assert.Equal(1, replayed.GetProperty("graph_launches").GetDouble());
        Assert.Equal(0, replayed.GetProperty("kernel_launches").GetDouble());
        Assert.True(replayed.GetProperty("host_syncs").GetDouble() <= 1, replayed.ToString());
    }

    [CudaFact]
    public void ParityVerbAgreesWithTheCpuBackend()
    {
        var (code, output, err) = Run("parity", "--backend", "cuda", "--against", "cpu", "--preset", "tiny", "--threads", "2");
        Assert.True(code == 0, err + output);
        Assert.Contains("parity holds", output);
    }
}
