using System.Runtime.InteropServices;

namespace Ddpm.Tensors.Distributed.Mpi;

/// <summary>
/// The few MPI calls data-parallel training uses, bound to MPICH's C library (ABI libmpich.so.12, Debian's
/// <c>libmpich12</c>). MPICH's handles are plain ints with fixed values, copied from its <c>mpi.h</c>.
/// </summary>
internal static unsafe partial class MpiNative
{
    public const string Lib = "libmpich.so.12";

    public const int Success = 0;
    public const int CommWorld = 0x44000000;
    public const int Byte = 0x4c00010d;
    public const int Float = 0x4c00040a;
    public const int Double = 0x4c00080b;
    public const int OpSum = 0x58000003;
    public const int ThreadSerialized = 2;
    public const int RequestNull = 0x2c000000;
    public const int MaxErrorString = 512;

    /// <summary>MPI_IN_PLACE: <c>(void *) -1</c> in MPICH.</summary>
    public static readonly void* InPlace = (void*)-1;

    /// <summary>MPI_STATUS_IGNORE: <c>(MPI_Status *) 1</c> in MPICH.</summary>
    public static readonly void* StatusIgnore = (void*)1;

    [LibraryImport(Lib)] public static partial int MPI_Initialized(out int flag);
    [LibraryImport(Lib)] public static partial int MPI_Finalized(out int flag);
    [LibraryImport(Lib)] public static partial int MPI_Init_thread(int* argc, byte*** argv, int required, out int provided);
    [LibraryImport(Lib)] public static partial int MPI_Finalize();
    [LibraryImport(Lib)] public static partial int MPI_Comm_rank(int comm, out int rank);
    [LibraryImport(Lib)] public static partial int MPI_Comm_size(int comm, out int size);
    [LibraryImport(Lib)] public static partial int MPI_Allreduce(void* sendbuf, void* recvbuf, int count, int datatype, int op, int comm);
    [LibraryImport(Lib)] public static partial int MPI_Iallreduce(void* sendbuf, void* recvbuf, int count, int datatype, int op, int comm, int* request);
    [LibraryImport(Lib)] public static partial int MPI_Test(int* request, out int flag, void* status);
    [LibraryImport(Lib)] public static partial int MPI_Wait(int* request, void* status);
    [LibraryImport(Lib)] public static partial int MPI_Bcast(void* buffer, int count, int datatype, int root, int comm);
    [LibraryImport(Lib)] public static partial int MPI_Barrier(int comm);
    [LibraryImport(Lib)] public static partial int MPI_Abort(int comm, int errorcode);
    [LibraryImport(Lib)] public static partial int MPI_Error_string(int errorcode, byte* text, out int length);
    [LibraryImport(Lib)] public static partial int MPI_Get_library_version(byte* version, out int length);

    /// <summary>Throws with MPI's own text for a failed call.</summary>
    public static void Check(int rc, string call)
    {
        if (rc == Success) return;
        var text = stackalloc byte[MaxErrorString + 1];
        string detail = MPI_Error_string(rc, text, out int len) == Success
            ? System.Text.Encoding.ASCII.GetString(text, Math.Clamp(len, 0, MaxErrorString))
            : $"error {rc}";
        throw new InvalidOperationException($"{call} failed: {detail}");
    }
}
