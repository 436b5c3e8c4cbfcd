namespace Ddpm.Tensors;

public static partial class Ops
{
    /// <summary>
    /// Batched matrix product. a: [B, M, K] (or [B, K, M] when transA), b: [B, K, N] (or [B, N, K] when
    /// transB) -> [B, M, N]. Rank-2 operands are a batch of one.
    /// </summary>
    public static Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false)
    {
        var be = SameBackend(a, b, "MatMul");
        if (a.Rank != b.Rank || (a.Rank != 2 && a.Rank != 3))
            throw new ArgumentException($"MatMul needs two rank-2 or two rank-3 tensors; got {a.Describe()} and {b.Describe()}.");
        bool batched = a.Rank == 3;
        int batch = batched ? a.Shape[0] : 1;
        if (batched && b.Shape[0] != batch) throw new ArgumentException($"MatMul batch sizes differ: {a.Describe()} and {b.Describe()}.");
        int ar = a.Shape[-2], ac = a.Shape[-1], br = b.Shape[-2], bc = b.Shape[-1];
        int m = transA ? ac : ar, k = transA ? ar : ac;
        int kb = transB ? bc : br, n = transB ? br : bc;
        if (k != kb) throw new ArgumentException($"MatMul inner sizes differ: {a.Describe()}{(transA ? "^T" : "")} x {b.Describe()}{(transB ? "^T" : "")}.");
        var y = Tensor.Empty(be, batched ? new Shape(batch, m, n) : new Shape(m, n));
        be.Gemm(transA, transB, a.Buffer, (long)ar * ac, b.Buffer, (long)br * bc, batch, m, n, k, 1f, 0f, y.Buffer, (long)m * n);
        return Autograd.Record("MatMul", y, [a, b], g =>
        {
            Tensor? ga = null, gb = null;
            // C = A B:    dA = G B^T, dB = A^T G;   C = A^T B: dA = B G^T, dB = A G
            // C = A B^T:  dA = G B,   dB = G^T A;   C = A^T B^T: dA = B^T G^T, dB = G^T A^T
            if (a.RequiresGrad)
                ga = transA ? MatMul(b, g, transB, true) : MatMul(g, b, false, !transB);
            if (b.RequiresGrad)
                gb = transB ? MatMul(g, a, true, transA) : MatMul(a, g, !transA, false);
            return [ga, gb];
        });
    }

    /// <summary>y = x W^T + b. x: [..., in], weight: [out, in], bias: [out] or null -> [..., out].</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias)
    {
        int inF = weight.Shape[1], outF = weight.Shape[0];
        if (weight.Rank != 2 || x.Shape[-1] != inF)
            throw new ArgumentException($"Linear: input {x.Describe()} does not match weight {weight.Describe()}.");
        int rows = x.Size / inF;
        var outDims = x.Shape.ToArray();
        outDims[^1] = outF;
        using var x2 = Reshape(x, new Shape(rows, inF));
        using var y2 = MatMul(x2, weight, false, true);
        Tensor y = Reshape(y2, new Shape(outDims));
        if (bias is null) return y;
        using (y) return Add(y, bias);
    }

    private static ConvGeometry Geometry(Tensor x, Tensor w, int stride, int padding, bool transposed)
    {
        if (x.Rank != 4 || w.Rank != 4)
            throw new ArgumentException($"Convolution needs [N,C,H,W] input and 4-d weight; got {x.Describe()} and {w.Describe()}.");
        if (!transposed)
        {
            if (w.Shape[1] != x.Shape[1])
                throw new ArgumentException($"Conv2d: input {x.Describe()} has {x.Shape[1]} channels, weight {w.Describe()} expects {w.Shape[1]}.");
            var g = new ConvGeometry(x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3], w.Shape[0], w.Shape[2], w.Shape[3], stride, stride, padding, padding);
            g.Validate();
            return g;
        }
        // Transposed: x [N, Cin, H, W], w [Cin, Cout, KH, KW]; it is the data-gradient of a convolution whose
        // input is y [N, Cout, OH, OW] and whose output is x.
        if (w.Shape[0] != x.Shape[1])
            throw new ArgumentException($"ConvTranspose2d: input {x.Describe()} has {x.Shape[1]} channels, weight {w.Describe()} expects {w.Shape[0]}.");
        int oh = (x.Shape[2] - 1) * stride - 2 * padding + w.Shape[2];
        int ow = (x.Shape[3] - 1) * stride - 2 * padding + w.Shape[3];
        var tg = new ConvGeometry(x.Shape[0], w.Shape[1], oh, ow, w.Shape[0], w.Shape[2], w.Shape[3], stride, stride, padding, padding);
        tg.Validate();
        if (tg.OH != x.Shape[2] || tg.OW != x.Shape[3])
            throw new ArgumentException($"ConvTranspose2d geometry of {x.Describe()} with {w.Describe()} is not invertible.");
        return tg;
    }

    /// <summary>y [N,O,OH,OW] = conv2d(x [N,C,H,W], weight [O,C,KH,KW]) + bias [O].</summary>
    public static Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride = 1, int padding = 0)
    {
        var be = SameBackend(x, weight, "Conv2d");
        var geo = Geometry(x, weight, stride, padding, false);
        var y = Tensor.Empty(be, new Shape(geo.N, geo.O, geo.OH, geo.OW));
        be.Conv2dForward(x.Buffer, weight.Buffer, bias?.Buffer, geo, y.Buffer);
        Tensor[] inputs = bias is null ? [x, weight] : [x, weight, bias];
        return Autograd.Record("Conv2d", y, inputs, g =>
        {
            var r = new Tensor?[inputs.Length];
            if (x.RequiresGrad)
            {
                r[0] = Tensor.Empty(be, x.Shape);
                be.Conv2dBackwardData(g.Buffer, weight.Buffer, geo, r[0]!.Buffer);
            }
            bool wantBias = bias is not null && bias.RequiresGrad;
            if (weight.RequiresGrad || wantBias)
            {
                var gw = Tensor.Empty(be, weight.Shape);
                var gb = wantBias ? Tensor.Empty(be, bias!.Shape) : null;
                be.Conv2dBackwardWeight(x.Buffer, g.Buffer, geo, gw.Buffer, gb?.Buffer);
                if (weight.RequiresGrad) r[1] = gw; else gw.Dispose();
                if (gb is not null) r[2] = gb;
            }
            return r;
        });
    }

    /// <summary>
    /// Transposed convolution (PyTorch ConvTranspose2d, output_padding 0): x [N,Cin,H,W], weight
    /// [Cin,Cout,KH,KW], bias [Cout] -> [N, Cout, (H-1)s - 2p + KH, (W-1)s - 2p + KW].
    /// </summary>
    public static Tensor ConvTranspose2d(Tensor x, Tensor weight, Tensor? bias, int stride = 1, int padding = 0)
    {
        var be = SameBackend(x, weight, "ConvTranspose2d");
        var geo = Geometry(x, weight, stride, padding, true);
        var y = Tensor.Empty(be, new Shape(geo.N, geo.C, geo.H, geo.W));
        be.Conv2dBackwardData(x.Buffer, weight.Buffer, geo, y.Buffer);
        if (bias is not null)
        {
            if (bias.Rank != 1 || bias.Size != geo.C) throw new ArgumentException($"ConvTranspose2d: bias {bias.Describe()} does not have {geo.C} entries.");
            be.Binary(BinaryOp.Add, y.Buffer, y.Shape.Dims, bias.Buffer, [1, geo.C, 1, 1], y.Buffer, y.Shape.Dims);
        }
        Tensor[] inputs = bias is null ? [x, weight] : [x, weight, bias];
        return Autograd.Record("ConvTranspose2d", y, inputs, g =>
        {
            var r = new Tensor?[inputs.Length];
            if (x.RequiresGrad)
            {
                r[0] = Tensor.Empty(be, x.Shape);
                be.Conv2dForward(g.Buffer, weight.Buffer, null, geo, r[0]!.Buffer);
            }
            if (weight.RequiresGrad)
            {
                r[1] = Tensor.Empty(be, weight.Shape);
                be.Conv2dBackwardWeight(g.Buffer, x.Buffer, geo, r[1]!.Buffer, null);
            }
            if (bias is not null && bias.RequiresGrad)
            {
                var gb = Tensor.Empty(be, new Shape(1, geo.C, 1, 1));
                be.SumToShape(g.Buffer, g.Shape.Dims, gb.Buffer, [1, geo.C, 1, 1]);
                gb.SetShape(bias.Shape);
                r[2] = gb;
            }
            return r;
        });
    }

    /// <summary>
    /// GroupNorm over x [N, C, ...] in <paramref name="groups"/> groups, affine gamma/beta [C]; with
    /// <paramref name="silu"/>, silu(GroupNorm(x)) as one op (one pass over the activation instead of two, and the
    /// normalised tensor is not kept for the backward pass). With <paramref name="shift"/> (N x C values, e.g.
    /// [N, C, 1, 1]) it normalises x + shift broadcast over the positions, without storing the sum.
    /// </summary>
    public static Tensor GroupNorm(Tensor x, int groups, Tensor gamma, Tensor beta, float eps = 1e-5f, bool silu = false, Tensor? shift = null)
    {
        var be = SameBackend(x, gamma, "GroupNorm");
        if (x.Rank < 2) throw new ArgumentException($"GroupNorm needs [N, C, ...]; got {x.Describe()}.");
        int n = x.Shape[0], c = x.Shape[1], hw = x.Size / Math.Max(1, n * c);
        if (groups <= 0 || c % groups != 0) throw new ArgumentException($"GroupNorm: {c} channels of {x.Describe()} do not split into {groups} groups.");
        if (gamma.Size != c || beta.Size != c) throw new ArgumentException($"GroupNorm: affine parameters {gamma.Describe()}, {beta.Describe()} do not have {c} entries.");
        if (shift is not null)
        {
            if (!ReferenceEquals(shift.Backend, be)) throw new ArgumentException("GroupNorm: the shift lives on another backend.");
            if (shift.Size != n * c) throw new ArgumentException($"GroupNorm: shift {shift.Describe()} does not have {n} x {c} entries.");
        }
        var y = Tensor.Empty(be, x.Shape);
        var mean = Tensor.Empty(be, new Shape(n, groups));
        var rstd = Tensor.Empty(be, new Shape(n, groups));
        be.GroupNormForward(x.Buffer, shift?.Buffer, gamma.Buffer, beta.Buffer, n, c, hw, groups, eps, silu, y.Buffer, mean.Buffer, rstd.Buffer);
        Tensor[] inputs = shift is null ? [x, gamma, beta] : [x, gamma, beta, shift];
        return Autograd.Record(silu ? "GroupNormSilu" : "GroupNorm", y, inputs, g =>
        {
            var gx = Tensor.Empty(be, x.Shape);
            var gg = Tensor.Empty(be, gamma.Shape);
            var gbt = Tensor.Empty(be, beta.Shape);
            be.GroupNormBackward(g.Buffer, x.Buffer, shift?.Buffer, gamma.Buffer, beta.Buffer, mean.Buffer, rstd.Buffer, n, c, hw, groups, silu, gx.Buffer, gg.Buffer, gbt.Buffer);
            if (shift is not null) return [gx, gg, gbt, SumTo(gx, shift.Shape)];
            return [gx, gg, gbt];
        });
    }

    /// <summary>Softmax over <paramref name="dim"/>.</summary>
    public static Tensor Softmax(Tensor x, int dim)
    {
        int d = x.Shape.Axis(dim);
        int outer = x.Shape.Outer(d), len = x.Shape[d], inner = x.Shape.Inner(d);
        var y = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.SoftmaxForward(x.Buffer, outer, len, inner, y.Buffer);
        return Autograd.Record("Softmax", y, [x], g =>
        {
            var gx = Tensor.Empty(g.Backend, g.Shape);
            g.Backend.SoftmaxBackward(y.Buffer, g.Buffer, outer, len, inner, gx.Buffer);
            return [gx];
        });
    }

    /// <summary>
    /// Inverted dropout: in training, zeroes each element with probability p (mask from the Philox stream of
    /// <paramref name="gen"/>) and scales the rest by 1/(1-p); the identity otherwise.
    /// </summary>
    public static Tensor Dropout(Tensor x, float p, bool training, PhiloxGenerator? gen)
    {
        if (p < 0f || p >= 1f) throw new ArgumentOutOfRangeException(nameof(p), $"Dropout probability {p} is outside [0, 1).");
        if (!training || p == 0f) return Reshape(x, x.Shape);
        if (gen is null) throw new InvalidOperationException("Dropout in training mode needs a random generator.");
        var mask = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.DropoutMask(p, gen.Seed, gen.Take(mask.Size), mask.Buffer, mask.Size);
        var y = Tensor.Empty(x.Backend, x.Shape);
        x.Backend.Binary(BinaryOp.Mul, x.Buffer, x.Shape.Dims, mask.Buffer, x.Shape.Dims, y.Buffer, x.Shape.Dims);
        return Autograd.Record("Dropout", y, [x], g =>
        {
            var gx = Tensor.Empty(g.Backend, g.Shape);
            g.Backend.Binary(BinaryOp.Mul, g.Buffer, g.Shape.Dims, mask.Buffer, g.Shape.Dims, gx.Buffer, g.Shape.Dims);
            return [gx];
        });
    }
}
