using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The simulated CUDA device's counters (tests/CudaSim: ddpmsim_get_counters in its libcuda.so.1): kernel
/// launches, host synchronisations, bytes copied each way, and what its checks ran. Null on a real driver, which
/// has no such export. The layout mirrors DdpmSimCounters in tests/CudaSim/sim_api.h.
/// </summary>
internal sealed unsafe class SimulatorCounters
{
    [StructLayout(LayoutKind.Sequential)]
    internal readonly struct Snapshot
    {
        public readonly ulong Launches, HostSyncs, BytesHtoD, BytesDtoH, BytesDtoD, Memsets, Gemms, Allocations;
        public readonly ulong CheckedLaunches, OrderChecks, CheckedAccesses;

        /// <summary>cuGraphLaunch calls, and the kernel nodes they ran (captured launches count in Launches once).</summary>
        public readonly ulong GraphLaunches, GraphKernels;

        public static Snapshot operator -(Snapshot a, Snapshot b) => new(
            a.Launches - b.Launches, a.HostSyncs - b.HostSyncs, a.BytesHtoD - b.BytesHtoD, a.BytesDtoH - b.BytesDtoH,
            a.BytesDtoD - b.BytesDtoD, a.Memsets - b.Memsets, a.Gemms - b.Gemms, a.Allocations - b.Allocations,
            a.CheckedLaunches - b.CheckedLaunches, a.OrderChecks - b.OrderChecks, a.CheckedAccesses - b.CheckedAccesses,
            a.GraphLaunches - b.GraphLaunches, a.GraphKernels - b.GraphKernels);

        private Snapshot(ulong launches, ulong syncs, ulong htod, ulong dtoh, ulong dtod, ulong memsets, ulong gemms, ulong allocations,
            ulong checkedLaunches, ulong orderChecks, ulong checkedAccesses, ulong graphLaunches, ulong graphKernels)
        {
            (Launches, HostSyncs, BytesHtoD, BytesDtoH, BytesDtoD, Memsets, Gemms, Allocations) =
                (launches, syncs, htod, dtoh, dtod, memsets, gemms, allocations);
            (CheckedLaunches, OrderChecks, CheckedAccesses) = (checkedLaunches, orderChecks, checkedAccesses);
            (GraphLaunches, GraphKernels) = (graphLaunches, graphKernels);
        }

        public override string ToString() =>
            $"{Launches} kernel launches ({CheckedLaunches} instrumented, {OrderChecks} order-checked), {Gemms} cuBLAS GEMMs, " +
            $"{Memsets} memsets, {HostSyncs} host synchronisations, {BytesHtoD} B host-to-device, {BytesDtoH} B device-to-host, " +
            $"{BytesDtoD} B device-to-device, {GraphLaunches} graph launches ({GraphKernels} kernel nodes)";
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
        nint get = SimulatorExports.Find("ddpmsim_get_counters");
        if (get == 0) return null;
        nint getCudnn = SimulatorExports.Find("ddpmsim_cudnn_get_counters", CudaLibrary.Cudnn);
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
