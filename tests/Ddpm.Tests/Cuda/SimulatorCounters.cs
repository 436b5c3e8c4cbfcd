using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The simulated CUDA device's counters (tests/CudaSim: ddpmsim_get_counters in its libcuda.so.1): kernel
/// launches, host synchronisations, bytes copied each way. Null on a real driver, which has no such export.
/// </summary>
internal sealed unsafe class SimulatorCounters
{
    [StructLayout(LayoutKind.Sequential)]
    internal readonly struct Snapshot
    {
        public readonly ulong Launches, HostSyncs, BytesHtoD, BytesDtoH, BytesDtoD, Memsets, Gemms, Allocations;

        public static Snapshot operator -(Snapshot a, Snapshot b) => new(
            a.Launches - b.Launches, a.HostSyncs - b.HostSyncs, a.BytesHtoD - b.BytesHtoD, a.BytesDtoH - b.BytesDtoH,
            a.BytesDtoD - b.BytesDtoD, a.Memsets - b.Memsets, a.Gemms - b.Gemms, a.Allocations - b.Allocations);

        private Snapshot(ulong launches, ulong syncs, ulong htod, ulong dtoh, ulong dtod, ulong memsets, ulong gemms, ulong allocations)
        {
            (Launches, HostSyncs, BytesHtoD, BytesDtoH, BytesDtoD, Memsets, Gemms, Allocations) =
                (launches, syncs, htod, dtoh, dtod, memsets, gemms, allocations);
        }

        public override string ToString() =>
            $"{Launches} kernel launches, {Gemms} cuBLAS GEMMs, {Memsets} memsets, {HostSyncs} host synchronisations, " +
            $"{BytesHtoD} B host-to-device, {BytesDtoH} B device-to-host, {BytesDtoD} B device-to-device";
    }

    private readonly delegate* unmanaged<Snapshot*, void> _get;

    private SimulatorCounters(delegate* unmanaged<Snapshot*, void> get) => _get = get;

    /// <summary>The counters of the loaded driver, or null when it is not the simulator.</summary>
    public static SimulatorCounters? Open()
    {
        string? path = CudaLibraries.LoadedPath(CudaLibrary.Driver);
        if (path is null || !NativeLibrary.TryLoad(path, out nint lib)) return null;
        return NativeLibrary.TryGetExport(lib, "ddpmsim_get_counters", out nint get)
            ? new SimulatorCounters((delegate* unmanaged<Snapshot*, void>)get)
            : null;
    }

    public Snapshot Read()
    {
        Snapshot s;
        _get(&s);
        return s;
    }
}
