using Ddpm.Backends.Cpu;
using Ddpm.Tests.Cuda;

namespace Ddpm.Tests.Parity;

/// <summary>
/// The same per-op parity cases as the cpu backend, on <c>cuda</c> against <c>cpu-reference</c>. TF32 is off in
/// the shared test backend, so the float32 tolerances of <see cref="ParityCases"/> apply. Without a GPU every case
/// reports skipped with the reason.
/// </summary>
[Xunit.Collection(CudaTestEnvironment.Collection)]
public sealed class CudaOpParityTests : IDisposable
{
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> Cases => ParityCases.Names;

    [CudaTheory]
    [Xunit.MemberData(nameof(Cases))]
    public void MatchesReference(string op) => ParityCases.Run(op, CudaTestEnvironment.Backend, _ref);

    public void Dispose() => _ref.Dispose();
}
