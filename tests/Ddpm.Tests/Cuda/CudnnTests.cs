using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The convolutions on cuDNN beyond the parity cases: the simulated device provides it, algorithms are chosen once
/// per shape and only among deterministic ones, and the engine can be asked for. Skipped without CUDA (and the
/// simulator's checks on a GPU).
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudnnTests
{
    private static CudaBackend Be => CudaTestEnvironment.Backend;

    [SimulatorFact]
    public void TheSimulatedDeviceRunsTheConvolutionsOnCudnn()
    {
        // The simulator ships libcudnn.so.9: if it stopped loading, every CUDA test would silently run on im2col.
        Assert.True(Be.UsesCudnn, Be.ConvolutionPath);
        Assert.Contains("convolutions: cuDNN 9.", Be.Description);
        Assert.Equal(9, Be.CudnnVersion / 10000);
    }

    [SimulatorFact]
    public void InfoSaysWhatRunsTheConvolutions()
    {
        var (code, output, err) = Tool.ToolTests.Run("info");
        Assert.True(code == 0, err + output);
        Assert.Matches(@"cuDNN: 9\.\d+\.\d+ \(.*libcudnn\.so\.9\); convolutions on cuDNN", output);
        Assert.Contains("convolutions on cuDNN", CudaProbe.Run().ToString());
    }

    [SimulatorFact]
    public void AlgorithmsAreChosenOncePerShape()
    {
        var counters = SimulatorCounters.Open()!;
        // A geometry no other test uses, so its plan is made here.
        var g = new ConvGeometry(3, 5, 11, 13, 7, 3, 3, 2, 1, 1, 0);
        using var x = Tensor.RandN(Be, new Shape(g.N, g.C, g.H, g.W), new PhiloxGenerator(1));
        using var w = Tensor.RandN(Be, new Shape(g.O, g.C, g.KH, g.KW), new PhiloxGenerator(2));
        using var bias = Tensor.RandN(Be, new Shape(g.O), new PhiloxGenerator(3));
        using var dy = Tensor.RandN(Be, new Shape(g.N, g.O, g.OH, g.OW), new PhiloxGenerator(4));
        using var y = Tensor.Zeros(Be, dy.Shape);
        using var dx = Tensor.Zeros(Be, x.Shape);
        using var dw = Tensor.Zeros(Be, w.Shape);
        using var db = Tensor.Zeros(Be, bias.Shape);
        (ulong Calls, ulong Queries) Twice(Action pass)
        {
            var before = counters.ReadCudnn();
            pass();
            var first = counters.ReadCudnn() - before;
            pass();
            var second = counters.ReadCudnn() - before - first;
            Assert.Equal(first.Calls, second.Calls);
            Assert.Equal(0UL, second.AlgorithmQueries);
            return (first.Calls, first.AlgorithmQueries);
        }
        Assert.Equal((2UL, 1UL), Twice(() => Be.Conv2dForward(x.Buffer, w.Buffer, bias.Buffer, g, y.Buffer)));
        Assert.Equal((1UL, 1UL), Twice(() => Be.Conv2dBackwardData(dy.Buffer, w.Buffer, g, dx.Buffer)));
        Assert.Equal((2UL, 1UL), Twice(() => Be.Conv2dBackwardWeight(x.Buffer, dy.Buffer, g, dw.Buffer, db.Buffer)));
        Be.Synchronize();
    }

    [CudnnFact]
    public void BackwardPassesGiveTheSameBitsEveryRun()
    {
        // cuDNN's fastest backward algorithms sum with atomics; the backend must pass them over. (The simulated
        // cuDNN ranks them first and changes their summation order from call to call.)
        var g = new ConvGeometry(4, 6, 9, 9, 8, 3, 3, 1, 1, 1, 1);
        var x = TestData.Normal(g.InputSize, 5);
        var dy = TestData.Normal(g.OutputSize, 6);
        var w = TestData.Normal(g.WeightSize, 7);
        float[] Run(Action<DeviceBuffer, DeviceBuffer, DeviceBuffer> pass, float[] a, float[] b, int outSize)
        {
            var ba = Be.Allocate(a.Length);
            var bb = Be.Allocate(b.Length);
            var bo = Be.Allocate(outSize);
            try
            {
                Be.Upload(a, ba, 0);
                Be.Upload(b, bb, 0);
                pass(ba, bb, bo);
                var r = new float[outSize];
                Be.Download(bo, 0, r);
                return r;
            }
            finally
            {
                ba.Release();
                bb.Release();
                bo.Release();
            }
        }
        for (int run = 0; run < 2; run++)
        {
            var dx1 = Run((d, ww, o) => Be.Conv2dBackwardData(d, ww, g, o), dy, w, g.InputSize);
            var dx2 = Run((d, ww, o) => Be.Conv2dBackwardData(d, ww, g, o), dy, w, g.InputSize);
            Assert.Equal(dx1.Select(BitConverter.SingleToInt32Bits), dx2.Select(BitConverter.SingleToInt32Bits));
            var dw1 = Run((xx, d, o) => Be.Conv2dBackwardWeight(xx, d, g, o, null), x, dy, g.WeightSize);
            var dw2 = Run((xx, d, o) => Be.Conv2dBackwardWeight(xx, d, g, o, null), x, dy, g.WeightSize);
            Assert.Equal(dw1.Select(BitConverter.SingleToInt32Bits), dw2.Select(BitConverter.SingleToInt32Bits));
        }
    }

    [CudaFact]
    public void Im2colIsUsedWhenAskedFor()
    {
        using var be = new CudaBackend(null, ConvolutionEngine.Im2col);
        Assert.False(be.UsesCudnn);
        Assert.Equal(0, be.CudnnVersion);
        Assert.Contains("convolutions: im2col + cuBLAS (asked for)", be.Description);
    }

    [Theory]
    [InlineData(null, ConvolutionEngine.Auto, ConvolutionEngine.Auto)]
    [InlineData("0", ConvolutionEngine.Auto, ConvolutionEngine.Im2col)]
    [InlineData("1", ConvolutionEngine.Auto, ConvolutionEngine.Cudnn)]
    [InlineData(" auto ", ConvolutionEngine.Auto, ConvolutionEngine.Auto)]
    [InlineData("0", ConvolutionEngine.Cudnn, ConvolutionEngine.Cudnn)]
    [InlineData("1", ConvolutionEngine.Im2col, ConvolutionEngine.Im2col)]
    public void TheEngineAskedForWinsOverDdpmCudnn(string? environment, ConvolutionEngine asked, ConvolutionEngine expected) =>
        Assert.Equal(expected, CudaBackend.ResolveEngine(asked, environment));

    [Fact]
    public void AnUnknownDdpmCudnnIsOneLineNamingIt()
    {
        var e = Assert.Throws<CudaUnavailableException>(() => CudaBackend.ResolveEngine(ConvolutionEngine.Auto, "yes"));
        Assert.Equal("DDPM_CUDNN=yes is not understood: use 0 (im2col + cuBLAS), 1 (cuDNN, required) or auto.", e.Message);
    }
}
