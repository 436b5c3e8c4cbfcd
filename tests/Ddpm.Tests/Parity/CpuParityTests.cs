using Ddpm.Backends.Cpu;
using Xunit;

namespace Ddpm.Tests.Parity;

/// <summary>Every op of the fast <c>cpu</c> backend (2 worker threads, as CI has) against <c>cpu-reference</c>.</summary>
public sealed class CpuParityTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> Cases => ParityCases.Names;

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string op) => ParityCases.Run(op, _cpu, _ref);

    public void Dispose()
    {
        _cpu.Dispose();
        _ref.Dispose();
    }
}
