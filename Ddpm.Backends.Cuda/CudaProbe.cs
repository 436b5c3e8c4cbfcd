using System.Text;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda;

/// <summary>One CUDA device as the driver describes it.</summary>
public sealed record CudaDeviceInfo(int Ordinal, string Name, int ComputeCapability, long TotalMemoryBytes,
    int Multiprocessors, int DriverVersion);

/// <summary>What <see cref="CudaProbe.Run"/> found: the device and library versions, or why CUDA is unavailable.</summary>
public sealed record CudaProbeResult(bool Available, string Reason, CudaDeviceInfo? Device, int DeviceCount,
    string? DriverPath, string? CublasVersion, string? CublasPath, string? NvrtcVersion, string? NvrtcPath)
{
    /// <summary>cuDNN's version ("9.3.0") when it loads, else null; <see cref="CudnnNote"/> says what the convolutions use.</summary>
    public string? CudnnVersion { get; init; }

    public string? CudnnPath { get; init; }

    /// <summary>Why the convolutions do not run on cuDNN (not found, DDPM_CUDNN=0), or empty when they do.</summary>
    public string CudnnNote { get; init; } = "";

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine(Available ? "CUDA: available" : $"CUDA: unavailable: {Reason}");
        if (DriverPath is not null) sb.AppendLine($"  driver library: {DriverPath}");
        if (Device is not null)
        {
            sb.AppendLine($"  devices: {DeviceCount}; device {Device.Ordinal}: {Device.Name}, sm_{Device.ComputeCapability}, " +
                $"{Device.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, {Device.Multiprocessors} SMs");
            sb.AppendLine($"  driver: CUDA {CudaProbe.FormatVersion(Device.DriverVersion)}");
        }
        sb.AppendLine($"  cuBLAS: {CublasVersion ?? "not found"}{(CublasPath is null ? "" : $" ({CublasPath})")}");
        sb.AppendLine(CudnnVersion is not null && CudnnNote.Length == 0
            ? $"  cuDNN: {CudnnVersion} ({CudnnPath}); convolutions on cuDNN"
            : $"  cuDNN: {CudnnVersion ?? "not found"}{(CudnnPath is null ? "" : $" ({CudnnPath})")}; convolutions on im2col + cuBLAS ({CudnnNote})");
        sb.Append($"  NVRTC: {NvrtcVersion ?? "not found"}{(NvrtcPath is null ? "" : $" ({NvrtcPath})")}");
        return sb.ToString();
    }
}

/// <summary>Reports whether CUDA can be used here and with what, without creating a backend.</summary>
public static class CudaProbe
{
    /// <summary>The number of CUDA devices this process sees; 0 when CUDA cannot be used here.</summary>
    public static int VisibleDeviceCount()
    {
        try
        {
            OpenDevice(0);
            Driver.Check(Driver.cuDeviceGetCount(out int count), "cuDeviceGetCount");
            return count;
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException or DllNotFoundException)
        {
            return 0;
        }
    }

    /// <summary>Probes device <paramref name="ordinal"/> and the libraries; never throws for a missing piece.</summary>
    public static CudaProbeResult Run(int ordinal = 0)
    {
        CudaDeviceInfo? device = null;
        string reason = "";
        int count = 0;
        try
        {
            device = OpenDevice(ordinal);
            Driver.cuDeviceGetCount(out count);
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException)
        {
            reason = e.Message;
        }

        string? cublas = null, nvrtc = null;
        try
        {
            CudaLibraries.Load(CudaLibrary.Cublas);
            Cublas.Check(Cublas.cublasGetProperty(0, out int ma), "cublasGetProperty");
            Cublas.Check(Cublas.cublasGetProperty(1, out int mi), "cublasGetProperty");
            Cublas.Check(Cublas.cublasGetProperty(2, out int pa), "cublasGetProperty");
            cublas = $"{ma}.{mi}.{pa}";
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException or EntryPointNotFoundException)
        {
            if (reason.Length == 0) reason = e.Message;
        }
        try
        {
            var (ma, mi) = NvrtcCompiler.Version();
            nvrtc = $"{ma}.{mi}";
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException or EntryPointNotFoundException)
        {
            if (reason.Length == 0) reason = e.Message;
        }
        // cuDNN is optional: without it the convolutions run on im2col + cuBLAS, and CUDA is still available.
        string? cudnn = null, note = "";
        try
        {
            if (CudaBackend.ResolveEngine(ConvolutionEngine.Auto, Environment.GetEnvironmentVariable("DDPM_CUDNN")) == ConvolutionEngine.Im2col)
                note = "DDPM_CUDNN=0";
            CudaLibraries.Load(CudaLibrary.Cudnn);
            int v = (int)Cudnn.cudnnGetVersion();
            cudnn = $"{v / 10000}.{v / 100 % 100}.{v % 100}";
        }
        catch (Exception e) when (e is CudaUnavailableException or EntryPointNotFoundException)
        {
            if (note.Length == 0) note = e.Message;
        }
        return new CudaProbeResult(reason.Length == 0, reason, device, count,
            CudaLibraries.LoadedPath(CudaLibrary.Driver), cublas, CudaLibraries.LoadedPath(CudaLibrary.Cublas),
            nvrtc, CudaLibraries.LoadedPath(CudaLibrary.Nvrtc))
        {
            CudnnVersion = cudnn,
            CudnnPath = CudaLibraries.LoadedPath(CudaLibrary.Cudnn),
            CudnnNote = note,
        };
    }

    /// <summary>"12.8" from cuDriverGetVersion's 12080.</summary>
    public static string FormatVersion(int v) => $"{v / 1000}.{v % 1000 / 10}";

    /// <summary>
    /// Why a cuInit result means that CUDA cannot be used on this machine, or null when it is success or a fault
    /// worth reporting as an error. <paramref name="deviceNodesExist"/>: whether /dev/nvidia* exists, which tells a
    /// machine without a GPU from a driver fault when cuInit says only CUDA_ERROR_UNKNOWN.
    /// </summary>
    internal static string? UnavailableReason(CUresult r, bool deviceNodesExist) => r switch
    {
        CUresult.ErrorStubLibrary => "the libcuda found is the toolkit's stub library, not a driver",
        CUresult.ErrorDeviceUnavailable => "the CUDA device is busy or unavailable (exclusive mode, or in use)",
        CUresult.ErrorNoDevice => "no CUDA device is visible",
        CUresult.ErrorOperatingSystem => "an operating-system call of the driver failed (no GPU passed into this container?)",
        CUresult.ErrorSystemDriverMismatch => "the CUDA driver library does not match the kernel driver's version",
        CUresult.ErrorCompatNotSupportedOnDevice => "the forward-compatibility driver does not support this device",
        CUresult.ErrorUnknown when !deviceNodesExist => "the driver failed and there is no /dev/nvidia* device here",
        _ => null,
    };

    /// <summary>Loads the driver, initialises it and describes device <paramref name="ordinal"/>.</summary>
    internal static unsafe CudaDeviceInfo OpenDevice(int ordinal)
    {
        CudaLibraries.Load(CudaLibrary.Driver);
        var r = Driver.cuInit(0);
        string? unavailable = UnavailableReason(r, Directory.Exists("/dev") && Directory.EnumerateFiles("/dev", "nvidia*").Any());
        if (unavailable is not null)
            throw new CudaUnavailableException($"cuInit: {unavailable} ({Driver.Describe(r)}); the driver is {CudaLibraries.LoadedPath(CudaLibrary.Driver)}.");
        Driver.Check(r, "cuInit");
        Driver.Check(Driver.cuDriverGetVersion(out int driverVersion), "cuDriverGetVersion");
        Driver.Check(Driver.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (count == 0) throw new CudaUnavailableException("cuDeviceGetCount: no CUDA device is visible.");
        if (ordinal < 0 || ordinal >= count)
            throw new CudaUnavailableException($"CUDA device {ordinal} was asked for; {count} device(s) are visible (0..{count - 1}).");
        Driver.Check(Driver.cuDeviceGet(out int device, ordinal), "cuDeviceGet");
        byte* name = stackalloc byte[256];
        Driver.Check(Driver.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        Driver.Check(Driver.cuDeviceTotalMem_v2(out nuint total, device), "cuDeviceTotalMem_v2");
        Driver.Check(Driver.cuDeviceGetAttribute(out int major, CUdeviceAttribute.ComputeCapabilityMajor, device), "cuDeviceGetAttribute");
        Driver.Check(Driver.cuDeviceGetAttribute(out int minor, CUdeviceAttribute.ComputeCapabilityMinor, device), "cuDeviceGetAttribute");
        Driver.Check(Driver.cuDeviceGetAttribute(out int sms, CUdeviceAttribute.MultiprocessorCount, device), "cuDeviceGetAttribute");
        string deviceName = System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)name) ?? $"device {ordinal}";
        return new CudaDeviceInfo(ordinal, deviceName, major * 10 + minor, (long)total, sms, driverVersion);
    }
}
