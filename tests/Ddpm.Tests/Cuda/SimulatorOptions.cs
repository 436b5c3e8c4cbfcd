using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Tests.Cuda;

/// <summary>The simulated CUDA device's own exports (tests/CudaSim/sim_api.h), found in the loaded libcuda.so.1 (or libcudnn.so.9).</summary>
internal static class SimulatorExports
{
    /// <summary>The export <paramref name="name"/> of the loaded <paramref name="library"/>, or 0 when it is not loaded or not the simulator's.</summary>
    public static nint Find(string name, CudaLibrary library = CudaLibrary.Driver)
    {
        string? path = CudaLibraries.LoadedPath(library);
        if (path is null || !NativeLibrary.TryLoad(path, out nint lib)) return 0;
        return NativeLibrary.TryGetExport(lib, name, out nint fn) ? fn : 0;
    }
}

/// <summary>
/// The simulated device's options (ddpmsim_set_option / ddpmsim_get_option: "schedule" as DDPM_CUDA_SIM_SCHEDULE,
/// "check" as DDPM_CUDA_SIM_CHECK), for tests that run a planted bug with a check off and then on. Tests that
/// use it are in the <see cref="CudaTestEnvironment.Collection"/> collection, so no other CUDA test runs meanwhile.
/// Null on any other driver.
/// </summary>
internal sealed unsafe class SimulatorOptions
{
    private readonly delegate* unmanaged<byte*, byte*, int> _set;
    private readonly delegate* unmanaged<byte*, byte*> _get;
    private readonly delegate* unmanaged<void> _clearError;

    private SimulatorOptions(nint set, nint get, nint clearError)
    {
        _set = (delegate* unmanaged<byte*, byte*, int>)set;
        _get = (delegate* unmanaged<byte*, byte*>)get;
        _clearError = (delegate* unmanaged<void>)clearError;
    }

    public static SimulatorOptions? Open()
    {
        nint set = SimulatorExports.Find("ddpmsim_set_option"), get = SimulatorExports.Find("ddpmsim_get_option");
        nint clear = SimulatorExports.Find("ddpmsim_clear_error");
        return set == 0 || get == 0 || clear == 0 ? null : new SimulatorOptions(set, get, clear);
    }

    public string Get(string name)
    {
        var n = Marshal.StringToCoTaskMemUTF8(name);
        try
        {
            byte* v = _get((byte*)n);
            return v is null ? throw new ArgumentException($"The simulator has no option '{name}'.") : Marshal.PtrToStringUTF8((nint)v)!;
        }
        finally
        {
            Marshal.FreeCoTaskMem(n);
        }
    }

    public void Set(string name, string value)
    {
        var n = Marshal.StringToCoTaskMemUTF8(name);
        var v = Marshal.StringToCoTaskMemUTF8(value);
        try
        {
            int r = _set((byte*)n, (byte*)v);
            if (r != 0) throw new ArgumentException($"The simulator refused {name}={value} ({Driver.Describe((CUresult)r)}).");
        }
        finally
        {
            Marshal.FreeCoTaskMem(n);
            Marshal.FreeCoTaskMem(v);
        }
    }

    /// <summary>Sets <paramref name="name"/> until the result is disposed, then restores what it was.</summary>
    public IDisposable Override(string name, string value)
    {
        string before = Get(name);
        Set(name, value);
        return new Restore(this, name, before);
    }

    /// <summary>Forgets the sticky error a planted bug left (the simulator's stand-in for a context reset).</summary>
    public void ClearError() => _clearError();

    private sealed class Restore(SimulatorOptions owner, string name, string value) : IDisposable
    {
        public void Dispose() => owner.Set(name, value);
    }
}
