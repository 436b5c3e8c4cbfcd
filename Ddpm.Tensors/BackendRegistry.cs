namespace Ddpm.Tensors;

/// <summary>Options every backend factory receives.</summary>
public sealed record BackendOptions
{
    /// <summary>Worker threads for CPU backends; 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>Allow TF32 tensor cores on GPUs (fast; off for parity runs).</summary>
    public bool AllowTf32 { get; init; }

    /// <summary>GPU ordinal.</summary>
    public int Device { get; init; }
}

/// <summary>
/// Backends by name. An instance is built by the program (the tool, a test) from the backend assemblies it
/// references; there is no global registry and no global current backend.
/// </summary>
public sealed class BackendRegistry
{
    private readonly Dictionary<string, (string Summary, Func<BackendOptions, IBackend> Factory)> _factories =
        new(StringComparer.OrdinalIgnoreCase);

    public BackendRegistry Register(string name, string summary, Func<BackendOptions, IBackend> factory)
    {
        _factories[name] = (summary, factory);
        return this;
    }

    public IEnumerable<(string Name, string Summary)> Available => _factories.Select(kv => (kv.Key, kv.Value.Summary));

    public bool Contains(string name) => _factories.ContainsKey(name);

    public IBackend Create(string name, BackendOptions? options = null)
    {
        if (!_factories.TryGetValue(name, out var f))
            throw new ArgumentException($"Unknown backend '{name}'. Known: {string.Join(", ", _factories.Keys)}.");
        return f.Factory(options ?? new BackendOptions());
    }
}
