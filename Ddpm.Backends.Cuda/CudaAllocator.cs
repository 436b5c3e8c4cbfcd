using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// How the backend's device memory is checked, for finding memory bugs (memcheck's and initcheck's jobs).
/// <see cref="ExactAllocation"/>: one cuMemAlloc of exactly the buffer's size per buffer, freed when the buffer is
/// released (no bucket slack, no cache), so an access past a buffer's end leaves its allocation, which a
/// memory checker (compute-sanitizer, or the simulated device's fence pages) reports; slow, as every release
/// waits for the device. <see cref="Poison"/>: every block handed out (new or from the cache) is first filled
/// with NaN on the stream, so a kernel that reads memory nobody wrote computes NaN instead of stale values.
/// </summary>
internal readonly record struct CudaMemoryChecks(bool ExactAllocation, bool Poison)
{
    /// <summary>DDPM_CUDA_EXACT_ALLOC=1 and DDPM_CUDA_POISON=1.</summary>
    internal static CudaMemoryChecks FromEnvironment() => new(
        Environment.GetEnvironmentVariable("DDPM_CUDA_EXACT_ALLOC") == "1",
        Environment.GetEnvironmentVariable("DDPM_CUDA_POISON") == "1");

    /// <summary>", DDPM_CUDA_EXACT_ALLOC=1, DDPM_CUDA_POISON=1" as far as they are on, for a backend's description.</summary>
    internal string Describe() =>
        (ExactAllocation ? ", DDPM_CUDA_EXACT_ALLOC=1 (one exact allocation per buffer)" : "") +
        (Poison ? ", DDPM_CUDA_POISON=1 (new blocks filled with NaN)" : "");
}

/// <summary>
/// A caching device allocator: blocks are rounded to size buckets (powers of two up to 1 MiB, then multiples
/// of 2 MiB) and returned blocks wait in per-bucket free lists for the next request of that bucket, so a
/// training step reuses the previous step's memory without cuMemAlloc/cuMemFree (which synchronise).
/// Reuse is safe without events because every kernel runs on the backend's one stream, in order.
/// On out-of-memory the cache is synchronised, freed and the allocation retried once.
/// With <see cref="CudaMemoryChecks.ExactAllocation"/> nothing is rounded or cached: each block is its own
/// exact allocation, freed on return. With <see cref="CudaMemoryChecks.Poison"/> each block handed out is filled
/// with NaN (0x7fc00000) by <c>poison</c>, queued on the stream before the caller's work.
/// </summary>
internal sealed class CudaAllocator : IDisposable
{
    /// <summary>The bit pattern blocks are poisoned with: a quiet NaN.</summary>
    internal const uint PoisonBits = 0x7fc00000;

    private readonly Dictionary<long, Stack<ulong>> _free = [];
    private readonly HashSet<ulong> _live = [];
    private readonly Action _synchronize;
    private readonly Action<ulong, long>? _poison;
    private readonly bool _exact;
    private bool _disposed;

    /// <param name="synchronize">Waits for the stream (before cached blocks are freed).</param>
    /// <param name="checks">Exact allocation and poisoning.</param>
    /// <param name="poison">Fills (pointer, bytes) with <see cref="PoisonBits"/> on the stream; needed when
    /// <paramref name="checks"/> has <see cref="CudaMemoryChecks.Poison"/>.</param>
    internal CudaAllocator(Action synchronize, CudaMemoryChecks checks = default, Action<ulong, long>? poison = null)
    {
        if (checks.Poison && poison is null) throw new ArgumentNullException(nameof(poison), "Poisoning needs a fill to poison with.");
        _synchronize = synchronize;
        _exact = checks.ExactAllocation;
        _poison = checks.Poison ? poison : null;
    }

    /// <summary>Bytes in blocks handed out and not yet returned.</summary>
    internal long InUseBytes { get; private set; }

    /// <summary>Bytes in free-listed blocks.</summary>
    internal long CachedBytes { get; private set; }

    internal static long BucketBytes(long bytes)
    {
        if (bytes <= 512) return 512;
        if (bytes <= 1 << 20) return (long)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)bytes);
        const long step = 2 << 20;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>A block of at least <paramref name="bytes"/> bytes (exactly that many when allocating exactly); returns its pointer and the block size.</summary>
    internal (ulong Pointer, long BlockBytes) Rent(long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long size = _exact ? bytes : BucketBytes(bytes);
        if (!_exact)
        {
            lock (_free)
            {
                if (_free.TryGetValue(size, out var stack) && stack.Count > 0)
                {
                    ulong p = stack.Pop();
                    CachedBytes -= size;
                    InUseBytes += size;
                    _live.Add(p);
                    _poison?.Invoke(p, size);
                    return (p, size);
                }
            }
        }
        var r = Driver.cuMemAlloc_v2(out ulong ptr, (nuint)size);
        if (r == CUresult.ErrorOutOfMemory)
        {
            long cachedBefore = CachedBytes;
            ReleaseCache();
            r = Driver.cuMemAlloc_v2(out ptr, (nuint)size);
            if (r == CUresult.ErrorOutOfMemory)
            {
                string free = "unknown";
                if (Driver.cuMemGetInfo_v2(out nuint f, out nuint total) == CUresult.Success)
                    free = $"{Mib((long)f)} of {Mib((long)total)}";
                throw new CudaException("cuMemAlloc_v2", r,
                    $"Asked for {Mib(bytes)} (block {Mib(size)}); this backend holds {Mib(InUseBytes)} in live buffers " +
                    $"and held {Mib(cachedBefore)} in its cache, which was freed before one retry; the device reports {free} free");
            }
        }
        Driver.Check(r, "cuMemAlloc_v2");
        lock (_free)
        {
            InUseBytes += size;
            _live.Add(ptr);
        }
        _poison?.Invoke(ptr, size);
        return (ptr, size);
    }

    /// <summary>While a step is recorded: the recording's pool, which takes back its own blocks (and keeps others the step releases).</summary>
    internal IBlockPool? Pool { get; set; }

    /// <summary>Whether each block is exactly its buffer's size.</summary>
    internal bool Exact => _exact;

    /// <summary>Fills a block handed out by a pool with NaN when poisoning is on.</summary>
    internal void PoisonIfChecking(ulong pointer, long bytes) => _poison?.Invoke(pointer, bytes);

    internal void Return(ulong pointer, long blockBytes)
    {
        if (pointer == 0) return;
        if (Pool is { } pool && pool.TakeBack(pointer, blockBytes)) return;
        lock (_free)
        {
            // After dispose the block was already freed with everything else.
            if (_disposed || !_live.Remove(pointer)) return;
            InUseBytes -= blockBytes;
            if (_exact)
            {
                // cuMemFree waits for the work queued on the block before it frees it.
                Driver.Check(Driver.cuMemFree_v2(pointer), "cuMemFree_v2");
                return;
            }
            CachedBytes += blockBytes;
            if (!_free.TryGetValue(blockBytes, out var stack)) _free[blockBytes] = stack = new Stack<ulong>();
            stack.Push(pointer);
        }
    }

    /// <summary>Frees every cached block (after the stream has finished with them).</summary>
    internal void ReleaseCache()
    {
        _synchronize();
        lock (_free)
        {
            foreach (var stack in _free.Values)
                while (stack.Count > 0) Driver.Check(Driver.cuMemFree_v2(stack.Pop()), "cuMemFree_v2");
            CachedBytes = 0;
        }
    }

    /// <summary>Frees cached and live blocks; buffers still held become invalid.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        ReleaseCache();
        lock (_free)
        {
            foreach (var p in _live) Driver.Check(Driver.cuMemFree_v2(p), "cuMemFree_v2");
            _live.Clear();
            InUseBytes = 0;
            _disposed = true;
        }
    }

    private static string Mib(long bytes) => $"{bytes / (1024.0 * 1024.0):F1} MiB";
}

/// <summary>Device memory of a recorded step (see CudaStepGraph): blocks it lends out and takes back.</summary>
internal interface IBlockPool
{
    /// <summary>Takes a returned block back (true), or leaves it to the allocator (false).</summary>
    bool TakeBack(ulong pointer, long blockBytes);
}
