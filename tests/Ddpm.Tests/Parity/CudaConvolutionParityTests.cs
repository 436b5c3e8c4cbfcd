using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Ddpm.Tests.Cuda;
using Xunit;

namespace Ddpm.Tests.Parity;

/// <summary>One cuda backend opened with the given options for all the cases of a test class (none without CUDA).</summary>
public abstract class CudaBackendFixture(BackendOptions? options, ConvolutionEngine engine) : IDisposable
{
    public CudaBackend? Backend { get; } = CudaTestEnvironment.Available ? new CudaBackend(options, engine) : null;

    public void Dispose()
    {
        Backend?.Dispose();
        GC.SuppressFinalize(this);
    }
}

public sealed class Im2colBackendFixture() : CudaBackendFixture(null, ConvolutionEngine.Im2col);

public sealed class Tf32BackendFixture() : CudaBackendFixture(new BackendOptions { Precision = Precision.Tf32 }, ConvolutionEngine.Auto);

/// <summary>
/// The convolution cases on the engine the shared backend does not use: <see cref="CudaOpParityTests"/> runs every
/// case on cuDNN where it is found (the simulated device has it), this class runs the convolutions again on
/// im2col + cuBLAS, so both paths are checked against <c>cpu-reference</c> in one run.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaIm2colParityTests(Im2colBackendFixture fixture) : IClassFixture<Im2colBackendFixture>, IDisposable
{
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> Cases => ParityCases.ConvolutionNames;

    [CudaTheory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string op)
    {
        var be = fixture.Backend!;
        Assert.False(be.UsesCudnn, be.ConvolutionPath);
        ParityCases.Run(op, be, _ref);
    }

    public void Dispose() => _ref.Dispose();
}

/// <summary>
/// The convolutions on cuDNN in TF32 against <c>cpu-reference</c> in float32: within the TF32 tolerance, and
/// measurably off float32 (the simulated cuDNN rounds inputs to TF32 as a GPU does). Skipped without cuDNN.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaTf32ParityTests(Tf32BackendFixture fixture) : IClassFixture<Tf32BackendFixture>, IDisposable
{
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> Cases => ParityCases.Tf32Names;

    [CudnnTheory]
    [MemberData(nameof(Cases))]
    public void MatchesReferenceWithinTf32(string op) => ParityCases.Run(op, fixture.Backend!, _ref);

    public void Dispose() => _ref.Dispose();
}
