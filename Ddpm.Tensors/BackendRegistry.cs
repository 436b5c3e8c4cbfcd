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

/// <summary>What a backend is, known from its registry entry before one is made (ggml's buffer-type <c>is_host</c>).</summary>
public sealed record BackendTraits
{
    /// <summary>Its tensors live in host memory (the machine's RAM bounds a run); false for a device with memory of its own.</summary>
    public bool HostMemory { get; init; } = true;

    /// <summary>For a backend of several devices: how many this process sees (a rank takes one by its local rank); null for one device.</summary>
    public Func<int>? VisibleDevices { get; init; }

    /// <summary>What this machine offers of the backend in one line ("available", or why not); null: always available.</summary>
    public Func<string>? Probe { get; init; }

    /// <summary>The arithmetic peak (GFLOP/s) of a backend made from this entry, measured on it, for efficiency figures; null when unknown.</summary>
    public Func<IBackend, double?>? PeakGflops { get; init; }
}

/// <summary>
/// Backends by name. An instance is built by the program (the tool, a test) from the backend assemblies it
/// references; there is no global registry and no global current backend.
/// </summary>
public sealed class BackendRegistry
{
    private readonly Dictionary<string, (string Summary, Func<BackendOptions, IBackend> Factory, BackendTraits Traits)> _factories =
        new(StringComparer.OrdinalIgnoreCase);

    public BackendRegistry Register(string name, string summary, Func<BackendOptions, IBackend> factory) =>
        Register(name, summary, factory, new BackendTraits());

    /// <summary>Registers a backend with what a program needs to know of it before it exists (<paramref name="traits"/>).</summary>
    public BackendRegistry Register(string name, string summary, Func<BackendOptions, IBackend> factory, BackendTraits traits)
    {
        _factories[name] = (summary, factory, traits);
        return this;
    }

    /// <summary>What backend <paramref name="name"/> is, before one is made.</summary>
    public BackendTraits Traits(string name) =>
        _factories.TryGetValue(name, out var f) ? f.Traits : throw new ArgumentException($"Unknown backend '{name}'. Known: {string.Join(", ", _factories.Keys)}.");

    public IEnumerable<(string Name, string Summary)> Available => _factories.Select(kv => (kv.Key, kv.Value.Summary));

    public bool Contains(string name) => _factories.ContainsKey(name);

    public IBackend Create(string name, BackendOptions? options = null)
    {
        if (!_factories.TryGetValue(name, out var f))
            throw new ArgumentException($"Unknown backend '{name}'. Known: {string.Join(", ", _factories.Keys)}.");
        return f.Factory(options ?? new BackendOptions());
    }
}
