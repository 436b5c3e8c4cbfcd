namespace Ddpm.Tensors;

/// <summary>
/// A float32, contiguous, row-major N-d array owned by one backend. Tensors made inside a
/// <see cref="TensorScope"/> are disposed with it; parameters and gradients live outside scopes. Host data
/// moves only through <see cref="FromArray"/>, <see cref="ToArray"/> and <see cref="CopyFrom(ReadOnlySpan{float})"/>.
/// </summary>
public class Tensor : IDisposable
{
    private DeviceBuffer? _buffer;

    internal Tensor(IBackend backend, Shape shape, DeviceBuffer buffer, bool tracked = true)
    {
        if (buffer.Length < shape.Size)
            throw new ArgumentException($"Buffer of {buffer.Length} floats is too small for shape {shape}.");
        Backend = backend;
        Shape = shape;
        _buffer = buffer;
        if (tracked) TensorScope.Current?.Track(this);
    }

    public IBackend Backend { get; }
    public Shape Shape { get; private set; }
    public int Size => Shape.Size;
    public int Rank => Shape.Rank;

    /// <summary>An optional label used in error messages and parity reports.</summary>
    public string? Name { get; set; }

    /// <summary>The backing memory; throws once the tensor is disposed.</summary>
    public DeviceBuffer Buffer => _buffer ?? throw new ObjectDisposedException(Describe(), "The tensor was disposed (its scope ended?).");

    public bool IsDisposed => _buffer is null;

    // ---- autograd state ---------------------------------------------------------------------------

    /// <summary>Whether gradients flow to this tensor (leaf) or through it (interior node).</summary>
    public bool RequiresGrad { get; set; }

    /// <summary>The accumulated gradient of a leaf after <see cref="Backward(Tensor?)"/>; lives outside scopes.</summary>
    public Tensor? Grad { get; set; }

    internal GradNode? Node { get; set; }

    public bool IsLeaf => Node is null;

    // ---- construction -----------------------------------------------------------------------------

    public static Tensor Empty(IBackend backend, Shape shape) => new(backend, shape, backend.Allocate(shape.Size));

    /// <summary>A tensor that no scope disposes (parameters, optimiser state, gradients).</summary>
    public static Tensor EmptyUntracked(IBackend backend, Shape shape) => new(backend, shape, backend.Allocate(shape.Size), tracked: false);

    public static Tensor Zeros(IBackend backend, Shape shape) => Full(backend, shape, 0f);

    public static Tensor Full(IBackend backend, Shape shape, float value)
    {
        var t = Empty(backend, shape);
        backend.Fill(value, t.Buffer, t.Size);
        return t;
    }

    public static Tensor FromArray(IBackend backend, ReadOnlySpan<float> data, params int[] shape)
    {
        var s = new Shape(shape);
        if (s.Size != data.Length)
            throw new ArgumentException($"{data.Length} values do not fill shape {s}.");
        var t = Empty(backend, s);
        backend.Upload(data, t.Buffer, 0);
        return t;
    }

    public static Tensor Scalar(IBackend backend, float value) => FromArray(backend, [value], 1);

    /// <summary>Standard normal noise from a Philox stream (advances the generator).</summary>
    public static Tensor RandN(IBackend backend, Shape shape, PhiloxGenerator gen)
    {
        var t = Empty(backend, shape);
        backend.FillNormal(gen.Seed, gen.Take(t.Size), t.Buffer, t.Size);
        return t;
    }

    /// <summary>Uniform [0,1) numbers from a Philox stream (advances the generator).</summary>
    public static Tensor RandU(IBackend backend, Shape shape, PhiloxGenerator gen)
    {
        var t = Empty(backend, shape);
        backend.FillUniform(gen.Seed, gen.Take(t.Size), t.Buffer, t.Size);
        return t;
    }

    // ---- host transfer ----------------------------------------------------------------------------

    /// <summary>Copies the values to the host (waits for queued work).</summary>
    public float[] ToArray()
    {
        var r = new float[Size];
        Backend.Download(Buffer, 0, r);
        return r;
    }

    /// <summary>The single value of a one-element tensor.</summary>
    public float Item()
    {
        if (Size != 1) throw new InvalidOperationException($"Item() needs one element; {Describe()} has {Size}.");
        Span<float> v = stackalloc float[1];
        Backend.Download(Buffer, 0, v);
        return v[0];
    }

    public void CopyFrom(ReadOnlySpan<float> data)
    {
        if (data.Length != Size) throw new ArgumentException($"{data.Length} values do not fill {Describe()}.");
        Backend.Upload(data, Buffer, 0);
    }

    /// <summary>Copies another tensor's values into this one (same element count, same backend).</summary>
    public void CopyFrom(Tensor src)
    {
        if (src.Size != Size) throw new ArgumentException($"Cannot copy {src.Describe()} into {Describe()}.");
        Backend.Copy(src.Buffer, 0, Size, Buffer, 0);
    }

    // ---- autograd entry points ------------------------------------------------------------------------

    /// <summary>Back-propagates from this tensor (a one-element loss unless a gradient is given).</summary>
    public void Backward(Tensor? gradient = null) => Autograd.Backward(this, gradient, null);

    /// <summary>
    /// Back-propagates as <see cref="Backward(Tensor?)"/>, and calls <paramref name="leafReady"/> once for each
    /// leaf that receives a gradient, as soon as its last contribution has been accumulated into
    /// <see cref="Grad"/>, while the rest of the pass still runs (so its gradient can be sent on meanwhile).
    /// </summary>
    public void Backward(Tensor? gradient, Action<Tensor> leafReady)
    {
        ArgumentNullException.ThrowIfNull(leafReady);
        Autograd.Backward(this, gradient, leafReady);
    }

    /// <summary>A tensor sharing this one's memory with no autograd history.</summary>
    public Tensor Detach()
    {
        Buffer.Retain();
        return new Tensor(Backend, Shape, Buffer);
    }

    /// <summary>A new tensor that shares memory with this one under another shape (no copy).</summary>
    internal Tensor View(Shape shape)
    {
        Buffer.Retain();
        return new Tensor(Backend, shape, Buffer);
    }

    /// <summary>
    /// Moves this tensor onto <paramref name="buffer"/> (whose reference it takes over), releasing the memory it
    /// held. Used to put parameters into one flat buffer; the caller has copied the values across.
    /// </summary>
    internal void Rebind(DeviceBuffer buffer)
    {
        if (buffer.Length < Shape.Size)
            throw new ArgumentException($"Buffer of {buffer.Length} floats is too small for {Describe()}.");
        var old = _buffer ?? throw new ObjectDisposedException(Describe(), "Cannot move a disposed tensor to new memory.");
        _buffer = buffer;
        old.Release();
    }

    /// <summary>Overwrites the shape in place; only for buffers whose shape is known to be reinterpreted.</summary>
    internal void SetShape(Shape s)
    {
        if (s.Size != Shape.Size) throw new ArgumentException($"Cannot reinterpret {Describe()} as {s}.");
        Shape = s;
    }

    public string Describe() => $"tensor{(Name is null ? "" : " '" + Name + "'")} {Shape} on {Backend.Name}";

    public override string ToString() => Describe();

    private int _pins;
    private bool _disposeRequested;

    /// <summary>
    /// Releases the memory, or, while the autograd tape still needs this tensor for a backward pass that has
    /// not run yet, defers the release until it has. So forward code can dispose its temporaries eagerly in
    /// both grad and no-grad mode.
    /// </summary>
    public void Dispose()
    {
        if (_pins > 0) { _disposeRequested = true; return; }
        ReleaseNow();
    }

    /// <summary>Releases now, whatever the tape holds (end of a scope).</summary>
    internal void ForceDispose()
    {
        _pins = 0;
        ReleaseNow();
    }

    internal void Pin() => _pins++;

    internal void Unpin()
    {
        if (_pins > 0 && --_pins == 0 && _disposeRequested) ReleaseNow();
    }

    private void ReleaseNow()
    {
        var b = Interlocked.Exchange(ref _buffer, null);
        b?.Release();
        Node = null;
        GC.SuppressFinalize(this);
    }

    // ---- operators ------------------------------------------------------------------------------------
    public static Tensor operator +(Tensor a, Tensor b) => Ops.Add(a, b);
    public static Tensor operator -(Tensor a, Tensor b) => Ops.Sub(a, b);
    public static Tensor operator *(Tensor a, Tensor b) => Ops.Mul(a, b);
    public static Tensor operator /(Tensor a, Tensor b) => Ops.Div(a, b);
    public static Tensor operator +(Tensor a, float s) => Ops.Affine(a, 1f, s);
    public static Tensor operator -(Tensor a, float s) => Ops.Affine(a, 1f, -s);
    public static Tensor operator *(Tensor a, float s) => Ops.Affine(a, s, 0f);
    public static Tensor operator *(float s, Tensor a) => Ops.Affine(a, s, 0f);
    public static Tensor operator /(Tensor a, float s) => Ops.Affine(a, 1f / s, 0f);
    public static Tensor operator -(Tensor a) => Ops.Affine(a, -1f, 0f);
}
