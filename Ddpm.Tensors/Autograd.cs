namespace Ddpm.Tensors;

/// <summary>One recorded op: its inputs and the function from the output's gradient to theirs.</summary>
internal sealed class GradNode
{
    public GradNode(string op, Tensor[] inputs, Func<Tensor, Tensor?[]> backward)
    {
        Op = op;
        Inputs = inputs;
        BackwardFn = backward;
    }

    public string Op { get; }
    public Tensor[] Inputs { get; }
    public Func<Tensor, Tensor?[]> BackwardFn { get; }
}

/// <summary>The define-by-run tape: recording and the reverse topological walk.</summary>
public static class Autograd
{
    /// <summary>
    /// Attaches a backward function to <paramref name="output"/> when recording is on and an input needs
    /// gradients. The function returns one gradient per input (null where that input needs none), each with
    /// the input's shape; it must not return the incoming gradient object itself (return a view instead).
    /// </summary>
    internal static Tensor Record(string op, Tensor output, Tensor[] inputs, Func<Tensor, Tensor?[]> backward)
    {
        if (!GradMode.IsEnabled) return output;
        bool any = false;
        foreach (var i in inputs) any |= i.RequiresGrad;
        if (!any) return output;
        output.RequiresGrad = true;
        output.Node = new GradNode(op, inputs, backward);
        // The backward pass reads the inputs and the output: keep them alive until it has run.
        foreach (var i in inputs) i.Pin();
        output.Pin();
        return output;
    }

    /// <summary>
    /// The reverse walk from <paramref name="root"/>. With <paramref name="leafReady"/>, each leaf's incoming
    /// edges are counted first, and the leaf is accumulated (and reported) as soon as the last of them has been
    /// walked rather than at its own place in the order, which may come much later (a leaf listed before a deep
    /// input of its consumer is ordered after that input's whole subgraph). The sums are the same either way.
    /// </summary>
    internal static void Backward(Tensor root, Tensor? seed, Action<Tensor>? leafReady)
    {
        if (!root.RequiresGrad)
            throw new InvalidOperationException($"Backward from {root.Describe()}, which does not require gradients.");
        if (seed is null && root.Size != 1)
            throw new InvalidOperationException($"Backward from {root.Describe()} needs a gradient: it is not a single value.");
        if (seed is not null && seed.Shape != root.Shape)
            throw new ArgumentException($"Gradient {seed.Shape} does not match {root.Describe()}.");

        // Reverse topological order by an iterative depth-first search.
        var order = new List<Tensor>();
        var visited = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<(Tensor t, int next)>();
        stack.Push((root, 0));
        visited.Add(root);
        while (stack.Count > 0)
        {
            var (t, next) = stack.Pop();
            var inputs = t.Node?.Inputs;
            if (inputs is not null && next < inputs.Length)
            {
                stack.Push((t, next + 1));
                var child = inputs[next];
                if (child.RequiresGrad && visited.Add(child)) stack.Push((child, 0));
            }
            else order.Add(t);
        }

        // Edges still to be walked into each leaf (only when someone waits for leaves).
        Dictionary<Tensor, int>? pendingEdges = null;
        if (leafReady is not null)
        {
            pendingEdges = new Dictionary<Tensor, int>(ReferenceEqualityComparer.Instance);
            foreach (var t in order)
                if (t.Node is { } n)
                    foreach (var input in n.Inputs)
                        if (input.RequiresGrad && input.Node is null)
                            pendingEdges[input] = pendingEdges.GetValueOrDefault(input) + 1;
        }

        using var _ = GradMode.NoGrad();
        var grads = new Dictionary<Tensor, Tensor>(ReferenceEqualityComparer.Instance);
        grads[root] = seed?.Detach() ?? Tensor.Full(root.Backend, root.Shape, 1f);

        for (int idx = order.Count - 1; idx >= 0; idx--)
        {
            var t = order[idx];
            if (!grads.Remove(t, out var g)) continue;
            var node = t.Node;
            if (node is null)
            {
                // Without a callback every leaf is accumulated here; with one, only a leaf some of whose edges were
                // never walked (their node got no gradient), now that all nodes above it have run.
                FinishLeaf(t, g, leafReady);
                continue;
            }
            var inGrads = node.BackwardFn(g);
            g.Dispose();
            // The graph is consumed, as in PyTorch without retain_graph: drop references so memory can go.
            t.Node = null;
            foreach (var input in node.Inputs) input.Unpin();
            t.Unpin();
            for (int i = 0; i < node.Inputs.Length; i++)
            {
                var gi = inGrads[i];
                var input = node.Inputs[i];
                if (gi is not null)
                {
                    if (!input.RequiresGrad) { gi.Dispose(); continue; }
                    if (gi.Shape != input.Shape)
                        throw new InvalidOperationException($"Backward of {node.Op} gave a gradient {gi.Shape} for input {input.Describe()}.");
                    if (grads.TryGetValue(input, out var existing))
                    {
                        grads[input] = Ops.Add(existing, gi);
                        existing.Dispose();
                        gi.Dispose();
                    }
                    else grads[input] = gi;
                }
                if (pendingEdges is not null && pendingEdges.TryGetValue(input, out int left))
                {
                    if (left > 1) pendingEdges[input] = left - 1;
                    else
                    {
                        // The leaf's last contribution: final now. Removing it from grads skips its place in the order.
                        pendingEdges.Remove(input);
                        if (grads.Remove(input, out var gl)) FinishLeaf(input, gl, leafReady);
                    }
                }
            }
        }
    }

    private static void FinishLeaf(Tensor leaf, Tensor g, Action<Tensor>? leafReady)
    {
        AccumulateLeaf(leaf, g);
        g.Dispose();
        leafReady?.Invoke(leaf);
    }

    private static void AccumulateLeaf(Tensor leaf, Tensor g)
    {
        if (leaf.Grad is null && leaf is Nn.Parameter { GradSlot: { IsDisposed: false } slot } p)
        {
            // Flat storage: the first contribution since ZeroGrad is copied into the parameter's fixed place in
            // its store's gradient buffer, so that buffer is the whole gradient.
            leaf.Backend.Copy(g.Buffer, 0, g.Size, slot.Buffer, 0);
            leaf.Grad = slot;
            p.GradSlotWritten = true;
        }
        else if (leaf.Grad is null || leaf.Grad.IsDisposed)
        {
            var acc = Tensor.EmptyUntracked(leaf.Backend, leaf.Shape);
            leaf.Backend.Copy(g.Buffer, 0, g.Size, acc.Buffer, 0);
            leaf.Grad = acc;
        }
        else
        {
            leaf.Backend.Axpby(g.Buffer, g.Size, 1f, 1f, leaf.Grad.Buffer);
        }
    }
}
