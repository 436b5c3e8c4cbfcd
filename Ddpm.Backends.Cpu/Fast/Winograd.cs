using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// The transforms of one Winograd F(m x m, 3x3) algorithm (Lavin and Gray 2016): every m x m output tile is
/// A^T [ (G g G^T) . (B^T d B) ] A of the (m + 2) x (m + 2) input patch d around it, so the channel sums become
/// (m + 2)^2 GEMMs ("planes"). Tiles are numbered within a chunk of whole tile rows (a row of output tiles of one
/// image): tile t of the chunk starting at global tile row r0 is tile t % tw of global tile row r0 + t / tw, global
/// tile row r being tile row r % th of image r / th. Planes are <c>plane</c> floats apart.
/// </summary>
internal unsafe interface IWinogradTile
{
    /// <summary>Outputs per tile side.</summary>
    static abstract int M { get; }

    /// <summary>(m + 2)^2, the number of products.</summary>
    static abstract int Planes { get; }

    /// <summary>Floats of per-worker staging a transform of a chunk of <paramref name="tiles"/> tiles, <paramref name="tw"/> per tile row, needs.</summary>
    static abstract long StageFloats(int tw, int tiles);

    /// <summary>u [Planes, O*C] = G g G^T for the 3x3 filters p0 .. p0 + count of w [O*C, 3, 3], planes <paramref name="plane"/> floats apart.</summary>
    static abstract void FilterTransform(float* w, float* u, long plane, int p0, int count);

    /// <summary>dw [O*C, 3, 3] = G^T du G for the filters p0 .. p0 + count of du [Planes, O*C]: the adjoint of <see cref="FilterTransform"/>.</summary>
    static abstract void FilterGradient(float* du, long plane, float* dw, int p0, int count);

    /// <summary>
    /// V = B^T d B for the tiles of tile rows r0 .. r0 + rows as planes of [C, tiles]: row-major with leading dimension
    /// <paramref name="ld"/> when <paramref name="nr"/> is 0, otherwise in SGEMM's packed-B layout (strips of nr tiles,
    /// [C, nr] each, for <see cref="Sgemm.RunPacked"/>). Columns of the last strip past the chunk may be written with
    /// anything (the caller clears them).
    /// </summary>
    static abstract void InputTransform(float* x, in ConvGeometry g, int th, int tw, int r0, int rows, float* v, long plane, int nr, int ld, float* stage);

    /// <summary>The chunk's outputs y = A^T m A (+ bias) from M [Planes, O, ld]; outputs past the last row or column are dropped.</summary>
    static abstract void OutputTransform(float* m, long plane, float* bias, float* y, in ConvGeometry g, int th, int tw, int r0, int rows, int ld, float* stage);

    /// <summary>dM [Planes, O, ld] = A dy A^T for the chunk's tiles (outputs past the last row or column count as zero): the adjoint of <see cref="OutputTransform"/>.</summary>
    static abstract void GradOutputTransform(float* dy, in ConvGeometry g, int th, int tw, int r0, int rows, float* dm, long plane, int ld, float* stage);
}

/// <summary>
/// The 3x3, stride-1, padding-1 convolutions as Winograd convolutions: F(2x2, 3x3) (<see cref="WinogradF2"/>, 16
/// products, 2.25x fewer multiplies than the direct sums) or F(4x4, 3x3) (<see cref="WinogradF4"/>, 36 products, 4x
/// fewer), chosen by <see cref="CpuBackendOptions.WinogradTile"/>.
/// <para>
/// Work goes in chunks of whole tile rows, sized so that a chunk's transformed input V [P, C, T] and products M [P, O,
/// T] stay in a core's L2: a worker transforms its chunk's input straight into packed SGEMM B strips, runs the P
/// products on the micro-kernels with no packing (<see cref="Sgemm.RunPacked"/>) and transforms the products back.
/// The filters are transformed once per call and packed as SGEMM A panels. The weight gradient sums dM V^T over the
/// chunks of a worker item into a partial, the partials in item order, then dw = G^T dU G.
/// </para>
/// </summary>
internal static unsafe class Winograd
{
    /// <summary>
    /// The distance between two planes of transformed tiles or products: their size plus one cache line. Planes are
    /// often a multiple of 4 KB (e.g. 32 channels x 512 tiles = 64 KB), and 16 streams whose addresses differ by such a
    /// multiple fall into the same L1 and L2 sets and evict each other; the offset spreads them.
    /// </summary>
    internal static long PlaneStride(long floats) => floats + 16;

    /// <summary>Whether the geometry is one the Winograd convolutions here compute: 3x3, stride 1, padding 1.</summary>
    public static bool Applies(in ConvGeometry g) =>
        g.KH == 3 && g.KW == 3 && g.StrideH == 1 && g.StrideW == 1 && g.PadH == 1 && g.PadW == 1;

    /// <summary>Output tiles of a geometry with tiles of m x m outputs.</summary>
    internal static long Tiles(in ConvGeometry g, int m) => (long)g.N * ((g.OH + m - 1) / m) * ((g.OW + m - 1) / m);

    /// <summary>
    /// Tile rows per chunk: about <see cref="CpuBackendOptions.WinogradChunk"/> F(2x2) tile-channels of transformed data
    /// ((C + O) x tiles x planes / 16), at least one tile row, no more than a worker's share of the tile rows, and
    /// where a tile row is narrower than a 32-column strip, a whole number of strips.
    /// </summary>
    internal static int RowsPerChunk(in ConvGeometry g, int tw, int totalRows, int budget, int planes, int threads)
    {
        int rows = (int)Math.Max(1, (long)budget * 16 / planes / (g.C + g.O) / tw);
        if (tw < 32 && 32 % tw == 0) rows = Math.Max(32 / tw, (rows * tw + 16) / 32 * 32 / tw);
        return Math.Clamp(rows, 1, Math.Max(1, (totalRows + threads - 1) / threads));
    }

    /// <summary>Columns of a chunk's planes: its tiles rounded up to whole 32-column strips.</summary>
    internal static int ChunkLd(int rowsPer, int tw) => (rowsPer * tw + 31) & ~31;

    /// <summary>y = conv(x, w) + bias for a geometry <see cref="Applies"/> accepts, with the tile the options choose.</summary>
    public static void Forward(WorkerPool pool, float* x, float* w, float* bias, float* y, in ConvGeometry g)
    {
        if (pool.Options.WinogradTile == 4) Forward<WinogradF4>(pool, x, w, bias, y, g);
        else Forward<WinogradF2>(pool, x, w, bias, y, g);
    }

    /// <summary>dw = the weight gradient of <see cref="Forward"/>.</summary>
    public static void BackwardWeight(WorkerPool pool, float* x, float* dy, float* dw, in ConvGeometry g)
    {
        if (pool.Options.WinogradTile == 4) BackwardWeight<WinogradF4>(pool, x, dy, dw, g);
        else BackwardWeight<WinogradF2>(pool, x, dy, dw, g);
    }

    /// <summary>
    /// The forward pass with tile <typeparamref name="T"/>: the transformed filters packed once as SGEMM A panels, the
    /// input transform writing its tiles as packed B strips, so the products of a chunk run the micro-kernels with no
    /// packing, on whole strips (the chunk's planes are a whole number of strips wide).
    /// </summary>
    internal static void Forward<T>(WorkerPool pool, float* x, float* w, float* bias, float* y, in ConvGeometry g) where T : IWinogradTile
    {
        int m = T.M, planes = T.Planes;
        int th = (g.OH + m - 1) / m, tw = (g.OW + m - 1) / m, totalRows = g.N * th;
        int rowsPer = RowsPerChunk(g, tw, totalRows, pool.Options.WinogradChunk, planes, pool.Threads);
        int chunks = (totalRows + rowsPer - 1) / rowsPer, ld = ChunkLd(rowsPer, tw);
        var (mr, nr) = Sgemm.RegisterTile(g.O, pool.Options);
        long aSize = Sgemm.PackedASize(g.O, g.C, mr), bPlane = PlaneStride(Sgemm.PackedBSize(g.C, ld, nr));
        long mPlane = PlaneStride((long)g.O * ld), uPlane = (long)g.O * g.C;
        float* u = pool.Scratch(0).Get(ScratchSlot.WinogradU, planes * uPlane);
        float* ua = pool.Scratch(0).Get(ScratchSlot.WinogradUPacked, planes * aSize);
        var geo = g;
        nint xp = (nint)x, wp = (nint)w, up = (nint)u, uap = (nint)ua, yp = (nint)y, bp = (nint)bias;
        pool.ForItems(g.O * g.C, 256, (p0, count) => T.FilterTransform((float*)wp, (float*)up, uPlane, p0, count));
        pool.For(planes, (_, xi) => Sgemm.PackAPanel((float*)up + xi * uPlane, geo.C, geo.O, geo.C, mr, (float*)uap + xi * aSize));
        pool.For(chunks, (wk, ch) =>
        {
            var scratch = pool.Scratch(wk);
            float* v = scratch.Get(ScratchSlot.WinogradV, planes * bPlane);
            float* mm = scratch.Get(ScratchSlot.WinogradM, planes * mPlane);
            float* stage = scratch.Get(ScratchSlot.WinogradStage, T.StageFloats(tw, ld));
            int r0 = ch * rowsPer, rows = Math.Min(rowsPer, totalRows - r0), cols = rows * tw;
            int width = (cols + nr - 1) / nr * nr;
            T.InputTransform((float*)xp, geo, th, tw, r0, rows, v, bPlane, nr, ld, stage);
            if (cols < width)
            {
                // The last strip's columns past the chunk: zero, so the discarded products stay finite and fast.
                float* last = v + cols / nr * geo.C * (long)nr;
                int from = cols % nr;
                for (int xi = 0; xi < planes; xi++)
                    for (int c = 0; c < geo.C; c++)
                        new Span<float>(last + xi * bPlane + (long)c * nr + from, nr - from).Clear();
            }
            for (int xi = 0; xi < planes; xi++)
                Sgemm.RunPacked(mr, nr, geo.O, width, geo.C, (float*)uap + xi * aSize, v + xi * bPlane, mm + xi * mPlane, ld);
            T.OutputTransform(mm, mPlane, (float*)bp, (float*)yp, geo, th, tw, r0, rows, ld, stage);
        });
    }

    /// <summary>
    /// The weight gradient with tile <typeparamref name="T"/>: dU [P, O, C] = sum over tiles of dM V^T, then
    /// dw = G^T dU G. Worker item t sums a fixed range of chunks into its own dU, and the partials are added in item
    /// order, so the result does not depend on scheduling.
    /// </summary>
    internal static void BackwardWeight<T>(WorkerPool pool, float* x, float* dy, float* dw, in ConvGeometry g) where T : IWinogradTile
    {
        int m = T.M, planes = T.Planes;
        int th = (g.OH + m - 1) / m, tw = (g.OW + m - 1) / m, totalRows = g.N * th;
        int rowsPer = RowsPerChunk(g, tw, totalRows, pool.Options.WinogradChunk, planes, pool.Threads);
        int chunks = (totalRows + rowsPer - 1) / rowsPer, ld = ChunkLd(rowsPer, tw);
        int items = Math.Min(pool.Threads, chunks), per = (chunks + items - 1) / items;
        items = (chunks + per - 1) / per;
        long uPlane = (long)g.O * g.C, uSize = planes * uPlane;
        long vPlane = PlaneStride((long)g.C * ld), mPlane = PlaneStride((long)g.O * ld);
        var geo = g;
        nint xp = (nint)x, dyp = (nint)dy;
        var partials = new nint[items];
        pool.For(items, (wk, t) =>
        {
            var scratch = pool.Scratch(wk);
            // The partial belongs to item t (in the scratch of worker t), the buffers to the worker running it.
            float* du = pool.Scratch(t).Get(ScratchSlot.WinogradU, uSize);
            partials[t] = (nint)du;
            float* v = scratch.Get(ScratchSlot.WinogradV, planes * vPlane);
            float* dm = scratch.Get(ScratchSlot.WinogradM, planes * mPlane);
            float* stage = scratch.Get(ScratchSlot.WinogradStage, T.StageFloats(tw, ld));
            int c0 = t * per, c1 = Math.Min(chunks, c0 + per);
            for (int ch = c0; ch < c1; ch++)
            {
                int r0 = ch * rowsPer, rows = Math.Min(rowsPer, totalRows - r0), cols = rows * tw;
                T.InputTransform((float*)xp, geo, th, tw, r0, rows, v, vPlane, 0, ld, stage);
                T.GradOutputTransform((float*)dyp, geo, th, tw, r0, rows, dm, mPlane, ld, stage);
                for (int xi = 0; xi < planes; xi++)
                    Sgemm.Run(null, scratch, false, true, geo.O, geo.C, cols, 1f, dm + xi * mPlane, ld,
                        v + xi * vPlane, ld, ch == c0 ? 0f : 1f, du + xi * uPlane, geo.C);
            }
        });
        // The partials added in item order, split by element over the workers (36 O C floats: a serial pass would be a
        // few percent of a small batch's step).
        float* total = (float*)partials[0];
        nint tp = (nint)total, dwp = (nint)dw;
        if (items > 1)
            pool.ForRange((int)uSize, 16384, (i0, len) =>
            {
                var sum = new Span<float>((float*)tp + i0, len);
                for (int t = 1; t < partials.Length; t++)
                    System.Numerics.Tensors.TensorPrimitives.Add(sum, new ReadOnlySpan<float>((float*)partials[t] + i0, len), sum);
            });
        pool.ForItems(g.O * g.C, 256, (p0, count) => T.FilterGradient((float*)tp, uPlane, (float*)dwp, p0, count));
    }

    // ---- vector helpers shared by the tile transforms ------------------------------------------------------

    /// <summary>
    /// The 4x4 block of rows a, b, c, d transposed in place (a becomes the first column). SSE where the processor has
    /// it, element by element otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose(ref Vector128<float> a, ref Vector128<float> b, ref Vector128<float> c, ref Vector128<float> d)
    {
        if (Sse.IsSupported)
        {
            var t0 = Sse.UnpackLow(a, b);
            var t1 = Sse.UnpackLow(c, d);
            var t2 = Sse.UnpackHigh(a, b);
            var t3 = Sse.UnpackHigh(c, d);
            a = Sse.MoveLowToHigh(t0, t1);
            b = Sse.MoveHighToLow(t1, t0);
            c = Sse.MoveLowToHigh(t2, t3);
            d = Sse.MoveHighToLow(t3, t2);
            return;
        }
        var m = stackalloc float[16];
        a.Store(m); b.Store(m + 4); c.Store(m + 8); d.Store(m + 12);
        a = Vector128.Create(m[0], m[4], m[8], m[12]);
        b = Vector128.Create(m[1], m[5], m[9], m[13]);
        c = Vector128.Create(m[2], m[6], m[10], m[14]);
        d = Vector128.Create(m[3], m[7], m[11], m[15]);
    }

    /// <summary>Whole vectors of n floats (n rounded up), plus one vector of slack for reads one element ahead.</summary>
    internal static int Padded(int n) => (n + 2 * Vector<float>.Count - 1) / Vector<float>.Count * Vector<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<float> Load(float* p) => Unsafe.ReadUnaligned<Vector<float>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store(float* p, Vector<float> v) => Unsafe.WriteUnaligned(p, v);
}
