namespace Ddpm.Tensors;

/// <summary>
/// Frees the temporaries of one unit of work (a training step, a sampling step) deterministically, so device
/// memory does not wait for the garbage collector. Every tensor created on this thread while the scope is the
/// innermost one is disposed with it, except those handed on with <see cref="Keep"/>. Scopes nest.
/// </summary>
public sealed class TensorScope : IDisposable
{
    [ThreadStatic] private static TensorScope? _current;

    private readonly List<Tensor> _tracked = new();
    private readonly TensorScope? _parent;
    private bool _disposed;

    public TensorScope()
    {
        _parent = _current;
        _current = this;
    }

    internal static TensorScope? Current => _current;

    internal void Track(Tensor t) => _tracked.Add(t);

    /// <summary>Hands <paramref name="t"/> to the enclosing scope (or to nobody) so it outlives this one.</summary>
    public T Keep<T>(T t) where T : Tensor
    {
        int i = _tracked.LastIndexOf(t);
        if (i >= 0)
        {
            _tracked[i] = _tracked[^1];
            _tracked.RemoveAt(_tracked.Count - 1);
            _parent?.Track(t);
        }
        return t;
    }

    public int Count => _tracked.Count;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_current != this)
            throw new InvalidOperationException("Tensor scopes must be disposed innermost first, on the thread that opened them.");
        _current = _parent;
        foreach (var t in _tracked) t.ForceDispose();
        _tracked.Clear();
    }
}

/// <summary>Thread-local switch for recording the autograd tape.</summary>
public static class GradMode
{
    [ThreadStatic] private static bool _disabled;

    public static bool IsEnabled => !_disabled;

    /// <summary>Turns recording off until the returned handle is disposed (sampling, evaluation, EMA).</summary>
    public static IDisposable NoGrad() => new Switch(false);

    public static IDisposable Enable() => new Switch(true);

    private sealed class Switch : IDisposable
    {
        private readonly bool _previous;
        private bool _done;

        public Switch(bool enabled)
        {
            _previous = _disabled;
            _disabled = !enabled;
        }

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _disabled = _previous;
        }
    }
}
