namespace Ddpm.Tensors.Distributed.Mpi;

/// <summary>
/// <see cref="ICollective"/> over MPI_COMM_WORLD of MPICH or Open MPI (the library that belongs to the launcher:
/// libmpi.so.40 under Open MPI's mpirun, libmpich.so.12 otherwise). Device buffers are reduced through host memory: each
/// chunk of the range is downloaded into a pinned array, all-reduced in place and uploaded again. One instance
/// per process: it initialises MPI and finalises it when disposed (MPI cannot be initialised twice).
/// <see cref="StartAllReduce"/> downloads its range into a pinned array of its own (kept for the next reduction
/// of the same length, so a training step's buckets reuse theirs) and posts MPI_Iallreduce on it; MPI advances
/// the reduction inside MPI calls, so every start and every <see cref="IPendingReduce.Test"/> also tests the
/// reductions still outstanding.
/// </summary>
public sealed unsafe class MpiCollective : ICollective
{
    // Host staging size: large enough that a small model's gradient goes in one call, bounded for huge ones.
    private const int MaxChunk = 1 << 24;

    private readonly MpiAbi _abi;
    private readonly bool _ownsInit;
    private float[] _host = [];
    private readonly Dictionary<int, Stack<float[]>> _freeHost = [];
    private readonly List<Pending> _outstanding = [];
    private bool _disposed;

    private MpiCollective(MpiAbi abi, bool ownsInit, int rank, int size, string library)
    {
        _abi = abi;
        _ownsInit = ownsInit;
        Rank = rank;
        Size = size;
        Library = library;
    }

    public string Name => "mpi";
    public int Rank { get; }
    public int Size { get; }

    /// <summary>The library's name and version, from MPI_Get_library_version: "MPICH Version: 4.0.2", "Open MPI v4.1.4".</summary>
    public string Library { get; }

    /// <summary>
    /// Initialises MPI (unless something already did) and joins MPI_COMM_WORLD, through Open MPI's library when
    /// <paramref name="launch"/> names Open MPI's launcher and MPICH's otherwise. When <paramref name="launch"/>
    /// says the job has N ranks but MPI sees a different number, the launcher and the library do not belong
    /// together (a Slurm step without <c>--mpi=pmi2</c>, a launcher of a third MPI): that is an error saying so,
    /// since the ranks would otherwise each train alone.
    /// </summary>
    public static MpiCollective Initialize(LaunchEnvironment? launch)
    {
        bool openMpi = launch?.Launcher == LaunchEnvironment.OpenMpi;
        MpiAbi abi;
        bool owns;
        int rank, size;
        string library;
        try
        {
            abi = openMpi ? OpenMpiAbi.Load() : MpichAbi.Instance;
            abi.Check(abi.Initialized(out int initialised), "MPI_Initialized");
            owns = initialised == 0;
            if (owns) abi.Check(abi.InitThread(MpiAbi.ThreadSerialized, out _), "MPI_Init_thread");
            abi.Check(abi.CommRank(out rank), "MPI_Comm_rank");
            abi.Check(abi.CommSize(out size), "MPI_Comm_size");
            var text = stackalloc byte[8192];
            library = abi.LibraryVersion(text, out int len) == MpiAbi.Success
                // Open MPI counts the terminating NUL in the length (MPICH does not) and follows its version with
                // ", package: ..." on the same line: "Open MPI v4.1.4", "MPICH Version: 4.0.2".
                ? System.Text.Encoding.ASCII.GetString(text, Math.Clamp(len, 0, 8192)).Split('\0')[0].Split('\n')[0].Split(',')[0].Replace('\t', ' ').Trim()
                : abi.Family;
        }
        catch (DllNotFoundException e)
        {
            string lib = openMpi ? OpenMpiAbi.Lib : MpichAbi.Lib;
            string family = openMpi ? "Open MPI" : "MPICH";
            string hint = openMpi ? "Debian: apt-get install openmpi-bin" : "Debian: apt-get install mpich";
            throw new DllNotFoundException($"The MPI library {lib} ({family}) was not found: install it ({hint}). {e.Message}", e);
        }
        if (launch is not null && launch.Size != size)
        {
            var message = $"The launcher ({launch.Launcher}) started {launch.Size} ranks but MPI ({abi.Library}) sees {size}: "
                + "the launcher and the MPI library do not match (use MPICH's mpiexec or Open MPI's mpirun, or srun --mpi=pmi2 under Slurm).";
            if (owns) abi.Finalize();
            throw new InvalidOperationException(message);
        }
        return new MpiCollective(abi, owns, rank, size, library);
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
        fixed (nint* request = &pending.Request)
            _abi.Check(_abi.IallreduceInPlace(p, count, MpiType.Float, request), "MPI_Iallreduce");
        Progress();
        _outstanding.Add(pending);
        return pending;
    }

    /// <summary>Tests every outstanding reduction once: MPI advances non-blocking collectives only inside MPI calls.</summary>
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
            _abi.Check(_abi.AllreduceInPlace(p, data.Length, MpiType.Float), "MPI_Allreduce");
        if (op == ReduceOp.Average && Size > 1) Divide(data, Size);
    }

    public void AllReduce(Span<double> data, ReduceOp op)
    {
        ThrowIfDisposed();
        if (data.IsEmpty) return;
        fixed (double* p = data)
            _abi.Check(_abi.AllreduceInPlace(p, data.Length, MpiType.Double), "MPI_Allreduce");
        if (op == ReduceOp.Average && Size > 1)
            for (int i = 0; i < data.Length; i++) data[i] /= Size;
    }

    public void Broadcast(Span<byte> data, int root)
    {
        Collective.CheckRoot(root, Size);
        ThrowIfDisposed();
        fixed (byte* p = data)
            _abi.Check(_abi.Bcast(p, data.Length, MpiType.Byte, root), "MPI_Bcast");
    }

    public void Broadcast(Span<float> data, int root)
    {
        Collective.CheckRoot(root, Size);
        ThrowIfDisposed();
        fixed (float* p = data)
            _abi.Check(_abi.Bcast(p, data.Length, MpiType.Float, root), "MPI_Bcast");
    }

    public void Barrier()
    {
        ThrowIfDisposed();
        _abi.Check(_abi.Barrier(), "MPI_Barrier");
    }

    public void Abort(int exitCode)
    {
        _abi.Abort(exitCode);
        Environment.Exit(exitCode);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_ownsInit && _abi.Finalized(out int done) == MpiAbi.Success && done == 0)
            _abi.Finalize();
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>One MPI_Iallreduce in flight on a pinned copy of a device range.</summary>
    private sealed class Pending(MpiCollective owner, DeviceBuffer buffer, int offset, float[] host, ReduceOp op) : IPendingReduce
    {
        public nint Request = owner._abi.RequestNull;
        private bool _done;

        public bool Test()
        {
            if (_done) return true;
            owner.ThrowIfDisposed();
            owner.Progress();
            return owner._abi.IsNull(Request);
        }

        /// <summary>MPI_Test on this request (MPI sets it to MPI_REQUEST_NULL once complete).</summary>
        public void TestRequest()
        {
            if (owner._abi.IsNull(Request)) return;
            fixed (nint* r = &Request)
                owner._abi.Check(owner._abi.Test(r, out _), "MPI_Test");
        }

        public void Wait()
        {
            if (_done) return;
            owner.ThrowIfDisposed();
            if (!owner._abi.IsNull(Request))
                fixed (nint* r = &Request)
                    owner._abi.Check(owner._abi.Wait(r), "MPI_Wait");
            _done = true;
            owner._outstanding.Remove(this);
            if (op == ReduceOp.Average && owner.Size > 1) Divide(host, owner.Size);
            buffer.Backend.Upload(host, buffer, offset);
            if (!owner._freeHost.TryGetValue(host.Length, out var free)) owner._freeHost[host.Length] = free = new Stack<float[]>();
            free.Push(host);
        }
    }
}
