using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Golden;

/// <summary>
/// The whole-model check against PyTorch: labml's UNet and DenoiseDiffusion run by PyTorch 1.13 in float32
/// (Fixtures/golden/labml-unet-tiny, made from ../shared/golden). Same weights and input must give the same
/// eps_theta, L = mean(eps^2), the gradient of L for x and every parameter, L_simple and p_sample.
/// </summary>
public abstract class GoldenTestsBase
{
    // Tolerances (relative L2 error ||ours - torch|| / ||torch||), as the issue fixes them: outputs 1e-5,
    // gradients 1e-4 (PyTorch uses other convolution and GEMM algorithms, so sums are ordered differently).
    private const double OutputTol = 1e-5;
    private const double GradTol = 1e-4;

    private static readonly string Dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny");
    private readonly ITestOutputHelper _out;

    protected GoldenTestsBase(ITestOutputHelper output) => _out = output;

    protected abstract IBackend CreateBackend();

    public static UNetConfig TinyConfig => new()
    {
        ImageChannels = 1, ImageSize = 16, NChannels = 32, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1,
        Dropout = 0.1f, NHeads = 1,
    };

    private (UNet Model, SafeTensorsFile Io, IBackend Be) Load()
    {
        var be = CreateBackend();
        var model = new UNet(be, TinyConfig, new PhiloxGenerator(0));
        model.Eval();
        var ckpt = Checkpoint.Load(Path.Combine(Dir, "model.safetensors"));
        ckpt.LoadWeightsInto(model);
        return (model, SafeTensorsFile.Read(Path.Combine(Dir, "io.safetensors")), be);
    }

    // A gradient below this fraction of the whole gradient's norm is zero up to float32 round-off.
    private const double ZeroGrad = 1e-6;

    private static double Norm(float[] v) => Math.Sqrt(v.Sum(x => (double)x * x));

    private static int[] Ints(SafeTensorEntry e) => e.AsLongs().Select(v => checked((int)v)).ToArray();

    private static Tensor Upload(IBackend be, SafeTensorEntry e) => Tensor.FromArray(be, e.AsFloats(), e.Shape);

    [Fact]
    public void ParameterNamesAndCountMatchLabml()
    {
        var (model, _, be) = Load();
        using var _b = be;
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        var ckpt = SafeTensorsFile.Read(Path.Combine(Dir, "model.safetensors"));
        Assert.Equal(128, names.Count);
        Assert.Equal(ckpt.Entries.Select(e => e.Name).OrderBy(n => n, StringComparer.Ordinal), names.OrderBy(n => n, StringComparer.Ordinal));
        Assert.Equal(595_393, model.ParameterCount());
        Assert.Equal("image_proj.weight", names[0]);
        Assert.Equal("final.bias", names[^1]);
    }

    [Fact]
    public void ForwardAndGradientsMatchPyTorch()
    {
        var (model, io, be) = Load();
        using var _b = be;
        using var scope = new TensorScope();
        var x = Upload(be, io["x"]);
        x.RequiresGrad = true;
        var t = Ints(io["t"]);
        var eps = model.Forward(x, t);
        double eErr = Closeness.RelL2(eps.ToArray(), io["eps"].AsFloats()).Value;
        using var sq = Ops.Square(eps);
        var l = Ops.Mean(sq);
        double lErr = Closeness.RelL2(l.ToArray(), io["L"].AsFloats()).Value;
        l.Backward();
        double xErr = Closeness.RelL2(x.Grad!.ToArray(), io["grad.x"].AsFloats()).Value;
        _out.WriteLine($"eps rel L2 {eErr:E2}, L {lErr:E2}, grad.x {xErr:E2}");
        Assert.True(eErr <= OutputTol, $"eps relative L2 error {eErr:E3} > {OutputTol:E0}");
        Assert.True(lErr <= OutputTol, $"L relative error {lErr:E3} > {OutputTol:E0}");
        Assert.True(xErr <= GradTol, $"grad.x relative L2 error {xErr:E3} > {GradTol:E0}");
        double worst = 0; string worstName = "";
        var failures = new List<string>();
        double globalNorm = Math.Sqrt(model.NamedParameters().Sum(p => Math.Pow(Norm(io["grad." + p.Name].AsFloats()), 2)));
        foreach (var (name, p) in model.NamedParameters())
        {
            var expected = io["grad." + name].AsFloats();
            if (!p.RequiresGrad)
            {
                // labml registers AttentionBlock.norm but never applies it: PyTorch's gradient is zero.
                Assert.All(expected, v => Assert.Equal(0f, v));
                Assert.Null(p.Grad);
                continue;
            }
            double err = Closeness.RelL2(p.Grad!.ToArray(), expected).Value;
            double torchNorm = Norm(expected), ourNorm = Norm(p.Grad!.ToArray());
            if (torchNorm < ZeroGrad * globalNorm)
            {
                // In blocks whose norm2 is GroupNorm(32) over 32 channels, each group is one channel, so a
                // per-channel constant (conv1's bias, the time embedding) is normalised away: the exact gradient
                // is 0 and both sides hold round-off (~1e-9). Check that ours is round-off too.
                if (ourNorm >= ZeroGrad * globalNorm) failures.Add($"grad.{name} should be ~0 (torch {torchNorm:E2}) but is {ourNorm:E2}");
                continue;
            }
            if (err > worst) { worst = err; worstName = name; }
            if (err > GradTol) failures.Add($"grad.{name} relative L2 error {err:E3}");
        }
        Assert.True(failures.Count == 0, $"gradients above {GradTol:E0}: " + string.Join("; ", failures));
        _out.WriteLine($"worst parameter gradient: {worstName} {worst:E2}");
        model.Dispose();
    }

    [Fact]
    public void ScheduleLossAndPSampleMatchPyTorch()
    {
        var (model, io, be) = Load();
        using var _b = be;
        using var scope = new TensorScope();
        var diffusion = new DenoiseDiffusion(model, DiffusionConfig.LabmlExact);
        var beta = diffusion.Schedule.Beta.Select(v => (float)v).ToArray();
        var ab = diffusion.Schedule.AlphaBar.Select(v => (float)v).ToArray();
        Assert.Equal(io["sched.beta"].AsFloats(), beta);
        double abErr = Closeness.RelL2(ab, io["sched.alpha_bar"].AsFloats()).Value;
        Assert.True(abErr <= 1e-6, $"alpha_bar relative error {abErr:E3}");

        var x0 = Upload(be, io["loss.x0"]);
        var noise = Upload(be, io["loss.noise"]);
        var lt = Ints(io["loss.t"]);
        var xt = diffusion.QSample(x0, lt, noise);
        double xtErr = Closeness.RelL2(xt.ToArray(), io["loss.xt"].AsFloats()).Value;
        var loss = diffusion.Loss(x0, lt, noise);
        double lossErr = Closeness.RelL2(loss.ToArray(), io["loss"].AsFloats()).Value;

        var x = Upload(be, io["x"]);
        var z = Upload(be, io["psample.z"]);
        var ps = diffusion.PSample(x, Ints(io["t"]), z);
        double psErr = Closeness.RelL2(ps.ToArray(), io["psample.out"].AsFloats()).Value;
        _out.WriteLine($"alpha_bar {abErr:E2}, q_sample {xtErr:E2}, loss {lossErr:E2}, p_sample {psErr:E2}");
        Assert.True(xtErr <= OutputTol, $"q_sample relative L2 error {xtErr:E3}");
        Assert.True(lossErr <= OutputTol, $"loss relative error {lossErr:E3}");
        Assert.True(psErr <= OutputTol, $"p_sample relative L2 error {psErr:E3}");
        model.Dispose();
    }
}

public sealed class GoldenTestsCpuReference(ITestOutputHelper output) : GoldenTestsBase(output)
{
    protected override IBackend CreateBackend() => new CpuReferenceBackend();
}

public sealed class GoldenTestsCpu(ITestOutputHelper output) : GoldenTestsBase(output)
{
    protected override IBackend CreateBackend() => new CpuBackend(0);
}

