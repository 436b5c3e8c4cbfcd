using System.Runtime.InteropServices;

namespace Ddpm.Backends.Cuda.Native;

/// <summary>CUresult values the backend reacts to; any other value is still reported by its CUDA name.</summary>
internal enum CUresult
{
    Success = 0,
    ErrorInvalidValue = 1,
    ErrorOutOfMemory = 2,
    ErrorNotInitialized = 3,
    ErrorDeinitialized = 4,
    ErrorStubLibrary = 34,
    ErrorDeviceUnavailable = 46,
    ErrorNoDevice = 100,
    ErrorInvalidDevice = 101,
    ErrorInvalidImage = 200,
    ErrorInvalidContext = 201,
    ErrorNoBinaryForGpu = 209,
    ErrorInvalidPtx = 218,
    ErrorUnsupportedPtxVersion = 222,
    ErrorOperatingSystem = 304,
    ErrorNotFound = 500,
    ErrorNotReady = 600,
    ErrorIllegalAddress = 700,
    ErrorLaunchOutOfResources = 701,
    ErrorLaunchFailed = 719,
    ErrorSystemDriverMismatch = 803,
    ErrorCompatNotSupportedOnDevice = 804,
    ErrorUnknown = 999,
}

/// <summary>CUdevice_attribute values used by the probe.</summary>
internal enum CUdeviceAttribute
{
    MultiprocessorCount = 16,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
}

/// <summary>
/// The CUDA driver API (libcuda.so.1), explicit <c>_v2</c> entry points where the header maps a name to
/// one. Handles are nint, device pointers (CUdeviceptr) are ulong, sizes are nuint (size_t). Call through
/// <see cref="Check"/> so a failure names the call.
/// </summary>
internal static unsafe partial class Driver
{
    private const string Lib = CudaLibraries.DriverName;

    [LibraryImport(Lib)] internal static partial CUresult cuInit(uint flags);
    [LibraryImport(Lib)] internal static partial CUresult cuDriverGetVersion(out int version);
    [LibraryImport(Lib)] internal static partial CUresult cuDeviceGetCount(out int count);
    [LibraryImport(Lib)] internal static partial CUresult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Lib)] internal static partial CUresult cuDeviceGetName(byte* name, int len, int device);
    [LibraryImport(Lib)] internal static partial CUresult cuDeviceTotalMem_v2(out nuint bytes, int device);
    [LibraryImport(Lib)] internal static partial CUresult cuDeviceGetAttribute(out int value, CUdeviceAttribute attribute, int device);
    [LibraryImport(Lib)] internal static partial CUresult cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(Lib)] internal static partial CUresult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Lib)] internal static partial CUresult cuCtxSetCurrent(nint context);

    [LibraryImport(Lib)] internal static partial CUresult cuMemAlloc_v2(out ulong dptr, nuint bytes);
    [LibraryImport(Lib)] internal static partial CUresult cuMemFree_v2(ulong dptr);
    [LibraryImport(Lib)] internal static partial CUresult cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Lib)] internal static partial CUresult cuMemHostAlloc(out nint pointer, nuint bytes, uint flags);
    [LibraryImport(Lib)] internal static partial CUresult cuMemFreeHost(nint pointer);
    [LibraryImport(Lib)] internal static partial CUresult cuMemcpyHtoDAsync_v2(ulong dst, void* src, nuint bytes, nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuMemcpyDtoHAsync_v2(void* dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuMemcpyDtoDAsync_v2(ulong dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuMemsetD32Async(ulong dst, uint value, nuint count, nint stream);

    [LibraryImport(Lib)] internal static partial CUresult cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(Lib)] internal static partial CUresult cuStreamDestroy_v2(nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuStreamSynchronize(nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuStreamWaitEvent(nint stream, nint ev, uint flags);

    [LibraryImport(Lib)] internal static partial CUresult cuStreamBeginCapture_v2(nint stream, int mode);
    [LibraryImport(Lib)] internal static partial CUresult cuStreamEndCapture(nint stream, out nint graph);
    [LibraryImport(Lib)] internal static partial CUresult cuStreamIsCapturing(nint stream, out int status);
    [LibraryImport(Lib)] internal static partial CUresult cuGraphInstantiateWithFlags(out nint exec, nint graph, ulong flags);
    [LibraryImport(Lib)] internal static partial CUresult cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuGraphExecDestroy(nint exec);
    [LibraryImport(Lib)] internal static partial CUresult cuGraphDestroy(nint graph);

    [LibraryImport(Lib)] internal static partial CUresult cuEventCreate(out nint ev, uint flags);
    [LibraryImport(Lib)] internal static partial CUresult cuEventRecord(nint ev, nint stream);
    [LibraryImport(Lib)] internal static partial CUresult cuEventQuery(nint ev);
    [LibraryImport(Lib)] internal static partial CUresult cuEventSynchronize(nint ev);
    [LibraryImport(Lib)] internal static partial CUresult cuEventElapsedTime(out float milliseconds, nint start, nint end);
    [LibraryImport(Lib)] internal static partial CUresult cuEventDestroy_v2(nint ev);

    [LibraryImport(Lib)] internal static partial CUresult cuModuleLoadData(out nint module, void* image);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial CUresult cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(Lib)] internal static partial CUresult cuModuleUnload(nint module);
    [LibraryImport(Lib)]
    internal static partial CUresult cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ, uint sharedMemBytes, nint stream, void** kernelParams, void** extra);

    [LibraryImport(Lib)] internal static partial CUresult cuGetErrorName(CUresult error, out nint name);
    [LibraryImport(Lib)] internal static partial CUresult cuGetErrorString(CUresult error, out nint text);

    /// <summary>CU_EVENT_DISABLE_TIMING: events used only for ordering are cheaper without timestamps.</summary>
    internal const uint EventDisableTiming = 0x2;

    /// <summary>CU_STREAM_CAPTURE_MODE_GLOBAL: no potentially unsafe call (cuMemFree, a synchronisation) on any thread while capturing.</summary>
    internal const int CaptureModeGlobal = 0;

    /// <summary>CU_STREAM_NON_BLOCKING: no implicit ordering with the legacy default stream.</summary>
    internal const uint StreamNonBlocking = 0x1;

    internal static void Check(CUresult r, string call)
    {
        if (r != CUresult.Success) throw new CudaException(call, r);
    }

    /// <summary>"CUDA_ERROR_X (text)" from the driver when it is loaded, else the managed name.</summary>
    internal static string Describe(CUresult r)
    {
        string name = $"CUDA_ERROR_{ToUpperSnake(r)}", text = "";
        try
        {
            if (CudaLibraries.LoadedPath(CudaLibrary.Driver) is not null)
            {
                if (cuGetErrorName(r, out nint n) == CUresult.Success && n != 0) name = Marshal.PtrToStringUTF8(n) ?? name;
                if (cuGetErrorString(r, out nint s) == CUresult.Success && s != 0) text = Marshal.PtrToStringUTF8(s) ?? "";
            }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // The managed name is still informative when the driver cannot describe its own error.
        }
        return text.Length > 0 ? $"{name} ({text})" : name;
    }

    private static string ToUpperSnake(CUresult r)
    {
        string s = r.ToString();
        if (int.TryParse(s, out _)) return $"UNKNOWN_{s}";
        if (s.StartsWith("Error", StringComparison.Ordinal)) s = s[5..];
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < s.Length; i++)
        {
            if (i > 0 && char.IsUpper(s[i])) sb.Append('_');
            sb.Append(char.ToUpperInvariant(s[i]));
        }
        return sb.ToString();
    }
}
