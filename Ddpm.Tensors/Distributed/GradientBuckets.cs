using Ddpm.Tensors.Nn;

namespace Ddpm.Tensors.Distributed;

/// <summary>
/// A run of adjacent slots of a <see cref="ParameterStore"/>: gradient elements [Offset, Offset + Count) of
/// parameters [FirstSlot, FirstSlot + Slots).
/// </summary>
public readonly record struct GradientBucket(int FirstSlot, int Slots, int Offset, int Count);

/// <summary>
/// Averages a store's gradient buffer over the ranks in buckets while the backward pass runs, as PyTorch's
/// DistributedDataParallel does: the slots are cut, from the last one back, into runs of at least the bucket
/// size (the backward pass finishes the last layers' gradients first); <see cref="LeafReady"/>, given to
/// <see cref="Tensor.Backward(Tensor?, Action{Tensor})"/>, counts each parameter whose gradient is final, and
/// a bucket's non-blocking all-reduce starts as soon as all its parameters are, so the reduction of the late
/// layers overlaps the backward pass of the early ones. Buckets start in their fixed order on every rank (a
/// bucket that is ready waits for the ones before it), as collectives must. <see cref="Finish"/> starts the
/// rest (parameters the pass did not reach) and waits for all. Each element is reduced once, with the same
/// sum as one all-reduce of the whole buffer.
/// </summary>
public sealed class GradientBuckets
{
    private readonly ParameterStore _store;
    private readonly ICollective _collective;
    private readonly GradientBucket[] _buckets;
    private readonly int[] _bucketOfSlot;
    private readonly Dictionary<Parameter, int> _slotOf = new(ReferenceEqualityComparer.Instance);
    private readonly bool[] _ready;
    private readonly int[] _waiting;
    private readonly IPendingReduce?[] _pending;
    private int _next;
    private int _launched;

    /// <param name="store">The parameters whose gradient buffer is reduced.</param>
    /// <param name="collective">The ranks.</param>
    /// <param name="bucketBytes">The least size of a bucket in bytes (a bucket is larger by at most its last
    /// parameter); 0 makes one bucket of the whole buffer, started after the backward pass.</param>
    public GradientBuckets(ParameterStore store, ICollective collective, long bucketBytes)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(collective);
        _store = store;
        _collective = collective;
        _buckets = Plan(store.Slots, bucketBytes);
        _bucketOfSlot = new int[store.Slots.Count];
        for (int b = 0; b < _buckets.Length; b++)
            for (int i = _buckets[b].FirstSlot; i < _buckets[b].FirstSlot + _buckets[b].Slots; i++) _bucketOfSlot[i] = b;
        for (int i = 0; i < store.Slots.Count; i++) _slotOf[store.Slots[i].Parameter] = i;
        _ready = new bool[store.Slots.Count];
        _waiting = new int[_buckets.Length];
        _pending = new IPendingReduce?[_buckets.Length];
        LeafReady = OnLeafReady;
    }

    /// <summary>The buckets in the order they are reduced (from the end of the buffer to its start).</summary>
    public IReadOnlyList<GradientBucket> Buckets => _buckets;

    /// <summary>The callback for <see cref="Tensor.Backward(Tensor?, Action{Tensor})"/>: one parameter's gradient is final.</summary>
    public Action<Tensor> LeafReady { get; }

    /// <summary>How many buckets started their reduction during the pass (before <see cref="Finish"/>).</summary>
    public int StartedEarly { get; private set; }

    /// <summary>
    /// Cuts <paramref name="slots"/> (adjacent, in order) into buckets from the last slot back: each takes slots
    /// until it holds at least <paramref name="bucketBytes"/>; the first slots form the last bucket, whatever
    /// its size. <paramref name="bucketBytes"/> 0 gives one bucket of everything.
    /// </summary>
    public static GradientBucket[] Plan(IReadOnlyList<ParameterSlot> slots, long bucketBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bucketBytes);
        var buckets = new List<GradientBucket>();
        int end = slots.Count; // exclusive
        long bytes = 0;
        for (int i = slots.Count - 1; i >= 0; i--)
        {
            bytes += 4L * slots[i].Size;
            if ((bucketBytes > 0 && bytes >= bucketBytes) || i == 0)
            {
                int offset = slots[i].Offset;
                int count = slots[end - 1].Offset + slots[end - 1].Size - offset;
                buckets.Add(new GradientBucket(i, end - i, offset, count));
                end = i;
                bytes = 0;
            }
        }
        return [.. buckets];
    }

    /// <summary>Readies the buckets for one backward pass; call before it.</summary>
    public void Begin()
    {
        if (_launched > 0) throw new InvalidOperationException("The reductions of the previous pass were not finished.");
        Array.Clear(_ready);
        Array.Clear(_waiting);
        for (int i = 0; i < _ready.Length; i++)
        {
            // A parameter without gradients never becomes ready: its slot is sent as it is (zero).
            if (_store.Slots[i].Parameter.RequiresGrad) _waiting[_bucketOfSlot[i]]++;
            else _ready[i] = true;
        }
        _next = 0;
        StartedEarly = 0;
    }

    /// <summary>After the backward pass: starts the buckets not started yet and waits for all of them.</summary>
    public void Finish()
    {
        StartedEarly = _next;
        while (_next < _buckets.Length) Start(_next++);
        for (int b = 0; b < _pending.Length; b++)
        {
            _pending[b]!.Wait();
            _pending[b] = null;
        }
        _launched = 0;
    }

    private void OnLeafReady(Tensor leaf)
    {
        if (leaf is not Parameter p || !_slotOf.TryGetValue(p, out int slot) || _ready[slot]) return;
        _ready[slot] = true;
        if (--_waiting[_bucketOfSlot[slot]] == 0)
            while (_next < _buckets.Length && _waiting[_next] == 0) Start(_next++);
        // Lets the engine advance the reductions in flight (MPICH does so only inside its calls).
        else if (_next > 0) _pending[_next - 1]!.Test();
    }

    private void Start(int b)
    {
        var bucket = _buckets[b];
        // Parameters the pass did not reach must read zero before their slots are sent.
        _store.CompleteGradients(bucket.FirstSlot, bucket.Slots);
        _pending[b] = _collective.StartAllReduce(_store.Gradients, bucket.Offset, bucket.Count, ReduceOp.Average);
        _launched++;
    }
}
