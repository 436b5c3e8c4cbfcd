namespace Ddpm.Tensors;

/// <summary>
/// The whole batch that a backend's work is a part of: a data-parallel rank's shard or a micro-batch of gradient
/// accumulation. A backend that picks an algorithm by the batch (the CPU backend's Winograd convolutions pay only
/// from enough tiles per call) holds one of these and picks by <see cref="For"/> rather than by the part it is
/// given, so every part runs each sample through the same arithmetic as the whole batch does, and a split run
/// differs from the whole one only in the order its sums over the batch add up. Scopes nest; the innermost one
/// counts. One per backend instance (<see cref="IBackend.PartOfBatch"/>), used from the thread that drives it.
/// </summary>
public sealed class WholeBatch
{
    private int _whole;

    /// <summary>The size of the whole batch inside an <see cref="Of"/> scope; 0 outside one.</summary>
    public int Whole => _whole;

    /// <summary>Until the returned handle is disposed, the work is part of a batch of <paramref name="whole"/> samples.</summary>
    public IDisposable Of(int whole)
    {
        if (whole <= 0) throw new ArgumentOutOfRangeException(nameof(whole), $"A whole batch of {whole} samples is not positive.");
        return new Scope(this, whole);
    }

    /// <summary>The batch an algorithm choice for <paramref name="n"/> samples is made for: the whole batch inside a scope (at least n).</summary>
    public int For(int n) => Math.Max(n, _whole);

    private sealed class Scope : IDisposable
    {
        private readonly WholeBatch _owner;
        private readonly int _previous;
        private bool _done;

        public Scope(WholeBatch owner, int whole)
        {
            _owner = owner;
            _previous = owner._whole;
            owner._whole = whole;
        }

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _owner._whole = _previous;
        }
    }
}
