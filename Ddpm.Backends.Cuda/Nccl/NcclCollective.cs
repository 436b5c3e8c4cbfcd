using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;

namespace Ddpm.Backends.Cuda.Nccl;

/// <summary>
/// <see cref="ICollective"/> whose device all-reduce runs through NCCL, in place, in stream order with a
/// <see cref="CudaBackend"/>'s kernels (no host copy and no host wait). <see cref="AllReduce(DeviceBuffer, int, int, ReduceOp)"/>
/// runs on the backend's stream; <see cref="StartAllReduce"/> runs on a stream of its own, ordered by events
/// after the kernels queued so far and before the backend's work queued after its wait, so the reduction of
/// one gradient bucket runs beside the backward kernels of the next. Every other operation (host spans,
/// broadcast, barrier, abort) goes to the collective it wraps, normally MPI, which launched the job and carries
/// NCCL's unique id from rank 0 to the others. Disposing destroys the communicator, its stream and events, not
/// the wrapped collective (its owner disposes it).
/// <para>
/// CUDA loads library kernels (cuBLAS's, cuDNN's) lazily, at their first launch, and a load may wait for the device
/// to go idle, which it never does while an NCCL kernel spins for a rank that is itself held in such a load (the
/// CUDA guide's lazy-loading hazard). So the all-reduces started before the first <see cref="IPendingReduce.Wait"/>
/// are held back: at that wait the backend's stream is drained once (every kernel of the first backward pass, each
/// shape's first use, has loaded and run) and they start then, in order. Later passes reuse kernels already loaded
/// (the backend fetches its own at start), so their reductions overlap the backward pass.
/// </para>
/// </summary>
public sealed unsafe class NcclCollective : ICollective
{
    private readonly ICollective _host;
    private readonly CudaBackend _backend;
    private readonly bool _hasAvg;
    private readonly Stack<nint> _freeEvents = new();
    private readonly List<nint> _allEvents = [];
    private nint _comm;
    private nint _stream;

    // All-reduces started before the first wait, held back until the backend's stream has drained once; null after.
    private List<Pending>? _heldBack = [];

    private NcclCollective(ICollective host, CudaBackend backend, nint comm, nint stream, int versionCode)
    {
        _host = host;
        _backend = backend;
        _comm = comm;
        _stream = stream;
        _hasAvg = versionCode >= NcclNative.FirstWithAvg;
        var (major, minor, patch) = NcclNative.DecodeVersion(versionCode);
        Version = $"NCCL {major}.{minor}.{patch}";
    }

    public string Name => "nccl";
    public int Rank => _host.Rank;
    public int Size => _host.Size;

    /// <summary>"NCCL 2.21.5": the version of the library loaded.</summary>
    public string Version { get; }

    /// <summary>The library's version ("NCCL 2.21.5"), or null with the reason it cannot be loaded.</summary>
    public static string? Probe(out string reason)
    {
        try
        {
            int code = LoadAndGetVersion();
            var (major, minor, patch) = NcclNative.DecodeVersion(code);
            reason = "";
            return $"NCCL {major}.{minor}.{patch}";
        }
        catch (Exception e) when (e is CudaUnavailableException or NcclException or EntryPointNotFoundException)
        {
            reason = e.Message;
            return null;
        }
    }

    /// <summary>
    /// Joins every rank of <paramref name="host"/> in one NCCL communicator on <paramref name="backend"/>'s device.
    /// Collective: all ranks call it. Throws <see cref="CudaUnavailableException"/> without libnccl.so.2 and
    /// <see cref="NcclException"/> when NCCL refuses.
    /// </summary>
    public static NcclCollective Create(ICollective host, CudaBackend backend)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(backend);
        int version = LoadAndGetVersion();
        var id = default(NcclUniqueId);
        var bytes = new Span<byte>(id.Internal, NcclUniqueId.Bytes);
        // Rank 0 makes the id; if that fails the others must not wait in the broadcast for it, so every rank
        // learns the outcome first.
        int made = 0;
        if (host.Rank == 0) made = NcclNative.ncclGetUniqueId(&id);
        Span<float> outcome = [made];
        host.Broadcast(outcome, 0);
        if (outcome[0] != 0) NcclNative.Check((int)outcome[0], host.Rank == 0 ? "ncclGetUniqueId" : "ncclGetUniqueId on rank 0");
        host.Broadcast(bytes, 0);
        // NCCL's CUDA runtime works on the context current on this thread: the backend's.
        backend.MakeCurrent();
        NcclNative.Check(NcclNative.ncclCommInitRank(out nint comm, host.Size, id, host.Rank), "ncclCommInitRank");
        var r = Driver.cuStreamCreate(out nint stream, Driver.StreamNonBlocking);
        if (r != CUresult.Success)
        {
            NcclNative.ncclCommDestroy(comm);
            Driver.Check(r, "cuStreamCreate (the NCCL stream)");
        }
        return new NcclCollective(host, backend, comm, stream, version);
    }

    private static int LoadAndGetVersion()
    {
        CudaLibraries.Load(CudaLibrary.Nccl);
        NcclNative.Check(NcclNative.ncclGetVersion(out int code), "ncclGetVersion");
        return code;
    }

    /// <summary>
    /// Queues the all-reduce of [offset, offset + count) on the backend's stream, in place; later work on the
    /// backend runs after it. An average on NCCL older than 2.10 (no ncclAvg) is a sum scaled by 1/N with the
    /// backend's Affine (exact for a power-of-two number of ranks, one rounding otherwise).
    /// </summary>
    public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        Collective.CheckRange(buffer, offset, count);
        ThrowIfDisposed();
        if (count == 0) return;
        ulong p = _backend.EnterAndPointer(buffer, offset, count, "NCCL all-reduce buffer");
        var (ncclOp, scaleAfter) = OpFor(op);
        NcclNative.Check(NcclNative.ncclAllReduce(p, p, (nuint)count, NcclNative.Float32, ncclOp, _comm, _backend.Stream), "ncclAllReduce");
        if (scaleAfter) DivideBySize(buffer, offset, count);
    }

    /// <summary>
    /// Starts the all-reduce of [offset, offset + count) on the NCCL stream after the backend's work queued so
    /// far (an event), and returns at once: the backend's kernels queued meanwhile run beside it. The range must
    /// not be written by the backend until <see cref="IPendingReduce.Wait"/>, which orders the backend's later
    /// work after the reduction (an event; the host does not wait). Before the first wait the reduction is held
    /// back (see the class remarks).
    /// </summary>
    public IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        Collective.CheckRange(buffer, offset, count);
        ThrowIfDisposed();
        if (count == 0) return PendingReduce.Completed;
        ulong p = _backend.EnterAndPointer(buffer, offset, count, "NCCL all-reduce buffer");
        var (ncclOp, scaleAfter) = OpFor(op);
        var pending = new Pending(this, buffer, offset, count, scaleAfter, p, ncclOp);
        if (_heldBack is not null) _heldBack.Add(pending);
        else pending.Launch();
        return pending;
    }

    /// <summary>Drains the backend's stream once, then starts the all-reduces held back until now, in the order they were started.</summary>
    private void ReleaseHeldBack()
    {
        if (_heldBack is not { } held) return;
        _heldBack = null;
        _backend.Synchronize();
        foreach (var pending in held) pending.Launch();
    }

    /// <summary>NCCL's op for <paramref name="op"/>, and whether the sum must then be scaled by 1/N (an average on NCCL without ncclAvg).</summary>
    private (int NcclOp, bool ScaleAfter) OpFor(ReduceOp op) =>
        op == ReduceOp.Average && _hasAvg ? (NcclNative.OpAvg, false) : (NcclNative.OpSum, op == ReduceOp.Average && Size > 1);

    /// <summary>Scales [offset, offset + count) by 1/N on the backend's stream.</summary>
    private void DivideBySize(DeviceBuffer buffer, int offset, int count)
    {
        var range = _backend.Slice(buffer, offset, count);
        try { _backend.Affine(range, count, 1f / Size, 0f, range); }
        finally { range.Release(); }
    }

    private nint TakeEvent()
    {
        if (_freeEvents.TryPop(out nint ev)) return ev;
        Driver.Check(Driver.cuEventCreate(out ev, Driver.EventDisableTiming), "cuEventCreate");
        _allEvents.Add(ev);
        return ev;
    }

    /// <summary>A reduction on the NCCL stream; <see cref="Wait"/> orders the backend's stream after it.</summary>
    private sealed class Pending(NcclCollective owner, DeviceBuffer buffer, int offset, int count, bool scaleAfter, ulong pointer, int ncclOp)
        : IPendingReduce
    {
        private nint _done;
        private bool _joined;

        /// <summary>
        /// Queues the all-reduce on the NCCL stream after the backend's work queued so far (an event), and an event
        /// after it. A stream waits on an event's record as it is when the wait is queued, so that event is free again at once.
        /// </summary>
        internal void Launch()
        {
            nint ready = owner.TakeEvent();
            try
            {
                Driver.Check(Driver.cuEventRecord(ready, owner._backend.Stream), "cuEventRecord (gradients ready)");
                Driver.Check(Driver.cuStreamWaitEvent(owner._stream, ready, 0), "cuStreamWaitEvent (NCCL stream)");
            }
            finally { owner._freeEvents.Push(ready); }
            NcclNative.Check(NcclNative.ncclAllReduce(pointer, pointer, (nuint)count, NcclNative.Float32, ncclOp, owner._comm, owner._stream), "ncclAllReduce");
            nint done = owner.TakeEvent();
            try { Driver.Check(Driver.cuEventRecord(done, owner._stream), "cuEventRecord (all-reduce done)"); }
            catch { owner._freeEvents.Push(done); throw; }
            _done = done;
        }

        public bool Test()
        {
            if (_joined) return true;
            owner.ThrowIfDisposed();
            // Held back: not started, so not done.
            if (_done == 0) return false;
            owner._backend.MakeCurrent();
            var r = Driver.cuEventQuery(_done);
            if (r == CUresult.ErrorNotReady) return false;
            Driver.Check(r, "cuEventQuery (all-reduce done)");
            return true;
        }

        public void Wait()
        {
            if (_joined) return;
            owner.ThrowIfDisposed();
            owner._backend.MakeCurrent();
            if (_done == 0) owner.ReleaseHeldBack();
            Driver.Check(Driver.cuStreamWaitEvent(owner._backend.Stream, _done, 0), "cuStreamWaitEvent (backend stream)");
            _joined = true;
            owner._freeEvents.Push(_done);
            if (scaleAfter) owner.DivideBySize(buffer, offset, count);
        }
    }

    public void AllReduce(Span<float> data, ReduceOp op) => _host.AllReduce(data, op);
    public void AllReduce(Span<double> data, ReduceOp op) => _host.AllReduce(data, op);
    public void Broadcast(Span<byte> data, int root) => _host.Broadcast(data, root);
    public void Broadcast(Span<float> data, int root) => _host.Broadcast(data, root);
    public void Barrier() => _host.Barrier();

    public void Abort(int exitCode)
    {
        // Frees the other ranks from NCCL work they may be waiting in, then ends the job through the launcher.
        if (_comm != 0) NcclNative.ncclCommAbort(_comm);
        _comm = 0;
        _host.Abort(exitCode);
    }

    public void Dispose()
    {
        if (_comm == 0) return;
        // NCCL frees the communicator's device memory in the backend's context; after the backend's own
        // disposal the context is gone with everything in it.
        bool current;
        try { _backend.MakeCurrent(); current = true; }
        catch (ObjectDisposedException) { current = false; }
        NcclNative.ncclCommDestroy(_comm);
        _comm = 0;
        if (current)
        {
            Driver.cuStreamSynchronize(_stream);
            Driver.cuStreamDestroy_v2(_stream);
            foreach (nint ev in _allEvents) Driver.cuEventDestroy_v2(ev);
        }
        _stream = 0;
        _allEvents.Clear();
        _freeEvents.Clear();
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_comm == 0, this);
}
