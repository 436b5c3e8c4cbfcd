namespace Ddpm.Tensors.Nn;

/// <summary>A trainable tensor: a leaf that requires gradients and that no scope disposes.</summary>
public sealed class Parameter : Tensor
{
    public Parameter(IBackend backend, Shape shape)
        : base(backend, shape, backend.Allocate(shape.Size), tracked: false)
    {
        RequiresGrad = true;
    }

    /// <summary>False for parameters that exist for name and count compatibility but never receive a gradient.</summary>
    public bool Used { get; init; } = true;

    /// <summary>The flat store this parameter's memory lives in (<see cref="ParameterStore.Adopt(Module)"/>), if any.</summary>
    public ParameterStore? Store { get; internal set; }

    /// <summary>
    /// With a store: the view of the store's gradient buffer that <see cref="Tensor.Grad"/> points to once the
    /// backward pass has written this parameter's gradient (Grad stays null until then, as without a store).
    /// Owned by the store; never disposed through Grad.
    /// </summary>
    internal Tensor? GradSlot { get; set; }

    /// <summary>Whether a backward pass wrote <see cref="GradSlot"/> since the store last zeroed it.</summary>
    internal bool GradSlotWritten { get; set; }

    /// <summary>Drops the gradient; a gradient held in a store's buffer stays there, only unlinked.</summary>
    internal void ClearGrad()
    {
        if (Grad is not null && !ReferenceEquals(Grad, GradSlot)) Grad.Dispose();
        Grad = null;
    }
}

/// <summary>
/// A layer or a tree of layers with PyTorch-style dotted parameter names (<c>down.0.res.conv1.weight</c>).
/// Children and parameters are listed in registration order, the order of PyTorch's state_dict.
/// </summary>
public abstract class Module : IDisposable
{
    private readonly List<(string Name, Parameter Param)> _params = new();
    private readonly List<(string Name, Module Child)> _children = new();

    public bool Training { get; private set; } = true;

    protected T Register<T>(string name, T child) where T : Module
    {
        if (_children.Any(c => c.Name == name) || _params.Any(p => p.Name == name))
            throw new InvalidOperationException($"{GetType().Name} already has a member named '{name}'.");
        _children.Add((name, child));
        return child;
    }

    protected Parameter Register(string name, Parameter p)
    {
        if (_children.Any(c => c.Name == name) || _params.Any(q => q.Name == name))
            throw new InvalidOperationException($"{GetType().Name} already has a member named '{name}'.");
        _params.Add((name, p));
        p.Name = name;
        return p;
    }

    /// <summary>All parameters with dotted names, in state_dict order.</summary>
    public IEnumerable<(string Name, Parameter Param)> NamedParameters(string prefix = "")
    {
        foreach (var (n, p) in _params) yield return (prefix + n, p);
        foreach (var (n, c) in _children)
            foreach (var x in c.NamedParameters(prefix + n + "."))
                yield return x;
    }

    public IEnumerable<Parameter> Parameters() => NamedParameters().Select(x => x.Param);

    public IEnumerable<(string Name, Module Child)> Children => _children;

    public long ParameterCount() => NamedParameters().Sum(p => (long)p.Param.Size);

    /// <summary>Sets training mode here and below (dropout active).</summary>
    public void Train(bool on = true)
    {
        Training = on;
        foreach (var (_, c) in _children) c.Train(on);
    }

    public void Eval() => Train(false);

    /// <summary>
    /// Clears all parameter gradients (Grad becomes null). Gradients in a flat store's buffer are not filled
    /// here: the next backward pass overwrites each one it reaches, and
    /// <see cref="ParameterStore.CompleteGradients()"/> zeroes the others.
    /// </summary>
    public void ZeroGrad()
    {
        foreach (var p in Parameters()) p.ClearGrad();
    }

    /// <summary>Visits this module and all below it.</summary>
    public IEnumerable<Module> Modules()
    {
        yield return this;
        foreach (var (_, c) in _children)
            foreach (var m in c.Modules()) yield return m;
    }

    public virtual void Dispose()
    {
        foreach (var (_, p) in _params) { p.ClearGrad(); p.Dispose(); }
        foreach (var (_, c) in _children) c.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>Modules named 0, 1, 2, ... like torch.nn.ModuleList.</summary>
public sealed class ModuleList : Module
{
    private readonly List<Module> _items = new();

    public void Add(Module m)
    {
        Register(_items.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), m);
        _items.Add(m);
    }

    public int Count => _items.Count;
    public Module this[int i] => _items[i];
    public IReadOnlyList<Module> Items => _items;
}

/// <summary>PyTorch's default initialisers, drawn from a Philox stream so that a seed fixes a model.</summary>
public static class Init
{
    /// <summary>U(-bound, bound) into p.</summary>
    public static void Uniform(Parameter p, float bound, PhiloxGenerator gen)
    {
        var be = p.Backend;
        be.FillUniform(gen.Seed, gen.Take(p.Size), p.Buffer, p.Size);
        be.Affine(p.Buffer, p.Size, 2f * bound, -bound, p.Buffer);
    }

    /// <summary>
    /// kaiming_uniform_(a = sqrt(5)) as PyTorch's Conv/Linear reset_parameters: gain = sqrt(2 / (1 + 5)),
    /// bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
    /// </summary>
    public static void KaimingUniformA5(Parameter p, int fanIn, PhiloxGenerator gen) =>
        Uniform(p, (float)(Math.Sqrt(2.0 / 6.0) * Math.Sqrt(3.0 / fanIn)), gen);

    public static void Constant(Parameter p, float value) => p.Backend.Fill(value, p.Buffer, p.Size);
}
