using System.Runtime.InteropServices;
using Ddpm.Tensors.Distributed.Mpi;
using Xunit;

namespace Ddpm.Tests.Distributed;

/// <summary>
/// The two MPI ABIs without starting MPI (only the calls MPI 3.1 allows before MPI_Init): MPICH's int request in its
/// nint slot, and Open MPI's handles looked up among its library's exports. Training over both runs in
/// .ci/mpi-tests.sh under each one's launcher.
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

    [OpenMpiFact]
    public void OpenMpisHandlesAreTheAddressesOfItsExportedObjects()
    {
        var abi = OpenMpiAbi.Load();
        Assert.Equal(abi.RequestNull, OpenMpiAbi.Load().RequestNull);
        Assert.Equal(("Open MPI", "libmpi.so.40"), (abi.Family, abi.Library));
        nint lib = NativeLibrary.Load(OpenMpiAbi.Lib);
        Assert.Equal(NativeLibrary.GetExport(lib, "ompi_request_null"), abi.RequestNull);
        Assert.True(abi.IsNull(abi.RequestNull));
        Assert.False(abi.IsNull(abi.RequestNull + 8));
        // MPI_Initialized and MPI_Get_library_version are the calls MPI 3.1 allows before MPI_Init.
        Assert.Equal(MpiAbi.Success, abi.Initialized(out int initialised));
        Assert.Equal(0, initialised);
        var text = stackalloc byte[8192];
        Assert.Equal(MpiAbi.Success, abi.LibraryVersion(text, out int length));
        Assert.StartsWith("Open MPI v", System.Text.Encoding.ASCII.GetString(text, length));
    }
}

/// <summary>A test that needs Open MPI's library (Debian: openmpi-bin); skipped where it is not installed.</summary>
public sealed class OpenMpiFactAttribute : FactAttribute
{
    public OpenMpiFactAttribute()
    {
        if (!NativeLibrary.TryLoad(OpenMpiAbi.Lib, out _)) Skip = $"{OpenMpiAbi.Lib} (Open MPI) is not installed.";
    }
}
