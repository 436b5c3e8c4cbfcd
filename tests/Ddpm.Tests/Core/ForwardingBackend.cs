using Ddpm.Tensors;

namespace Ddpm.Tests.Core;

/// <summary>
/// A backend decorator for tests: forwards every call to <see cref="Inner"/> through <see cref="Count"/>, which
/// tallies calls by op name, and lets subclasses change memory handling (<see cref="Allocate"/>). Buffers are
/// the inner backend's own.
/// </summary>
public class ForwardingBackend(IBackend inner) : IBackend
{
    private readonly Dictionary<string, long> _calls = new();

    public IBackend Inner { get; } = inner;

    public string Name => Inner.Name;

    public string Description => Inner.Description + " (forwarded)";

    /// <summary>Calls by op name (the IBackend method name) since the last <see cref="ResetCounts"/>.</summary>
    public IReadOnlyDictionary<string, long> Calls => _calls;

    public long CallsOf(string op) => _calls.GetValueOrDefault(op);

    /// <summary>Calls of the ops that wait for queued work: Download, SumOfSquares, Synchronize.</summary>
    public long Synchronizing => CallsOf(nameof(Download)) + CallsOf(nameof(SumOfSquares)) + CallsOf(nameof(Synchronize));

    public void ResetCounts() => _calls.Clear();

    protected void Count(string op) => _calls[op] = _calls.GetValueOrDefault(op) + 1;

    public virtual DeviceBuffer Allocate(int length)
    {
        Count(nameof(Allocate));
        return Inner.Allocate(length);
    }

    public void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset) { Count(nameof(Upload)); Inner.Upload(src, dst, dstOffset); }
    public virtual void Download(DeviceBuffer src, int srcOffset, Span<float> dst) { Count(nameof(Download)); Inner.Download(src, srcOffset, dst); }
    public void Synchronize() { Count(nameof(Synchronize)); Inner.Synchronize(); }
    public DeviceBuffer Slice(DeviceBuffer parent, int offset, int length) { Count(nameof(Slice)); return Inner.Slice(parent, offset, length); }
    public void Fill(float value, DeviceBuffer dst, int n) { Count(nameof(Fill)); Inner.Fill(value, dst, n); }
    public void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset) { Count(nameof(Copy)); Inner.Copy(src, srcOffset, n, dst, dstOffset); }
    public void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n) { Count(nameof(FillNormal)); Inner.FillNormal(seed, offset, dst, n); }
    public void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n) { Count(nameof(FillUniform)); Inner.FillUniform(seed, offset, dst, n); }
    public void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n) { Count(nameof(DropoutMask)); Inner.DropoutMask(p, seed, offset, dst, n); }
    public void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y) { Count(nameof(Unary)); Inner.Unary(op, x, n, y); }
    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx) { Count(nameof(UnaryBackward)); Inner.UnaryBackward(op, x, y, dy, n, dx); }
    public void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y) { Count(nameof(Affine)); Inner.Affine(x, n, scale, shift, y); }
    public void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y) { Count(nameof(Axpby)); Inner.Axpby(x, n, a, b, y); }
    public void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y) { Count(nameof(Clamp)); Inner.Clamp(x, n, lo, hi, y); }

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape, DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        Count(nameof(Binary));
        Inner.Binary(op, a, aShape, b, bShape, y, yShape);
    }

    public void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape) { Count(nameof(SumToShape)); Inner.SumToShape(x, xShape, y, yShape); }
    public double SumOfSquares(DeviceBuffer x, int n) { Count(nameof(SumOfSquares)); return Inner.SumOfSquares(x, n); }
    public void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex) { Count(nameof(SumOfSquaresTo)); Inner.SumOfSquaresTo(x, n, result, resultIndex); }
    public void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y) { Count(nameof(Permute)); Inner.Permute(x, xShape, perm, y); }

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate, DeviceBuffer dst, int dstDim, int dstStart)
    {
        Count(nameof(CopySlice));
        Inner.CopySlice(src, srcDim, srcStart, outer, count, inner, accumulate, dst, dstDim, dstStart);
    }

    public void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst) { Count(nameof(IndexSelect)); Inner.IndexSelect(src, rows, rowSize, indices, dst); }
    public void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows) { Count(nameof(IndexAdd)); Inner.IndexAdd(src, rowSize, indices, dst, rows); }

    public void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB, int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC)
    {
        Count(nameof(Gemm));
        Inner.Gemm(transA, transB, a, strideA, b, strideB, batch, m, n, k, alpha, beta, c, strideC);
    }

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y) { Count(nameof(Conv2dForward)); Inner.Conv2dForward(x, w, bias, g, y); }
    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx) { Count(nameof(Conv2dBackwardData)); Inner.Conv2dBackwardData(dy, w, g, dx); }
    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias) { Count(nameof(Conv2dBackwardWeight)); Inner.Conv2dBackwardWeight(x, dy, g, dw, dbias); }

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups, float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd)
    {
        Count(nameof(GroupNormForward));
        Inner.GroupNormForward(x, shift, gamma, beta, n, c, hw, groups, eps, silu, y, mean, rstd);
    }

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd, int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta)
    {
        Count(nameof(GroupNormBackward));
        Inner.GroupNormBackward(dy, x, shift, gamma, beta, mean, rstd, n, c, hw, groups, silu, dx, dgamma, dbeta);
    }

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y) { Count(nameof(SoftmaxForward)); Inner.SoftmaxForward(x, outer, dim, inner, y); }
    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx) { Count(nameof(SoftmaxBackward)); Inner.SoftmaxBackward(y, dy, outer, dim, inner, dx); }
    public void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v) { Count(nameof(AdamStep)); Inner.AdamStep(grad, n, p, param, m, v); }
    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n) { Count(nameof(ClipScale)); Inner.ClipScale(sumSq, index, maxNorm, x, n); }

    public virtual void Dispose()
    {
        Inner.Dispose();
        GC.SuppressFinalize(this);
    }
}
