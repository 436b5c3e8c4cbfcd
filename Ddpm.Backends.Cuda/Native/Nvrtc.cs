using System.Runtime.InteropServices;

namespace Ddpm.Backends.Cuda.Native;

/// <summary>NVRTC (libnvrtc.so.13/.12/.11.2): runtime compilation of CUDA C++ to PTX or cubin.</summary>
internal static unsafe partial class Nvrtc
{
    private const string Lib = CudaLibraries.NvrtcName;

    internal const int Success = 0;
    internal const int ErrorCompilation = 6;

    [LibraryImport(Lib)] internal static partial int nvrtcVersion(out int major, out int minor);
    [LibraryImport(Lib)] internal static partial int nvrtcGetNumSupportedArchs(out int count);
    [LibraryImport(Lib)] internal static partial int nvrtcGetSupportedArchs(int* archs);
    [LibraryImport(Lib)]
    internal static partial int nvrtcCreateProgram(out nint program, byte* source, byte* name, int numHeaders,
        byte** headers, byte** includeNames);
    [LibraryImport(Lib)] internal static partial int nvrtcCompileProgram(nint program, int numOptions, byte** options);
    [LibraryImport(Lib)] internal static partial int nvrtcGetProgramLogSize(nint program, out nuint size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(Lib)] internal static partial int nvrtcGetCUBINSize(nint program, out nuint size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(Lib)] internal static partial int nvrtcGetPTXSize(nint program, out nuint size);
    [LibraryImport(Lib)] internal static partial int nvrtcGetPTX(nint program, byte* ptx);
    [LibraryImport(Lib)] internal static partial int nvrtcDestroyProgram(ref nint program);
    [LibraryImport(Lib)] internal static partial nint nvrtcGetErrorString(int result);

    internal static void Check(int result, string call)
    {
        if (result != Success) throw new CudaException($"{call} failed: {ErrorString(result)}");
    }

    internal static string ErrorString(int result)
    {
        nint s = nvrtcGetErrorString(result);
        return s == 0 ? $"nvrtcResult {result}" : Marshal.PtrToStringUTF8(s) ?? $"nvrtcResult {result}";
    }
}
