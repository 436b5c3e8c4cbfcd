namespace Ddpm.Tensors;

/// <summary>
/// What a device backend has asked of its device since it was created, counted by the backend as it makes the
/// calls (so the figures are the same on a GPU and on a simulated device): the structure of a step, which a
/// benchmark can report without timing anything.
/// </summary>
/// <param name="KernelLaunches">Kernels of the backend's own launched.</param>
/// <param name="BlasCalls">Calls into the BLAS library that queue work (cuBLAS GEMMs).</param>
/// <param name="DnnCalls">Calls into the DNN library that queue work (cuDNN convolutions and bias ops).</param>
/// <param name="HostSynchronizations">Times the host waited for the device.</param>
/// <param name="PeakDeviceBytes">Most device memory held by live buffers at once since <see cref="IDeviceCounters.ResetPeak"/> (or creation).</param>
public readonly record struct DeviceCounters(long KernelLaunches, long BlasCalls, long DnnCalls, long HostSynchronizations, long PeakDeviceBytes)
{
    /// <summary>Recorded steps replayed as one launch each (CUDA Graphs; see <see cref="IStepGraphs"/>).</summary>
    public long GraphLaunches { get; init; }

    /// <summary>Kernels among <see cref="KernelLaunches"/> that cast operands to a narrower type (the cuda backend's bf16).</summary>
    public long CastKernels { get; init; }

    /// <summary>Elements those kernels cast.</summary>
    public long CastElements { get; init; }

    /// <summary>The calls made between <paramref name="before"/> and <paramref name="after"/>; the peak is <paramref name="after"/>'s.</summary>
    public static DeviceCounters Between(DeviceCounters before, DeviceCounters after) => new(
        after.KernelLaunches - before.KernelLaunches, after.BlasCalls - before.BlasCalls, after.DnnCalls - before.DnnCalls,
        after.HostSynchronizations - before.HostSynchronizations, after.PeakDeviceBytes)
    {
        GraphLaunches = after.GraphLaunches - before.GraphLaunches, CastKernels = after.CastKernels - before.CastKernels,
        CastElements = after.CastElements - before.CastElements,
    };
}

/// <summary>A backend that counts its device work (<see cref="DeviceCounters"/>); found by a type test on any <see cref="IBackend"/>.</summary>
public interface IDeviceCounters
{
    DeviceCounters ReadCounters();

    /// <summary>Starts a new peak-memory mark at the memory held now.</summary>
    void ResetPeak();
}
