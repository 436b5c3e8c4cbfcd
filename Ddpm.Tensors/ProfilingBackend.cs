using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Ddpm.Tensors;

/// <summary>
/// A backend that forwards every call to <see cref="Inner"/> and times it, grouped by op and shape (each conv
/// and GEMM geometry apart, elementwise ops by kind), like a framework profiler's op table. With
/// <c>synchronize</c> it waits for the device after each op, so asynchronous backends (CUDA) are timed by the
/// op rather than by the launch. Buffers are the inner backend's own; tensors made on this backend compute on
/// the inner one. Recording is on only between <see cref="Start"/> and <see cref="Stop"/>.
/// </summary>
public sealed class ProfilingBackend : IBackend
{
    private readonly bool _synchronize;
    private readonly Dictionary<string, Entry> _entries = new();
    private readonly Stopwatch _wall = new();
    private bool _on;

    public ProfilingBackend(IBackend inner, bool synchronize = true)
    {
        Inner = inner ?? throw new ArgumentNullException(nameof(inner));
        _synchronize = synchronize;
    }

    /// <summary>The backend that does the work.</summary>
    public IBackend Inner { get; }

    public string Name => Inner.Name;

    public string Description => Inner.Description + " (profiled)";

    /// <summary>One row of the table: calls, total seconds, and floating-point operations where counted.</summary>
    public sealed class Entry
    {
        internal Entry(string op) => Op = op;

        public string Op { get; }
        public long Calls { get; internal set; }
        public double Seconds { get; internal set; }
        public double Flops { get; internal set; }
    }

    /// <summary>Starts (or resumes) recording.</summary>
    public void Start()
    {
        _on = true;
        _wall.Start();
    }

    /// <summary>Pauses recording.</summary>
    public void Stop()
    {
        Inner.Synchronize();
        _wall.Stop();
        _on = false;
    }

    /// <summary>Forgets what was recorded.</summary>
    public void Reset()
    {
        _entries.Clear();
        _wall.Reset();
    }

    /// <summary>Wall seconds spent recording (ops plus everything between them).</summary>
    public double WallSeconds => _wall.Elapsed.TotalSeconds;

    /// <summary>The rows, slowest first.</summary>
    public IReadOnlyList<Entry> Entries => _entries.Values.OrderByDescending(e => e.Seconds).ToList();

    /// <summary>
    /// The op table as text: the <paramref name="top"/> slowest rows, then the rest in one line, the total in
    /// ops and the time between ops (autograd, allocation, host code). Times are divided by
    /// <paramref name="perSteps"/> (e.g. the number of steps recorded) to read per step.
    /// </summary>
    public string Report(int top = 25, int perSteps = 1)
    {
        var inv = CultureInfo.InvariantCulture;
        var rows = Entries;
        double total = rows.Sum(e => e.Seconds), wall = WallSeconds;
        var sb = new StringBuilder();
        sb.AppendLine(string.Format(inv, "{0,-58} {1,8} {2,10} {3,7} {4,9}", "op (per step)", "calls", "ms", "%", "GFLOP/s"));
        void Row(string op, double calls, double s, double flops) =>
            sb.AppendLine(string.Format(inv, "{0,-58} {1,8:0.#} {2,10:F3} {3,7:F1} {4,9}", op.Length > 58 ? op[..58] : op,
                calls / perSteps, 1e3 * s / perSteps, wall > 0 ? 100 * s / wall : 0, flops > 0 && s > 0 ? (flops / s / 1e9).ToString("F1", inv) : ""));
        foreach (var e in rows.Take(top)) Row(e.Op, e.Calls, e.Seconds, e.Flops);
        var rest = rows.Skip(top).ToList();
        if (rest.Count > 0) Row($"({rest.Count} other rows)", rest.Sum(e => e.Calls), rest.Sum(e => e.Seconds), 0);
        Row("all ops", rows.Sum(e => e.Calls), total, rows.Sum(e => e.Flops));
        Row("between ops (autograd, allocation, host code)", 0, Math.Max(0, wall - total), 0);
        return sb.ToString();
    }

    private void Time(string op, double flops, Action call)
    {
        if (!_on)
        {
            call();
            return;
        }
        long t0 = Stopwatch.GetTimestamp();
        call();
        if (_synchronize) Inner.Synchronize();
        double s = (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
        if (!_entries.TryGetValue(op, out var e)) _entries[op] = e = new Entry(op);
        e.Calls++;
        e.Seconds += s;
        e.Flops += flops;
    }

    private static string Dims(ReadOnlySpan<int> shape) => "[" + string.Join(",", shape.ToArray()) + "]";

    private static string Conv(string what, in ConvGeometry g) =>
        $"conv2d {what} {g.KH}x{g.KW} s{g.StrideH} [{g.N},{g.C},{g.H},{g.W}]->{g.O}";

    private static double ConvFlops(in ConvGeometry g) => 2.0 * g.N * g.O * g.OH * g.OW * g.C * g.KH * g.KW;

    // ---- memory (not timed: host transfers are not ops) -------------------------------------------------

    public DeviceBuffer Allocate(int length) => Inner.Allocate(length);

    public void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset) => Inner.Upload(src, dst, dstOffset);

    public void Download(DeviceBuffer src, int srcOffset, Span<float> dst) => Inner.Download(src, srcOffset, dst);

    public void Synchronize() => Inner.Synchronize();

    public DeviceBuffer Slice(DeviceBuffer parent, int offset, int length) => Inner.Slice(parent, offset, length);

    public void Dispose() => Inner.Dispose();

    // ---- ops ----------------------------------------------------------------------------------------

    public void Fill(DeviceBuffer dst, int n, float value) => Time("fill", 0, () => Inner.Fill(dst, n, value));

    public void Copy(DeviceBuffer src, int srcOffset, DeviceBuffer dst, int dstOffset, int n) =>
        Time("copy", 0, () => Inner.Copy(src, srcOffset, dst, dstOffset, n));

    public void FillNormal(DeviceBuffer dst, int n, ulong seed, ulong offset) =>
        Time("fill normal", 0, () => Inner.FillNormal(dst, n, seed, offset));

    public void FillUniform(DeviceBuffer dst, int n, ulong seed, ulong offset) =>
        Time("fill uniform", 0, () => Inner.FillUniform(dst, n, seed, offset));

    public void DropoutMask(DeviceBuffer dst, int n, float p, ulong seed, ulong offset) =>
        Time("dropout mask", 0, () => Inner.DropoutMask(dst, n, p, seed, offset));

    public void Unary(UnaryOp op, DeviceBuffer x, DeviceBuffer y, int n) =>
        Time("unary " + op.ToString().ToLowerInvariant(), 0, () => Inner.Unary(op, x, y, n));

    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, DeviceBuffer dx, int n) =>
        Time("unary " + op.ToString().ToLowerInvariant() + " backward", 0, () => Inner.UnaryBackward(op, x, y, dy, dx, n));

    public void Affine(DeviceBuffer x, DeviceBuffer y, int n, float scale, float shift) =>
        Time("affine", 0, () => Inner.Affine(x, y, n, scale, shift));

    public void Axpby(DeviceBuffer x, DeviceBuffer y, int n, float a, float b) => Time("axpby", 0, () => Inner.Axpby(x, y, n, a, b));

    public void Clamp(DeviceBuffer x, DeviceBuffer y, int n, float lo, float hi) => Time("clamp", 0, () => Inner.Clamp(x, y, n, lo, hi));

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<int> aShape, DeviceBuffer b, ReadOnlySpan<int> bShape,
        DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        int[] sa = aShape.ToArray(), sb = bShape.ToArray(), sy = yShape.ToArray();
        string kind = sa.AsSpan().SequenceEqual(sb) ? "" : " broadcast";
        Time("binary " + op.ToString().ToLowerInvariant() + kind, 0, () => Inner.Binary(op, a, sa, b, sb, y, sy));
    }

    public void SumToShape(DeviceBuffer x, ReadOnlySpan<int> xShape, DeviceBuffer y, ReadOnlySpan<int> yShape)
    {
        int[] sx = xShape.ToArray(), sy = yShape.ToArray();
        Time("sum to shape", 0, () => Inner.SumToShape(x, sx, y, sy));
    }

    public double SumOfSquares(DeviceBuffer x, int n)
    {
        double r = 0;
        Time("sum of squares", 0, () => r = Inner.SumOfSquares(x, n));
        return r;
    }

    public void SumOfSquaresTo(DeviceBuffer x, int n, DeviceBuffer result, int resultIndex) =>
        Time("sum of squares to device", 0, () => Inner.SumOfSquaresTo(x, n, result, resultIndex));

    public void Permute(DeviceBuffer x, ReadOnlySpan<int> xShape, ReadOnlySpan<int> perm, DeviceBuffer y)
    {
        int[] sx = xShape.ToArray(), p = perm.ToArray();
        Time("permute " + Dims(p), 0, () => Inner.Permute(x, sx, p, y));
    }

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, DeviceBuffer dst, int dstDim, int dstStart,
        int outer, int count, int inner, bool accumulate) =>
        Time(accumulate ? "copy slice (accumulate)" : "copy slice", 0,
            () => Inner.CopySlice(src, srcDim, srcStart, dst, dstDim, dstStart, outer, count, inner, accumulate));

    public void IndexSelect(DeviceBuffer src, int rows, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst)
    {
        int[] idx = indices.ToArray();
        Time("index select", 0, () => Inner.IndexSelect(src, rows, rowSize, idx, dst));
    }

    public void IndexAdd(DeviceBuffer src, int rowSize, ReadOnlySpan<int> indices, DeviceBuffer dst, int rows)
    {
        int[] idx = indices.ToArray();
        Time("index add", 0, () => Inner.IndexAdd(src, rowSize, idx, dst, rows));
    }

    public void Gemm(bool transA, bool transB, int batch, int m, int n, int k, float alpha,
        DeviceBuffer a, long strideA, DeviceBuffer b, long strideB, float beta, DeviceBuffer c, long strideC) =>
        Time($"gemm {(transA ? "T" : "N")}{(transB ? "T" : "N")} {(batch > 1 ? batch + "x" : "")}{m}x{n}x{k}", 2.0 * batch * m * n * k,
            () => Inner.Gemm(transA, transB, batch, m, n, k, alpha, a, strideA, b, strideB, beta, c, strideC));

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, DeviceBuffer y, in ConvGeometry g)
    {
        var geo = g;
        Time(Conv("forward", geo), ConvFlops(geo), () => Inner.Conv2dForward(x, w, bias, y, geo));
    }

    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, DeviceBuffer dx, in ConvGeometry g)
    {
        var geo = g;
        Time(Conv("bwd-data", geo), ConvFlops(geo), () => Inner.Conv2dBackwardData(dy, w, dx, geo));
    }

    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dw, DeviceBuffer? dbias, in ConvGeometry g)
    {
        var geo = g;
        Time(Conv("bwd-weight", geo), ConvFlops(geo), () => Inner.Conv2dBackwardWeight(x, dy, dw, dbias, geo));
    }

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd) =>
        Time("group norm", 0, () => Inner.GroupNormForward(x, gamma, beta, n, c, hw, groups, eps, y, mean, rstd));

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer gamma, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta) =>
        Time("group norm backward", 0, () => Inner.GroupNormBackward(dy, x, gamma, mean, rstd, n, c, hw, groups, dx, dgamma, dbeta));

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y) =>
        Time("softmax", 0, () => Inner.SoftmaxForward(x, outer, dim, inner, y));

    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx) =>
        Time("softmax backward", 0, () => Inner.SoftmaxBackward(y, dy, outer, dim, inner, dx));

    public void AdamStep(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer m, DeviceBuffer v, int n, in AdamStepParams p)
    {
        var ps = p;
        Time("adam step", 0, () => Inner.AdamStep(param, grad, m, v, n, ps));
    }

    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n) =>
        Time("clip scale", 0, () => Inner.ClipScale(sumSq, index, maxNorm, x, n));
}
