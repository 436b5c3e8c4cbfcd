using System.Runtime.InteropServices;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>Recorded steps (CUDA Graphs): the stream-call hooks the ops go through, and <see cref="IStepGraphs"/>.</summary>
public sealed partial class CudaBackend : IStepGraphs
{
    private CudaStepGraph? _recording;
    private readonly List<CudaStepGraph> _stepGraphs = [];
    private long _graphLaunches;
    private bool? _graphsSupported;

    /// <summary>On unless <see cref="BackendOptions.StepGraphs"/> is off or the driver lacks stream capture.</summary>
    public bool StepGraphsEnabled => _options.StepGraphs && GraphsSupported;

    public IStepGraph CreateStepGraph(string name, int warmupRuns = 1)
    {
        Enter();
        ArgumentOutOfRangeException.ThrowIfNegative(warmupRuns);
        var g = new CudaStepGraph(this, name, warmupRuns, StepGraphsEnabled);
        _stepGraphs.Add(g);
        return g;
    }

    /// <summary>Whether the driver has stream capture (CUDA 10+; a driver without it lacks the entry point).</summary>
    private bool GraphsSupported
    {
        get
        {
            if (_graphsSupported is { } known) return known;
            try
            {
                _graphsSupported = Driver.cuStreamIsCapturing(_stream, out _) == CUresult.Success;
            }
            catch (EntryPointNotFoundException)
            {
                _graphsSupported = false;
            }
            return _graphsSupported.Value;
        }
    }

    internal CudaAllocator Allocator => _allocator!;

    internal void CountGraphLaunch() => _graphLaunches++;

    internal void BeginRecording(CudaStepGraph g)
    {
        _recording = g;
        _allocator!.Pool = g;
    }

    internal void EndRecording()
    {
        _recording = null;
        _allocator!.Pool = null;
    }

    internal void Forget(CudaStepGraph g) => _stepGraphs.Remove(g);

    /// <summary>Device bytes held by recorded steps (their pools and input buffers).</summary>
    internal long StepGraphBytes
    {
        get
        {
            long bytes = 0;
            foreach (var g in _stepGraphs) bytes += g.HeldBytes;
            return bytes;
        }
    }

    private void DisposeStepGraphs()
    {
        foreach (var g in _stepGraphs.ToArray()) g.Dispose();
    }

    /// <summary>Whether a recorded step is being replayed: its calls are checked against the recording and not made.</summary>
    private bool FeedingRecording => _recording is { Feeding: true };

    /// <summary>
    /// Every call that queues stream work goes through here first: while a step is recorded its signature (the
    /// call's name, handles, pointers, sizes and scalars) is kept; while a recorded step is replayed it is compared
    /// with the recorded one, and true says the call must not be made (the replay makes it).
    /// </summary>
    private bool Replaying(string what, ReadOnlySpan<ulong> words, ReadOnlySpan<byte> blob = default) =>
        _recording is { } g && g.Call(what, words, blob);

    /// <summary>A library call made of several calls (a cuDNN pass): its operands are checked once, here.</summary>
    private void CheckRecordedCall(string what, in ConvGeometry g, ReadOnlySpan<ulong> operands) =>
        Replaying(what, operands, MemoryMarshal.AsBytes(new ReadOnlySpan<ConvGeometry>(in g)));

    private void ThrowIfRecording(string what)
    {
        if (_recording is { } g)
            throw new InvalidOperationException($"The recorded step '{g.Name}' {what}: a step replayed from a CUDA graph must not wait for the " +
                "device (read results back after it).");
    }

    private void MemsetAsync(ulong dst, uint bits, nuint words)
    {
        Writes(dst, 4L * (long)words);
        if (Replaying("cuMemsetD32Async", [dst, bits, words])) return;
        Driver.Check(Driver.cuMemsetD32Async(dst, bits, words, _stream), "cuMemsetD32Async");
    }

    private void CopyAsync(ulong dst, ulong src, nuint bytes)
    {
        Writes(dst, (long)bytes);
        if (Replaying("cuMemcpyDtoDAsync", [dst, src, bytes])) return;
        Driver.Check(Driver.cuMemcpyDtoDAsync_v2(dst, src, bytes, _stream), "cuMemcpyDtoDAsync_v2");
    }

    /// <summary>The device address that holds <paramref name="bytes"/> when the recorded step runs.</summary>
    private ulong StageInput(ReadOnlySpan<byte> bytes) => _recording!.Stage(bytes);

    /// <summary>A step's scalars in device memory (written before each replay), for the kernels that read them there.</summary>
    private ulong StepScalars<T>(in T value) where T : unmanaged =>
        StageInput(MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    /// <summary>Queues the upload of a recording's inputs (outside the graph, before its launch).</summary>
    internal void UploadStepInputs(ReadOnlySpan<byte> bytes, ulong dst) => UploadBytes(bytes, dst);

    internal void LaunchGraph(nint exec)
    {
        Driver.Check(Driver.cuGraphLaunch(exec, _stream), "cuGraphLaunch");
        _graphLaunches++;
        if (_syncEachLaunch) SynchronizeAfter("cuGraphLaunch");
    }

    /// <summary>Waits for the stream before memory a recording held is freed.</summary>
    internal void WaitForStream() => SynchronizeStream();
}

/// <summary>philox_fill_at's arguments: seed and offset, then keep and scale.</summary>
[StructLayout(LayoutKind.Sequential)]
internal readonly record struct PhiloxScalars(ulong Seed, ulong Offset, float Keep, float Scale);

/// <summary>axpby_at's a and b; affine_at's scale and shift.</summary>
[StructLayout(LayoutKind.Sequential)]
internal readonly record struct FloatPair(float A, float B);
