namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// The CPU backend's one worker pool: <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> capped
/// at a fixed number of workers, each with a stable index so it can own scratch memory. Work items are handed
/// out dynamically through a shared counter, so uneven items still balance. Ops are issued by one caller at a
/// time (like a GPU stream); the pool is not re-entrant.
/// </summary>
internal sealed class WorkerPool
{
    private readonly ParallelOptions _options;
    private readonly WorkerScratch[] _scratch;

    public WorkerPool(int threads)
    {
        if (threads < 0) throw new ArgumentOutOfRangeException(nameof(threads), $"Thread count {threads} is negative.");
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
        _options = new ParallelOptions { MaxDegreeOfParallelism = Threads };
        _scratch = new WorkerScratch[Threads];
        for (int i = 0; i < Threads; i++) _scratch[i] = new WorkerScratch();
    }

    public int Threads { get; }

    /// <summary>Scratch memory owned by worker <paramref name="worker"/>.</summary>
    public WorkerScratch Scratch(int worker) => _scratch[worker];

    /// <summary>Runs body(worker, item) for every item in [0, count); worker is in [0, Threads).</summary>
    public void For(int count, Action<int, int> body)
    {
        if (count <= 0) return;
        int workers = Math.Min(Threads, count);
        if (workers == 1)
        {
            for (int i = 0; i < count; i++) body(0, i);
            return;
        }
        int next = -1;
        Parallel.For(0, workers, _options, w =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < count) body(w, i);
        });
    }

    /// <summary>
    /// Splits [0, n) into chunks of at least <paramref name="grain"/> elements (multiples of 64, so vector
    /// loops see whole vectors) and runs body(start, length) on each, in parallel when there is more than one.
    /// </summary>
    public void ForRange(int n, int grain, Action<int, int> body) => Split(n, grain, 64, body);

    /// <summary>
    /// Like <see cref="ForRange"/> for ranges of rows, channels or blocks rather than vector elements: chunks
    /// of at least <paramref name="grain"/> items with no rounding, so 2 to 64 items still spread over the workers.
    /// </summary>
    public void ForItems(int n, int grain, Action<int, int> body) => Split(n, grain, 1, body);

    private void Split(int n, int grain, int align, Action<int, int> body)
    {
        if (n <= 0) return;
        int chunks = Math.Min(Threads * 4, (n + grain - 1) / grain);
        if (chunks <= 1 || Threads == 1)
        {
            body(0, n);
            return;
        }
        int size = ((n + chunks - 1) / chunks + align - 1) / align * align;
        chunks = (n + size - 1) / size;
        For(chunks, (_, c) =>
        {
            int start = c * size;
            body(start, Math.Min(size, n - start));
        });
    }
}

/// <summary>
/// Growable pinned scratch arrays of one worker, kept between ops so hot loops never allocate. Pinned, so a
/// raw pointer into one stays valid for the duration of an op.
/// </summary>
internal sealed class WorkerScratch
{
    private readonly float[]?[] _slots = new float[]?[(int)ScratchSlot.Count];

    /// <summary>At least <paramref name="length"/> floats of the slot (contents undefined).</summary>
    public unsafe float* Get(ScratchSlot slot, long length)
    {
        ref var a = ref _slots[(int)slot];
        if (a is null || a.Length < length)
        {
            if (length > Array.MaxLength) throw new NotSupportedException($"Scratch of {length} floats is too large.");
            a = GC.AllocateUninitializedArray<float>((int)Math.Max(length, 1024), pinned: true);
        }
        return (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(a));
    }
}

internal enum ScratchSlot
{
    PackA,
    PackB,
    PackBNext,
    Columns,
    Partial,
    Output,
    Small,
    Count,
}
