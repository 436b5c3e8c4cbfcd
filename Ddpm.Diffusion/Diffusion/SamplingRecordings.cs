using Ddpm.Tensors;

namespace Ddpm.Diffusion.Diffusion;

/// <summary>
/// Recorded sampling steps kept from one sampling run to the next, for whoever samples the same model with the same
/// shapes again and again (a batch after batch of <c>eval</c>, request after request of <c>serve</c>): give it to
/// each <see cref="Sampler"/> (<see cref="Sampler(DenoiseDiffusion, ClassCondition?, SamplingRecordings?)"/>) and
/// dispose it when done. On a backend that records steps (<see cref="IStepGraphs"/>), a run whose
/// <see cref="RecordingKey"/> was seen before replays every step from its first, with no eager warm-up and no new
/// recording; elsewhere it holds nothing.
/// A key is everything the recorded calls depend on: the diffusion (its model's buffers, the network, clipping and
/// the data range), the sampler kind, x's shape, which forward passes guidance makes (none, the null class, the
/// labels, or both) and whether each step's predicted x0 is kept. What changes between runs with one key (labels,
/// the guidance weight, eta, the number of steps, the seed) reaches the device as data. The recordings of a key (one
/// per kind of step) hold their own device memory, a forward pass's activations, and the key's buffers for x; at most
/// <see cref="Capacity"/> keys are held, the least recently used released first. The model's parameters must stay in
/// their buffers while it is held (updating them in place, as training and its EMA swap do, is fine).
/// Not thread-safe: one thread samples through it at a time.
/// </summary>
public sealed class SamplingRecordings : IDisposable
{
    /// <summary>The keys held by default: a batch size and a smaller last batch, and one more.</summary>
    public const int DefaultCapacity = 3;

    private readonly LinkedList<(RecordingKey Key, ReverseSteps.ReplayedSteps Steps)> _held = new();
    private bool _disposed;

    /// <summary>Recordings that hold at most <paramref name="capacity"/> keys at a time.</summary>
    public SamplingRecordings(int capacity = DefaultCapacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Capacity = capacity;
    }

    /// <summary>The most keys held at once.</summary>
    public int Capacity { get; }

    /// <summary>The keys held now.</summary>
    public int Count => _held.Count;

    /// <summary>Kinds of step recorded since this was made (each recorded once per key while its key is held).</summary>
    public long Recorded { get; private set; }

    /// <summary>
    /// The replay state of <paramref name="key"/>: the one held (now the most recently used), or a new one, held in
    /// place of the least recently used key when <see cref="Capacity"/> are held. A key in use by a run that has not
    /// ended (a run started from inside another run's callback) gets a state of its own, not held: <c>Held</c> false.
    /// </summary>
    internal (ReverseSteps.ReplayedSteps Steps, bool Held) Rent(RecordingKey key, IStepGraphs graphs)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        for (var node = _held.First; node is not null; node = node.Next)
        {
            if (!node.Value.Key.Equals(key)) continue;
            if (node.Value.Steps.InUse) return (New(key, graphs), false);
            _held.Remove(node);
            _held.AddFirst(node);
            return (node.Value.Steps, true);
        }
        var steps = New(key, graphs);
        _held.AddFirst((key, steps));
        for (var node = _held.Last; _held.Count > Capacity && node is not null;)
        {
            var before = node.Previous;
            if (!node.Value.Steps.InUse)
            {
                _held.Remove(node);
                node.Value.Steps.Dispose();
            }
            node = before;
        }
        return (steps, true);
    }

    private ReverseSteps.ReplayedSteps New(RecordingKey key, IStepGraphs graphs) => new(graphs, key, () => Recorded++);

    /// <summary>Releases the state of <paramref name="steps"/> (a run failed inside a step: its recordings may not be replayed).</summary>
    internal void Drop(ReverseSteps.ReplayedSteps steps)
    {
        for (var node = _held.First; node is not null; node = node.Next)
            if (ReferenceEquals(node.Value.Steps, steps))
            {
                _held.Remove(node);
                break;
            }
        steps.Dispose();
    }

    /// <summary>Releases every recording and buffer held (their device memory goes back).</summary>
    public void Clear()
    {
        foreach (var (_, steps) in _held) steps.Dispose();
        _held.Clear();
    }

    public void Dispose()
    {
        if (_disposed) return;
        Clear();
        _disposed = true;
    }
}

/// <summary>What the calls of a replayed sampling run depend on (see <see cref="SamplingRecordings"/>).</summary>
internal readonly record struct RecordingKey(DenoiseDiffusion Diffusion, SamplerKind Kind, Shape Shape, GuidedForward Forward, bool KeepX0);
