using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// One kind of step recorded as a CUDA graph and replayed (<see cref="IStepGraph"/>). The run after the warm-up
/// captures the step's stream work (cuStreamBeginCapture in global mode) and instantiates it; every later run runs the
/// step's code again with the backend in replay mode, where each call that would queue work is compared with the
/// recorded one (name, pointers, sizes, scalars, kernel argument bytes) and not made, and then launches the graph.
/// What changes between steps reaches the graph as data: the step's uploads and the scalars of the Philox fills,
/// Adam, axpby and affine are written into this recording's input buffers, which one host-to-device copy per buffer fills
/// before each launch (queued outside the graph), and from which the graph's kernels and copies read.
/// Buffers the step allocates come from a private pool: on the recording run as from a caching allocator, on later
/// runs the same blocks in the same order, so the graph's pointers stay valid; the pool lives as long as the graph.
/// Buffers allocated before the step and released inside the recording run are kept until the graph goes, as the
/// graph still uses them.
/// </summary>
internal sealed class CudaStepGraph : IStepGraph, IBlockPool
{
    private const long InputChunkBytes = 1 << 20;
    private const int InputAlign = 256;

    private readonly CudaBackend _be;
    private readonly int _warmup;
    private readonly bool _enabled;
    private int _runs;
    private nint _exec;
    private bool _broken, _disposed;

    // The recorded calls, in order, and the cursor of a replay through them.
    private readonly List<(string What, byte[] Signature)> _calls = [];
    private int _cursor;

    // The pool: every block, the blocks free during the recording run, the rents in order, and the replay's cursor.
    private readonly Dictionary<ulong, long> _blocks = [];
    private readonly Dictionary<long, Stack<ulong>> _free = [];
    private readonly List<(ulong Pointer, long Bytes)> _rents = [];
    private int _rentCursor, _lent;
    private readonly List<(ulong Pointer, long Bytes)> _kept = [];

    // Input buffers (device) with their host images, and the stages: (chunk, offset, bytes) in order.
    private readonly List<(ulong Device, byte[] Host, int Used)> _chunks = [];
    private readonly List<(int Chunk, int Offset, int Bytes)> _stages = [];
    private int _stageCursor;

    internal CudaStepGraph(CudaBackend backend, string name, int warmupRuns, bool enabled)
    {
        _be = backend;
        Name = name;
        _warmup = warmupRuns;
        _enabled = enabled;
    }

    internal string Name { get; }

    /// <summary>Whether the current run replays (checks calls and skips them) rather than records.</summary>
    internal bool Feeding { get; private set; }

    public long Replays { get; private set; }

    /// <summary>Device bytes of the pool and the input buffers.</summary>
    internal long HeldBytes
    {
        get
        {
            long bytes = 0;
            foreach (var b in _blocks.Values) bytes += b;
            foreach (var c in _chunks) bytes += c.Host.Length;
            return bytes;
        }
    }

    public void Run(Action step)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_broken) throw new InvalidOperationException($"The recorded step '{Name}' failed earlier; it cannot be replayed.");
        if (!_enabled || _runs < _warmup)
        {
            _runs++;
            step();
            return;
        }
        if (_exec == 0) Record(step);
        else Feed(step);
        _runs++;
        for (int i = 0; i < _chunks.Count; i++)
            if (_chunks[i].Used > 0) _be.UploadStepInputs(_chunks[i].Host.AsSpan(0, _chunks[i].Used), _chunks[i].Device);
        _be.LaunchGraph(_exec);
        Replays++;
    }

    private void Record(Action step)
    {
        nint stream = _be.Stream;
        Driver.Check(Driver.cuStreamBeginCapture_v2(stream, Driver.CaptureModeGlobal), "cuStreamBeginCapture_v2");
        _be.BeginRecording(this);
        nint graph = 0;
        try
        {
            step();
            _be.EndRecording();
            var r = Driver.cuStreamEndCapture(stream, out graph);
            if (r != CUresult.Success) throw new CudaException("cuStreamEndCapture", r, $"Recording the step '{Name}'");
            RequireAllReturned();
            Driver.Check(Driver.cuGraphInstantiateWithFlags(out _exec, graph, 0), "cuGraphInstantiateWithFlags");
        }
        catch
        {
            _broken = true;
            _be.EndRecording();
            if (graph == 0 && Driver.cuStreamIsCapturing(stream, out int capturing) == CUresult.Success && capturing != 0)
                Driver.cuStreamEndCapture(stream, out graph);
            throw;
        }
        finally
        {
            if (graph != 0) Driver.cuGraphDestroy(graph);
        }
    }

    private void Feed(Action step)
    {
        _cursor = _rentCursor = _stageCursor = 0;
        Feeding = true;
        _be.BeginRecording(this);
        try
        {
            step();
            if (_cursor != _calls.Count)
                throw new InvalidOperationException($"The recorded step '{Name}' made {_cursor} calls this time, the recording {_calls.Count} " +
                    $"(the next recorded one: {_calls[_cursor].What}); a replayed step must make the same calls every time.");
            RequireAllReturned();
        }
        catch
        {
            _broken = true;
            throw;
        }
        finally
        {
            Feeding = false;
            _be.EndRecording();
        }
    }

    /// <summary>Records a call (true: make it), or while feeding checks it against the recording (false: the graph makes it).</summary>
    internal bool Call(string what, ReadOnlySpan<ulong> words, ReadOnlySpan<byte> blob)
    {
        var sig = new byte[8 * words.Length + blob.Length];
        for (int i = 0; i < words.Length; i++) BitConverter.TryWriteBytes(sig.AsSpan(8 * i), words[i]);
        blob.CopyTo(sig.AsSpan(8 * words.Length));
        if (!Feeding)
        {
            _calls.Add((what, sig));
            return false;
        }
        if (_cursor >= _calls.Count)
            throw Mismatch(what, $"the recording has only {_calls.Count} calls");
        var (recWhat, recSig) = _calls[_cursor];
        if (!string.Equals(recWhat, what, StringComparison.Ordinal))
            throw Mismatch(what, $"the recording has {recWhat} there");
        if (!recSig.AsSpan().SequenceEqual(sig))
        {
            int at = 0;
            while (at < sig.Length && at < recSig.Length && sig[at] == recSig[at]) at++;
            throw Mismatch(what, $"its arguments differ from the recorded ones at byte {at} (a value that changes between steps must reach " +
                "the device as data: an upload, or the step scalars of the Philox fills, Adam, axpby and affine)");
        }
        _cursor++;
        return true;
    }

    private InvalidOperationException Mismatch(string what, string why) =>
        new($"The recorded step '{Name}': call {_cursor} ({what}) is not the recorded one: {why}.");

    /// <summary>A block for the step: from the pool while recording, the recorded block of this position while replaying.</summary>
    internal (ulong Pointer, long Bytes) Rent(long bytes)
    {
        var allocator = _be.Allocator;
        long size = allocator.Exact ? bytes : CudaAllocator.BucketBytes(bytes);
        ulong p;
        if (Feeding)
        {
            if (_rentCursor >= _rents.Count || _rents[_rentCursor].Bytes != size)
                throw new InvalidOperationException($"The recorded step '{Name}': allocation {_rentCursor} ({size} bytes) is not the recorded one; " +
                    "a replayed step must allocate the same buffers every time.");
            p = _rents[_rentCursor++].Pointer;
        }
        else
        {
            if (_free.TryGetValue(size, out var stack) && stack.Count > 0) p = stack.Pop();
            else
            {
                Driver.Check(Driver.cuMemAlloc_v2(out p, (nuint)size), "cuMemAlloc_v2 (recorded step pool)");
                _blocks[p] = size;
            }
            _rents.Add((p, size));
        }
        _lent++;
        allocator.PoisonIfChecking(p, size);
        return (p, size);
    }

    public bool TakeBack(ulong pointer, long blockBytes)
    {
        if (_blocks.ContainsKey(pointer))
        {
            _lent--;
            if (!Feeding)
            {
                if (!_free.TryGetValue(blockBytes, out var stack)) _free[blockBytes] = stack = new Stack<ulong>();
                stack.Push(pointer);
            }
            return true;
        }
        if (Feeding) return false;
        // Allocated before the step and released in it: the graph still reads or writes it on every replay.
        _kept.Add((pointer, blockBytes));
        return true;
    }

    private void RequireAllReturned()
    {
        if (_lent != 0)
            throw new InvalidOperationException($"The recorded step '{Name}' keeps {_lent} buffer(s) it allocated after it returns; a replayed step " +
                "must release what it allocates (write results into buffers made before it).");
    }

    /// <summary>The device address that will hold <paramref name="bytes"/> when the graph runs.</summary>
    internal ulong Stage(ReadOnlySpan<byte> bytes)
    {
        int n = bytes.Length;
        if (Feeding)
        {
            if (_stageCursor >= _stages.Count || _stages[_stageCursor].Bytes != n)
                throw new InvalidOperationException($"The recorded step '{Name}': upload {_stageCursor} ({n} bytes) is not the recorded one.");
            var (c, off, _) = _stages[_stageCursor++];
            bytes.CopyTo(_chunks[c].Host.AsSpan(off));
            return _chunks[c].Device + (ulong)off;
        }
        int chunk = _chunks.Count - 1;
        if (chunk < 0 || _chunks[chunk].Used + n > _chunks[chunk].Host.Length)
        {
            long size = Math.Max(InputChunkBytes, (n + InputAlign - 1) / InputAlign * (long)InputAlign);
            Driver.Check(Driver.cuMemAlloc_v2(out ulong d, (nuint)size), "cuMemAlloc_v2 (recorded step inputs)");
            _chunks.Add((d, new byte[size], 0));
            chunk++;
        }
        var (dev, host, used) = _chunks[chunk];
        bytes.CopyTo(host.AsSpan(used));
        _chunks[chunk] = (dev, host, used + (n + InputAlign - 1) / InputAlign * InputAlign);
        _stages.Add((chunk, used, n));
        return dev + (ulong)used;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _be.Forget(this);
        if (_exec == 0 && _blocks.Count == 0 && _chunks.Count == 0 && _kept.Count == 0) return;
        // The last replay may still run: wait before its memory goes.
        try { _be.WaitForStream(); } catch (CudaException) { }
        if (_exec != 0) Driver.cuGraphExecDestroy(_exec);
        _exec = 0;
        foreach (var p in _blocks.Keys) Driver.cuMemFree_v2(p);
        foreach (var c in _chunks) Driver.cuMemFree_v2(c.Device);
        foreach (var (p, bytes) in _kept) _be.Allocator.Return(p, bytes);
        _blocks.Clear();
        _chunks.Clear();
        _kept.Clear();
    }
}
