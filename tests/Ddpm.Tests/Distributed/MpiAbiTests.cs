using Ddpm.Tensors.Distributed.Mpi;
using Xunit;

namespace Ddpm.Tests.Distributed;

/// <summary>
/// MPICH's int request in the nint slot both ABIs share. Open MPI's ABI (handles looked up among libmpi.so.40's
/// exports) is checked by .ci/mpi-tests.sh under Open MPI's mpirun, out of this process: loading a second MPI
/// library into the test host would expose its symbols to everything loaded after it.
/// </summary>
public sealed unsafe class MpiAbiTests
{
    [Fact]
    public void MpichsIntRequestLivesInTheLowHalfOfItsSlot()
    {
        var abi = MpichAbi.Instance;
        Assert.True(abi.IsNull(abi.RequestNull));
        // As MPI_Test leaves it: MPICH writes 4 bytes, MPI_REQUEST_NULL (0x2c000000) once complete.
        nint slot = 0x12345;
        *(int*)&slot = unchecked((int)0xac000001); // an active request handle
        Assert.False(abi.IsNull(slot));
        *(int*)&slot = 0x2c000000;
        Assert.True(abi.IsNull(slot));
        Assert.Equal(("MPICH", "libmpich.so.12"), (abi.Family, abi.Library));
    }
}
