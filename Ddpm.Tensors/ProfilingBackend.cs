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
public sealed class ProfilingBackend : IBackend, IStepGraphs
{
    /// <summary>The inner backend's recorded steps, when this profiler does not wait after each op (a wait cannot be recorded).</summary>
    public bool StepGraphsEnabled => !_synchronize && Inner is IStepGraphs { StepGraphsEnabled: true };

    public IStepGraph CreateStepGraph(string name, int warmupRuns = 1) => StepGraphsEnabled
        ? ((IStepGraphs)Inner).CreateStepGraph(name, warmupRuns)
        : throw new NotSupportedException("This profiler waits after each op, or its backend records no steps.");

    private readonly bool _synchronize;
    private readonly Dictionary<string, Entry> _entries = new();
    private readonly Func<double> _clock;
    private double _wallSeconds, _wallStart;
    private bool _on;

    /// <param name="inner">The backend that does the work.</param>
    /// <param name="synchronize">Wait for the device after each op.</param>
    /// <param name="clock">Seconds on the clock that times the ops and the recording: wall time by default; a
    /// thread's CPU time makes a single-threaded CPU backend's table steady on a machine shared with other work.</param>
    public ProfilingBackend(IBackend inner, bool synchronize = true, Func<double>? clock = null)
    {
        Inner = inner ?? throw new ArgumentNullException(nameof(inner));
        _synchronize = synchronize;
        _clock = clock ?? (() => Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency);
    }

    /// <summary>The backend that does the work.</summary>
    public IBackend Inner { get; }

    public string Name => Inner.Name;

    public string Description => Inner.Description + " (profiled)";

    public IDisposable PartOfBatch(int whole) => Inner.PartOfBatch(whole);

    public void HoldsWeights(DeviceBuffer weights) => Inner.HoldsWeights(weights);

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
        if (!_on) _wallStart = _clock();
        _on = true;
    }

    /// <summary>Pauses recording.</summary>
    public void Stop()
    {
        Inner.Synchronize();
        if (_on) _wallSeconds += _clock() - _wallStart;
        _on = false;
    }

    /// <summary>Forgets what was recorded.</summary>
    public void Reset()
    {
        _entries.Clear();
        _wallSeconds = 0;
        if (_on) _wallStart = _clock();
    }

    /// <summary>Seconds spent recording (ops plus everything between them), on the profiler's clock.</summary>
    public double WallSeconds => _wallSeconds + (_on ? _clock() - _wallStart : 0);

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
        double t0 = _clock();
        call();
        if (_synchronize) Inner.Synchronize();
        double s = _clock() - t0;
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

    public void Fill(float value, DeviceBuffer dst, int n) => Time("fill", 0, () => Inner.Fill(value, dst, n));

    public void Copy(DeviceBuffer src, int srcOffset, int n, DeviceBuffer dst, int dstOffset) =>
        Time("copy", 0, () => Inner.Copy(src, srcOffset, n, dst, dstOffset));

    public void FillNormal(ulong seed, ulong offset, DeviceBuffer dst, int n) =>
        Time("fill normal", 0, () => Inner.FillNormal(seed, offset, dst, n));

    public void FillUniform(ulong seed, ulong offset, DeviceBuffer dst, int n) =>
        Time("fill uniform", 0, () => Inner.FillUniform(seed, offset, dst, n));

    public void DropoutMask(float p, ulong seed, ulong offset, DeviceBuffer dst, int n) =>
        Time("dropout mask", 0, () => Inner.DropoutMask(p, seed, offset, dst, n));

    public void Unary(UnaryOp op, DeviceBuffer x, int n, DeviceBuffer y) =>
        Time("unary " + op.ToString().ToLowerInvariant(), 0, () => Inner.Unary(op, x, n, y));

    public void UnaryBackward(UnaryOp op, DeviceBuffer x, DeviceBuffer y, DeviceBuffer dy, int n, DeviceBuffer dx) =>
        Time("unary " + op.ToString().ToLowerInvariant() + " backward", 0, () => Inner.UnaryBackward(op, x, y, dy, n, dx));

    public void Affine(DeviceBuffer x, int n, float scale, float shift, DeviceBuffer y) =>
        Time("affine", 0, () => Inner.Affine(x, n, scale, shift, y));

    public void Axpby(DeviceBuffer x, int n, float a, float b, DeviceBuffer y) => Time("axpby", 0, () => Inner.Axpby(x, n, a, b, y));

    public void Clamp(DeviceBuffer x, int n, float lo, float hi, DeviceBuffer y) => Time("clamp", 0, () => Inner.Clamp(x, n, lo, hi, y));

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

    public void CopySlice(DeviceBuffer src, int srcDim, int srcStart, int outer, int count, int inner, bool accumulate,
        DeviceBuffer dst, int dstDim, int dstStart) =>
        Time(accumulate ? "copy slice (accumulate)" : "copy slice", 0,
            () => Inner.CopySlice(src, srcDim, srcStart, outer, count, inner, accumulate, dst, dstDim, dstStart));

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

    public void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB,
        int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC) =>
        Time($"gemm {(transA ? "T" : "N")}{(transB ? "T" : "N")} {(batch > 1 ? batch + "x" : "")}{m}x{n}x{k}", 2.0 * batch * m * n * k,
            () => Inner.Gemm(transA, transB, a, strideA, b, strideB, batch, m, n, k, alpha, beta, c, strideC));

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y)
    {
        var geo = g;
        Time(Conv("forward", geo), ConvFlops(geo), () => Inner.Conv2dForward(x, w, bias, geo, y));
    }

    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx)
    {
        var geo = g;
        Time(Conv("bwd-data", geo), ConvFlops(geo), () => Inner.Conv2dBackwardData(dy, w, geo, dx));
    }

    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias)
    {
        var geo = g;
        Time(Conv("bwd-weight", geo), ConvFlops(geo), () => Inner.Conv2dBackwardWeight(x, dy, geo, dw, dbias));
    }

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd) =>
        Time(GroupNormName(shift, silu), 0, () => Inner.GroupNormForward(x, shift, gamma, beta, n, c, hw, groups, eps, silu, y, mean, rstd));

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta) =>
        Time(GroupNormName(shift, silu) + " backward", 0,
            () => Inner.GroupNormBackward(dy, x, shift, gamma, beta, mean, rstd, n, c, hw, groups, silu, dx, dgamma, dbeta));

    private static string GroupNormName(DeviceBuffer? shift, bool silu) =>
        (shift is null ? "group norm" : "shift + group norm") + (silu ? " + silu" : "");

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y) =>
        Time("softmax", 0, () => Inner.SoftmaxForward(x, outer, dim, inner, y));

    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx) =>
        Time("softmax backward", 0, () => Inner.SoftmaxBackward(y, dy, outer, dim, inner, dx));

    public void AdamStep(DeviceBuffer grad, int n, in AdamStepParams p, DeviceBuffer param, DeviceBuffer m, DeviceBuffer v)
    {
        var ps = p;
        Time("adam step", 0, () => Inner.AdamStep(grad, n, ps, param, m, v));
    }

    public void ClipScale(DeviceBuffer sumSq, int index, double maxNorm, DeviceBuffer x, int n) =>
        Time("clip scale", 0, () => Inner.ClipScale(sumSq, index, maxNorm, x, n));
}
