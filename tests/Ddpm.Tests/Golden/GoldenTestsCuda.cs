using Ddpm.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Golden;

/// <summary>
/// The golden tests on the cuda backend (TF32 off), on a GPU or on the simulated CUDA device in CI; skipped with
/// the reason where neither is present.
/// </summary>
[Collection(Cuda.CudaTestEnvironment.Collection)]
public sealed class GoldenTestsCuda(ITestOutputHelper output)
{
    [Cuda.CudaFact] public void ParameterNamesAndCountMatchLabml() => new OnCuda(output).ParameterNamesAndCountMatchLabml();
    [Cuda.CudaFact] public void ForwardAndGradientsMatchPyTorch() => new OnCuda(output).ForwardAndGradientsMatchPyTorch();
    [Cuda.CudaFact] public void ScheduleLossAndPSampleMatchPyTorch() => new OnCuda(output).ScheduleLossAndPSampleMatchPyTorch();

    private sealed class OnCuda(ITestOutputHelper output) : GoldenTestsBase(output)
    {
        protected override IBackend CreateBackend() => new Ddpm.Backends.Cuda.CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
    }
}
