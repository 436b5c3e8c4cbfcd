namespace Ddpm.Tensors;

/// <summary>
/// The whole batch that the work on this thread is a part of: a data-parallel rank's shard or a micro-batch of
/// gradient accumulation. A backend that picks an algorithm by the batch (the CPU backend's Winograd convolutions
/// pay only from enough tiles per call) picks by <see cref="Whole"/> rather than by the part it is given, so every
/// part runs each sample through the same arithmetic as the whole batch does, and a split run differs from the
/// whole one only in the order its sums over the batch add up. Scopes nest; the innermost one counts.
/// </summary>
public static class BatchScope
{
    [ThreadStatic] private static int _whole;

    /// <summary>The size of the whole batch inside an <see cref="Of"/> scope on this thread; 0 outside one.</summary>
    public static int Whole => _whole;

    /// <summary>Until the returned handle is disposed, the work on this thread is part of a batch of <paramref name="whole"/> samples.</summary>
    public static IDisposable Of(int whole)
    {
        if (whole <= 0) throw new ArgumentOutOfRangeException(nameof(whole), $"A whole batch of {whole} samples is not positive.");
        return new Scope(whole);
    }

    /// <summary>The batch an algorithm choice for <paramref name="n"/> samples is made for: the whole batch inside a scope (at least n).</summary>
    public static int For(int n) => Math.Max(n, _whole);

    private sealed class Scope : IDisposable
    {
        private readonly int _previous;
        private bool _done;

        public Scope(int whole)
        {
            _previous = _whole;
            _whole = whole;
        }

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _whole = _previous;
        }
    }
}
