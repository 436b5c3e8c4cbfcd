using System.Runtime.InteropServices;

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

        public static Snapshot operator -(Snapshot a, Snapshot b) => new(
            a.Launches - b.Launches, a.HostSyncs - b.HostSyncs, a.BytesHtoD - b.BytesHtoD, a.BytesDtoH - b.BytesDtoH,
            a.BytesDtoD - b.BytesDtoD, a.Memsets - b.Memsets, a.Gemms - b.Gemms, a.Allocations - b.Allocations,
            a.CheckedLaunches - b.CheckedLaunches, a.OrderChecks - b.OrderChecks, a.CheckedAccesses - b.CheckedAccesses);

        private Snapshot(ulong launches, ulong syncs, ulong htod, ulong dtoh, ulong dtod, ulong memsets, ulong gemms, ulong allocations,
            ulong checkedLaunches, ulong orderChecks, ulong checkedAccesses)
        {
            (Launches, HostSyncs, BytesHtoD, BytesDtoH, BytesDtoD, Memsets, Gemms, Allocations) =
                (launches, syncs, htod, dtoh, dtod, memsets, gemms, allocations);
            (CheckedLaunches, OrderChecks, CheckedAccesses) = (checkedLaunches, orderChecks, checkedAccesses);
        }

        public override string ToString() =>
            $"{Launches} kernel launches ({CheckedLaunches} instrumented, {OrderChecks} order-checked), {Gemms} cuBLAS GEMMs, " +
            $"{Memsets} memsets, {HostSyncs} host synchronisations, {BytesHtoD} B host-to-device, {BytesDtoH} B device-to-host, " +
            $"{BytesDtoD} B device-to-device";
    }

    private readonly delegate* unmanaged<Snapshot*, void> _get;

    private SimulatorCounters(delegate* unmanaged<Snapshot*, void> get) => _get = get;

    /// <summary>The counters of the loaded driver, or null when it is not the simulator.</summary>
    public static SimulatorCounters? Open()
    {
        nint get = SimulatorExports.Find("ddpmsim_get_counters");
        return get == 0 ? null : new SimulatorCounters((delegate* unmanaged<Snapshot*, void>)get);
    }

    public Snapshot Read()
    {
        Snapshot s;
        _get(&s);
        return s;
    }
}
