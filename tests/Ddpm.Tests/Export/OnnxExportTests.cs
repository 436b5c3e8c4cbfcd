using System.Diagnostics;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Export;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Ddpm.Tool;
using Microsoft.ML.OnnxRuntime;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Export;

/// <summary>
/// The ONNX export run by ONNX Runtime (CPU) against the model's own forward pass on the same weights and inputs:
/// every preset at its full size, the attention norm, several heads and a class-conditional model.
/// </summary>
public sealed class OnnxExportTests(ITestOutputHelper output)
{
    /// <summary>float32 both ways, with different summation orders: measured 1e-7 to 6e-7 relative L2.</summary>
    private const double Tolerance = 1e-5;

    public static TheoryData<string> Configs => new() { "tiny", "small", "labml", "ddpm-cifar10", "small+attn-norm", "tiny+2-heads", "small+classes" };

    private static UNetConfig Config(string name)
    {
        var parts = name.Split('+');
        var c = Presets.Get(parts[0]).Model;
        foreach (var option in parts.Skip(1))
            c = option switch
            {
                "attn-norm" => c with { AttnNorm = true },
                "2-heads" => c with { NHeads = 2 },
                "classes" => c with { NumClasses = 10 },
                _ => throw new ArgumentException(option),
            };
        return c;
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void OnnxRuntimeMatchesForward(string name)
    {
        var cfg = Config(name);
        var sw = Stopwatch.StartNew();
        using var be = new CpuBackend(2);
        using var scope = new TensorScope();
        using var model = new UNet(be, cfg, new PhiloxGenerator(3));
        model.Eval();
        Perturb(model);
        // The heavy models see one image (the labml preset is 168 M parameters: its file is 671 MB).
        int n = cfg.ParameterCount() > 10_000_000 ? 1 : 3;
        int per = cfg.ImageChannels * cfg.ImageSize * cfg.ImageSize;
        var x = TestData.Normal(n * per, 11);
        int[] t = new[] { 999, 0, 421 }[..n];
        int[] y = new[] { cfg.NumClasses, 0, 7 }[..n]; // the null class, then two classes
        using var xt = Tensor.FromArray(be, x, n, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize);
        float[] expected;
        using (var e = cfg.IsConditional ? model.Forward(xt, t, y) : model.Forward(xt, t)) expected = e.ToArray();
        double forwardS = sw.Elapsed.TotalSeconds;

        // Through a file, as users load it (and without a second copy of the weights in memory).
        using var dir = new TempDir();
        using (var file = File.Create(dir.File("model.onnx"))) OnnxExport.Write(model, file, new OnnxExportOptions { OutputName = "v" });
        double exportS = sw.Elapsed.TotalSeconds - forwardS;
        using var options = new SessionOptions { IntraOpNumThreads = 2, InterOpNumThreads = 1 };
        using var runtime = new InferenceSession(dir.File("model.onnx"), options);
        Assert.Equal(cfg.IsConditional ? new[] { "x", "t", "y" } : new[] { "x", "t" }, runtime.InputMetadata.Keys.ToArray());
        Assert.Equal(new[] { "v" }, runtime.OutputMetadata.Keys.ToArray());
        Assert.Equal(-1, runtime.InputMetadata["x"].Dimensions[0]); // a dynamic batch
        Assert.Contains(OnnxExport.ModelConfigKey, runtime.ModelMetadata.CustomMetadataMap.Keys);

        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("x", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<float>(x, [n, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize])),
            NamedOnnxValue.CreateFromTensor("t", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(t.Select(v => (long)v).ToArray(), [n])),
        };
        if (cfg.IsConditional)
            inputs.Add(NamedOnnxValue.CreateFromTensor("y", new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(y.Select(v => (long)v).ToArray(), [n])));
        using var results = runtime.Run(inputs);
        var actual = results.Single().AsEnumerable<float>().ToArray();
        var r = Closeness.RelL2(actual, expected);
        output.WriteLine($"{name}: {cfg.ParameterCount():N0} parameters, relative L2 {r.Value:E2}; forward {forwardS:F1}s, export {exportS:F1}s, total {sw.Elapsed.TotalSeconds:F1}s");
        Assert.True(r.Value <= Tolerance, r.Describe($"{name}: ONNX Runtime against forward", "relative L2", Tolerance));
    }

    [Fact]
    public void AFixedBatchIsWrittenAsANumberAndTheMetadataIsKept()
    {
        using var be = new CpuBackend(1);
        using var model = new UNet(be, Config("tiny"), new PhiloxGenerator(1));
        var bytes = OnnxExport.ToBytes(model, new OnnxExportOptions { Batch = 4, Metadata = new Dictionary<string, string> { ["ddpm.prediction"] = "eps" } });
        using var runtime = new InferenceSession(bytes);
        Assert.Equal([4, 1, 32, 32], runtime.InputMetadata["x"].Dimensions);
        Assert.Equal([4], runtime.InputMetadata["t"].Dimensions);
        Assert.Equal("eps", runtime.ModelMetadata.CustomMetadataMap["ddpm.prediction"]);
        var stored = System.Text.Json.JsonSerializer.Deserialize<UNetConfig>(runtime.ModelMetadata.CustomMetadataMap[OnnxExport.ModelConfigKey])!;
        Assert.Equal(Config("tiny").ToString(), stored.ToString());
        Assert.Equal("ddpm", runtime.ModelMetadata.ProducerName);
    }

    /// <summary>
    /// Moves the parameters off their initial values (GroupNorm starts at gamma 1, beta 0, which would leave the
    /// norms' affine part untested): every vector (biases, norm scales and shifts) gets uniform noise in
    /// [-0.2, 0.2) added; the weight matrices are random from their initialisation already.
    /// </summary>
    private static void Perturb(UNet model)
    {
        ulong seed = 100;
        foreach (var (_, p) in model.NamedParameters().Where(p => p.Param.Shape.Rank == 1))
        {
            var v = p.ToArray();
            var u = TestData.Uniform(v.Length, seed++, -0.2f, 0.2f);
            for (int i = 0; i < v.Length; i++) v[i] += u[i];
            p.CopyFrom(v);
        }
    }
}
