namespace Ddpm.Tensors;

/// <summary>
/// The arithmetic a backend uses for convolutions and matrix products. Storage is float32 in every mode (weights,
/// activations, gradients, Adam's moments, the EMA), and so are the other ops (norms, softmax, the optimiser, the loss).
/// </summary>
public enum Precision
{
    /// <summary>IEEE float32 products and sums: every backend, and the parity checks and golden tests.</summary>
    Fp32,

    /// <summary>
    /// Products of inputs rounded to TF32 (8-bit exponent, 10-bit mantissa) on tensor cores, summed in float32:
    /// CUDA on Ampere and later (older devices compute in float32). PyTorch's default for cuDNN convolutions.
    /// </summary>
    Tf32,

    /// <summary>
    /// Mixed precision as PyTorch's bfloat16 autocast: the operands of convolutions and matrix products (attention's
    /// included) are rounded to bfloat16 (8-bit exponent, 7-bit mantissa, to nearest even) and their products summed in
    /// float32; everything else, the weights the optimiser updates included, stays float32. CUDA.
    /// </summary>
    Bf16,
}

/// <summary>The precisions a backend can compute in, and the one its training and sampling use by default.</summary>
public sealed record BackendPrecisions(IReadOnlyList<Precision> Supported, Precision Default)
{
    /// <summary>float32 only: the CPU backends.</summary>
    public static BackendPrecisions Fp32Only { get; } = new([Precision.Fp32], Precision.Fp32);

    /// <summary>"fp32" as the command line and reports spell a precision.</summary>
    public static string Name(Precision p) => p.ToString().ToLowerInvariant();

    /// <summary>The precision named <paramref name="name"/> (fp32, tf32, bf16), or null.</summary>
    public static Precision? Parse(string name) =>
        Enum.GetValues<Precision>().Cast<Precision?>().FirstOrDefault(p => Name(p!.Value).Equals(name.Trim(), StringComparison.OrdinalIgnoreCase));
}

/// <summary>Options every backend factory receives.</summary>
public sealed record BackendOptions
{
    /// <summary>Worker threads for CPU backends; 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>The arithmetic of convolutions and matrix products (float32 unless a caller asks otherwise).</summary>
    public Precision Precision { get; init; } = Precision.Fp32;

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

    /// <summary>The precisions it computes in, and its default for training and sampling (float32 only unless set).</summary>
    public BackendPrecisions Precisions { get; init; } = BackendPrecisions.Fp32Only;
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
        _factories.TryGetValue(name, out var f) ? f.Traits : throw UnknownBackend(name);

    public IEnumerable<(string Name, string Summary)> Available => _factories.Select(kv => (kv.Key, kv.Value.Summary));

    public bool Contains(string name) => _factories.ContainsKey(name);

    /// <summary>The precisions backend <paramref name="name"/> computes in.</summary>
    public BackendPrecisions Precisions(string name) =>
        _factories.TryGetValue(name, out var f) ? f.Traits.Precisions : throw UnknownBackend(name);

    /// <summary>Backend <paramref name="name"/>; a precision it cannot compute in is refused with <see cref="NotSupportedException"/>.</summary>
    public IBackend Create(string name, BackendOptions? options = null)
    {
        if (!_factories.TryGetValue(name, out var f)) throw UnknownBackend(name);
        options ??= new BackendOptions();
        if (!f.Traits.Precisions.Supported.Contains(options.Precision))
            throw new NotSupportedException(
                $"Backend '{name}' computes in {string.Join(", ", f.Traits.Precisions.Supported.Select(BackendPrecisions.Name))} only, not {BackendPrecisions.Name(options.Precision)}.");
        return f.Factory(options);
    }

    private ArgumentException UnknownBackend(string name) =>
        new($"Unknown backend '{name}'. Known: {string.Join(", ", _factories.Keys)}.");
}
