namespace Ddpm.Tensors.Distributed.Mpi;

/// <summary>
/// <see cref="ICollective"/> over MPI_COMM_WORLD of MPICH. Device buffers are reduced through host memory: each
/// chunk of the range is downloaded into a pinned array, all-reduced in place and uploaded again. One instance
/// per process: it initialises MPI and finalises it when disposed (MPI cannot be initialised twice).
/// <see cref="StartAllReduce"/> downloads its range into a pinned array of its own (kept for the next reduction
/// of the same length, so a training step's buckets reuse theirs) and posts MPI_Iallreduce on it; MPICH advances
/// the reduction inside MPI calls, so every start and every <see cref="IPendingReduce.Test"/> also tests the
/// reductions still outstanding.
/// </summary>
public sealed unsafe class MpiCollective : ICollective
{
    // Host staging size: large enough that a small model's gradient goes in one call, bounded for huge ones.
    private const int MaxChunk = 1 << 24;

    private readonly bool _ownsInit;
    private float[] _host = [];
    private readonly Dictionary<int, Stack<float[]>> _freeHost = [];
    private readonly List<Pending> _outstanding = [];
    private bool _disposed;

    private MpiCollective(bool ownsInit, int rank, int size, string library)
    {
        _ownsInit = ownsInit;
        Rank = rank;
        Size = size;
        Library = library;
    }

    public string Name => "mpi";
    public int Rank { get; }
    public int Size { get; }

    /// <summary>MPI_Get_library_version's first line.</summary>
    public string Library { get; }

    /// <summary>
    /// Initialises MPI (unless something already did) and joins MPI_COMM_WORLD. When <paramref name="launch"/>
    /// says the job has N ranks but MPI sees a different number, the launcher and the library do not belong
    /// together (an Open MPI launcher with MPICH's library, or a Slurm step without <c>--mpi=pmi2</c>): that
    /// is an error saying so, since the ranks would otherwise each train alone.
    /// </summary>
    public static MpiCollective Initialize(LaunchEnvironment? launch)
    {
        bool owns;
        int rank, size;
        string library;
        try
        {
            MpiNative.Check(MpiNative.MPI_Initialized(out int initialised), "MPI_Initialized");
            owns = initialised == 0;
            if (owns)
                MpiNative.Check(MpiNative.MPI_Init_thread(null, null, MpiNative.ThreadSerialized, out _), "MPI_Init_thread");
            MpiNative.Check(MpiNative.MPI_Comm_rank(MpiNative.CommWorld, out rank), "MPI_Comm_rank");
            MpiNative.Check(MpiNative.MPI_Comm_size(MpiNative.CommWorld, out size), "MPI_Comm_size");
            var text = stackalloc byte[8192];
            library = MpiNative.MPI_Get_library_version(text, out int len) == MpiNative.Success
                ? System.Text.Encoding.ASCII.GetString(text, Math.Clamp(len, 0, 8192)).Split('\n')[0].Replace('\t', ' ').Trim()
                : "MPICH";
        }
        catch (DllNotFoundException e)
        {
            throw new DllNotFoundException(
                $"The MPI library {MpiNative.Lib} (MPICH) was not found: install it (Debian: apt-get install mpich). {e.Message}", e);
        }
        if (launch is not null && launch.Size != size)
        {
            var message = $"The launcher ({launch.Launcher}) started {launch.Size} ranks but MPI ({MpiNative.Lib}) sees {size}: "
                + "the launcher and the MPI library do not match (use MPICH's mpiexec, or srun --mpi=pmi2 under Slurm).";
            if (owns) MpiNative.MPI_Finalize();
            throw new InvalidOperationException(message);
        }
        return new MpiCollective(owns, rank, size, library);
    }

    public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        Collective.CheckRange(buffer, offset, count);
        ThrowIfDisposed();
        if (count == 0) return;
        int chunk = Math.Min(count, MaxChunk);
        if (_host.Length < chunk) _host = GC.AllocateUninitializedArray<float>(chunk, pinned: true);
        var be = buffer.Backend;
        for (int done = 0; done < count; done += chunk)
        {
            int n = Math.Min(chunk, count - done);
            var span = _host.AsSpan(0, n);
            be.Download(buffer, offset + done, span);
            AllReduce(span, op);
            be.Upload(span, buffer, offset + done);
        }
    }

    public IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
    {
        Collective.CheckRange(buffer, offset, count);
        ThrowIfDisposed();
        if (count == 0) return PendingReduce.Completed;
        var host = _freeHost.TryGetValue(count, out var free) && free.Count > 0
            ? free.Pop()
            : GC.AllocateUninitializedArray<float>(count, pinned: true);
        buffer.Backend.Download(buffer, offset, host);
        var pending = new Pending(this, buffer, offset, host, op);
        // The array is pinned (allocated on the pinned heap): MPI may keep its address until the request completes.
        fixed (float* p = host)
        fixed (int* request = &pending.Request)
            MpiNative.Check(MpiNative.MPI_Iallreduce(MpiNative.InPlace, p, count, MpiNative.Float, MpiNative.OpSum, MpiNative.CommWorld, request), "MPI_Iallreduce");
        Progress();
        _outstanding.Add(pending);
        return pending;
    }

    /// <summary>Tests every outstanding reduction once: MPICH advances non-blocking collectives only inside MPI calls.</summary>
    private void Progress()
    {
        foreach (var p in _outstanding) p.TestRequest();
    }

    private static void Divide(Span<float> data, int size)
    {
        // Division, not multiplication by 1/N, so the average is correctly rounded for every N.
        float n = size;
        for (int i = 0; i < data.Length; i++) data[i] /= n;
    }

    public void AllReduce(Span<float> data, ReduceOp op)
    {
        ThrowIfDisposed();
        if (data.IsEmpty) return;
        fixed (float* p = data)
            MpiNative.Check(MpiNative.MPI_Allreduce(MpiNative.InPlace, p, data.Length, MpiNative.Float, MpiNative.OpSum, MpiNative.CommWorld), "MPI_Allreduce");
        if (op == ReduceOp.Average && Size > 1) Divide(data, Size);
    }

    public void AllReduce(Span<double> data, ReduceOp op)
    {
        ThrowIfDisposed();
        if (data.IsEmpty) return;
        fixed (double* p = data)
            MpiNative.Check(MpiNative.MPI_Allreduce(MpiNative.InPlace, p, data.Length, MpiNative.Double, MpiNative.OpSum, MpiNative.CommWorld), "MPI_Allreduce");
        if (op == ReduceOp.Average && Size > 1)
            for (int i = 0; i < data.Length; i++) data[i] /= Size;
    }

    public void Broadcast(Span<byte> data, int root)
    {
        Collective.CheckRoot(root, Size);
        ThrowIfDisposed();
        fixed (byte* p = data)
            MpiNative.Check(MpiNative.MPI_Bcast(p, data.Length, MpiNative.Byte, root, MpiNative.CommWorld), "MPI_Bcast");
    }

    public void Broadcast(Span<float> data, int root)
    {
        Collective.CheckRoot(root, Size);
        ThrowIfDisposed();
        fixed (float* p = data)
            MpiNative.Check(MpiNative.MPI_Bcast(p, data.Length, MpiNative.Float, root, MpiNative.CommWorld), "MPI_Bcast");
    }

    public void Barrier()
    {
        ThrowIfDisposed();
        MpiNative.Check(MpiNative.MPI_Barrier(MpiNative.CommWorld), "MPI_Barrier");
    }

    public void Abort(int exitCode)
    {
        MpiNative.MPI_Abort(MpiNative.CommWorld, exitCode);
        Environment.Exit(exitCode);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_ownsInit && MpiNative.MPI_Finalized(out int done) == MpiNative.Success && done == 0)
            MpiNative.MPI_Finalize();
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>One MPI_Iallreduce in flight on a pinned copy of a device range.</summary>
    private sealed class Pending(MpiCollective owner, DeviceBuffer buffer, int offset, float[] host, ReduceOp op) : IPendingReduce
    {
        public int Request = MpiNative.RequestNull;
        private bool _done;

        public bool Test()
        {
            if (_done) return true;
            owner.ThrowIfDisposed();
            owner.Progress();
            return Request == MpiNative.RequestNull;
        }

        /// <summary>MPI_Test on this request (MPI sets it to MPI_REQUEST_NULL once complete).</summary>
        public void TestRequest()
        {
            if (Request == MpiNative.RequestNull) return;
            fixed (int* r = &Request)
                MpiNative.Check(MpiNative.MPI_Test(r, out _, MpiNative.StatusIgnore), "MPI_Test");
        }

        public void Wait()
        {
            if (_done) return;
            owner.ThrowIfDisposed();
            if (Request != MpiNative.RequestNull)
                fixed (int* r = &Request)
                    MpiNative.Check(MpiNative.MPI_Wait(r, MpiNative.StatusIgnore), "MPI_Wait");
            _done = true;
            owner._outstanding.Remove(this);
            if (op == ReduceOp.Average && owner.Size > 1) Divide(host, owner.Size);
            buffer.Backend.Upload(host, buffer, offset);
            if (!owner._freeHost.TryGetValue(host.Length, out var free)) owner._freeHost[host.Length] = free = new Stack<float[]>();
            free.Push(host);
        }
    }
}
