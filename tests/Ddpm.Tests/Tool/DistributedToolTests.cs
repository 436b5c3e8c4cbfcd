using Xunit;

namespace Ddpm.Tests.Tool;

/// <summary><c>train --distributed</c> refusals that need no MPI job (two-rank runs are in .ci/mpi-tests.sh).</summary>
public sealed class DistributedToolTests
{
    [Theory]
    [InlineData("cpu")]
    [InlineData("cpu-reference")]
    public void NcclWithAnotherBackendIsAUsageError(string backend) =>
        ToolTests.AssertBadUsage(["train", "--preset", "tiny", "--steps", "1", "--backend", backend, "--distributed", "nccl"],
            $"--distributed nccl needs --backend cuda (got --backend {backend}); use --distributed mpi.");

    [Fact]
    public void AnUnknownModeIsAUsageError() =>
        ToolTests.AssertBadUsage(["train", "--distributed", "gloo"], "bad value for --distributed");
}
