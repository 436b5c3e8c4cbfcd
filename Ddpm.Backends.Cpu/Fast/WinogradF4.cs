using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Ddpm.Tensors;
using static Ddpm.Backends.Cpu.Fast.Winograd;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// Winograd F(4x4, 3x3) transforms (Lavin and Gray 2016, interpolation points 0, +-1, +-2 and infinity): every 4x4
/// output tile is A^T [ (G g G^T) . (B^T d B) ] A of the 6x6 input patch d around it, 36 products with 16 outputs per
/// tile, 4x fewer multiplies than the direct sums (F(2x2, 3x3): 2.25x) and 2.25 transformed values per output
/// instead of 4.
/// <code>
/// B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
/// G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
/// A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
/// </code>
/// Every transform is a vector operation over all tiles of a chunk at once, whatever the width of a tile row (an
/// 8x8 image has two tiles per row): the input rows of each tile row are split into the six columns a tile reads
/// (x[4k - 1 + j], j = 0 .. 5) and laid side by side over the chunk; outputs are gathered and scattered four tiles at
/// a time through 4x4 transposes. Index convention: xi = 6 i + j, i the row and j the column of the 6x6 transformed
/// tile.
/// </summary>
internal readonly unsafe struct WinogradF4 : IWinogradTile
{
    public static int M => 4;

    public static int Planes => 36;

    /// <summary>
    /// Input: the chunk's 36 column arrays and a padded input row; output and gradient: 28 and 40 chunk-wide arrays plus
    /// the tile table (2 longs per tile).
    /// </summary>
    public static long StageFloats(int tw, int tiles)
    {
        long lc = Padded(tiles);
        return Math.Max(36 * lc + 4L * ((tw + 16) & ~7) + 8, 40 * lc + 4L * tiles + 8);
    }

    // ---- filters ------------------------------------------------------------------------------------------

    /// <summary>(G v)_0 .. (G v)_5 for one column v = (a, b, c) of a filter.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void G6(Vector<float> a, Vector<float> b, Vector<float> c, Span<Vector<float>> o, int at, int step)
    {
        var ac = a + c;
        o[at] = a * 0.25f;
        o[at + step] = (ac + b) * (-1f / 6f);
        o[at + 2 * step] = (ac - b) * (-1f / 6f);
        var e = a * (1f / 24f) + c * (1f / 6f);
        o[at + 3 * step] = e + b * (1f / 12f);
        o[at + 4 * step] = e - b * (1f / 12f);
        o[at + 5 * step] = c;
    }

    /// <summary>(G^T v)_0 .. (G^T v)_2 for six values v0 .. v5: the adjoint of <see cref="G6"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void GT6(Vector<float> v0, Vector<float> v1, Vector<float> v2, Vector<float> v3, Vector<float> v4, Vector<float> v5,
        out Vector<float> o0, out Vector<float> o1, out Vector<float> o2)
    {
        var s12 = v1 + v2;
        var s34 = v3 + v4;
        o0 = v0 * 0.25f - s12 * (1f / 6f) + s34 * (1f / 24f);
        o1 = (v2 - v1) * (1f / 6f) + (v3 - v4) * (1f / 12f);
        o2 = (s34 - s12) * (1f / 6f) + v5;
    }

    /// <summary>U = G g G^T, vectorised over filters (a vector's lanes are consecutive filters).</summary>
    public static void FilterTransform(float* w, float* u, long plane, int p0, int count)
    {
        int lanes = Vector<float>.Count;
        float* taps = stackalloc float[9 * lanes];
        float* part = stackalloc float[lanes];
        Span<Vector<float>> t = stackalloc Vector<float>[18];
        Span<Vector<float>> r = stackalloc Vector<float>[36];
        for (int p = p0; p < p0 + count; p += lanes)
        {
            int n = Math.Min(lanes, p0 + count - p);
            for (int f = 0; f < lanes; f++)
                for (int k = 0; k < 9; k++) taps[k * lanes + f] = f < n ? w[(long)(p + f) * 9 + k] : 0f;
            // t [6, 3] = G g, column by column.
            for (int col = 0; col < 3; col++) G6(Load(taps + col * lanes), Load(taps + (3 + col) * lanes), Load(taps + (6 + col) * lanes), t, col, 3);
            // U [6, 6] = t G^T, row by row.
            for (int i = 0; i < 6; i++) G6(t[3 * i], t[3 * i + 1], t[3 * i + 2], r, 6 * i, 1);
            for (int xi = 0; xi < 36; xi++)
            {
                float* dst = u + xi * plane + p;
                if (n == lanes) Store(dst, r[xi]);
                else
                {
                    Store(part, r[xi]);
                    for (int f = 0; f < n; f++) dst[f] = part[f];
                }
            }
        }
    }

    /// <summary>dw = G^T dU G, vectorised over filters.</summary>
    public static void FilterGradient(float* du, long plane, float* dw, int p0, int count)
    {
        int lanes = Vector<float>.Count;
        float* part = stackalloc float[9 * lanes];
        Span<Vector<float>> d = stackalloc Vector<float>[36];
        Span<Vector<float>> t = stackalloc Vector<float>[18];
        for (int p = p0; p < p0 + count; p += lanes)
        {
            int n = Math.Min(lanes, p0 + count - p);
            for (int xi = 0; xi < 36; xi++)
            {
                float* src = du + xi * plane + p;
                if (n == lanes) d[xi] = Load(src);
                else
                {
                    for (int f = 0; f < lanes; f++) part[f] = f < n ? src[f] : 0f;
                    d[xi] = Load(part);
                }
            }
            // t [3, 6] = G^T dU, column by column; dw [3, 3] = t G, row by row.
            for (int j = 0; j < 6; j++)
            {
                GT6(d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j], out var a, out var b, out var c);
                t[j] = a; t[6 + j] = b; t[12 + j] = c;
            }
            for (int i = 0; i < 3; i++)
            {
                GT6(t[6 * i], t[6 * i + 1], t[6 * i + 2], t[6 * i + 3], t[6 * i + 4], t[6 * i + 5], out var a, out var b, out var c);
                Store(part + (3 * i) * lanes, a);
                Store(part + (3 * i + 1) * lanes, b);
                Store(part + (3 * i + 2) * lanes, c);
            }
            for (int f = 0; f < n; f++)
                for (int k = 0; k < 9; k++) dw[(long)(p + f) * 9 + k] = part[k * lanes + f];
        }
    }

    // ---- input ----------------------------------------------------------------------------------------------

    /// <summary>
    /// B^T over six rows for n elements (whole vectors): d_j = s[j * ss], v_i = d[i * ds], in place when d == s;
    /// v0 = 4d0 - 5d2 + d4, v1,2 = (d4 - 4d2) +- (d3 - 4d1), v3,4 = (d4 - d2) +- 2(d3 - d1), v5 = 4d1 - 5d3 + d5.
    /// With <paramref name="nr"/> &gt; 0 the outputs go to SGEMM's packed-B strips: element t at (t / nr) strips + t % nr.
    /// </summary>
    private static void BT(float* s, long ss, float* d, long ds, int n, int nr = 0, long strip = 0)
    {
        var four = new Vector<float>(4f);
        var five = new Vector<float>(5f);
        float* q0 = d;
        for (int i = 0, within = 0; i < n; i += Vector<float>.Count)
        {
            float* p = s + i;
            var d0 = Load(p); var d1 = Load(p + ss); var d2 = Load(p + 2 * ss); var d3 = Load(p + 3 * ss); var d4 = Load(p + 4 * ss); var d5 = Load(p + 5 * ss);
            var t0 = d4 - four * d2;
            var t1 = d3 - four * d1;
            var t2 = d4 - d2;
            var t3 = d3 - d1;
            t3 += t3;
            float* q = q0 + within;
            within += Vector<float>.Count;
            if (within == nr)
            {
                within = 0;
                q0 += strip;
            }
            Store(q, four * d0 - five * d2 + d4);
            Store(q + ds, t0 + t1);
            Store(q + 2 * ds, t0 - t1);
            Store(q + 3 * ds, t2 + t3);
            Store(q + 4 * ds, t2 - t3);
            Store(q + 5 * ds, four * d1 - five * d3 + d5);
        }
    }

    /// <summary>
    /// The six columns tile k of a row reads, a_j[k] = x[4k - 1 + j] (j = 0 .. 5, zero outside the row), for the
    /// <paramref name="tw"/> tiles of one input row, at dst + j * lc; may write up to 8 tiles further. The row is
    /// copied to <paramref name="buf"/> + 1, whose padding (<see cref="PrepareRowBuffer"/>) stays zero, then split by
    /// transposes of 4x4 blocks (columns 0 .. 3 of four tiles; with AVX2 eight tiles at a time, the lanes put back in
    /// order by one permute); columns 4 and 5 are columns 0 and 1 of the next tile, split from one group further.
    /// </summary>
    private static void Split6(float* src, int width, int tw, float* dst, int lc, float* buf)
    {
        int lanes = Vector<float>.Count, i = 0;
        for (; i + lanes <= width; i += lanes) Store(buf + 1 + i, Load(src + i));
        for (; i < width; i++) buf[1 + i] = src[i];
        if (Avx2.IsSupported)
        {
            var order = Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7);
            for (int k = 0; k < tw; k += 8)
            {
                Transpose8(buf + 4 * k, order, out var c0, out var c1, out var c2, out var c3);
                c0.Store(dst + k);
                c1.Store(dst + lc + k);
                c2.Store(dst + 2 * lc + k);
                c3.Store(dst + 3 * lc + k);
                Transpose8(buf + 4 * k + 4, order, out c0, out c1, out _, out _);
                c0.Store(dst + 4 * lc + k);
                c1.Store(dst + 5 * lc + k);
            }
            return;
        }
        for (int k = 0; k <= tw; k += 4)
        {
            var a = Vector128.Load(buf + 4 * k);
            var b = Vector128.Load(buf + 4 * k + 4);
            var c = Vector128.Load(buf + 4 * k + 8);
            var d = Vector128.Load(buf + 4 * k + 12);
            Transpose(ref a, ref b, ref c, ref d);
            a.Store(dst + k);
            b.Store(dst + lc + k);
            c.Store(dst + 2 * lc + k);
            d.Store(dst + 3 * lc + k);
        }
        for (int k = 0; k < tw; k += lanes)
        {
            Store(dst + 4 * lc + k, Load(dst + 1 + k));
            Store(dst + 5 * lc + k, Load(dst + lc + 1 + k));
        }
    }

    /// <summary>
    /// Eight groups of four floats at p (one per tile), transposed: c_j holds element j of each group, in group order.
    /// The 4x4 transposes run inside the 128-bit lanes (groups 0, 2, 4, 6 and 1, 3, 5, 7), then one permute each.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8(float* p, Vector256<int> order, out Vector256<float> c0, out Vector256<float> c1,
        out Vector256<float> c2, out Vector256<float> c3)
    {
        var a = Avx.LoadVector256(p);
        var b = Avx.LoadVector256(p + 8);
        var c = Avx.LoadVector256(p + 16);
        var d = Avx.LoadVector256(p + 24);
        var t0 = Avx.UnpackLow(a, b);
        var t1 = Avx.UnpackLow(c, d);
        var t2 = Avx.UnpackHigh(a, b);
        var t3 = Avx.UnpackHigh(c, d);
        c0 = Avx2.PermuteVar8x32(Avx.Shuffle(t0, t1, 0x44), order);
        c1 = Avx2.PermuteVar8x32(Avx.Shuffle(t0, t1, 0xEE), order);
        c2 = Avx2.PermuteVar8x32(Avx.Shuffle(t2, t3, 0x44), order);
        c3 = Avx2.PermuteVar8x32(Avx.Shuffle(t2, t3, 0xEE), order);
    }

    /// <summary>Floats of the padded row buffer of <see cref="Split6"/>; zeroes it (the left padding and everything past the row).</summary>
    private static int PrepareRowBuffer(float* buf, int tw)
    {
        int len = 4 * ((tw + 16) & ~7) + 8;
        new Span<float>(buf, len).Clear();
        return len;
    }

    /// <summary>
    /// V = B^T d B for the chunk's tiles. Per channel: the six input rows of each tile row are split into the six
    /// columns each tile reads, side by side for the whole chunk (<see cref="Split6"/>); then the column transform and
    /// the row transform run over all the chunk's tiles at once, the latter written as packed strips.
    /// </summary>
    public static void InputTransform(float* x, in ConvGeometry g, int th, int tw, int r0, int rows, float* v, long plane, int nr, int ld, float* stage)
    {
        int h = g.H, wd = g.W, tiles = rows * tw, lc = Padded(tiles), lanes = Vector<float>.Count;
        float* a = stage;               // [6 rows, 6 columns] x lc
        float* buf = stage + 36 * lc;   // one padded input row
        PrepareRowBuffer(buf, tw);
        long strip = (long)g.C * nr;
        for (int c = 0; c < g.C; c++)
        {
            for (int rr = 0; rr < rows; rr++)
            {
                int r = r0 + rr, n = r / th, ty = r % th;
                float* img = x + ((long)n * g.C + c) * h * wd;
                // Input rows 0 and 1 of a tile row are rows 4 and 5 of the one before it in the same image: copied.
                int first = 0;
                if (rr > 0 && ty > 0)
                {
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 6; j++)
                        {
                            float* from = a + (6 * (4 + i) + j) * lc + (rr - 1) * tw, to = a + (6 * i + j) * lc + rr * tw;
                            for (int k = 0; k < tw; k += lanes) Store(to + k, Load(from + k));
                        }
                    first = 2;
                }
                for (int i = first; i < 6; i++)
                {
                    int ih = 4 * ty - 1 + i;
                    float* ai = a + 6 * i * lc + rr * tw;
                    if ((uint)ih < (uint)h) Split6(img + (long)ih * wd, wd, tw, ai, lc, buf);
                    else for (int j = 0; j < 6; j++) new Span<float>(ai + j * lc, tw).Clear();
                }
            }
            // Column transform in place (rows 6 lc apart), then the row transform into the planes.
            BT(a, 6 * lc, a, 6 * lc, 6 * lc);
            float* dst = v + (nr > 0 ? (long)c * nr : (long)c * ld);
            for (int i = 0; i < 6; i++) BT(a + 6 * i * lc, lc, dst + 6 * i * plane, plane, tiles, nr, strip);
        }
    }

    // ---- output ---------------------------------------------------------------------------------------------

    /// <summary>
    /// The chunk's tiles: per tile, the offset of its top-left output in y [N, O, OH, OW] for output channel 0, and
    /// how many of its rows and columns lie inside the image (rows * 8 + columns).
    /// </summary>
    private static long* TileTable(in ConvGeometry g, int th, int tw, int r0, int rows, long* table)
    {
        long ohw = (long)g.OH * g.OW;
        for (int rr = 0, t = 0; rr < rows; rr++)
        {
            int r = r0 + rr, n = r / th, ty = r % th;
            for (int k = 0; k < tw; k++, t++)
            {
                table[2 * t] = n * g.O * ohw + 4 * ty * g.OW + 4 * k;
                table[2 * t + 1] = Math.Min(4, g.OH - 4 * ty) * 8 + Math.Min(4, g.OW - 4 * k);
            }
        }
        return table;
    }

    /// <summary>
    /// A^T over six rows for n elements (whole vectors), plus <paramref name="bias"/>: m_j = s[j * ss], y_i = d[i * ds];
    /// y0 = m0 + (m1 + m2) + (m3 + m4), y1 = (m1 - m2) + 2(m3 - m4), y2 = (m1 + m2) + 4(m3 + m4), y3 = (m1 - m2) + 8(m3 - m4) + m5.
    /// </summary>
    private static void AT(float* s, long ss, float* d, long ds, int n, float bias)
    {
        var b = new Vector<float>(bias);
        for (int i = 0; i < n; i += Vector<float>.Count)
        {
            float* p = s + i;
            var m0 = Load(p); var m1 = Load(p + ss); var m2 = Load(p + 2 * ss); var m3 = Load(p + 3 * ss); var m4 = Load(p + 4 * ss); var m5 = Load(p + 5 * ss);
            var sa = m1 + m2;
            var sb = m1 - m2;
            var sc = m3 + m4;
            var sd = m3 - m4;
            float* q = d + i;
            Store(q, m0 + sa + sc + b);
            Store(q + ds, sb + sd * 2f + b);
            Store(q + 2 * ds, sa + sc * 4f + b);
            Store(q + 3 * ds, sb + sd * 8f + m5 + b);
        }
    }

    /// <summary>
    /// y = A^T m A (+ bias) for the chunk's tiles: per output channel the column transform over all tiles (36 planes to
    /// 24 arrays), then per output row the row transform over all tiles, then four tiles at a time transposed so that
    /// each vector holds one tile's four outputs, stored to the tile's place (in part where it overhangs the image).
    /// </summary>
    public static void OutputTransform(float* m, long plane, float* bias, float* y, in ConvGeometry g, int th, int tw, int r0, int rows, int ld, float* stage)
    {
        int tiles = rows * tw, lc = Padded(tiles), lanes = Vector<float>.Count;
        float* s = stage;                // [4 rows, 6 columns] x lc
        float* yq = stage + 24 * lc;     // one output row's 4 columns x lc
        long* table = TileTable(g, th, tw, r0, rows, (long*)(stage + 28 * lc));
        long ohw = (long)g.OH * g.OW;
        for (int o = 0; o < g.O; o++)
        {
            float* src = m + (long)o * ld;
            for (int j = 0; j < 6; j++) AT(src + j * plane, 6 * plane, s + j * lc, 6 * lc, tiles, 0f);
            float b = bias is null ? 0f : bias[o];
            for (int r = 0; r < 4; r++)
            {
                float* yr = y + o * ohw + (long)r * g.OW;
                AT(s + 6 * r * lc, lc, yq, lc, tiles, b);
                for (int t = 0; t < tiles; t += 4)
                {
                    var c0 = Vector128.Load(yq + t);
                    var c1 = Vector128.Load(yq + lc + t);
                    var c2 = Vector128.Load(yq + 2 * lc + t);
                    var c3 = Vector128.Load(yq + 3 * lc + t);
                    Transpose(ref c0, ref c1, ref c2, ref c3);
                    int n = Math.Min(4, tiles - t);
                    long* tt = table + 2 * t;
                    Put(c0, tt, r, yr);
                    if (n > 1) Put(c1, tt + 2, r, yr);
                    if (n > 2) Put(c2, tt + 4, r, yr);
                    if (n > 3) Put(c3, tt + 6, r, yr);
                }
            }
        }
    }

    /// <summary>Row r of a tile's outputs (4 columns) to yr (row r of output channel o's first image) + the tile's offset, the columns inside the image.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Put(Vector128<float> row, long* tile, int r, float* yr)
    {
        long inside = tile[1];
        if (r >= inside >> 3) return;
        float* dst = yr + tile[0];
        if ((inside & 7) == 4) row.Store(dst);
        else for (int q = 0; q < (inside & 7); q++) dst[q] = row.GetElement(q);
    }

    // ---- output gradient -----------------------------------------------------------------------------------

    /// <summary>
    /// A over four rows for n elements (whole vectors), the adjoint of <see cref="AT"/>: y_j = s[j * ss], e_i = d[i * ds];
    /// e0 = y0, e1,2 = (y0 + y2) +- (y1 + y3), e3,4 = (y0 + 4y2) +- (2y1 + 8y3), e5 = y3.
    /// </summary>
    private static void A(float* s, long ss, float* d, long ds, int n)
    {
        for (int i = 0; i < n; i += Vector<float>.Count)
        {
            float* p = s + i;
            var y0 = Load(p); var y1 = Load(p + ss); var y2 = Load(p + 2 * ss); var y3 = Load(p + 3 * ss);
            var sa = y0 + y2;
            var sb = y1 + y3;
            var sc = y0 + y2 * 4f;
            var sd = y1 * 2f + y3 * 8f;
            float* q = d + i;
            Store(q, y0);
            Store(q + ds, sa + sb);
            Store(q + 2 * ds, sa - sb);
            Store(q + 3 * ds, sc + sd);
            Store(q + 4 * ds, sc - sd);
            Store(q + 5 * ds, y3);
        }
    }

    /// <summary>
    /// dM = A dy A^T for the chunk's tiles: per output channel, each tile's 4x4 outputs gathered four tiles at a time
    /// (transposed into one array per output position), then the column and row transforms over all tiles.
    /// </summary>
    public static void GradOutputTransform(float* dy, in ConvGeometry g, int th, int tw, int r0, int rows, float* dm, long plane, int ld, float* stage)
    {
        int tiles = rows * tw, lc = Padded(tiles), lanes = Vector<float>.Count;
        float* yv = stage;               // [4 rows, 4 columns] x lc
        float* e = stage + 16 * lc;      // [6 rows, 4 columns] x lc
        long* table = TileTable(g, th, tw, r0, rows, (long*)(stage + 40 * lc));
        long ohw = (long)g.OH * g.OW;
        for (int o = 0; o < g.O; o++)
        {
            for (int r = 0; r < 4; r++)
            {
                float* yr = yv + 4 * r * lc;
                float* src = dy + o * ohw + (long)r * g.OW;
                for (int t = 0; t < tiles; t += 4)
                {
                    long* tt = table + 2 * t;
                    var c0 = Get(tt, t, tiles, r, src);
                    var c1 = Get(tt + 2, t + 1, tiles, r, src);
                    var c2 = Get(tt + 4, t + 2, tiles, r, src);
                    var c3 = Get(tt + 6, t + 3, tiles, r, src);
                    Transpose(ref c0, ref c1, ref c2, ref c3);
                    c0.Store(yr + t); c1.Store(yr + lc + t); c2.Store(yr + 2 * lc + t); c3.Store(yr + 3 * lc + t);
                }
            }
            // Column transform (4 rows to 6), over the four columns at once, then the row transform (4 columns to 6) into the planes.
            int len = 4 * lc;
            A(yv, len, e, len, len);
            for (int i = 0; i < 6; i++) A(e + i * len, lc, dm + 6 * i * plane + (long)o * ld, plane, tiles);
        }
    }

    /// <summary>Row r of tile t's outputs (4 columns) from dyr (row r of output channel o's first image) + the tile's offset, zero past the image or past the chunk.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Get(long* tile, int t, int tiles, int r, float* dyr)
    {
        if (t >= tiles) return Vector128<float>.Zero;
        long inside = tile[1];
        if (r >= inside >> 3) return Vector128<float>.Zero;
        float* src = dyr + tile[0];
        long cols = inside & 7;
        if (cols == 4) return Vector128.Load(src);
        return Vector128.Create(src[0], cols > 1 ? src[1] : 0f, cols > 2 ? src[2] : 0f, 0f);
    }
}
