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

    /// <summary>The simulated cuDNN's counters (ddpmsim_cudnn_get_counters in its libcudnn.so.9).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal readonly struct CudnnSnapshot
    {
        /// <summary>Calls that queued work (convolution passes, bias add and gradient).</summary>
        public readonly ulong Calls;

        /// <summary>Heuristic algorithm queries (cudnnGet*Algorithm_v7).</summary>
        public readonly ulong AlgorithmQueries;

        public static CudnnSnapshot operator -(CudnnSnapshot a, CudnnSnapshot b) => new(a.Calls - b.Calls, a.AlgorithmQueries - b.AlgorithmQueries);

        private CudnnSnapshot(ulong calls, ulong queries) => (Calls, AlgorithmQueries) = (calls, queries);
    }

    private readonly delegate* unmanaged<Snapshot*, void> _get;
    private readonly delegate* unmanaged<CudnnSnapshot*, void> _getCudnn;

    private SimulatorCounters(delegate* unmanaged<Snapshot*, void> get, delegate* unmanaged<CudnnSnapshot*, void> getCudnn)
    {
        _get = get;
        _getCudnn = getCudnn;
    }

    /// <summary>The counters of the loaded driver, or null when it is not the simulator.</summary>
    public static SimulatorCounters? Open()
    {
        string? path = CudaLibraries.LoadedPath(CudaLibrary.Driver);
        if (path is null || !NativeLibrary.TryLoad(path, out nint lib)) return null;
        if (!NativeLibrary.TryGetExport(lib, "ddpmsim_get_counters", out nint get)) return null;
        nint getCudnn = 0;
        string? cudnn = CudaLibraries.LoadedPath(CudaLibrary.Cudnn);
        if (cudnn is not null && NativeLibrary.TryLoad(cudnn, out nint cudnnLib)) NativeLibrary.TryGetExport(cudnnLib, "ddpmsim_cudnn_get_counters", out getCudnn);
        return new SimulatorCounters((delegate* unmanaged<Snapshot*, void>)get, (delegate* unmanaged<CudnnSnapshot*, void>)getCudnn);
    }

    /// <summary>The simulated cuDNN's counters, or zeros where cuDNN is not loaded (or is not the simulator's).</summary>
    public CudnnSnapshot ReadCudnn()
    {
        CudnnSnapshot s = default;
        if (_getCudnn != null) _getCudnn(&s);
        return s;
    }

    public Snapshot Read()
    {
        Snapshot s;
        _get(&s);
        return s;
    }
}
