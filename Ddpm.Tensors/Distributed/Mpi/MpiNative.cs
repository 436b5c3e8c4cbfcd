using System.Runtime.InteropServices;

namespace Ddpm.Tensors.Distributed.Mpi;

/// <summary>The MPI datatypes the collectives use.</summary>
internal enum MpiType
{
    Byte,
    Float,
    Double,
}

/// <summary>
/// The few MPI calls data-parallel training uses, always on MPI_COMM_WORLD and with MPI_SUM, for one of the two
/// MPI ABIs of Linux: MPICH's (<see cref="MpichAbi"/>), whose handles are ints with fixed values, and Open MPI's
/// (<see cref="OpenMpiAbi"/>), whose handles are the addresses of objects its library exports. A request is
/// held in an <see cref="nint"/> either way (MPICH's int request in its low half).
/// </summary>
internal abstract unsafe class MpiAbi
{
    public const int Success = 0;
    public const int ThreadSerialized = 2;
    public const int MaxErrorString = 512;

    /// <summary>The library's file name: <c>libmpich.so.12</c>, <c>libmpi.so.40</c>.</summary>
    public abstract string Library { get; }

    /// <summary>"MPICH" or "Open MPI".</summary>
    public abstract string Family { get; }

    public abstract nint RequestNull { get; }

    public abstract int Initialized(out int flag);
    public abstract int Finalized(out int flag);
    public abstract int InitThread(int required, out int provided);
    public abstract int Finalize();
    public abstract int CommRank(out int rank);
    public abstract int CommSize(out int size);

    /// <summary>MPI_Allreduce in place (MPI_IN_PLACE), MPI_SUM.</summary>
    public abstract int AllreduceInPlace(void* data, int count, MpiType type);

    /// <summary>MPI_Iallreduce in place, MPI_SUM; the request is written to <paramref name="request"/>.</summary>
    public abstract int IallreduceInPlace(void* data, int count, MpiType type, nint* request);

    /// <summary>MPI_Test with MPI_STATUS_IGNORE.</summary>
    public abstract int Test(nint* request, out int flag);

    /// <summary>MPI_Wait with MPI_STATUS_IGNORE.</summary>
    public abstract int Wait(nint* request);

    public abstract int Bcast(void* buffer, int count, MpiType type, int root);
    public abstract int Barrier();
    public abstract int Abort(int errorCode);
    public abstract int ErrorString(int errorCode, byte* text, out int length);
    public abstract int LibraryVersion(byte* version, out int length);

    /// <summary>Whether MPI set <paramref name="request"/> to MPI_REQUEST_NULL (it does once the operation is complete).</summary>
    public abstract bool IsNull(nint request);

    /// <summary>Throws with MPI's own text for a failed call.</summary>
    public void Check(int rc, string call)
    {
        if (rc == Success) return;
        var text = stackalloc byte[MaxErrorString + 1];
        string detail = ErrorString(rc, text, out int len) == Success
            ? System.Text.Encoding.ASCII.GetString(text, Math.Clamp(len, 0, MaxErrorString))
            : $"error {rc}";
        throw new InvalidOperationException($"{call} failed: {detail}");
    }
}

/// <summary>
/// MPICH's ABI (libmpich.so.12, Debian's <c>libmpich12</c>; MVAPICH and Intel MPI share it): handles are plain
/// ints with fixed values, copied from MPICH's <c>mpi.h</c>.
/// </summary>
internal sealed unsafe partial class MpichAbi : MpiAbi
{
    public const string Lib = "libmpich.so.12";

    private const int CommWorld = 0x44000000;
    private const int ByteType = 0x4c00010d;
    private const int FloatType = 0x4c00040a;
    private const int DoubleType = 0x4c00080b;
    private const int OpSum = 0x58000003;
    private const int Null = 0x2c000000;

    /// <summary>MPI_IN_PLACE: <c>(void *) -1</c> in MPICH.</summary>
    private static readonly void* InPlace = (void*)-1;

    /// <summary>MPI_STATUS_IGNORE: <c>(MPI_Status *) 1</c> in MPICH.</summary>
    private static readonly void* StatusIgnore = (void*)1;

    public static MpichAbi Instance { get; } = new();

    private MpichAbi() { }

    public override string Library => Lib;
    public override string Family => "MPICH";
    public override nint RequestNull => Null;

    private static int Type(MpiType t) => t switch { MpiType.Byte => ByteType, MpiType.Float => FloatType, _ => DoubleType };

    public override int Initialized(out int flag) => MPI_Initialized(out flag);
    public override int Finalized(out int flag) => MPI_Finalized(out flag);
    public override int InitThread(int required, out int provided) => MPI_Init_thread(null, null, required, out provided);
    public override int Finalize() => MPI_Finalize();
    public override int CommRank(out int rank) => MPI_Comm_rank(CommWorld, out rank);
    public override int CommSize(out int size) => MPI_Comm_size(CommWorld, out size);
    public override int AllreduceInPlace(void* data, int count, MpiType type) => MPI_Allreduce(InPlace, data, count, Type(type), OpSum, CommWorld);

    public override int IallreduceInPlace(void* data, int count, MpiType type, nint* request)
    {
        *request = 0;
        return MPI_Iallreduce(InPlace, data, count, Type(type), OpSum, CommWorld, (int*)request);
    }

    public override int Test(nint* request, out int flag) => MPI_Test((int*)request, out flag, StatusIgnore);
    public override int Wait(nint* request) => MPI_Wait((int*)request, StatusIgnore);
    public override int Bcast(void* buffer, int count, MpiType type, int root) => MPI_Bcast(buffer, count, Type(type), root, CommWorld);
    public override int Barrier() => MPI_Barrier(CommWorld);
    public override int Abort(int errorCode) => MPI_Abort(CommWorld, errorCode);
    public override int ErrorString(int errorCode, byte* text, out int length) => MPI_Error_string(errorCode, text, out length);
    public override int LibraryVersion(byte* version, out int length) => MPI_Get_library_version(version, out length);

    // The int request lives in the low half of the nint (little-endian), whose high half stays zero.
    public override bool IsNull(nint request) => (int)request == Null;

    [LibraryImport(Lib)] private static partial int MPI_Initialized(out int flag);
    [LibraryImport(Lib)] private static partial int MPI_Finalized(out int flag);
    [LibraryImport(Lib)] private static partial int MPI_Init_thread(int* argc, byte*** argv, int required, out int provided);
    [LibraryImport(Lib)] private static partial int MPI_Finalize();
    [LibraryImport(Lib)] private static partial int MPI_Comm_rank(int comm, out int rank);
    [LibraryImport(Lib)] private static partial int MPI_Comm_size(int comm, out int size);
    [LibraryImport(Lib)] private static partial int MPI_Allreduce(void* sendbuf, void* recvbuf, int count, int datatype, int op, int comm);
    [LibraryImport(Lib)] private static partial int MPI_Iallreduce(void* sendbuf, void* recvbuf, int count, int datatype, int op, int comm, int* request);
    [LibraryImport(Lib)] private static partial int MPI_Test(int* request, out int flag, void* status);
    [LibraryImport(Lib)] private static partial int MPI_Wait(int* request, void* status);
    [LibraryImport(Lib)] private static partial int MPI_Bcast(void* buffer, int count, int datatype, int root, int comm);
    [LibraryImport(Lib)] private static partial int MPI_Barrier(int comm);
    [LibraryImport(Lib)] private static partial int MPI_Abort(int comm, int errorcode);
    [LibraryImport(Lib)] private static partial int MPI_Error_string(int errorcode, byte* text, out int length);
    [LibraryImport(Lib)] private static partial int MPI_Get_library_version(byte* version, out int length);
}

/// <summary>
/// Open MPI's ABI (libmpi.so.40: Open MPI 3 to 5, Debian's <c>libopenmpi3</c>): a handle is the address of a
/// predefined object the library exports (<c>MPI_COMM_WORLD</c> is <c>&amp;ompi_mpi_comm_world</c>, and so on),
/// looked up when the library is loaded; MPI_IN_PLACE is <c>(void *) 1</c> and MPI_STATUS_IGNORE is null. The
/// library is loaded with RTLD_GLOBAL, as Open MPI's plug-ins expect to find its symbols.
/// </summary>
internal sealed unsafe partial class OpenMpiAbi : MpiAbi
{
    public const string Lib = "libmpi.so.40";

    private static readonly void* InPlace = (void*)1;

    private readonly nint _comm, _byte, _float, _double, _sum, _null;
    private readonly delegate* unmanaged<int*, int> _initialized, _finalized;
    private readonly delegate* unmanaged<int*, byte***, int, int*, int> _initThread;
    private readonly delegate* unmanaged<int> _finalize;
    private readonly delegate* unmanaged<nint, int*, int> _commRank, _commSize;
    private readonly delegate* unmanaged<void*, void*, int, nint, nint, nint, int> _allreduce;
    private readonly delegate* unmanaged<void*, void*, int, nint, nint, nint, nint*, int> _iallreduce;
    private readonly delegate* unmanaged<nint*, int*, void*, int> _test;
    private readonly delegate* unmanaged<nint*, void*, int> _wait;
    private readonly delegate* unmanaged<void*, int, nint, int, nint, int> _bcast;
    private readonly delegate* unmanaged<nint, int> _barrier;
    private readonly delegate* unmanaged<nint, int, int> _abort;
    private readonly delegate* unmanaged<int, byte*, int*, int> _errorString;
    private readonly delegate* unmanaged<byte*, int*, int> _libraryVersion;

    private OpenMpiAbi(nint lib)
    {
        nint F(string name) => NativeLibrary.GetExport(lib, name);
        _comm = F("ompi_mpi_comm_world");
        _byte = F("ompi_mpi_byte");
        _float = F("ompi_mpi_float");
        _double = F("ompi_mpi_double");
        _sum = F("ompi_mpi_op_sum");
        _null = F("ompi_request_null");
        _initialized = (delegate* unmanaged<int*, int>)F("MPI_Initialized");
        _finalized = (delegate* unmanaged<int*, int>)F("MPI_Finalized");
        _initThread = (delegate* unmanaged<int*, byte***, int, int*, int>)F("MPI_Init_thread");
        _finalize = (delegate* unmanaged<int>)F("MPI_Finalize");
        _commRank = (delegate* unmanaged<nint, int*, int>)F("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<nint, int*, int>)F("MPI_Comm_size");
        _allreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, int>)F("MPI_Allreduce");
        _iallreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, nint*, int>)F("MPI_Iallreduce");
        _test = (delegate* unmanaged<nint*, int*, void*, int>)F("MPI_Test");
        _wait = (delegate* unmanaged<nint*, void*, int>)F("MPI_Wait");
        _bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)F("MPI_Bcast");
        _barrier = (delegate* unmanaged<nint, int>)F("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)F("MPI_Abort");
        _errorString = (delegate* unmanaged<int, byte*, int*, int>)F("MPI_Error_string");
        _libraryVersion = (delegate* unmanaged<byte*, int*, int>)F("MPI_Get_library_version");
    }

    /// <summary>
    /// Loads libmpi.so.40 and looks up its entry points and handles; <see cref="DllNotFoundException"/> when it
    /// is not installed. The loader counts references: a second load finds the same library and handles.
    /// </summary>
    public static OpenMpiAbi Load()
    {
        // RTLD_NOW | RTLD_GLOBAL first, so the plug-ins Open MPI opens later resolve against this copy;
        // NativeLibrary then hands out the same handle.
        nint global = Dl.dlopen(Lib, Dl.RtldNow | Dl.RtldGlobal);
        if (global == 0)
        {
            string why = Dl.dlerror() is { } e and not 0 ? Marshal.PtrToStringUTF8(e) ?? "" : "";
            throw new DllNotFoundException($"{Lib} could not be loaded: {why}");
        }
        try
        {
            return new OpenMpiAbi(NativeLibrary.Load(Lib));
        }
        catch (EntryPointNotFoundException e)
        {
            throw new DllNotFoundException($"{Lib} is not Open MPI's library: {e.Message}", e);
        }
    }

    public override string Library => Lib;
    public override string Family => "Open MPI";
    public override nint RequestNull => _null;

    private nint Type(MpiType t) => t switch { MpiType.Byte => _byte, MpiType.Float => _float, _ => _double };

    public override int Initialized(out int flag) { int f; int rc = _initialized(&f); flag = f; return rc; }
    public override int Finalized(out int flag) { int f; int rc = _finalized(&f); flag = f; return rc; }
    public override int InitThread(int required, out int provided) { int p; int rc = _initThread(null, null, required, &p); provided = p; return rc; }
    public override int Finalize() => _finalize();
    public override int CommRank(out int rank) { int r; int rc = _commRank(_comm, &r); rank = r; return rc; }
    public override int CommSize(out int size) { int s; int rc = _commSize(_comm, &s); size = s; return rc; }
    public override int AllreduceInPlace(void* data, int count, MpiType type) => _allreduce(InPlace, data, count, Type(type), _sum, _comm);
    public override int IallreduceInPlace(void* data, int count, MpiType type, nint* request) => _iallreduce(InPlace, data, count, Type(type), _sum, _comm, request);
    public override int Test(nint* request, out int flag) { int f; int rc = _test(request, &f, null); flag = f; return rc; }
    public override int Wait(nint* request) => _wait(request, null);
    public override int Bcast(void* buffer, int count, MpiType type, int root) => _bcast(buffer, count, Type(type), root, _comm);
    public override int Barrier() => _barrier(_comm);
    public override int Abort(int errorCode) => _abort(_comm, errorCode);
    public override int ErrorString(int errorCode, byte* text, out int length) { int n; int rc = _errorString(errorCode, text, &n); length = n; return rc; }
    public override int LibraryVersion(byte* version, out int length) { int n; int rc = _libraryVersion(version, &n); length = n; return rc; }
    public override bool IsNull(nint request) => request == _null;

    private static partial class Dl
    {
        public const int RtldNow = 2;
        public const int RtldGlobal = 0x100;

        [LibraryImport("libc.so.6", StringMarshalling = StringMarshalling.Utf8)]
        public static partial nint dlopen(string file, int mode);

        [LibraryImport("libc.so.6")]
        public static partial nint dlerror();
    }
}
