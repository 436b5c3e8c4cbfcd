namespace Ddpm.Tensors.Nn;

/// <summary>Where one parameter lives in its store's flat buffers: elements [Offset, Offset + Size).</summary>
public readonly record struct ParameterSlot(string Name, Parameter Parameter, int Offset, int Size);

/// <summary>
/// One contiguous buffer per kind of training state. <see cref="Adopt(Module)"/> moves a model's parameters
/// into one <see cref="Parameters"/> buffer in state_dict order, each <see cref="Parameter"/> becoming a view of
/// its slot, and gives every parameter a gradient view of the same slot in <see cref="Gradients"/>, which the
/// backward pass writes. Optimiser moments and EMA weights are made with <see cref="CreateState"/> in the same
/// layout. So a whole-model update (Adam, EMA, clipping, a data-parallel all-reduce of the gradients) is one
/// op over one buffer, while checkpoints and layers still see the named tensors. Each slot starts at a multiple
/// of <see cref="SlotAlignment"/> floats (256 bytes, the alignment cuBLAS's vectorised and tensor-core kernels
/// want of a matrix); the padding between slots holds zeros in every buffer, which every whole-buffer op keeps.
/// </summary>
public sealed class ParameterStore : IDisposable
{
    /// <summary>Slot offsets are multiples of this many floats (256 bytes).</summary>
    public const int SlotAlignment = 64;

    private readonly ParameterSlot[] _slots;
    private DeviceBuffer? _parameters;
    private DeviceBuffer? _gradients;

    private ParameterStore(IBackend backend, ParameterSlot[] slots, int count, DeviceBuffer parameters, DeviceBuffer gradients)
    {
        Backend = backend;
        _slots = slots;
        Count = count;
        _parameters = parameters;
        _gradients = gradients;
    }

    /// <summary>The backend of the parameters (ops on the flat buffers go through it).</summary>
    public IBackend Backend { get; }

    /// <summary>The length of each flat buffer in floats: the slots and the padding between them.</summary>
    public int Count { get; }

    /// <summary>
    /// The (name, parameter, offset, size) table in state_dict order; slots follow each other in order, each at
    /// a multiple of <see cref="SlotAlignment"/> floats, with zero padding between them.
    /// </summary>
    public IReadOnlyList<ParameterSlot> Slots => _slots;

    /// <summary>All parameter values: [<see cref="Count"/>].</summary>
    public DeviceBuffer Parameters => _parameters ?? throw Disposed();

    /// <summary>
    /// All gradients: [<see cref="Count"/>]. After a backward pass and <see cref="CompleteGradients()"/> it holds
    /// the gradient of every parameter (zero for one the pass did not reach).
    /// </summary>
    public DeviceBuffer Gradients => _gradients ?? throw Disposed();

    public bool IsDisposed => _parameters is null;

    /// <summary>Moves every parameter of <paramref name="module"/> into a new store.</summary>
    public static ParameterStore Adopt(Module module) => Adopt(module.NamedParameters());

    /// <summary>
    /// Allocates the flat buffers, copies each parameter's values into its slot and rebinds the parameter to a
    /// view of that slot (its old memory is released). Parameters must share one backend, be distinct, and not
    /// belong to another live store; their gradients are cleared. The padding between slots is zero. The backend is
    /// told that the values buffer holds weights (<see cref="IBackend.HoldsWeights"/>).
    /// </summary>
    public static ParameterStore Adopt(IEnumerable<(string Name, Parameter Param)> parameters)
    {
        var list = parameters.ToList();
        if (list.Count == 0) throw new ArgumentException("A parameter store needs at least one parameter.");
        var backend = list[0].Param.Backend;
        var seen = new HashSet<Parameter>(ReferenceEqualityComparer.Instance);
        long total = 0;
        foreach (var (name, p) in list)
        {
            if (!ReferenceEquals(p.Backend, backend))
                throw new ArgumentException($"Parameter '{name}' is on backend '{p.Backend.Name}', the others on '{backend.Name}'.");
            if (p.IsDisposed) throw new ObjectDisposedException(name, $"Parameter '{name}' was disposed.");
            if (!seen.Add(p)) throw new ArgumentException($"Parameter '{name}' is listed twice.");
            if (p.Store is { IsDisposed: false })
                throw new InvalidOperationException($"Parameter '{name}' already lives in another parameter store.");
            total = Align(total) + p.Size;
        }
        if (total > int.MaxValue)
            throw new NotSupportedException($"The parameters hold {total} floats with their padding, more than one buffer can (2^31 - 1).");
        int count = (int)total;

        var values = backend.Allocate(count);
        DeviceBuffer? grads = null;
        try
        {
            grads = backend.Allocate(count);
            var slots = new ParameterSlot[list.Count];
            // The padding reads zero (whole-buffer ops such as Adam, the gradient norm and the all-reduce run over it).
            backend.Fill(0f, values, count);
            long offset = 0;
            for (int i = 0; i < list.Count; i++)
            {
                var (name, p) = list[i];
                offset = Align(offset);
                slots[i] = new ParameterSlot(name, p, (int)offset, p.Size);
                backend.Copy(p.Buffer, 0, p.Size, values, (int)offset);
                offset += p.Size;
            }
            // Zeroed once, so the slot of a parameter that never gets a gradient reads as zero without a fill per step.
            backend.Fill(0f, grads, count);
            backend.HoldsWeights(values);
            var store = new ParameterStore(backend, slots, count, values, grads);
            foreach (var s in slots)
            {
                var p = s.Parameter;
                p.ClearGrad();
                p.GradSlot?.Dispose();
                p.Rebind(backend.Slice(values, s.Offset, s.Size));
                p.GradSlotWritten = false;
                p.GradSlot = new Tensor(backend, p.Shape, backend.Slice(grads, s.Offset, s.Size), tracked: false) { Name = s.Name };
                p.Store = store;
            }
            return store;
        }
        catch
        {
            values.Release();
            grads?.Release();
            throw;
        }
    }

    private static long Align(long offset) => (offset + SlotAlignment - 1) / SlotAlignment * SlotAlignment;

    /// <summary>The slot index of <paramref name="p"/>, or -1 when it is not in this store.</summary>
    public int IndexOf(Parameter p)
    {
        for (int i = 0; i < _slots.Length; i++)
            if (ReferenceEquals(_slots[i].Parameter, p)) return i;
        return -1;
    }

    /// <summary>Whether <paramref name="parameters"/> are exactly this store's, in slot order.</summary>
    public bool Holds(IReadOnlyList<Parameter> parameters)
    {
        if (IsDisposed || parameters.Count != _slots.Length) return false;
        for (int i = 0; i < _slots.Length; i++)
            if (!ReferenceEquals(parameters[i], _slots[i].Parameter)) return false;
        return true;
    }

    /// <summary>
    /// A new flat buffer in this store's layout, filled with <paramref name="value"/> or, when
    /// <paramref name="copyParameters"/>, with the current parameter values; with one named view per slot.
    /// </summary>
    public FlatState CreateState(float value = 0f, bool copyParameters = false)
    {
        var buffer = Backend.Allocate(Count);
        if (copyParameters) Backend.Copy(Parameters, 0, Count, buffer, 0);
        else Backend.Fill(0f, buffer, Count);
        var views = new Tensor[_slots.Length];
        for (int i = 0; i < _slots.Length; i++)
        {
            var s = _slots[i];
            views[i] = new Tensor(Backend, s.Parameter.Shape, Backend.Slice(buffer, s.Offset, s.Size), tracked: false) { Name = s.Name };
            // Another value goes into the slots only: the padding stays zero.
            if (!copyParameters && value != 0f) Backend.Fill(value, views[i].Buffer, s.Size);
        }
        return new FlatState(buffer, Count, views);
    }

    /// <summary>
    /// Makes <see cref="Gradients"/> the whole gradient after a backward pass: zeroes the slot of each parameter
    /// whose gradient is null (not reached since the last ZeroGrad) and whose slot holds an older gradient (a
    /// slot never written is zero already). Returns whether every parameter had a gradient. Throws if a
    /// gradient was moved out of the buffer (replaced or disposed by other code).
    /// </summary>
    public bool CompleteGradients() => CompleteGradients(0, _slots.Length);

    /// <summary>
    /// <see cref="CompleteGradients()"/> for slots [<paramref name="firstSlot"/>, firstSlot + slotCount) only:
    /// what a part of the gradient buffer needs before it is sent while the backward pass still runs.
    /// </summary>
    public bool CompleteGradients(int firstSlot, int slotCount)
    {
        if (firstSlot < 0 || slotCount < 0 || firstSlot > _slots.Length - slotCount)
            throw new ArgumentOutOfRangeException(nameof(firstSlot), $"Slots [{firstSlot}, {firstSlot} + {slotCount}) are outside a store of {_slots.Length}.");
        bool all = true;
        for (int i = firstSlot; i < firstSlot + slotCount; i++)
        {
            var s = _slots[i];
            var p = s.Parameter;
            var slot = p.GradSlot;
            if (slot is null || slot.IsDisposed || p.Store != this)
                throw new InvalidOperationException($"The gradient view of parameter '{s.Name}' is gone (the parameter left the store or its gradient was disposed).");
            if (p.Grad is null)
            {
                all = false;
                if (p.GradSlotWritten) Backend.Fill(0f, slot.Buffer, s.Size);
                p.GradSlotWritten = false;
            }
            else if (!ReferenceEquals(p.Grad, slot))
                throw new InvalidOperationException($"The gradient of parameter '{s.Name}' is not in the store's gradient buffer (it was replaced).");
        }
        return all;
    }

    /// <summary>
    /// Maximal runs of adjacent slots whose parameters have a gradient (and are selected by
    /// <paramref name="include"/>, one flag per slot, when given), as (first slot, slot count, offset, length):
    /// what a step that skips parameters without a gradient (as PyTorch's optimisers do) updates. A run covers
    /// its slots and the padding between them; a run of every slot is the whole buffer.
    /// </summary>
    public List<(int First, int Slots, int Offset, int Length)> RunsWithGradient(IReadOnlyList<bool>? include = null)
    {
        if (include is not null && include.Count != _slots.Length)
            throw new ArgumentException($"{include.Count} flags for a store of {_slots.Length} parameters.", nameof(include));
        bool Take(int i) => _slots[i].Parameter.Grad is not null && (include is null || include[i]);
        var runs = new List<(int, int, int, int)>();
        int i = 0;
        while (i < _slots.Length)
        {
            if (!Take(i)) { i++; continue; }
            int first = i;
            while (i < _slots.Length && Take(i)) i++;
            var last = _slots[i - 1];
            runs.Add((first, i - first, _slots[first].Offset, last.Offset + last.Size - _slots[first].Offset));
        }
        return runs;
    }

    /// <summary>
    /// Releases the store's own references and the gradient views, and unlinks the parameters, which keep their
    /// values (each view holds the parameter buffer) and get per-tensor gradients again from then on.
    /// </summary>
    public void Dispose()
    {
        if (_parameters is null) return;
        foreach (var s in _slots)
        {
            var p = s.Parameter;
            if (p.Store != this) continue;
            if (ReferenceEquals(p.Grad, p.GradSlot)) p.Grad = null;
            p.GradSlot?.Dispose();
            p.GradSlot = null;
            p.GradSlotWritten = false;
            p.Store = null;
        }
        _parameters.Release();
        _gradients!.Release();
        _parameters = null;
        _gradients = null;
    }

    private ObjectDisposedException Disposed() => new(nameof(ParameterStore), "The parameter store was disposed.");
}

/// <summary>A flat buffer in a <see cref="ParameterStore"/>'s layout (Adam moments, EMA weights) and its per-parameter views.</summary>
public sealed class FlatState : IDisposable
{
    private DeviceBuffer? _buffer;

    internal FlatState(DeviceBuffer buffer, int count, Tensor[] views)
    {
        _buffer = buffer;
        Count = count;
        Views = views;
    }

    /// <summary>[<see cref="Count"/>] floats, slot i at the store's Slots[i].Offset.</summary>
    public DeviceBuffer Buffer => _buffer ?? throw new ObjectDisposedException(nameof(FlatState));

    public int Count { get; }

    /// <summary>One tensor per slot, shaped and named like its parameter, sharing <see cref="Buffer"/>.</summary>
    public IReadOnlyList<Tensor> Views { get; }

    public void Dispose()
    {
        if (_buffer is null) return;
        foreach (var v in Views) v.Dispose();
        _buffer.Release();
        _buffer = null;
    }
}
