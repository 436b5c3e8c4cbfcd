namespace Ddpm.Tensors;

public enum UnaryOp
{
    Neg,
    Exp,
    Log,
    Sin,
    Cos,
    Sqrt,
    Square,
    Sigmoid,
    /// <summary>SiLU / Swish: x * sigmoid(x).</summary>
    Silu,
    Tanh,
    Relu,
    Abs,
}

public enum BinaryOp
{
    Add,
    Sub,
    Mul,
    Div,
}

/// <summary>Geometry of a 2-D convolution: x [N, C, H, W] * w [O, C, KH, KW] -> y [N, O, OH, OW].</summary>
public readonly record struct ConvGeometry(
    int N, int C, int H, int W, int O, int KH, int KW, int StrideH, int StrideW, int PadH, int PadW)
{
    public int OH => (H + 2 * PadH - KH) / StrideH + 1;
    public int OW => (W + 2 * PadW - KW) / StrideW + 1;
    public int InputSize => N * C * H * W;
    public int OutputSize => N * O * OH * OW;
    public int WeightSize => O * C * KH * KW;

    public void Validate()
    {
        if (N <= 0 || C <= 0 || H <= 0 || W <= 0 || O <= 0 || KH <= 0 || KW <= 0)
            throw new ArgumentException($"Convolution geometry {this} has a non-positive size.");
        if (StrideH <= 0 || StrideW <= 0 || PadH < 0 || PadW < 0)
            throw new ArgumentException($"Convolution geometry {this} has a bad stride or padding.");
        if (OH <= 0 || OW <= 0)
            throw new ArgumentException($"Convolution geometry {this} gives an empty output.");
    }
}

/// <summary>One Adam step's scalars. Bias corrections are computed by the caller in double.</summary>
public readonly record struct AdamStepParams(
    float LearningRate, float Beta1, float Beta2, float Eps, float WeightDecay,
    float BiasCorrection1, float BiasCorrection2);

/// <summary>
/// The arithmetic shared by every backend's <see cref="IBackend.SumOfSquaresTo"/> and
/// <see cref="IBackend.ClipScale"/>, so that they agree to the bit on the scalars.
/// </summary>
public static class NormMath
{
    /// <summary>A double as two floats: hi = (float)s, lo = (float)(s - hi).</summary>
    public static (float Hi, float Lo) Split(double s)
    {
        float hi = (float)s;
        return (hi, (float)(s - hi));
    }

    /// <summary>The double of a hi/lo pair.</summary>
    public static double Join(float hi, float lo) => (double)hi + lo;

    /// <summary>torch.nn.utils.clip_grad_norm_'s coefficient max_norm / (norm + 1e-6); scale only when it is below 1.</summary>
    public static double ClipCoefficient(double norm, double maxNorm) => maxNorm / (norm + 1e-6);
}

/// <summary>
/// The backend contract: memory, and a small fixed set of typed kernels. All buffers hold float32, laid
/// out contiguous row-major. A backend that cannot run an op throws <see cref="NotSupportedException"/> rather
/// than computing it wrongly. Only <see cref="Download"/>, <see cref="SumOfSquares"/> and
/// <see cref="Synchronize"/> wait for queued work. Every buffer argument may be a view made by
/// <see cref="Slice"/>.
/// <para>
/// Every member takes its parameters in four groups, in this order, any of which may be empty:
/// (1) the kind of op: an operator enum (<see cref="UnaryOp"/>, <see cref="BinaryOp"/>) or Gemm's transpose
/// flags; (2) the buffers only read, each followed by its own geometry; (3) the sizes shared by several
/// buffers and the scalars: element and dimension counts, <see cref="ConvGeometry"/>,
/// <see cref="AdamStepParams"/>, seeds, stream offsets, factors, flags, host index lists and permutations;
/// (4) the buffers written, including those read and updated in place, each followed by its own geometry.
/// A buffer's own geometry is what describes that buffer alone: its offset, shape, stride, row count, or its
/// length when no other buffer shares it. Upload's source and Download's destination are buffers too.
/// </para>
/// </summary>
public interface IBackend : IDisposable
{
    /// <summary>The registry name, e.g. <c>cpu</c>, <c>cpu-reference</c>, <c>cuda</c>.</summary>
    string Name { get; }

    /// <summary>A one-line description (device, threads, library versions).</summary>
    string Description { get; }

    /// <summary>
    /// Until the returned handle is disposed, the work given to this backend is part of a batch of
    /// <paramref name="whole"/> samples (a data-parallel shard, a micro-batch), so that a backend choosing its
    /// algorithms by the batch chooses for the whole one and computes each sample as the whole batch would
    /// (<see cref="WholeBatch"/>). Backends whose arithmetic does not depend on the batch ignore it.
    /// </summary>
    IDisposable PartOfBatch(int whole) => NoScope.Instance;

    /// <summary>
    /// Says that <paramref name="weights"/> holds a model's weights (a <see cref="Nn.ParameterStore"/>'s values): read by
    /// many ops between rare writes. A backend may keep something derived from it for as long as it is not written (the
    /// cuda backend in bf16 keeps a bfloat16 copy, cast once after each write instead of at every use); it sees every
    /// write, so what any op computes does not change. Backends with nothing to keep ignore it.
    /// </summary>
    void HoldsWeights(DeviceBuffer weights)
    {
    }

    // ---- memory -------------------------------------------------------------------------------------

    /// <summary>A buffer of <paramref name="length"/> floats; contents undefined.</summary>
    DeviceBuffer Allocate(int length);

    void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset);

    void Download(DeviceBuffer src, int srcOffset, Span<float> dst);

    void Synchronize();

    /// <summary>
    /// A view of <paramref name="parent"/>'s elements [offset, offset + length): a buffer of
    /// <paramref name="length"/> floats sharing the parent's memory, usable wherever a buffer is. It keeps the
    /// parent alive (retains it) until it is itself released. A view of a view addresses the same memory.
    /// </summary>
    DeviceBuffer Slice(DeviceBuffer parent, int offset, int length);

    // ---- fills and copies ---------------------------------------------------------------------------

    /// <summary>dst[0..n) = value.</summary>
    void Fill(float value, DeviceBuffer dst, int n);

    /// <summary>dst[dstOffset..+n) = src[srcOffset..+n).</summary>
    void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset);

    /// <summary>dst[i] = standard normal number at Philox stream position offset+i (see <see cref="Philox"/>).</summary>
    void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n);

    /// <summary>dst[i] = uniform [0,1) number at Philox stream position offset+i.</summary>
    void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n);

    /// <summary>dst[i] = u(offset+i) &lt; keep ? 1/keep : 0, the inverted-dropout mask with keep = 1 - p.</summary>
    void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n);

    // ---- elementwise --------------------------------------------------------------------------------

    /// <summary>y = op(x), n elements.</summary>
    void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y);

    /// <summary>dx = dy * op'(x); y = op(x) is given for ops whose derivative is cheaper from it.</summary>
    void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx);

    /// <summary>y = x * scale + shift.</summary>
    void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y);

    /// <summary>y = a * x + b * y (in place on y).</summary>
    void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y);

    /// <summary>y = clamp(x, lo, hi).</summary>
    void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y);

    /// <summary>
    /// y = a op b with NumPy broadcasting. aShape and bShape have the rank of yShape (left-padded with 1s by
    /// the caller); each of their dimensions equals yShape's or is 1.
    /// </summary>
    void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape,
        DeviceBuffer y, ReadOnlySpan<int> yShape);

    /// <summary>y = sum of x over the dimensions where yShape is 1 and xShape is not (same rank).</summary>
    void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape);

    /// <summary>Sum of x[i]^2 in double; waits for the result.</summary>
    double SumOfSquares(DeviceBuffer x, int n);

    /// <summary>
    /// The sum of x[i]^2 over [0, n), accumulated in double and left on the device without waiting: written as
    /// two floats, result[resultIndex] = hi = (float)sum and result[resultIndex + 1] = lo = (float)(sum - hi), so
    /// (double)hi + lo gives the double back to about 2^-48 relative. x: [n]; result: at least resultIndex + 2.
    /// </summary>
    void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex);

    // ---- layout -------------------------------------------------------------------------------------

    /// <summary>y = x.permute(perm): y's dimension i is x's dimension perm[i].</summary>
    void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y);

    /// <summary>
    /// Views src as [outer, srcDim, inner] and dst as [outer, dstDim, inner]; for d in [0, count):
    /// dst[o, dstStart + d, i] (+)= src[o, srcStart + d, i]. Concatenation, split and their gradients.
    /// </summary>
    void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate,
        DeviceBuffer dst, int dstDim, int dstStart);

    /// <summary>dst[i, :] = src[indices[i], :]; src: [rows, rowSize], dst: [indices.Length, rowSize].</summary>
    void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst);

    /// <summary>dst[indices[i], :] += src[i, :]; src: [indices.Length, rowSize], dst: [rows, rowSize].</summary>
    void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows);

    // ---- linear algebra -----------------------------------------------------------------------------

    /// <summary>
    /// For b in [0, batch): C_b = alpha * op(A_b) op(B_b) + beta * C_b, row-major, op(A_b): [m, k],
    /// op(B_b): [k, n], C_b: [m, n]. A_b starts at b * strideA (A is [m,k], or [k,m] when transA); likewise B, C.
    /// A stride of 0 broadcasts the operand over the batch.
    /// </summary>
    void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB,
        int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC);

    /// <summary>y [N,O,OH,OW] = conv(x [N,C,H,W], w [O,C,KH,KW]) + bias [O] (bias may be null).</summary>
    void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y);

    /// <summary>dx [N,C,H,W] = gradient of the convolution w.r.t. its input, given dy [N,O,OH,OW].</summary>
    void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx);

    /// <summary>dw [O,C,KH,KW] (and dbias [O] when not null) from x [N,C,H,W] and dy [N,O,OH,OW]; overwrites.</summary>
    void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias);

    // ---- normalisation ------------------------------------------------------------------------------

    /// <summary>
    /// Group norm of x [n, c, hw] in <paramref name="groups"/> groups with affine gamma, beta [c]; writes y,
    /// and the per-(sample, group) mean and 1/std [n, groups] for the backward pass. With <paramref name="shift"/>
    /// [n, c], the input is x + shift broadcast over hw (the sum is never stored). With <paramref name="silu"/>,
    /// y = silu(z) of the normalised z = (x - mean) rstd gamma + beta, in the same pass (z is not kept: the
    /// backward pass recomputes it from x).
    /// </summary>
    void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd);

    /// <summary>
    /// dx, dgamma, dbeta (overwritten) of the group norm above, given dy of its output y (with
    /// <paramref name="silu"/>: of silu(z), so dy is first multiplied by silu'(z), z recomputed with gamma and beta).
    /// The gradient of <paramref name="shift"/> is the sum of dx over hw, left to the caller.
    /// </summary>
    void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta);

    /// <summary>Softmax of x viewed as [outer, dim, inner] over the middle dimension.</summary>
    void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y);

    /// <summary>dx = y * (dy - sum(dy * y)) over the middle dimension.</summary>
    void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx);

    // ---- optimiser ----------------------------------------------------------------------------------

    /// <summary>One Adam(W) step in place on param, m, v (PyTorch semantics).</summary>
    void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v);

    /// <summary>
    /// Gradient-norm clipping with the scale computed on the device (torch.nn.utils.clip_grad_norm_): with
    /// norm = sqrt((double)sumSq[index] + sumSq[index + 1]) (the hi/lo pair of <see cref="SumOfSquaresTo"/>) and
    /// coef = maxNorm / (norm + 1e-6) in double, x[i] *= (float)coef for i in [0, n) when coef &lt; 1; otherwise x
    /// is left as it is. sumSq: at least index + 2; x: [n].
    /// </summary>
    void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n);
}

/// <summary>A scope with nothing to undo.</summary>
internal sealed class NoScope : IDisposable
{
    public static readonly NoScope Instance = new();

    public void Dispose()
    {
    }
}
