using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// Single-precision GEMM in the Goto/BLIS scheme: C = alpha * op(A) op(B) + beta * C, row-major with leading
/// dimensions. op(B) is packed in [kc, NR] strips (kept in L1 by the micro-kernel), alpha * op(A) in [kc, MR]
/// strips (streamed from L2), and an MR x NR register tile of FMA accumulators does the work: 12 x 32 (or 8 x
/// 32) with Vector512 on AVX-512, 6 x 16 with Vector256 otherwise. Threads split the (row block, column chunk) tiles
/// of C; each packs its own A block, B is packed once per k-block and shared.
/// </summary>
internal static unsafe class Sgemm
{
    /// <summary>
    /// Rows of the register tile for an m-row product: 12 on AVX-512 (24 accumulators), but 8 when 12 would
    /// pad more than 5% of the rows and 8 pads less (m = 32 or 64 channels would compute 12% padding).
    /// </summary>
    private static int ChooseMR(int m, bool avx512)
    {
        if (!avx512) return 6;
        int waste12 = (12 - m % 12) % 12, waste8 = (8 - m % 8) % 8;
        return waste8 < waste12 && waste12 * 20 > m ? 8 : 12;
    }

    /// <summary>Columns of the register tile that goes with <paramref name="mr"/> rows.</summary>
    private static int NRFor(int mr) => mr == 6 ? 16 : 32;

    /// <summary>
    /// C [m, n] (leading dimension ldc) = alpha * op(A) op(B) + beta * C. op(A) is [m, k]: A is [m, k] (lda)
    /// or, when transA, [k, m]. op(B) is [k, n]: B is [k, n] (ldb) or, when transB, [n, k]. beta == 0
    /// overwrites C without reading it (NaN in C does not survive). Runs on the calling thread when
    /// <paramref name="pool"/> is null, in <paramref name="scratch"/>; otherwise on the pool, with B packed in
    /// <paramref name="scratch"/> and each worker's A block in its own. The kernels and block sizes are those
    /// of the backend that owns <paramref name="scratch"/>.
    /// </summary>
    public static void Run(WorkerPool? pool, WorkerScratch scratch, bool transA, bool transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc) =>
        Run(pool, scratch, transA, m, n, k, alpha, a, lda, new DenseB(transB, b, ldb), beta, c, ldc);

    /// <summary>
    /// As the dense <see cref="Run(WorkerPool?, WorkerScratch, bool, bool, int, int, int, float, float*, int, float*, int, float, float*, int)"/>,
    /// with op(B) [k, n] described by a packer instead of a matrix: the implicit-GEMM convolutions pack their
    /// im2col columns straight from the image into the B panels, so the column matrix is never written out.
    /// </summary>
    public static void Run<TB>(WorkerPool? pool, WorkerScratch scratch, bool transA, int m, int n, int k,
        float alpha, float* a, int lda, TB b, float beta, float* c, int ldc) where TB : struct, IPackB
    {
        if (!Begin(m, n, k, alpha, beta, c, ldc, out bool overwrite)) return;

        var options = scratch.Options;
        bool gather = options.UseGather;
        int mr = ChooseMR(m, options.UseAvx512), nr = NRFor(mr);
        int kcb = KBlock(k, options.GemmKC);
        int threads = pool?.Threads ?? 1;
        int mcb = RowBlock(m, mr, threads, options.GemmMC);
        int mBlocks = (m + mcb - 1) / mcb;
        for (int jc = 0; jc < n; jc += options.GemmNC)
        {
            int nc = Math.Min(options.GemmNC, n - jc);
            int strips = (nc + nr - 1) / nr;
            // Column chunks per row block: enough tiles to balance (at least 2 per worker, a multiple of the worker
            // count where the strips allow): a worker idle at the end of a k-block costs as much as the whole tail.
            int nChunks = 1;
            if (threads > 1)
            {
                nChunks = Math.Clamp((2 * threads + mBlocks - 1) / mBlocks, 1, strips);
                while (nChunks < strips && mBlocks * nChunks % threads != 0) nChunks++;
            }
            int stripsPerChunk = (strips + nChunks - 1) / nChunks;
            nChunks = (strips + stripsPerChunk - 1) / stripsPerChunk;
            int tiles = mBlocks * nChunks;
            if (pool is null || tiles == 1)
            {
                float* bp = scratch.Get(ScratchSlot.PackB, (long)strips * kcb * nr);
                for (int pc = 0; pc < k; pc += kcb)
                {
                    int kc = Math.Min(kcb, k - pc);
                    for (int s = 0; s < strips; s++) PackStrip(b, pc, kc, jc, nc, nr, s, bp, gather);
                    for (int t = 0; t < tiles; t++)
                        Tile(scratch, mcb, mr, nr, t, nChunks, stripsPerChunk, strips, transA, m, nc, jc, pc, kc, alpha, a, lda, bp, c, ldc, overwrite && pc == 0);
                }
                continue;
            }
            // On the pool: B panels are double-buffered, and the strips of panel p + 1 are packed as extra work
            // items of the region that runs panel p's tiles (after them, so they fill the region's tail). One
            // pool region per k-block instead of two, and the packing no longer waits for the slowest tile.
            long panel = (long)strips * kcb * nr;
            nint buf0 = (nint)scratch.Get(ScratchSlot.PackB, panel), buf1 = (nint)scratch.Get(ScratchSlot.PackBNext, panel);
            pool.ForItems(strips, 1, (s0, count) =>
            {
                for (int s = s0; s < s0 + count; s++) PackStrip(b, 0, kcb, jc, nc, nr, s, (float*)buf0, gather);
            });
            for (int pc = 0, p = 0; pc < k; pc += kcb, p++)
            {
                int kc = Math.Min(kcb, k - pc);
                bool first = overwrite && pc == 0;
                nint cur = p % 2 == 0 ? buf0 : buf1, next = p % 2 == 0 ? buf1 : buf0;
                int pcNext = pc + kcb, kcNext = Math.Min(kcb, k - pcNext);
                int items = tiles + (pcNext < k ? strips : 0);
                pool.For(items, (w, it) =>
                {
                    if (it < tiles)
                    {
                        Tile(pool.Scratch(w), mcb, mr, nr, it, nChunks, stripsPerChunk, strips, transA, m, nc, jc, pc, kc, alpha, a, lda, (float*)cur, c, ldc, first);
                    }
                    else
                    {
                        PackStrip(b, pcNext, kcNext, jc, nc, nr, it - tiles, (float*)next, gather);
                    }
                });
            }
        }
    }

    /// <summary>
    /// What every product does before its micro-kernels: nothing for an empty C; C scaled by beta and done when
    /// there is nothing to add (k = 0 or alpha = 0); otherwise C pre-scaled when 0 &lt; |beta| != 1, and
    /// <paramref name="overwrite"/> set when beta is 0 (C is then written without being read).
    /// </summary>
    private static bool Begin(int m, int n, int k, float alpha, float beta, float* c, int ldc, out bool overwrite)
    {
        overwrite = beta == 0f;
        if (m <= 0 || n <= 0) return false;
        if (k <= 0 || alpha == 0f)
        {
            ScaleC(m, n, beta, c, ldc);
            return false;
        }
        if (!overwrite && beta != 1f) ScaleC(m, n, beta, c, ldc);
        return true;
    }

    /// <summary>
    /// Depth of the k-blocks of a product with inner dimension <paramref name="k"/>: k split into the fewest
    /// blocks of at most <paramref name="kcMax"/> (<see cref="CpuBackendOptions.GemmKC"/>), of equal depth rounded up
    /// to a multiple of 16 (k = 1024 with KC 768 is two blocks of 512 rather than 768 + 256, whose short block would
    /// pay a full C pass for a third of the work).
    /// </summary>
    internal static int KBlock(int k, int kcMax)
    {
        if (k <= kcMax) return k;
        int blocks = (k + kcMax - 1) / kcMax;
        return Math.Min(kcMax, ((k + blocks - 1) / blocks + 15) & ~15);
    }

    /// <summary>
    /// Rows of the A blocks of an m-row product on <paramref name="threads"/> workers: at most about
    /// <paramref name="mcMax"/> (<see cref="CpuBackendOptions.GemmMC"/>), a multiple of <paramref name="mr"/>, and as many blocks as a multiple of the worker count,
    /// so that products with few rows (conv layers: m = 128 or 256 output channels) split by rows over the
    /// workers. Splitting them by columns instead would make every worker pack the whole A block again.
    /// </summary>
    internal static int RowBlock(int m, int mr, int threads, int mcMax)
    {
        if (threads <= 1) return Math.Max(mr, mcMax / mr * mr);
        int blocks = (m + mcMax - 1) / mcMax;
        blocks = (blocks + threads - 1) / threads * threads;
        return Math.Max(mr, ((m + blocks - 1) / blocks + mr - 1) / mr * mr);
    }

    /// <summary>Packs strip <paramref name="s"/> (columns jc + s * nr ..) of a [kc, nc] B panel into its place in <paramref name="panel"/>.</summary>
    private static void PackStrip<TB>(TB b, int pc, int kc, int jc, int nc, int nr, int s, float* panel, bool gather) where TB : struct, IPackB =>
        b.Pack(pc, kc, jc + s * nr, Math.Min(nr, nc - s * nr), nr, panel + (long)s * kc * nr, gather);

    /// <summary>One (row block, column chunk) tile for one k-block: packs its A block and runs the micro-kernels.</summary>
    private static void Tile(WorkerScratch scratch, int mcb, int mr, int nr, int t, int nChunks, int stripsPerChunk, int strips, bool transA,
        int m, int nc, int jc, int pc, int kc, float alpha, float* a, int lda, float* bp, float* c, int ldc, bool first)
    {
        int ib = t / nChunks, chunk = t % nChunks;
        int ic = ib * mcb, mc = Math.Min(mcb, m - ic);
        int aStrips = (mc + mr - 1) / mr;
        float* ap = scratch.Get(ScratchSlot.PackA, (long)aStrips * kc * mr);
        for (int s = 0; s < aStrips; s++)
            PackA(transA, a, lda, ic + s * mr, Math.Min(mr, mc - s * mr), pc, kc, alpha, mr, ap + (long)s * kc * mr);

        int s0 = chunk * stripsPerChunk, s1 = Math.Min(strips, s0 + stripsPerChunk);
        Strips(mr, nr, mc, nc, kc, s0, s1, ap, bp, c + (long)ic * ldc + jc, ldc, first);
    }

    /// <summary>
    /// C [mc, nc] (=|+=) packed A [mc, kc] times the packed B strips s0 .. s1 - 1 of a [kc, nc] panel: one micro-kernel
    /// per (A strip, B strip), through a register-tile buffer where the tile overhangs C's last row or column.
    /// </summary>
    private static void Strips(int mr, int nr, int mc, int nc, int kc, int s0, int s1, float* ap, float* bp, float* c, int ldc, bool first)
    {
        float* tile = stackalloc float[12 * 32];
        int aStrips = (mc + mr - 1) / mr;
        for (int js = s0; js < s1; js++)
        {
            int j = js * nr, nrEff = Math.Min(nr, nc - j);
            float* bs = bp + (long)js * kc * nr;
            for (int s = 0; s < aStrips; s++)
            {
                int i = s * mr, mrEff = Math.Min(mr, mc - i);
                float* cc = c + (long)i * ldc + j;
                float* as_ = ap + (long)s * kc * mr;
                if (mrEff == mr && nrEff == nr)
                {
                    MicroKernel(mr, kc, as_, bs, nr, cc, ldc, first);
                }
                else
                {
                    MicroKernel(mr, kc, as_, bs, nr, tile, nr, true);
                    StoreEdge(tile, nr, cc, ldc, mrEff, nrEff, first);
                }
            }
        }
    }

    /// <summary>The rows x cols corner of a register tile computed into <paramref name="tile"/> (row stride nr), stored or added into C.</summary>
    private static void StoreEdge(float* tile, int nr, float* c, int ldc, int rows, int cols, bool overwrite)
    {
        for (int r = 0; r < rows; r++)
        {
            float* crow = c + (long)r * ldc;
            float* trow = tile + r * nr;
            if (overwrite) for (int q = 0; q < cols; q++) crow[q] = trow[q];
            else for (int q = 0; q < cols; q++) crow[q] += trow[q];
        }
    }

    /// <summary>
    /// The register tile (rows, columns) for an m-row product with the kernels of <paramref name="options"/>: the
    /// strip widths of operands packed by <see cref="PackAPanel"/> and by callers that write B strips themselves.
    /// </summary>
    internal static (int MR, int NR) RegisterTile(int m, CpuBackendOptions options)
    {
        int mr = ChooseMR(m, options.UseAvx512);
        return (mr, NRFor(mr));
    }

    /// <summary>Floats of A [m, k] packed by <see cref="PackAPanel"/>: ceil(m / mr) strips of [k, mr].</summary>
    internal static long PackedASize(int m, int k, int mr) => (long)(m + mr - 1) / mr * k * mr;

    /// <summary>Floats of B [k, n] in strips of nr columns ([k, nr] each, the last zero-padded): what <see cref="RunPacked"/> reads.</summary>
    internal static long PackedBSize(int k, int n, int nr) => (long)(n + nr - 1) / nr * k * nr;

    /// <summary>A [m, k] (row-major, leading dimension lda) as ceil(m / mr) strips of [k, mr], rows past m zero.</summary>
    internal static void PackAPanel(float* a, int lda, int m, int k, int mr, float* dst)
    {
        for (int i = 0, s = 0; i < m; i += mr, s++)
            PackA(false, a, lda, i, Math.Min(mr, m - i), 0, k, 1f, mr, dst + (long)s * k * mr);
    }

    /// <summary>
    /// C [m, n] = A B on the calling thread from operands already packed: A by <see cref="PackAPanel"/> with the
    /// <see cref="RegisterTile"/> of m, B as [k, nr] strips of that tile's width. No packing and no k-blocking, so
    /// for products whose operands are written packed by the caller (Winograd's transformed tiles) and k is
    /// small enough for a strip to stay in L1/L2 (up to a few hundred).
    /// </summary>
    internal static void RunPacked(int mr, int nr, int m, int n, int k, float* aPacked, float* bPacked, float* c, int ldc)
    {
        if (m <= 0 || n <= 0) return;
        if (k <= 0)
        {
            ScaleC(m, n, 0f, c, ldc);
            return;
        }
        Strips(mr, nr, m, n, k, 0, (n + nr - 1) / nr, aPacked, bPacked, c, ldc, true);
    }

    /// <summary>
    /// C [m, n] = alpha op(A) B + beta C on the calling thread with a row-major B [k, n] read in place by the
    /// micro-kernels (row p of a strip at b + p * ldb) instead of packed: for products with few rows, where each
    /// packed B element would serve only m / MR micro-kernel calls and packing costs about as much as the
    /// arithmetic (the 1x1 convolutions: m = 32 to 128 output channels, k = 32 to 256, n = H W). Only a last
    /// partial strip is packed. A is packed whole per k-block.
    /// </summary>
    internal static void RunDirectB(WorkerScratch scratch, bool transA, int m, int n, int k, float alpha, float* a, int lda,
        float* b, int ldb, float beta, float* c, int ldc)
    {
        if (!Begin(m, n, k, alpha, beta, c, ldc, out bool overwrite)) return;
        var options = scratch.Options;
        int mr = ChooseMR(m, options.UseAvx512), nr = NRFor(mr);
        int kcb = KBlock(k, options.GemmKC);
        int aStrips = (m + mr - 1) / mr, fullStrips = n / nr;
        float* tile = stackalloc float[12 * 32];
        for (int pc = 0; pc < k; pc += kcb)
        {
            int kc = Math.Min(kcb, k - pc);
            bool first = overwrite && pc == 0;
            float* ap = scratch.Get(ScratchSlot.PackA, (long)aStrips * kc * mr);
            for (int s = 0; s < aStrips; s++)
                PackA(transA, a, lda, s * mr, Math.Min(mr, m - s * mr), pc, kc, alpha, mr, ap + (long)s * kc * mr);
            for (int js = 0; js * nr < n; js++)
            {
                int j = js * nr, nrEff = Math.Min(nr, n - j);
                float* bs = b + (long)pc * ldb + j;
                int bStride = ldb;
                if (js >= fullStrips)
                {
                    float* packed = scratch.Get(ScratchSlot.PackB, (long)kc * nr);
                    PackB(false, b, ldb, pc, kc, j, nrEff, nr, packed);
                    bs = packed;
                    bStride = nr;
                }
                for (int s = 0; s < aStrips; s++)
                {
                    int i = s * mr, mrEff = Math.Min(mr, m - i);
                    float* cc = c + (long)i * ldc + j;
                    float* as_ = ap + (long)s * kc * mr;
                    if (mrEff == mr && nrEff == nr)
                    {
                        MicroKernel(mr, kc, as_, bs, bStride, cc, ldc, first);
                        continue;
                    }
                    MicroKernel(mr, kc, as_, bs, bStride, tile, nr, true);
                    StoreEdge(tile, nr, cc, ldc, mrEff, nrEff, first);
                }
            }
        }
    }

    /// <summary>
    /// GFLOP/s of the micro-kernel alone on L1/L2-resident packed panels (the ceiling the blocking can reach),
    /// timed by <paramref name="clock"/> in seconds.
    /// </summary>
    internal static double MicroKernelGflops(int kc, int calls, Func<double> clock)
    {
        int mr = ChooseMR(12, new CpuBackendOptions().UseAvx512), nr = NRFor(mr);
        var a = GC.AllocateArray<float>(kc * mr * 8, pinned: true);
        var b = GC.AllocateArray<float>(kc * nr, pinned: true);
        var c = GC.AllocateArray<float>(mr * nr * 8, pinned: true);
        fixed (float* ap = a, bp = b, cp = c)
        {
            for (int i = 0; i < 1000; i++) MicroKernel(mr, kc, ap, bp, nr, cp, nr, true);
            double t0 = clock();
            for (int i = 0; i < calls; i++) MicroKernel(mr, kc, ap + (i & 7) * kc * mr, bp, nr, cp + (i & 7) * mr * nr, nr, false);
            return 2.0 * mr * nr * kc * calls / (clock() - t0) / 1e9;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MicroKernel(int mr, int kc, float* a, float* b, int ldb, float* c, int ldc, bool overwrite)
    {
        if (mr == 12) Kernel12x32(kc, a, b, ldb, c, ldc, overwrite);
        else if (mr == 8) Kernel8x32(kc, a, b, ldb, c, ldc, overwrite);
        else Kernel6x16(kc, a, b, ldb, c, ldc, overwrite);
    }

    // The kernels read row p of their B strip at b + p * ldb: ldb is the strip width for packed strips, or the
    // leading dimension of a row-major B read in place (RunDirectB).

    /// <summary>C[12, 32] (=|+=) sum over p of a[p, 0..12) outer b[p, 0..32): 24 zmm accumulators, 2 B loads and 12
    /// broadcasts per 24 FMAs (27 of the 32 registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel12x32(int kc, float* a, float* b, int ldb, float* c, int ldc, bool overwrite)
    {
        // The C tile is read only at the end: start fetching its rows now (power-of-two ldc maps all 12 rows
        // to one L1 set, so they would otherwise miss).
        if (!overwrite && Sse.IsSupported)
            for (int r = 0; r < 12; r++)
            {
                Sse.Prefetch0(c + (long)r * ldc);
                Sse.Prefetch0(c + (long)r * ldc + 16);
            }
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
            c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default,
            c60 = default, c61 = default, c70 = default, c71 = default, c80 = default, c81 = default,
            c90 = default, c91 = default, c100 = default, c101 = default, c110 = default, c111 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var a0 = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(a0, b0, c00); c01 = Vector512.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(a1, b0, c10); c11 = Vector512.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(a2, b0, c20); c21 = Vector512.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(a3, b0, c30); c31 = Vector512.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(a4, b0, c40); c41 = Vector512.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(a5, b0, c50); c51 = Vector512.FusedMultiplyAdd(a5, b1, c51);
            var a6 = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(a6, b0, c60); c61 = Vector512.FusedMultiplyAdd(a6, b1, c61);
            var a7 = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(a7, b0, c70); c71 = Vector512.FusedMultiplyAdd(a7, b1, c71);
            var a8 = Vector512.Create(a[8]);
            c80 = Vector512.FusedMultiplyAdd(a8, b0, c80); c81 = Vector512.FusedMultiplyAdd(a8, b1, c81);
            var a9 = Vector512.Create(a[9]);
            c90 = Vector512.FusedMultiplyAdd(a9, b0, c90); c91 = Vector512.FusedMultiplyAdd(a9, b1, c91);
            var a10 = Vector512.Create(a[10]);
            c100 = Vector512.FusedMultiplyAdd(a10, b0, c100); c101 = Vector512.FusedMultiplyAdd(a10, b1, c101);
            var a11 = Vector512.Create(a[11]);
            c110 = Vector512.FusedMultiplyAdd(a11, b0, c110); c111 = Vector512.FusedMultiplyAdd(a11, b1, c111);
            a += 12;
            b += ldb;
        }
        Store512(c, overwrite, c00, c01); c += ldc;
        Store512(c, overwrite, c10, c11); c += ldc;
        Store512(c, overwrite, c20, c21); c += ldc;
        Store512(c, overwrite, c30, c31); c += ldc;
        Store512(c, overwrite, c40, c41); c += ldc;
        Store512(c, overwrite, c50, c51); c += ldc;
        Store512(c, overwrite, c60, c61); c += ldc;
        Store512(c, overwrite, c70, c71); c += ldc;
        Store512(c, overwrite, c80, c81); c += ldc;
        Store512(c, overwrite, c90, c91); c += ldc;
        Store512(c, overwrite, c100, c101); c += ldc;
        Store512(c, overwrite, c110, c111);
    }

    /// <summary>C[8, 32] (=|+=) sum over p of a[p, 0..8) outer b[p, 0..32): 16 zmm accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32(int kc, float* a, float* b, int ldb, float* c, int ldc, bool overwrite)
    {
        // The C tile is read only at the end: start fetching its rows now (power-of-two ldc maps all 8 rows
        // to one L1 set, so they would otherwise miss).
        if (!overwrite && Sse.IsSupported)
            for (int r = 0; r < 8; r++)
            {
                Sse.Prefetch0(c + (long)r * ldc);
                Sse.Prefetch0(c + (long)r * ldc + 16);
            }
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
            c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default,
            c60 = default, c61 = default, c70 = default, c71 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var a0 = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(a0, b0, c00); c01 = Vector512.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(a1, b0, c10); c11 = Vector512.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(a2, b0, c20); c21 = Vector512.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(a3, b0, c30); c31 = Vector512.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(a4, b0, c40); c41 = Vector512.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(a5, b0, c50); c51 = Vector512.FusedMultiplyAdd(a5, b1, c51);
            var a6 = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(a6, b0, c60); c61 = Vector512.FusedMultiplyAdd(a6, b1, c61);
            var a7 = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(a7, b0, c70); c71 = Vector512.FusedMultiplyAdd(a7, b1, c71);
            a += 8;
            b += ldb;
        }
        Store512(c, overwrite, c00, c01); c += ldc;
        Store512(c, overwrite, c10, c11); c += ldc;
        Store512(c, overwrite, c20, c21); c += ldc;
        Store512(c, overwrite, c30, c31); c += ldc;
        Store512(c, overwrite, c40, c41); c += ldc;
        Store512(c, overwrite, c50, c51); c += ldc;
        Store512(c, overwrite, c60, c61); c += ldc;
        Store512(c, overwrite, c70, c71);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512(float* c, bool overwrite, Vector512<float> v0, Vector512<float> v1)
    {
        if (!overwrite)
        {
            v0 += Vector512.Load(c);
            v1 += Vector512.Load(c + 16);
        }
        v0.Store(c);
        v1.Store(c + 16);
    }

    /// <summary>C[6, 16] (=|+=) sum over p of a[p, 0..6) outer b[p, 0..16): 12 ymm accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(int kc, float* a, float* b, int ldb, float* c, int ldc, bool overwrite)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
            c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var a0 = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(a0, b0, c00); c01 = Vector256.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(a1, b0, c10); c11 = Vector256.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(a2, b0, c20); c21 = Vector256.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(a3, b0, c30); c31 = Vector256.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(a4, b0, c40); c41 = Vector256.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(a5, b0, c50); c51 = Vector256.FusedMultiplyAdd(a5, b1, c51);
            a += 6;
            b += ldb;
        }
        Store256(c, overwrite, c00, c01); c += ldc;
        Store256(c, overwrite, c10, c11); c += ldc;
        Store256(c, overwrite, c20, c21); c += ldc;
        Store256(c, overwrite, c30, c31); c += ldc;
        Store256(c, overwrite, c40, c41); c += ldc;
        Store256(c, overwrite, c50, c51);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store256(float* c, bool overwrite, Vector256<float> v0, Vector256<float> v1)
    {
        if (!overwrite)
        {
            v0 += Vector256.Load(c);
            v1 += Vector256.Load(c + 8);
        }
        v0.Store(c);
        v1.Store(c + 8);
    }

    /// <summary>
    /// dst [kc, nr] = op(B)[pc..pc+kc, j0..j0+cols), zero-padded to nr columns. op(B)(p, j) is b[p*ldb + j],
    /// or b[j*ldb + p] when transposed.
    /// </summary>
    internal static void PackB(bool transB, float* b, int ldb, int pc, int kc, int j0, int cols, int nr, float* dst)
    {
        if (!transB)
        {
            float* src = b + (long)pc * ldb + j0;
            if (cols == nr)
            {
                for (int p = 0; p < kc; p++, src += ldb, dst += nr)
                    Buffer.MemoryCopy(src, dst, nr * 4L, nr * 4L);
            }
            else
            {
                for (int p = 0; p < kc; p++, src += ldb, dst += nr)
                {
                    int q = 0;
                    for (; q < cols; q++) dst[q] = src[q];
                    for (; q < nr; q++) dst[q] = 0f;
                }
            }
        }
        else
        {
            int q = 0;
            if (Sse.IsSupported)
                for (; q <= cols - 4; q += 4)
                {
                    float* src = b + (long)(j0 + q) * ldb + pc;
                    int p = 0;
                    for (; p <= kc - 4; p += 4) Transpose4x4(src + p, ldb, dst + (long)p * nr + q, nr, 1f);
                    for (; p < kc; p++)
                        for (int j = 0; j < 4; j++) dst[p * nr + q + j] = src[(long)j * ldb + p];
                }
            for (; q < cols; q++)
            {
                float* src = b + (long)(j0 + q) * ldb + pc;
                for (int p = 0; p < kc; p++) dst[p * nr + q] = src[p];
            }
            for (q = cols; q < nr; q++)
                for (int p = 0; p < kc; p++) dst[p * nr + q] = 0f;
        }
    }

    /// <summary>
    /// dst[i * dstStride + j] = scale * src[j * srcStride + i] for i, j in 0..4: a 4x4 block transposed in
    /// SSE registers (the packing of a row-major A and of a transposed B).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose4x4(float* src, long srcStride, float* dst, int dstStride, float scale)
    {
        var r0 = Sse.LoadVector128(src);
        var r1 = Sse.LoadVector128(src + srcStride);
        var r2 = Sse.LoadVector128(src + 2 * srcStride);
        var r3 = Sse.LoadVector128(src + 3 * srcStride);
        var t0 = Sse.UnpackLow(r0, r1);
        var t1 = Sse.UnpackLow(r2, r3);
        var t2 = Sse.UnpackHigh(r0, r1);
        var t3 = Sse.UnpackHigh(r2, r3);
        var s = Vector128.Create(scale);
        Sse.Store(dst, Sse.MoveLowToHigh(t0, t1) * s);
        Sse.Store(dst + dstStride, Sse.MoveHighToLow(t1, t0) * s);
        Sse.Store(dst + 2 * dstStride, Sse.MoveLowToHigh(t2, t3) * s);
        Sse.Store(dst + 3 * dstStride, Sse.MoveHighToLow(t3, t2) * s);
    }

    /// <summary>
    /// dst [kc, mr] = alpha * op(A)[i0..i0+rows, pc..pc+kc) transposed into k-major order, zero-padded to mr
    /// rows. op(A)(i, p) is a[i*lda + p], or a[p*lda + i] when transposed.
    /// </summary>
    private static void PackA(bool transA, float* a, int lda, int i0, int rows, int pc, int kc, float alpha, int mr, float* dst)
    {
        if (transA)
        {
            float* src = a + (long)pc * lda + i0;
            for (int p = 0; p < kc; p++, src += lda, dst += mr)
            {
                int q = 0;
                for (; q < rows; q++) dst[q] = alpha * src[q];
                for (; q < mr; q++) dst[q] = 0f;
            }
        }
        else if (rows == mr && Sse.IsSupported)
        {
            // Row-major A: 4x4 blocks transposed in registers, rows past the last whole 4 one by one.
            float* src = a + (long)i0 * lda + pc;
            int q4 = mr & ~3;
            int p = 0;
            for (; p <= kc - 4; p += 4)
            {
                for (int q = 0; q < q4; q += 4) Transpose4x4(src + (long)q * lda + p, lda, dst + p * mr + q, mr, alpha);
                for (int q = q4; q < mr; q++)
                    for (int i = 0; i < 4; i++) dst[(p + i) * mr + q] = alpha * src[(long)q * lda + p + i];
            }
            for (; p < kc; p++)
                for (int q = 0; q < mr; q++) dst[p * mr + q] = alpha * src[(long)q * lda + p];
        }
        else
        {
            for (int q = 0; q < rows; q++)
            {
                float* src = a + (long)(i0 + q) * lda + pc;
                for (int p = 0; p < kc; p++) dst[p * mr + q] = alpha * src[p];
            }
            for (int q = rows; q < mr; q++)
                for (int p = 0; p < kc; p++) dst[p * mr + q] = 0f;
        }
    }

    private static void ScaleC(int m, int n, float beta, float* c, int ldc)
    {
        for (int i = 0; i < m; i++)
        {
            var row = new Span<float>(c + (long)i * ldc, n);
            if (beta == 0f) row.Clear();
            else System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
        }
    }
}

/// <summary>
/// The B operand of a GEMM as a packer: writes op(B)[pc..pc+kc, j0..j0+cols) into dst [kc, nr], k-major,
/// columns past <c>cols</c> zero. Called concurrently for different strips, so it must not mutate shared state.
/// <c>gather</c> is the backend's <see cref="CpuBackendOptions.UseGather"/>, for packers that have a gather path.
/// </summary>
internal unsafe interface IPackB
{
    void Pack(int pc, int kc, int j0, int cols, int nr, float* dst, bool gather);
}

/// <summary>A row-major matrix B [k, n] (leading dimension ldb), or B [n, k] when transposed.</summary>
internal readonly unsafe struct DenseB(bool transB, float* b, int ldb) : IPackB
{
    public void Pack(int pc, int kc, int j0, int cols, int nr, float* dst, bool gather = false) => Sgemm.PackB(transB, b, ldb, pc, kc, j0, cols, nr, dst);
}
