using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// The CPU backend's one worker pool: the calling thread plus Threads - 1 dedicated helper threads, each with a
/// stable worker index so it can own scratch memory. Work items are handed out dynamically through a shared
/// counter, so uneven items still balance. A helper spins for a short while after each region
/// (<see cref="CpuBackendOptions.SpinMicroseconds"/>) before it blocks, so the back-to-back small ops of a UNet step
/// find it awake: the hand-off costs well under a microsecond instead of a thread wake-up.
/// Ops are issued by one caller at a time (like a GPU stream); the pool is not re-entrant, and a nested or
/// concurrent call is refused rather than left to corrupt the workers' scratch.
/// </summary>
internal sealed class WorkerPool : IDisposable
{
    private readonly WorkerScratch[] _scratch;
    private readonly Crew? _crew;
    private int _busy;

    [ThreadStatic] private static bool t_inRegion;

    /// <summary>A pool of <paramref name="threads"/> workers (0: all cores) with the default kernel settings.</summary>
    public WorkerPool(int threads) : this(new CpuBackendOptions { Threads = threads })
    {
    }

    /// <summary>A pool with the thread count and spin time of <paramref name="options"/>, whose kernels the workers' scratch carries.</summary>
    public WorkerPool(CpuBackendOptions options)
    {
        options.Validate();
        Options = options;
        Threads = options.Threads == 0 ? Environment.ProcessorCount : options.Threads;
        _scratch = new WorkerScratch[Threads];
        for (int i = 0; i < Threads; i++) _scratch[i] = new WorkerScratch(options);
        if (Threads > 1) _crew = new Crew(Threads - 1, options.SpinMicroseconds);
    }

    ~WorkerPool() => _crew?.Stop();

    public int Threads { get; }

    /// <summary>The settings of the backend this pool serves.</summary>
    public CpuBackendOptions Options { get; }

    /// <summary>Scratch memory owned by worker <paramref name="worker"/>.</summary>
    public WorkerScratch Scratch(int worker) => _scratch[worker];

    /// <summary>Stops the helper threads (they also stop when the pool is collected).</summary>
    public void Dispose()
    {
        _crew?.Stop();
        GC.SuppressFinalize(this);
    }

    /// <summary>Runs body(worker, item) for every item in [0, count); worker is in [0, Threads).</summary>
    public void For(int count, Action<int, int> body)
    {
        if (count <= 0) return;
        if (t_inRegion)
            throw new InvalidOperationException("The CPU worker pool was called from inside one of its own work items; it is not re-entrant.");
        if (Interlocked.Exchange(ref _busy, 1) != 0)
            throw new InvalidOperationException("The CPU backend was used from two threads at once; issue its ops from one thread at a time.");
        t_inRegion = true;
        try
        {
            int workers = Math.Min(Threads, count);
            if (workers == 1 || _crew is null)
            {
                for (int i = 0; i < count; i++) body(0, i);
            }
            else
            {
                _crew.Run(body, count);
            }
        }
        finally
        {
            t_inRegion = false;
            Volatile.Write(ref _busy, 0);
        }
    }

    /// <summary>
    /// The helper threads and the state of the region in flight. One 64-bit ticket holds the region's generation
    /// (high half) and the next item (low half), so a helper that wakes late for region g can never take an item
    /// of region g + 1 with region g's body: its compare-and-swap expects generation g. Helpers reference only
    /// this object, so an undisposed pool can still be collected (its finalizer stops them).
    /// </summary>
    private sealed class Crew
    {
        private readonly ManualResetEventSlim[] _wake;
        private readonly int[] _sleeping;
        private readonly long _spinTicks;
        private Action<int, int>? _body;
        private int _count;
        private long _ticket;
        private int _done;
        private Exception? _error;
        private volatile bool _stop;

        public Crew(int helpers, int spinUs)
        {
            _spinTicks = spinUs * Stopwatch.Frequency / 1_000_000;
            _wake = new ManualResetEventSlim[helpers];
            _sleeping = new int[helpers];
            for (int h = 0; h < helpers; h++)
            {
                _wake[h] = new ManualResetEventSlim(false, 0);
                int worker = h + 1;
                new Thread(() => Helper(worker)) { IsBackground = true, Name = $"ddpm-cpu-worker-{worker}" }.Start();
            }
        }

        public void Run(Action<int, int> body, int count)
        {
            _body = body;
            _count = count;
            _done = 0;
            _error = null;
            long gen = (Volatile.Read(ref _ticket) >> 32) + 1;
            Interlocked.Exchange(ref _ticket, gen << 32); // publishes body and count (full fence) before the wake-ups below
            for (int h = 0; h < _wake.Length; h++)
                if (Volatile.Read(ref _sleeping[h]) != 0) _wake[h].Set();
            Work(0, gen, body, count);
            var spin = new SpinWait();
            while (Volatile.Read(ref _done) < count) spin.SpinOnce(sleep1Threshold: -1);
            if (_error is { } e) ExceptionDispatchInfo.Throw(e);
        }

        /// <summary>Takes items of region <paramref name="gen"/> until none are left or the region has moved on.</summary>
        private void Work(int worker, long gen, Action<int, int> body, int count)
        {
            int n = 0;
            while (true)
            {
                long t = Volatile.Read(ref _ticket);
                if (t >> 32 != gen || (int)(t & 0xFFFF_FFFF) >= count) break;
                if (Interlocked.CompareExchange(ref _ticket, t + 1, t) != t) continue;
                try { body(worker, (int)(t & 0xFFFF_FFFF)); }
                catch (Exception e) { Interlocked.CompareExchange(ref _error, e, null); }
                n++;
            }
            if (n > 0) Interlocked.Add(ref _done, n);
        }

        private void Helper(int worker)
        {
            t_inRegion = true;
            int h = worker - 1;
            long seen = 0;
            while (!_stop)
            {
                long gen = Volatile.Read(ref _ticket) >> 32;
                if (gen != seen)
                {
                    seen = gen;
                    var body = Volatile.Read(ref _body);
                    int count = Volatile.Read(ref _count);
                    if (body is not null) Work(worker, gen, body, count);
                    continue;
                }
                if (Spin(seen)) continue;
                _wake[h].Reset();
                Interlocked.Exchange(ref _sleeping[h], 1); // full fence: Run either sees this flag or we see its ticket
                if (Volatile.Read(ref _ticket) >> 32 == seen && !_stop) _wake[h].Wait();
                Volatile.Write(ref _sleeping[h], 0);
            }
        }

        /// <summary>Spins up to the spin time for a region after <paramref name="seen"/>; true if one came.</summary>
        private bool Spin(long seen)
        {
            long deadline = Stopwatch.GetTimestamp() + _spinTicks;
            while (true)
            {
                for (int i = 0; i < 32; i++)
                {
                    if (Volatile.Read(ref _ticket) >> 32 != seen) return true;
                    Thread.SpinWait(1);
                }
                if (_stop || Stopwatch.GetTimestamp() >= deadline) return false;
            }
        }

        public void Stop()
        {
            _stop = true;
            foreach (var w in _wake) w.Set();
        }
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
/// <summary>A worker's scratch memory, and the settings of the backend it works for (which kernels its GEMMs run).</summary>
internal sealed class WorkerScratch(CpuBackendOptions options)
{
    private readonly float[]?[] _slots = new float[]?[(int)ScratchSlot.Count];

    public CpuBackendOptions Options { get; } = options;

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
    Weights,
    Small,
    WinogradU,
    WinogradUPacked,
    WinogradV,
    WinogradM,
    WinogradStage,
    Phases,
    PhaseWeights,
    Count,
}
