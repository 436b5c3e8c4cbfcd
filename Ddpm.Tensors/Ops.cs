namespace Ddpm.Tensors;

/// <summary>
/// The differentiable operations. Each computes its forward on the input's backend and records its backward
/// on the tape (<see cref="Autograd.Record"/>). Shapes are given as <c>// x: [N, C, H, W]</c>.
/// </summary>
public static partial class Ops
{
    private static IBackend SameBackend(Tensor a, Tensor b, string op)
    {
        if (!ReferenceEquals(a.Backend, b.Backend))
            throw new ArgumentException($"{op}: {a.Describe()} and {b.Describe()} live on different backends.");
        return a.Backend;
    }

    private static int[] PadTo(Shape s, int rank)
    {
        var r = new int[rank];
        int pad = rank - s.Rank;
        for (int i = 0; i < rank; i++) r[i] = i < pad ? 1 : s[i - pad];
        return r;
    }

    // ---- broadcasting arithmetic ----------------------------------------------------------------------

    public static Tensor Add(Tensor a, Tensor b) => Binary(BinaryOp.Add, a, b);
    public static Tensor Sub(Tensor a, Tensor b) => Binary(BinaryOp.Sub, a, b);
    public static Tensor Mul(Tensor a, Tensor b) => Binary(BinaryOp.Mul, a, b);
    public static Tensor Div(Tensor a, Tensor b) => Binary(BinaryOp.Div, a, b);

    /// <summary>y = a op b with NumPy broadcasting (e.g. [N,C,H,W] with [C,1,1], [N,1,1,1] or [1]).</summary>
    public static Tensor Binary(BinaryOp op, Tensor a, Tensor b)
    {
        var be = SameBackend(a, b, op.ToString());
        var shape = Shape.Broadcast(a.Shape, b.Shape);
        var y = Tensor.Empty(be, shape);
        be.Binary(op, a.Buffer, PadTo(a.Shape, shape.Rank), b.Buffer, PadTo(b.Shape, shape.Rank), y.Buffer, shape.Dims);
        return Autograd.Record(op.ToString(), y, [a, b], g =>
        {
            Tensor? ga = null, gb = null;
            switch (op)
            {
                case BinaryOp.Add:
                    if (a.RequiresGrad) ga = SumTo(g, a.Shape);
                    if (b.RequiresGrad) gb = SumTo(g, b.Shape);
                    break;
                case BinaryOp.Sub:
                    if (a.RequiresGrad) ga = SumTo(g, a.Shape);
                    if (b.RequiresGrad) { using var s = SumTo(g, b.Shape); gb = Affine(s, -1f, 0f); }
                    break;
                case BinaryOp.Mul:
                    if (a.RequiresGrad) { using var t = Mul(g, b); ga = SumTo(t, a.Shape); }
                    if (b.RequiresGrad) { using var t = Mul(g, a); gb = SumTo(t, b.Shape); }
                    break;
                case BinaryOp.Div:
                    if (a.RequiresGrad) { using var t = Div(g, b); ga = SumTo(t, a.Shape); }
                    if (b.RequiresGrad)
                    {
                        // d(a/b)/db = -(a/b)/b = -y/b
                        using var t1 = Mul(g, y);
                        using var t2 = Div(t1, b);
                        using var s = SumTo(t2, b.Shape);
                        gb = Affine(s, -1f, 0f);
                    }
                    break;
            }
            return [ga, gb];
        });
    }

    /// <summary>Sums x down to <paramref name="shape"/> (the reverse of broadcasting). A view when equal.</summary>
    public static Tensor SumTo(Tensor x, Shape shape)
    {
        if (x.Shape == shape) return Reshape(x, shape);
        var be = x.Backend;
        var padded = PadTo(shape, x.Rank);
        for (int i = 0; i < x.Rank; i++)
            if (padded[i] != 1 && padded[i] != x.Shape[i])
                throw new ArgumentException($"SumTo: {x.Describe()} cannot be reduced to {shape}.");
        if (shape.Rank > x.Rank) throw new ArgumentException($"SumTo: {shape} has a higher rank than {x.Describe()}.");
        var y = Tensor.Empty(be, shape);
        be.SumToShape(x.Buffer, x.Shape.Dims, y.Buffer, padded);
        var xs = x.Shape;
        return Autograd.Record("SumTo", y, [x], g => [Expand(g, xs)]);
    }

    /// <summary>Broadcasts x to <paramref name="shape"/> (materialised).</summary>
    public static Tensor Expand(Tensor x, Shape shape)
    {
        if (x.Shape == shape) return Reshape(x, shape);
        var be = x.Backend;
        using var zeros = Tensor.Zeros(be, new Shape(1));
        var y = Tensor.Empty(be, shape);
        be.Binary(BinaryOp.Add, x.Buffer, PadTo(x.Shape, shape.Rank), zeros.Buffer, PadTo(zeros.Shape, shape.Rank), y.Buffer, shape.Dims);
        var xs = x.Shape;
        return Autograd.Record("Expand", y, [x], g => [SumTo(g, xs)]);
    }

    /// <summary>y = x * scale + shift.</summary>
    public static Tensor Affine(Tensor x, float scale, float shift)
    {
        var y = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.Affine(x.Buffer, x.Size, scale, shift, y.Buffer);
        return Autograd.Record("Affine", y, [x], g =>
        {
            var gx = Tensor.Empty(g.Backend, g.Shape);
            g.Backend.Affine(g.Buffer, g.Size, scale, 0f, gx.Buffer);
            return [gx];
        });
    }

    // ---- unary ---------------------------------------------------------------------------------------

    public static Tensor Neg(Tensor x) => Unary(UnaryOp.Neg, x);
    public static Tensor Exp(Tensor x) => Unary(UnaryOp.Exp, x);
    public static Tensor Log(Tensor x) => Unary(UnaryOp.Log, x);
    public static Tensor Sin(Tensor x) => Unary(UnaryOp.Sin, x);
    public static Tensor Cos(Tensor x) => Unary(UnaryOp.Cos, x);
    public static Tensor Sqrt(Tensor x) => Unary(UnaryOp.Sqrt, x);
    public static Tensor Square(Tensor x) => Unary(UnaryOp.Square, x);
    public static Tensor Sigmoid(Tensor x) => Unary(UnaryOp.Sigmoid, x);
    public static Tensor Silu(Tensor x) => Unary(UnaryOp.Silu, x);
    public static Tensor Tanh(Tensor x) => Unary(UnaryOp.Tanh, x);
    public static Tensor Relu(Tensor x) => Unary(UnaryOp.Relu, x);
    public static Tensor Abs(Tensor x) => Unary(UnaryOp.Abs, x);

    public static Tensor Unary(UnaryOp op, Tensor x)
    {
        var y = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.Unary(op, x.Buffer, x.Size, y.Buffer);
        return Autograd.Record(op.ToString(), y, [x], g =>
        {
            var gx = Tensor.Empty(g.Backend, g.Shape);
            g.Backend.UnaryBackward(op, x.Buffer, y.Buffer, g.Buffer, g.Size, gx.Buffer);
            return [gx];
        });
    }

    /// <summary>clamp(x, lo, hi); not differentiable (used when sampling, under no-grad).</summary>
    public static Tensor Clamp(Tensor x, float lo, float hi)
    {
        if (GradMode.IsEnabled && x.RequiresGrad)
            throw new NotSupportedException($"Clamp of {x.Describe()} is not differentiable; call it under GradMode.NoGrad().");
        var y = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.Clamp(x.Buffer, x.Size, lo, hi, y.Buffer);
        return y;
    }

    // ---- reductions and losses -----------------------------------------------------------------------

    /// <summary>Sum of all elements, shape [1].</summary>
    public static Tensor Sum(Tensor x) => SumTo(Reshape(x, new Shape(x.Size)), new Shape(1));

    /// <summary>Mean of all elements, shape [1].</summary>
    public static Tensor Mean(Tensor x)
    {
        using var s = Sum(x);
        return Affine(s, 1f / x.Size, 0f);
    }

    /// <summary>Sum over one dimension, keeping it with size 1 when <paramref name="keepDim"/>.</summary>
    public static Tensor Sum(Tensor x, int dim, bool keepDim = false)
    {
        int d = x.Shape.Axis(dim);
        var kept = x.Shape.With(d, 1);
        var s = SumTo(x, kept);
        if (keepDim) return s;
        var dims = x.Shape.ToArray().ToList();
        dims.RemoveAt(d);
        using (s) return Reshape(s, new Shape(dims.ToArray()));
    }

    /// <summary>Mean squared error over all elements, shape [1] (PyTorch's mse_loss with reduction mean).</summary>
    public static Tensor MseLoss(Tensor prediction, Tensor target)
    {
        if (prediction.Shape != target.Shape)
            throw new ArgumentException($"MseLoss: {prediction.Describe()} and {target.Describe()} differ in shape.");
        using var d = Sub(prediction, target);
        using var sq = Square(d);
        return Mean(sq);
    }

    /// <summary>
    /// Mean cross-entropy of class scores against integer labels, shape [1] (PyTorch's cross_entropy with
    /// reduction mean). logits: [N, K], labels: N host integers in [0, K).
    /// The probabilities come from the backend's softmax, which subtracts each row's maximum, so large logits
    /// neither overflow nor give NaN. A label probability below float's smallest normal value is clamped to it,
    /// so the loss saturates at -log(1.18e-38) = 87.3 for that sample instead of becoming infinite; the
    /// gradient (softmax - onehot) / N is exact everywhere.
    /// </summary>
    public static Tensor CrossEntropy(Tensor logits, ReadOnlySpan<int> labels)
    {
        const float SmallestNormal = 1.17549435e-38f;
        if (logits.Rank != 2) throw new ArgumentException($"CrossEntropy needs logits [N, K]; got {logits.Describe()}.");
        int n = logits.Shape[0], k = logits.Shape[1];
        if (labels.Length != n) throw new ArgumentException($"CrossEntropy: {labels.Length} labels for {logits.Describe()}.");
        // Flat positions i * K + label_i of each sample's own class in the [N, K] buffer.
        var picks = new int[n];
        for (int i = 0; i < n; i++)
        {
            if ((uint)labels[i] >= (uint)k) throw new ArgumentOutOfRangeException(nameof(labels), $"Label {labels[i]} of sample {i} is outside [0, {k}).");
            picks[i] = i * k + labels[i];
        }
        var be = logits.Backend;
        var p = Tensor.Empty(be, logits.Shape);
        be.SoftmaxForward(logits.Buffer, n, k, 1, p.Buffer);
        var loss = Tensor.Empty(be, new Shape(1));
        using (var logp = Tensor.Empty(be, new Shape(n)))
        {
            be.IndexSelect(p.Buffer, n * k, 1, picks, logp.Buffer);
            be.Clamp(logp.Buffer, n, SmallestNormal, 1f, logp.Buffer);
            be.Unary(UnaryOp.Log, logp.Buffer, n, logp.Buffer);
            be.SumToShape(logp.Buffer, [n], loss.Buffer, [1]);
            be.Affine(loss.Buffer, 1, -1f / n, 0f, loss.Buffer);
        }
        return Autograd.Record("CrossEntropy", loss, [logits], g =>
        {
            // d loss / d logits = g * (p - onehot) / N.
            var gx = Tensor.Empty(be, logits.Shape);
            be.Copy(p.Buffer, 0, n * k, gx.Buffer, 0);
            using (var minusOne = Tensor.Full(be, new Shape(n), -1f))
                be.IndexAdd(minusOne.Buffer, 1, picks, gx.Buffer, n * k);
            be.Binary(BinaryOp.Mul, gx.Buffer, [n, k], g.Buffer, [1, 1], gx.Buffer, [n, k]);
            be.Affine(gx.Buffer, n * k, 1f / n, 0f, gx.Buffer);
            return [gx];
        });
    }

    // ---- shape ---------------------------------------------------------------------------------------

    /// <summary>A view with another shape (one entry may be -1); shares memory.</summary>
    public static Tensor Reshape(Tensor x, params int[] shape) => Reshape(x, x.Shape.Reshape(shape));

    public static Tensor Reshape(Tensor x, Shape shape)
    {
        if (shape.Size != x.Size) throw new ArgumentException($"Cannot reshape {x.Describe()} to {shape}.");
        var y = x.View(shape);
        var xs = x.Shape;
        return Autograd.Record("Reshape", y, [x], g => [g.View(xs)]);
    }

    /// <summary>y = x.permute(perm) (copy): y's dimension i is x's dimension perm[i].</summary>
    public static Tensor Permute(Tensor x, params int[] perm)
    {
        if (perm.Length != x.Rank) throw new ArgumentException($"Permute {Shape.Format(perm)} does not match {x.Describe()}.");
        var seen = new bool[perm.Length];
        var dims = new int[perm.Length];
        for (int i = 0; i < perm.Length; i++)
        {
            int p = perm[i];
            if (p < 0 || p >= perm.Length || seen[p]) throw new ArgumentException($"Permute {Shape.Format(perm)} is not a permutation.");
            seen[p] = true;
            dims[i] = x.Shape[p];
        }
        var y = Tensor.Empty(x.Backend, new Shape(dims));
        x.Backend.Permute(x.Buffer, x.Shape.Dims, perm, y.Buffer);
        var inverse = new int[perm.Length];
        for (int i = 0; i < perm.Length; i++) inverse[perm[i]] = i;
        return Autograd.Record("Permute", y, [x], g => [Permute(g, inverse)]);
    }

    public static Tensor Transpose(Tensor x, int dim0, int dim1)
    {
        var perm = Enumerable.Range(0, x.Rank).ToArray();
        int a = x.Shape.Axis(dim0), b = x.Shape.Axis(dim1);
        (perm[a], perm[b]) = (perm[b], perm[a]);
        return Permute(x, perm);
    }

    /// <summary>Concatenation along <paramref name="dim"/>; all other dimensions must agree.</summary>
    public static Tensor Concat(IReadOnlyList<Tensor> xs, int dim)
    {
        if (xs.Count == 0) throw new ArgumentException("Concat of no tensors.");
        var first = xs[0];
        int d = first.Shape.Axis(dim);
        int total = 0;
        foreach (var x in xs)
        {
            SameBackend(first, x, "Concat");
            if (x.Rank != first.Rank) throw new ArgumentException($"Concat: {x.Describe()} and {first.Describe()} differ in rank.");
            for (int i = 0; i < x.Rank; i++)
                if (i != d && x.Shape[i] != first.Shape[i])
                    throw new ArgumentException($"Concat along {d}: {x.Describe()} and {first.Describe()} differ in dimension {i}.");
            total += x.Shape[d];
        }
        var shape = first.Shape.With(d, total);
        var y = Tensor.Empty(first.Backend, shape);
        int outer = shape.Outer(d), inner = shape.Inner(d), start = 0;
        var starts = new int[xs.Count];
        for (int k = 0; k < xs.Count; k++)
        {
            starts[k] = start;
            first.Backend.CopySlice(xs[k].Buffer, xs[k].Shape[d], 0, outer, xs[k].Shape[d], inner, false, y.Buffer, total, start);
            start += xs[k].Shape[d];
        }
        var inputs = xs.ToArray();
        return Autograd.Record("Concat", y, inputs, g =>
        {
            var r = new Tensor?[inputs.Length];
            for (int k = 0; k < inputs.Length; k++)
                if (inputs[k].RequiresGrad) r[k] = NarrowNoGrad(g, d, starts[k], inputs[k].Shape[d]);
            return r;
        });
    }

    /// <summary>The slice [start, start+length) of <paramref name="dim"/> (copy).</summary>
    public static Tensor Narrow(Tensor x, int dim, int start, int length)
    {
        int d = x.Shape.Axis(dim);
        if (start < 0 || length < 0 || start + length > x.Shape[d])
            throw new ArgumentOutOfRangeException(nameof(start), $"Narrow [{start}, {start + length}) of dimension {d} of {x.Describe()}.");
        var y = NarrowNoGrad(x, d, start, length);
        var xs = x.Shape;
        return Autograd.Record("Narrow", y, [x], g =>
        {
            var gx = Tensor.Zeros(g.Backend, xs);
            g.Backend.CopySlice(g.Buffer, length, 0, xs.Outer(d), length, xs.Inner(d), true, gx.Buffer, xs[d], start);
            return [gx];
        });
    }

    /// <summary>Splits along <paramref name="dim"/> into pieces of the given sizes.</summary>
    public static Tensor[] Split(Tensor x, int dim, params int[] sizes)
    {
        int d = x.Shape.Axis(dim);
        if (sizes.Sum() != x.Shape[d]) throw new ArgumentException($"Split sizes {Shape.Format(sizes)} do not add up to dimension {d} of {x.Describe()}.");
        var r = new Tensor[sizes.Length];
        int start = 0;
        for (int i = 0; i < sizes.Length; i++) { r[i] = Narrow(x, d, start, sizes[i]); start += sizes[i]; }
        return r;
    }

    private static Tensor NarrowNoGrad(Tensor x, int d, int start, int length)
    {
        var y = Tensor.Empty(x.Backend, x.Shape.With(d, length));
        x.Backend.CopySlice(x.Buffer, x.Shape[d], start, x.Shape.Outer(d), length, x.Shape.Inner(d), false, y.Buffer, length, 0);
        return y;
    }

    /// <summary>
    /// Per-sample gather of the seed: y[i] = consts[indices[i]], consts: [T], y: [N]. Indices are host
    /// integers (timesteps); each is checked against T.
    /// </summary>
    public static Tensor Gather(Tensor consts, ReadOnlySpan<int> indices)
    {
        if (consts.Rank != 1) throw new ArgumentException($"Gather needs a 1-d table; got {consts.Describe()}.");
        int rows = consts.Size;
        foreach (int i in indices)
            if ((uint)i >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(indices), $"Index {i} is outside [0, {rows}) of {consts.Describe()}.");
        var idx = indices.ToArray();
        var y = Tensor.Empty(consts.Backend, new Shape(idx.Length));
        consts.Backend.IndexSelect(consts.Buffer, rows, 1, idx, y.Buffer);
        return Autograd.Record("Gather", y, [consts], g =>
        {
            var gc = Tensor.Zeros(g.Backend, new Shape(rows));
            g.Backend.IndexAdd(g.Buffer, 1, idx, gc.Buffer, rows);
            return [gc];
        });
    }
}
