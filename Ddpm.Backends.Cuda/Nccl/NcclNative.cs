using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda.Nccl;

/// <summary>ncclUniqueId: NCCL_UNIQUE_ID_BYTES (128) opaque bytes, passed by value.</summary>
[StructLayout(LayoutKind.Sequential, Size = Bytes)]
internal unsafe struct NcclUniqueId
{
    public const int Bytes = 128;

    public fixed byte Internal[Bytes];
}

/// <summary>
/// The few NCCL calls data-parallel training uses (libnccl.so.2, nccl.h). ncclComm_t is a pointer; enum values
/// and ncclResult_t codes are copied from nccl.h. The library is found by <see cref="CudaLibraries"/> like cuBLAS.
/// </summary>
internal static unsafe partial class NcclNative
{
    private const string Lib = CudaLibraries.NcclName;

    internal const int Float32 = 7;   // ncclFloat32
    internal const int OpSum = 0;     // ncclSum
    internal const int OpAvg = 4;     // ncclAvg, NCCL 2.10 and newer

    /// <summary>NCCL_VERSION(2, 10, 0): the first release with ncclAvg.</summary>
    internal const int FirstWithAvg = 21000;

    [LibraryImport(Lib)] internal static partial int ncclGetVersion(out int version);
    [LibraryImport(Lib)] internal static partial int ncclGetUniqueId(NcclUniqueId* uniqueId);
    [LibraryImport(Lib)] internal static partial int ncclCommInitRank(out nint comm, int nranks, NcclUniqueId commId, int rank);
    [LibraryImport(Lib)] internal static partial int ncclAllReduce(ulong sendbuff, ulong recvbuff, nuint count, int datatype, int op, nint comm, nint stream);
    [LibraryImport(Lib)] internal static partial int ncclCommDestroy(nint comm);
    [LibraryImport(Lib)] internal static partial int ncclCommAbort(nint comm);
    [LibraryImport(Lib)] internal static partial nint ncclGetErrorString(int result);

    /// <summary>Throws <see cref="NcclException"/> naming <paramref name="call"/> for a result other than ncclSuccess.</summary>
    internal static void Check(int result, string call)
    {
        if (result != 0) throw new NcclException(call, result, Describe(result));
    }

    /// <summary>The ncclResult_t name, NCCL's own text, and its detail of the failure where the library has one.</summary>
    internal static string Describe(int result)
    {
        string name = result switch
        {
            1 => "ncclUnhandledCudaError",
            2 => "ncclSystemError",
            3 => "ncclInternalError",
            4 => "ncclInvalidArgument",
            5 => "ncclInvalidUsage",
            6 => "ncclRemoteError",
            7 => "ncclInProgress",
            _ => $"ncclResult_t {result}",
        };
        string text = Marshal.PtrToStringUTF8(ncclGetErrorString(result)) ?? "";
        string detail = LastError();
        return $"{name} ({text}){(detail.Length > 0 ? ": " + detail : "")}";
    }

    /// <summary>
    /// Versions are encoded as NCCL_VERSION(X, Y, Z) of nccl.h: X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z
    /// from 2.9.
    /// </summary>
    internal static (int Major, int Minor, int Patch) DecodeVersion(int code) =>
        code >= 10000 ? (code / 10000, code % 10000 / 100, code % 100) : (code / 1000, code % 1000 / 100, code % 100);

    // ncclGetLastError (NCCL 2.13 and newer) holds the detail of the last failure; older libraries lack it.
    private static string LastError()
    {
        var lib = CudaLibraries.LoadedHandle(CudaLibrary.Nccl);
        if (lib == 0 || !NativeLibrary.TryGetExport(lib, "ncclGetLastError", out nint f)) return "";
        var fn = (delegate* unmanaged<nint, nint>)f;
        return (Marshal.PtrToStringUTF8(fn(0)) ?? "").Trim();
    }
}

/// <summary>An NCCL call failed; the message names the call and the ncclResult_t.</summary>
public sealed class NcclException : Exception
{
    internal NcclException(string call, int result, string description) : base($"{call} failed: {description}")
    {
        Call = call;
        Result = result;
    }

    /// <summary>The NCCL function that failed.</summary>
    public string Call { get; }

    /// <summary>The ncclResult_t value.</summary>
    public int Result { get; }
}
