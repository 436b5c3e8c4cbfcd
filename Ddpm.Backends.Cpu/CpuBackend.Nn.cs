using System.Numerics.Tensors;
using Ddpm.Backends.Cpu.Fast;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    // ---- linear algebra -----------------------------------------------------------------------------

    public void Gemm(bool transA, bool transB, DeviceBuffer a, long strideA, DeviceBuffer b, long strideB,
        int batch, int m, int n, int k, float alpha, float beta, DeviceBuffer c, long strideC)
    {
        if (batch < 0 || m < 0 || n < 0 || k < 0 || strideA < 0 || strideB < 0 || strideC < 0)
            throw new ArgumentException($"Gemm: negative size or stride (batch {batch}, m {m}, n {n}, k {k}).");
        if (batch == 0 || m == 0 || n == 0) return;
        float* ap = Ptr(a, (batch - 1) * strideA + (long)m * k, nameof(a));
        float* bp = Ptr(b, (batch - 1) * strideB + (long)k * n, nameof(b));
        float* cp = Ptr(c, (batch - 1) * strideC + (long)m * n, nameof(c));
        int lda = transA ? m : k, ldb = transB ? k : n;
        // Whole matrices per worker when there are enough of them, or they are too small to split;
        // never when C blocks overlap (stride 0 accumulates batch after batch, in order).
        bool disjointC = strideC >= (long)m * n;
        long flops = (long)m * n * k;
        if (batch > 1 && disjointC && _pool.Threads > 1 && (batch >= 2 * _pool.Threads || flops < (1L << 21)))
        {
            nint app = (nint)ap, bpp = (nint)bp, cpp = (nint)cp;
            _pool.For(batch, (w, i) => Sgemm.Run(null, _pool.Scratch(w), transA, transB, m, n, k, alpha,
                (float*)app + i * strideA, lda, (float*)bpp + i * strideB, ldb, beta, (float*)cpp + i * strideC, n));
            return;
        }
        // Below about 4 MFLOP a product takes tens of microseconds, the order of waking a worker: one thread.
        var pool = flops < (1L << 21) ? null : _pool;
        for (int i = 0; i < batch; i++)
            Sgemm.Run(pool, _pool.Scratch(0), transA, transB, m, n, k, alpha,
                ap + i * strideA, lda, bp + i * strideB, ldb, beta, cp + i * strideC, n);
    }

    // ---- convolution --------------------------------------------------------------------------------

    private static bool IsPointwise(in ConvGeometry g) =>
        g.KH == 1 && g.KW == 1 && g.StrideH == 1 && g.StrideW == 1 && g.PadH == 0 && g.PadW == 0;

    /// <summary>
    /// Small images (deep UNet levels: 8x8, 4x4) are convolved for the whole batch in one GEMM over columns
    /// [C*KH*KW, N*OH*OW]: per sample the GEMM would be only OH*OW wide, under the 32-column register tile.
    /// </summary>
    private static bool WholeBatch(in ConvGeometry g) => g.N > 1 && g.OH * g.OW < 128;

    /// <summary>
    /// <see cref="WholeBatch"/> for the strided backward-data path, which writes its column buffer out (capped
    /// at 16M floats, 64 MiB; larger batches fall back to per-sample GEMMs).
    /// </summary>
    private static bool Batched(in ConvGeometry g) => WholeBatch(g) && (long)g.C * g.KH * g.KW * g.N * g.OH * g.OW <= 1L << 24;

    /// <summary>
    /// all [O, N*OH*OW] = y [N, O, OH*OW] rearranged, or the reverse when <paramref name="toBatch"/> is false, then
    /// with bias[o] added on the way when <paramref name="bias"/> is given (one pass over y, not two).
    /// </summary>
    private void BatchLayout(float* y, float* all, in ConvGeometry g, bool toBatch, float* bias = null)
    {
        int ohw = g.OH * g.OW, nTot = g.N * ohw, o = g.O;
        nint yp = (nint)y, ap = (nint)all, bp = (nint)bias;
        _pool.ForItems(g.N * o, Math.Max(1, Grain / ohw), (r0, count) =>
        {
            for (int r = r0; r < r0 + count; r++)
            {
                int s = r / o, oc = r % o;
                float* a = (float*)ap + (long)oc * nTot + (long)s * ohw;
                float* b = (float*)yp + (long)r * ohw;
                if (toBatch) Buffer.MemoryCopy(b, a, 4L * ohw, 4L * ohw);
                else if (bp == 0) Buffer.MemoryCopy(a, b, 4L * ohw, 4L * ohw);
                else TensorPrimitives.Add(new ReadOnlySpan<float>(a, ohw), ((float*)bp)[oc], new Span<float>(b, ohw));
            }
        });
    }

    /// <summary>
    /// 3x3 stride-1 padding-1 convolutions wide and large enough for a Winograd convolution to pay
    /// (<see cref="CpuBackendOptions.Winograd"/> and the thresholds after it). The tiles are counted for the whole
    /// batch given to <see cref="PartOfBatch"/>: a data-parallel shard or a micro-batch picks what the whole batch picks, so
    /// each of its samples goes through the same arithmetic (Winograd and the implicit GEMM round differently).
    /// </summary>
    private bool UseWinograd(in ConvGeometry g)
    {
        var o = _pool.Options;
        if (!o.Winograd || !Winograd.Applies(g) || Math.Min(g.C, g.O) < o.WinogradMinChannels) return false;
        long tiles = Winograd.Tiles(g with { N = _wholeBatch.For(g.N) }, 2);
        return tiles >= o.WinogradMinTiles && (long)g.O * g.C * tiles >= o.WinogradMinWork;
    }

    /// <summary>Samples go to workers whole when that balances; otherwise the GEMM of each sample is split.</summary>
    private bool SampleParallel(int n) => _pool.Threads > 1 && n >= _pool.Threads && (n % _pool.Threads == 0 || n >= 4 * _pool.Threads);

    public void Conv2dForward(DeviceBuffer x, DeviceBuffer w, DeviceBuffer? bias, in ConvGeometry g, DeviceBuffer y)
    {
        g.Validate();
        float* xp = Ptr(x, g.InputSize, nameof(x)), wp = Ptr(w, g.WeightSize, nameof(w)), yp = Ptr(y, g.OutputSize, nameof(y));
        float* bp = bias is null ? null : Ptr(bias, g.O, nameof(bias));
        if (UsePhases(g, out var pg))
        {
            float* xs = _pool.Scratch(0).Get(ScratchSlot.Phases, pg.InputSize);
            float* ws = _pool.Scratch(0).Get(ScratchSlot.PhaseWeights, pg.WeightSize);
            PhaseConv.Split(_pool, xp, xs, g, _pool.Options.UseAvx512);
            PhaseConv.Weights(_pool, wp, ws, g);
            ForwardCore(xs, ws, bp, yp, pg);
            return;
        }
        ForwardCore(xp, wp, bp, yp, g);
    }

    /// <summary>
    /// Whether a 4x4 stride-2 convolution runs as the 3x3 stride-1 convolution <paramref name="phases"/> over the phases of
    /// its input (<see cref="PhaseConv"/>): where that one runs as Winograd.
    /// </summary>
    private bool UsePhases(in ConvGeometry g, out ConvGeometry phases) => PhaseConv.Applies(g, out phases) && UseWinograd(phases);

    /// <summary>
    /// y = conv(x, w) + bias as implicit GEMMs: W [O, C*KH*KW] times the im2col columns, which
    /// <see cref="ConvColumnsB"/> packs straight from x. Small images (deep UNet levels, fewer than 128 output
    /// positions) go as one GEMM over the columns of the whole batch (per sample it would be narrower than the
    /// 32-column register tile), the rest sample by sample.
    /// </summary>
    private void ForwardCore(float* x, float* w, float* bias, float* y, in ConvGeometry g)
    {
        var geo = g;
        nint xp = (nint)x, wp = (nint)w, yp = (nint)y, bp = (nint)bias;
        int ckk = g.C * g.KH * g.KW, ohw = g.OH * g.OW, chw = g.C * g.H * g.W;
        bool direct = IsPointwise(g);

        if (UseWinograd(g))
        {
            Winograd.Forward(_pool, x, w, bias, y, g);
            return;
        }

        if (DirectConv.Applies(g))
        {
            DirectConv.Forward(_pool, x, w, bias, y, g);
            return;
        }

        if (WholeBatch(g))
        {
            // yAll [O, N*OH*OW] = w x columns, then rearranged to [N, O, OH*OW] and the bias added.
            int nTot = g.N * ohw;
            float* yAll = _pool.Scratch(0).Get(ScratchSlot.Output, (long)g.O * nTot);
            Sgemm.Run(_pool, _pool.Scratch(0), false, g.O, nTot, ckk, 1f, w, ckk, new ConvColumnsB(x, g), 0f, yAll, nTot);
            BatchLayout(y, yAll, g, toBatch: false, bias);
            return;
        }

        // y_n [O, OH*OW] = w [O, C*KH*KW] x columns_n [C*KH*KW, OH*OW] (+ bias, pre-filled with beta = 1).
        void Sample(WorkerPool? pool, WorkerScratch scratch, int s)
        {
            float* xn = (float*)xp + (long)s * chw;
            float* yn = (float*)yp + (long)s * geo.O * ohw;
            float beta = 0f;
            if (bp != 0)
            {
                for (int o = 0; o < geo.O; o++) new Span<float>(yn + (long)o * ohw, ohw).Fill(((float*)bp)[o]);
                beta = 1f;
            }
            if (direct && pool is null) Sgemm.RunDirectB(scratch, false, geo.O, ohw, ckk, 1f, (float*)wp, ckk, xn, ohw, beta, yn, ohw);
            else if (direct) Sgemm.Run(pool, scratch, false, false, geo.O, ohw, ckk, 1f, (float*)wp, ckk, xn, ohw, beta, yn, ohw);
            else Sgemm.Run(pool, scratch, false, geo.O, ohw, ckk, 1f, (float*)wp, ckk, new ConvColumnsB(xn, geo with { N = 1 }), beta, yn, ohw);
        }

        if (SampleParallel(g.N)) _pool.For(g.N, (wk, s) => Sample(null, _pool.Scratch(wk), s));
        else for (int s = 0; s < g.N; s++) Sample(_pool, _pool.Scratch(0), s);
    }

    public void Conv2dBackwardData(DeviceBuffer dy, DeviceBuffer w, in ConvGeometry g, DeviceBuffer dx)
    {
        g.Validate();
        var geo = g;
        float* dyp0 = Ptr(dy, g.OutputSize, nameof(dy)), wp0 = Ptr(w, g.WeightSize, nameof(w)), dxp0 = Ptr(dx, g.InputSize, nameof(dx));
        int ckk = g.C * g.KH * g.KW, ohw = g.OH * g.OW, chw = g.C * g.H * g.W;
        bool direct = IsPointwise(g);

        if (UsePhases(g, out var pg))
        {
            // dx' [N, 4C, H/2, W/2] of the phase convolution, then put back in place.
            float* ws = _pool.Scratch(0).Get(ScratchSlot.PhaseWeights, pg.WeightSize);
            float* dxs = _pool.Scratch(0).Get(ScratchSlot.Phases, pg.InputSize);
            PhaseConv.Weights(_pool, wp0, ws, g);
            BackwardDataStride1(dyp0, ws, dxs, pg);
            PhaseConv.Merge(_pool, dxs, dxp0, g, _pool.Options.UseAvx512);
            return;
        }

        if (!direct && g.StrideH == 1 && g.StrideW == 1 && g.PadH < g.KH && g.PadW < g.KW)
        {
            BackwardDataStride1(dyp0, wp0, dxp0, g);
            return;
        }

        nint dyp = (nint)dyp0, wp = (nint)wp0, dxp = (nint)dxp0;
        if (Batched(g))
        {
            // colAll [C*KH*KW, N*OH*OW] = w^T x dyAll [O, N*OH*OW]; dx_n = col2im of its columns of sample n.
            int nTot = g.N * ohw;
            float* dyAll = _pool.Scratch(0).Get(ScratchSlot.Output, (long)g.O * nTot);
            BatchLayout((float*)dyp, dyAll, g, toBatch: true);
            float* colAll = _pool.Scratch(0).Get(ScratchSlot.Columns, (long)ckk * nTot);
            Sgemm.Run(_pool, _pool.Scratch(0), true, false, ckk, nTot, g.O, 1f, (float*)wp, ckk, dyAll, nTot, 0f, colAll, nTot);
            nint cp = (nint)colAll;
            _pool.For(g.N, (_, s) =>
            {
                float* dxn = (float*)dxp + (long)s * chw;
                new Span<float>(dxn, chw).Clear();
                Col2Im((float*)cp + (long)s * ohw, nTot, dxn, geo);
            });
            return;
        }

        // col_n [C*KH*KW, OH*OW] = w^T x dy_n [O, OH*OW]; dx_n = col2im(col_n).
        void Sample(WorkerPool? pool, WorkerScratch scratch, int s)
        {
            float* dyn = (float*)dyp + (long)s * geo.O * ohw;
            float* dxn = (float*)dxp + (long)s * chw;
            if (direct)
            {
                if (pool is null) Sgemm.RunDirectB(scratch, true, geo.C, ohw, geo.O, 1f, (float*)wp, geo.C, dyn, ohw, 0f, dxn, ohw);
                else Sgemm.Run(pool, scratch, true, false, geo.C, ohw, geo.O, 1f, (float*)wp, geo.C, dyn, ohw, 0f, dxn, ohw);
                return;
            }
            float* col = scratch.Get(ScratchSlot.Columns, (long)ckk * ohw);
            Sgemm.Run(pool, scratch, true, false, ckk, ohw, geo.O, 1f, (float*)wp, ckk, dyn, ohw, 0f, col, ohw);
            new Span<float>(dxn, chw).Clear();
            Col2Im(col, ohw, dxn, geo);
        }

        if (SampleParallel(g.N)) _pool.For(g.N, (wk, s) => Sample(null, _pool.Scratch(wk), s));
        else for (int s = 0; s < g.N; s++) Sample(_pool, _pool.Scratch(0), s);
    }

    /// <summary>
    /// Stride 1: dx is the forward conv of dy with the kernel flipped in space and its channel axes swapped, padded by
    /// K - 1 - pad, so it takes the implicit-GEMM (or Winograd) forward path (no col2im scatter).
    /// </summary>
    private void BackwardDataStride1(float* dy, float* w, float* dx, in ConvGeometry g)
    {
        int kk = g.KH * g.KW, cin = g.C, cout = g.O;
        float* wf = _pool.Scratch(0).Get(ScratchSlot.Weights, g.WeightSize);
        nint wsrc = (nint)w, wdst = (nint)wf;
        _pool.ForItems(cout, Math.Max(1, Grain / (cin * kk)), (o0, count) =>
        {
            for (int o = o0; o < o0 + count; o++)
                for (int c = 0; c < cin; c++)
                {
                    float* src = (float*)wsrc + ((long)o * cin + c) * kk, dst = (float*)wdst + ((long)c * cout + o) * kk;
                    for (int t = 0; t < kk; t++) dst[t] = src[kk - 1 - t];
                }
        });
        ForwardCore(dy, wf, null, dx, new ConvGeometry(g.N, g.O, g.OH, g.OW, g.C, g.KH, g.KW, 1, 1, g.KH - 1 - g.PadH, g.KW - 1 - g.PadW));
    }

    public void Conv2dBackwardWeight(DeviceBuffer x, DeviceBuffer dy, in ConvGeometry g, DeviceBuffer dw, DeviceBuffer? dbias)
    {
        g.Validate();
        var geo = g;
        nint xp = (nint)Ptr(x, g.InputSize, nameof(x)), dyp = (nint)Ptr(dy, g.OutputSize, nameof(dy));
        float* dwp = Ptr(dw, g.WeightSize, nameof(dw));
        float* dbp = dbias is null ? null : Ptr(dbias, g.O, nameof(dbias));
        int ckk = g.C * g.KH * g.KW, ohw = g.OH * g.OW, chw = g.C * g.H * g.W;
        bool direct = IsPointwise(g);

        // target [O, C*KH*KW] (+)= dy_n [O, OH*OW] x col_n^T. Per sample the columns are written out (ConvColumnsB
        // packing the whole [C*KH*KW, OH*OW] matrix as one panel): its contiguous row copies plus the 4x4-transposing
        // dense packer beat the gathers of ConvColumnsTB here (measured on the small preset's 32x32 and 16x16
        // levels: 52 vs 63 ms and 29 vs 39 ms per step).
        void Sample(WorkerPool? pool, WorkerScratch scratch, int s, float* target, bool first)
        {
            float* xn = (float*)xp + (long)s * chw;
            float* dyn = (float*)dyp + (long)s * geo.O * ohw;
            float* col = xn;
            if (!direct)
            {
                col = scratch.Get(ScratchSlot.Columns, (long)ckk * ohw);
                new ConvColumnsB(xn, geo with { N = 1 }).Pack(0, ckk, 0, ohw, ohw, col);
            }
            Sgemm.Run(pool, scratch, false, true, geo.O, ckk, ohw, 1f, dyn, ohw, col, ohw, first ? 0f : 1f, target, ckk);
        }

        int threads = _pool.Threads;
        if (UsePhases(g, out var pg))
        {
            // The gradient of w' over the phases of x, its 4x4 taps gathered back.
            float* xs = _pool.Scratch(0).Get(ScratchSlot.Phases, pg.InputSize);
            float* dws = _pool.Scratch(0).Get(ScratchSlot.PhaseWeights, pg.WeightSize);
            PhaseConv.Split(_pool, (float*)xp, xs, g, _pool.Options.UseAvx512);
            Winograd.BackwardWeight(_pool, xs, (float*)dyp, dws, pg);
            PhaseConv.WeightGradient(_pool, dws, dwp, g);
        }
        else if (UseWinograd(g))
        {
            Winograd.BackwardWeight(_pool, (float*)xp, (float*)dyp, dwp, g);
        }
        else if (DirectConv.Applies(g))
        {
            DirectConv.BackwardWeight(_pool, (float*)xp, (float*)dyp, dwp, g);
        }
        else if (WholeBatch(g))
        {
            // dw = dyAll [O, N*OH*OW] x columns^T over the whole batch.
            int nTot = g.N * ohw;
            float* dyAll = _pool.Scratch(0).Get(ScratchSlot.Output, (long)g.O * nTot);
            BatchLayout((float*)dyp, dyAll, g, toBatch: true);
            Sgemm.Run(_pool, _pool.Scratch(0), false, g.O, ckk, nTot, 1f, dyAll, nTot, new ConvColumnsTB((float*)xp, g), 0f, dwp, ckk);
        }
        else if (SampleParallel(g.N))
        {
            // Worker t sums a fixed contiguous range of samples into its own partial; the partials are added
            // in worker order, so the result does not depend on scheduling.
            int per = (g.N + threads - 1) / threads;
            nint dwpp = (nint)dwp;
            var partials = new nint[threads];
            _pool.For(threads, (wk, t) =>
            {
                // The partial belongs to the item t, the im2col scratch to the worker running it (one worker
                // may run several items).
                var scratch = _pool.Scratch(wk);
                float* target = t == 0 ? (float*)dwpp : _pool.Scratch(t).Get(ScratchSlot.Partial, (long)geo.O * ckk);
                partials[t] = (nint)target;
                int s0 = t * per, s1 = Math.Min(geo.N, s0 + per);
                if (s0 >= s1) new Span<float>(target, geo.O * ckk).Clear();
                for (int s = s0; s < s1; s++) Sample(null, scratch, s, target, s == s0);
            });
            var dwSpan = new Span<float>(dwp, g.WeightSize);
            for (int t = 1; t < threads; t++)
                TensorPrimitives.Add(dwSpan, new ReadOnlySpan<float>((float*)partials[t], g.WeightSize), dwSpan);
        }
        else
        {
            for (int s = 0; s < g.N; s++) Sample(_pool, _pool.Scratch(0), s, dwp, s == 0);
        }

        if (dbp != null)
        {
            nint dbpp = (nint)dbp;
            _pool.ForItems(geo.O, 1, (o0, count) =>
            {
                for (int o = o0; o < o0 + count; o++)
                {
                    double sum = 0;
                    for (int s = 0; s < geo.N; s++)
                        sum += TensorPrimitives.Sum(new ReadOnlySpan<float>((float*)dyp + ((long)s * geo.O + o) * ohw, ohw));
                    ((float*)dbpp)[o] = (float)sum;
                }
            });
        }
    }

    /// <summary>
    /// The adjoint of im2col (<see cref="ConvColumnsB"/>): dx [C, H, W] += scatter of col [C*KH*KW, OH*OW] (row
    /// stride ldCol), row (c, kh, kw) and column (oh, ow) going to x[c, oh*sh - ph + kh, ow*sw - pw + kw].
    /// </summary>
    internal static void Col2Im(float* col, long ldCol, float* dx, in ConvGeometry g)
    {
        int oh = g.OH, ow = g.OW;
        for (int c = 0; c < g.C; c++)
        {
            float* xc = dx + (long)c * g.H * g.W;
            for (int kh = 0; kh < g.KH; kh++)
            {
                for (int kw = 0; kw < g.KW; kw++, col += ldCol)
                {
                    int ow0 = Math.Max(0, CeilDiv(g.PadW - kw, g.StrideW));
                    int ow1 = Math.Min(ow, CeilDiv(g.W + g.PadW - kw, g.StrideW));
                    if (ow0 >= ow1) continue;
                    for (int r = 0; r < oh; r++)
                    {
                        int ih = r * g.StrideH - g.PadH + kh;
                        if ((uint)ih >= (uint)g.H) continue;
                        float* src = col + r * ow;
                        float* dst = xc + ih * g.W - g.PadW + kw;
                        if (g.StrideW == 1) Rows.AddTo(src + ow0, dst + ow0, ow1 - ow0);
                        else for (int q = ow0; q < ow1; q++) dst[q * g.StrideW] += src[q];
                    }
                }
            }
        }
    }

    private static int CeilDiv(int a, int b) => a >= 0 ? (a + b - 1) / b : -((-a) / b);

    // ---- normalisation ------------------------------------------------------------------------------

    // With a shift, channel cc of sample s is x + shift[s, cc]: every pass below treats it as x measured from the
    // channel's own mean mu - shift, so the sum is never formed.

    public void GroupNormForward(DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, int n, int c, int hw, int groups,
        float eps, bool silu, DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd)
    {
        if (groups <= 0 || c % groups != 0) throw new ArgumentException($"GroupNorm: {c} channels do not split into {groups} groups.");
        long size = (long)n * c * hw;
        nint xp = (nint)Ptr(x, size, nameof(x)), yp = (nint)Ptr(y, size, nameof(y));
        nint shp = shift is null ? 0 : (nint)Ptr(shift, (long)n * c, nameof(shift));
        nint gp = (nint)Ptr(gamma, c, nameof(gamma)), bp = (nint)Ptr(beta, c, nameof(beta));
        nint mp = (nint)Ptr(mean, (long)n * groups, nameof(mean)), rp = (nint)Ptr(rstd, (long)n * groups, nameof(rstd));
        int cpg = c / groups;
        double count = (double)cpg * hw;
        // (sample, group) items in runs of at least Grain elements: a deep level's group is a few hundred floats.
        _pool.ForItems(n * groups, Math.Max(1, Grain / (cpg * hw)), (i0, items) =>
        {
            for (int idx = i0; idx < i0 + items; idx++)
            {
                int s = idx / groups, gi = idx % groups;
                long baseOff = ((long)s * c + gi * cpg) * hw;
                float* sh = shp == 0 ? null : (float*)shp + (long)s * c + gi * cpg;
                double sum = 0;
                for (int ch = 0; ch < cpg; ch++)
                {
                    sum += TensorPrimitives.Sum(new ReadOnlySpan<float>((float*)xp + baseOff + (long)ch * hw, hw));
                    if (sh != null) sum += (double)hw * sh[ch];
                }
                float mu = (float)(sum / count);
                double sq = 0;
                for (int ch = 0; ch < cpg; ch++)
                    sq += Kernel.SumSquaredDeviation((float*)xp + baseOff + (long)ch * hw, hw, sh == null ? mu : mu - sh[ch]);
                float r = (float)(1.0 / Math.Sqrt(sq / count + eps));
                ((float*)mp)[idx] = mu;
                ((float*)rp)[idx] = r;
                for (int ch = 0; ch < cpg; ch++)
                {
                    int cc = gi * cpg + ch;
                    float scale = r * ((float*)gp)[cc], m = sh == null ? mu : mu - sh[ch];
                    long o = baseOff + (long)ch * hw;
                    if (silu) Kernel.Map(new NormalizeSiluKernel(m, scale, ((float*)bp)[cc]), (float*)xp + o, (float*)yp + o, hw);
                    else Kernel.Map(new NormalizeKernel(m, scale, ((float*)bp)[cc]), (float*)xp + o, (float*)yp + o, hw);
                }
            }
        });
    }

    public void GroupNormBackward(DeviceBuffer dy, DeviceBuffer x, DeviceBuffer? shift, DeviceBuffer gamma, DeviceBuffer beta, DeviceBuffer mean, DeviceBuffer rstd,
        int n, int c, int hw, int groups, bool silu, DeviceBuffer dx, DeviceBuffer dgamma, DeviceBuffer dbeta)
    {
        if (groups <= 0 || c % groups != 0) throw new ArgumentException($"GroupNorm: {c} channels do not split into {groups} groups.");
        long size = (long)n * c * hw;
        nint dyIn = (nint)Ptr(dy, size, nameof(dy)), xp = (nint)Ptr(x, size, nameof(x)), dxp = (nint)Ptr(dx, size, nameof(dx));
        nint shp = shift is null ? 0 : (nint)Ptr(shift, (long)n * c, nameof(shift));
        nint gp = (nint)Ptr(gamma, c, nameof(gamma)), bp = (nint)Ptr(beta, c, nameof(beta));
        nint mp = (nint)Ptr(mean, (long)n * groups, nameof(mean)), rp = (nint)Ptr(rstd, (long)n * groups, nameof(rstd));
        float* dgp = Ptr(dgamma, c, nameof(dgamma)), dbp = Ptr(dbeta, c, nameof(dbeta));
        int cpg = c / groups;
        double count = (double)cpg * hw;
        // Per (sample, channel): s1 = sum dy, s2 = sum dy * xhat; [n, c] each.
        var s1 = new double[n * c];
        var s2 = new double[n * c];
        _pool.ForItems(n * groups, Math.Max(1, Grain / (cpg * hw)), (i0, items) =>
        {
            for (int idx = i0; idx < i0 + items; idx++)
            {
                int s = idx / groups, gi = idx % groups;
                float mu = ((float*)mp)[idx], r = ((float*)rp)[idx];
                long baseOff = ((long)s * c + gi * cpg) * hw;
                float* sh = shp == 0 ? null : (float*)shp + (long)s * c + gi * cpg;
                // One pass per channel: the gradient of the normalised tensor (dy, or under SiLU dy silu'(z), then
                // written to dx and read back below), its sum and its sum against x - mean.
                nint dyp = silu ? dxp : dyIn;
                double a = 0, b = 0;
                for (int ch = 0; ch < cpg; ch++)
                {
                    int cc = gi * cpg + ch;
                    long o = baseOff + (long)ch * hw;
                    float m = sh == null ? mu : mu - sh[ch];
                    double sdy, sxc = silu
                        ? Reduce.GradientSums(new NormalizeSiluBackwardKernel(m, r * ((float*)gp)[cc], ((float*)bp)[cc]),
                            (float*)dyIn + o, (float*)xp + o, (float*)dxp + o, hw, m, out sdy)
                        : Reduce.GradientSums(new FirstKernel(), (float*)dyIn + o, (float*)xp + o, null, hw, m, out sdy);
                    double sxhat = sxc * r;
                    s1[s * c + cc] = sdy;
                    s2[s * c + cc] = sxhat;
                    double gm = ((float*)gp)[cc];
                    a += gm * sdy;
                    b += gm * sxhat;
                }
                // dx = r * (gamma dy - (a + xhat b) / M) = (r gamma) dy + kx (x - mean) + k0.
                double rr = r;
                float kx = (float)(-rr * rr * b / count);
                float k0 = (float)(-rr * a / count);
                for (int ch = 0; ch < cpg; ch++)
                {
                    int cc = gi * cpg + ch;
                    long o = baseOff + (long)ch * hw;
                    Kernel.Map(new LinearCombinationKernel(r * ((float*)gp)[cc], kx, sh == null ? mu : mu - sh[ch], k0), (float*)dyp + o, (float*)xp + o, (float*)dxp + o, hw);
                }
            }
        });
        for (int cc = 0; cc < c; cc++)
        {
            double g = 0, bsum = 0;
            for (int s = 0; s < n; s++) { g += s2[s * c + cc]; bsum += s1[s * c + cc]; }
            dgp[cc] = (float)g;
            dbp[cc] = (float)bsum;
        }
    }

    public void SoftmaxForward(DeviceBuffer x, int outer, int dim, int inner, DeviceBuffer y)
    {
        long size = (long)outer * dim * inner;
        nint xp = (nint)Ptr(x, size, nameof(x)), yp = (nint)Ptr(y, size, nameof(y));
        if (size == 0) return;
        if (inner == 1)
        {
            _pool.ForItems(outer, Math.Max(1, Grain / 4 / dim), (o0, count) =>
            {
                for (int o = o0; o < o0 + count; o++)
                {
                    var xs = new ReadOnlySpan<float>((float*)xp + (long)o * dim, dim);
                    var ys = new Span<float>((float*)yp + (long)o * dim, dim);
                    float max = TensorPrimitives.Max(xs);
                    TensorPrimitives.Subtract(xs, max, ys);
                    TensorPrimitives.Exp(ys, ys);
                    TensorPrimitives.Divide(ys, TensorPrimitives.Sum(ys), ys);
                }
            });
            return;
        }
        // Strided: vectors run along inner; the per-position max and sum live in worker scratch.
        int block = Math.Min(inner, 1024);
        int blocks = (inner + block - 1) / block;
        _pool.For(outer * blocks, (w, t) =>
        {
            int o = t / blocks, i0 = t % blocks * block, len = Math.Min(block, inner - i0);
            float* m = _pool.Scratch(w).Get(ScratchSlot.Small, 2 * block);
            var ms = new Span<float>(m, len);
            var ss = new Span<float>(m + block, len);
            float* xo = (float*)xp + (long)o * dim * inner + i0;
            float* yo = (float*)yp + (long)o * dim * inner + i0;
            new ReadOnlySpan<float>(xo, len).CopyTo(ms);
            for (int d = 1; d < dim; d++) TensorPrimitives.Max(ms, new ReadOnlySpan<float>(xo + (long)d * inner, len), ms);
            ss.Clear();
            for (int d = 0; d < dim; d++)
            {
                var yr = new Span<float>(yo + (long)d * inner, len);
                TensorPrimitives.Subtract(new ReadOnlySpan<float>(xo + (long)d * inner, len), ms, yr);
                TensorPrimitives.Exp(yr, yr);
                TensorPrimitives.Add(ss, yr, ss);
            }
            for (int d = 0; d < dim; d++)
            {
                var yr = new Span<float>(yo + (long)d * inner, len);
                TensorPrimitives.Divide(yr, ss, yr);
            }
        });
    }

    public void SoftmaxBackward(DeviceBuffer y, DeviceBuffer dy, int outer, int dim, int inner, DeviceBuffer dx)
    {
        long size = (long)outer * dim * inner;
        nint yp = (nint)Ptr(y, size, nameof(y)), dyp = (nint)Ptr(dy, size, nameof(dy)), dxp = (nint)Ptr(dx, size, nameof(dx));
        if (size == 0) return;
        if (inner == 1)
        {
            _pool.ForItems(outer, Math.Max(1, Grain / 4 / dim), (o0, count) =>
            {
                for (int o = o0; o < o0 + count; o++)
                {
                    long off = (long)o * dim;
                    float s = TensorPrimitives.Dot(new ReadOnlySpan<float>((float*)yp + off, dim), new ReadOnlySpan<float>((float*)dyp + off, dim));
                    Kernel.Map(new SoftmaxBackwardKernel(s), (float*)yp + off, (float*)dyp + off, (float*)dxp + off, dim);
                }
            });
            return;
        }
        int block = Math.Min(inner, 1024);
        int blocks = (inner + block - 1) / block;
        _pool.For(outer * blocks, (w, t) =>
        {
            int o = t / blocks, i0 = t % blocks * block, len = Math.Min(block, inner - i0);
            float* sp = _pool.Scratch(w).Get(ScratchSlot.Small, block);
            var ss = new Span<float>(sp, len);
            ss.Clear();
            long baseOff = (long)o * dim * inner + i0;
            for (int d = 0; d < dim; d++)
            {
                long off = baseOff + (long)d * inner;
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>((float*)yp + off, len), new ReadOnlySpan<float>((float*)dyp + off, len), ss, ss);
            }
            for (int d = 0; d < dim; d++)
            {
                long off = baseOff + (long)d * inner;
                Kernel.Map(new SoftmaxBackwardRowsKernel(), (float*)yp + off, (float*)dyp + off, sp, (float*)dxp + off, len);
            }
        });
    }
}
