using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cpu.Fast;

/// <summary>
/// Winograd F(2x2, 3x3) transforms: every 2x2 output tile is A^T [ (G g G^T) . (B^T d B) ] A of the 4x4 input patch d
/// around it, 16 products with 4 outputs per tile (2.25x fewer multiplies than the direct sums). The transforms have
/// coefficients 0, +-1 and +-1/2 only, so float32 loses about as little as the direct sums (ConvTests). Tile rows are
/// read with even and odd columns split, so that every transform is a contiguous vector operation over the tiles of a
/// row. Index convention: xi = 4 i + j, i the row and j the column of the 4x4 transformed tile.
/// </summary>
internal readonly unsafe struct WinogradF2 : IWinogradTile
{
    public static int M => 2;

    public static int Planes => 16;

    public static long StageFloats(int tw, int tiles) => 16L * (tw + 1);

    /// <summary>U [16, O*C] = G g G^T for every filter, G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]].</summary>
    public static void FilterTransform(float* w, float* u, long plane, int p0, int count)
    {
        float* t = stackalloc float[12];
        for (int p = p0; p < p0 + count; p++)
        {
            float* g = w + (long)p * 9;
            // t [4, 3] = G g
            for (int col = 0; col < 3; col++)
            {
                float g0 = g[col], g1 = g[3 + col], g2 = g[6 + col];
                t[col] = g0;
                t[3 + col] = 0.5f * (g0 + g1 + g2);
                t[6 + col] = 0.5f * (g0 - g1 + g2);
                t[9 + col] = g2;
            }
            // U [4, 4] = t G^T
            for (int i = 0; i < 4; i++)
            {
                float a = t[3 * i], b = t[3 * i + 1], cc = t[3 * i + 2];
                float* dst = u + p;
                dst[(4 * i + 0) * plane] = a;
                dst[(4 * i + 1) * plane] = 0.5f * (a + b + cc);
                dst[(4 * i + 2) * plane] = 0.5f * (a - b + cc);
                dst[(4 * i + 3) * plane] = cc;
            }
        }
    }

    /// <summary>dw [o, c] (3x3) = G^T dU G with G^T = [[1,1/2,1/2,0],[0,1/2,-1/2,0],[0,1/2,1/2,1]].</summary>
    public static void FilterGradient(float* du, long plane, float* dw, int p0, int count)
    {
        float* d = stackalloc float[16];
        float* t3 = stackalloc float[12];
        for (int p = p0; p < p0 + count; p++)
        {
            for (int xi = 0; xi < 16; xi++) d[xi] = du[xi * plane + p];
            // t3 [3, 4] = G^T d
            for (int j = 0; j < 4; j++)
            {
                float d0 = d[j], d1 = d[4 + j], d2 = d[8 + j], d3 = d[12 + j];
                t3[j] = d0 + 0.5f * (d1 + d2);
                t3[4 + j] = 0.5f * (d1 - d2);
                t3[8 + j] = 0.5f * (d1 + d2) + d3;
            }
            float* dst = dw + (long)p * 9;
            for (int i = 0; i < 3; i++)
            {
                float a = t3[4 * i], b = t3[4 * i + 1], c = t3[4 * i + 2], e = t3[4 * i + 3];
                dst[3 * i] = a + 0.5f * (b + c);
                dst[3 * i + 1] = 0.5f * (b - c);
                dst[3 * i + 2] = 0.5f * (b + c) + e;
            }
        }
    }

    /// <summary>
    /// V = B^T d B for the tiles of global tile rows r0 .. r0 + rows (row r: image r / TH, tile row r % TH),
    /// B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], as 16 planes of [C, tiles]: row-major with leading
    /// dimension ld when <paramref name="nr"/> is 0, otherwise already in SGEMM's packed-B layout (strips of nr
    /// tiles, [C, nr] each, for <see cref="Sgemm.RunPacked"/>), planes <paramref name="plane"/> floats apart. The
    /// four input rows of a tile row are split into even and odd padded columns (ev[k] = x[2k - 1], od[k] =
    /// x[2k]), the column transform is applied to those, then the row transform is four vector operations over the
    /// tiles.
    /// </summary>
    public static void InputTransform(float* x, in ConvGeometry g, int th, int tw, int r0, int rows, float* v, long plane, int nr, int ld, float* stage)
    {
        int h = g.H, wd = g.W, k1 = tw + 1;
        long strip = (long)g.C * nr;
        // stage: 4 rows x (ev, od) x k1, then 4 x (ev, od) x k1 of the column-transformed rows.
        // rows: four slots of (ev, od) for the input rows of a tile row; ct: the column-transformed rows.
        float* ct = stage + 8 * k1;
        float** slot = stackalloc float*[4];
        for (int c = 0; c < g.C; c++)
        {
            int prevRow = -2;
            for (int i = 0; i < 4; i++) slot[i] = stage + 2 * i * k1;
            for (int rr = 0; rr < rows; rr++)
            {
                int r = r0 + rr, n = r / th, ty = r % th;
                float* img = x + ((long)n * g.C + c) * h * wd;
                int first = 0;
                if (r == prevRow + 1 && ty > 0)
                {
                    // Input rows 2ty - 1 and 2ty were rows 2 and 3 of the previous tile row: swap them in.
                    float* s0 = slot[0], s1 = slot[1];
                    slot[0] = slot[2];
                    slot[1] = slot[3];
                    slot[2] = s0;
                    slot[3] = s1;
                    first = 2;
                }
                prevRow = r;
                for (int i = first; i < 4; i++)
                {
                    int ih = 2 * ty - 1 + i;
                    float* ev = slot[i], od = ev + k1;
                    if (ih < 0 || ih >= h)
                    {
                        new Span<float>(ev, 2 * k1).Clear();
                        continue;
                    }
                    // ev[k] = x[2k - 1], od[k] = x[2k]: the even columns of the row go to od, the odd ones to ev + 1.
                    Split(img + (long)ih * wd, wd, od, ev + 1, tw);
                    ev[0] = 0f;
                    od[tw] = 0f;
                }
                // Column transform, on ev and od at once (they are adjacent: 2 * k1 floats per row).
                int len = 2 * k1;
                float* r0p = slot[0], r1p = slot[1], r2p = slot[2], r3p = slot[3];
                Sub(r0p, r2p, ct, len);
                Add(r1p, r2p, ct + len, len);
                Sub(r2p, r1p, ct + 2 * len, len);
                Sub(r1p, r3p, ct + 3 * len, len);
                // Row transform: v[4i + 0] = ev[k] - ev[k+1], v[4i + 1] = od[k] + ev[k+1], v[4i + 2] = ev[k+1] - od[k],
                // v[4i + 3] = od[k] - od[k+1], for the tiles k = 0 .. tw - 1.
                // In runs of tiles that stay inside one packed strip.
                int t0 = rr * tw;
                for (int k = 0; k < tw;)
                {
                    int run = tw - k;
                    long at = (long)c * ld + t0 + k;
                    if (nr > 0)
                    {
                        int within = (t0 + k) % nr;
                        run = Math.Min(run, nr - within);
                        at = (t0 + k) / nr * strip + (long)c * nr + within;
                    }
                    for (int i = 0; i < 4; i++)
                    {
                        float* ev = ct + i * len + k, od = ev + k1;
                        float* dst = v + (4 * i) * plane + at;
                        Sub(ev, ev + 1, dst, run);
                        Add(od, ev + 1, dst + plane, run);
                        Sub(ev + 1, od, dst + 2 * plane, run);
                        Sub(od, od + 1, dst + 3 * plane, run);
                    }
                    k += run;
                }
            }
        }
    }

    /// <summary>
    /// y rows of the chunk = A^T m A (+ bias) from M [16, O, ld], A^T = [[1,1,1,0],[0,1,-1,-1]]: the column
    /// transform gives two rows of per-tile sums, the row transform the even and odd output columns, which are
    /// interleaved into the image (outputs past the last row or column are dropped).
    /// </summary>
    public static void OutputTransform(float* m, long plane, float* bias, float* y, in ConvGeometry g, int th, int tw, int r0, int rows, int ld, float* stage)
    {
        int oh = g.OH, ow = g.OW;
        float* s = stage, e = stage + 8 * tw;
        for (int o = 0; o < g.O; o++)
        {
            float b = bias is null ? 0f : bias[o];
            for (int rr = 0; rr < rows; rr++)
            {
                int r = r0 + rr, n = r / th, ty = r % th;
                float* src = m + (long)o * ld + (long)rr * tw;
                // s[j] = m0j + m1j + m2j, s[4 + j] = m1j - m2j - m3j (each tw long)
                for (int j = 0; j < 4; j++)
                {
                    float* m0 = src + j * plane, m1 = src + (4 + j) * plane, m2 = src + (8 + j) * plane, m3 = src + (12 + j) * plane;
                    Sum3(m0, m1, m2, s + j * tw, tw, 1f, 1f);
                    Sum3(m1, m2, m3, s + (4 + j) * tw, tw, -1f, -1f);
                }
                // e: [row 0 even, row 0 odd, row 1 even, row 1 odd] columns.
                for (int i = 0; i < 2; i++)
                {
                    float* si = s + 4 * i * tw;
                    Sum3(si, si + tw, si + 2 * tw, e + 2 * i * tw, tw, 1f, 1f);
                    Sum3(si + tw, si + 2 * tw, si + 3 * tw, e + (2 * i + 1) * tw, tw, -1f, -1f);
                }
                float* img = y + ((long)n * g.O + o) * oh * ow;
                for (int i = 0; i < 2; i++)
                {
                    int row = 2 * ty + i;
                    if (row >= oh) break;
                    float* even = e + 2 * i * tw;
                    Join(even, even + tw, b, img + (long)row * ow, ow);
                }
            }
        }
    }

    /// <summary>
    /// dM [16, O, ld] = A dy A^T for the chunk's output tiles, A = [[1,0],[1,1],[1,-1],[0,-1]] (outputs past the
    /// last row or column count as zero): the adjoint of <see cref="OutputTransform"/>.
    /// </summary>
    public static void GradOutputTransform(float* dy, in ConvGeometry g, int th, int tw, int r0, int rows, float* dm, long plane, int ld, float* stage)
    {
        int oh = g.OH, ow = g.OW;
        // raw: row 0 even, row 0 odd, row 1 even, row 1 odd; w: 4 rows x (even, odd) of the column transform.
        float* raw = stage, wv = stage + 4 * tw;
        for (int o = 0; o < g.O; o++)
        {
            for (int rr = 0; rr < rows; rr++)
            {
                int r = r0 + rr, n = r / th, ty = r % th;
                float* img = dy + ((long)n * g.O + o) * oh * ow;
                for (int i = 0; i < 2; i++)
                {
                    int row = 2 * ty + i;
                    float* even = raw + 2 * i * tw, odd = even + tw;
                    if (row >= oh)
                    {
                        new Span<float>(even, 2 * tw).Clear();
                        continue;
                    }
                    Split(img + (long)row * ow, ow, even, odd, tw);
                }
                int len = 2 * tw;
                float* a0 = raw, a1 = raw + len;
                // w0 = r0, w1 = r0 + r1, w2 = r0 - r1, w3 = -r1 (even and odd halves together)
                Add(a0, a1, wv + len, len);
                Sub(a0, a1, wv + 2 * len, len);
                long at = (long)o * ld + (long)rr * tw;
                for (int i = 0; i < 4; i++)
                {
                    float* dst = dm + (4 * i) * plane + at;
                    float* even = i switch { 0 => a0, 3 => a1, _ => wv + i * len }, odd = even + tw;
                    float sign = i == 3 ? -1f : 1f;
                    // dM[4i + 0] = e, [4i + 1] = e + d, [4i + 2] = e - d, [4i + 3] = -d (times -1 for row 3).
                    Scale(even, sign, dst, tw);
                    Combine(even, odd, dst + plane, tw, sign, sign);
                    Combine(even, odd, dst + 2 * plane, tw, sign, -sign);
                    Scale(odd, -sign, dst + 3 * plane, tw);
                }
            }
        }
    }

    // ---- small vector helpers over contiguous runs ----------------------------------------------------------

    /// <summary>even[k] = src[2k], odd[k] = src[2k + 1] for k &lt; count, zero past the row's <paramref name="width"/>.</summary>
    private static void Split(float* src, int width, float* even, float* odd, int count)
    {
        int k = 0;
        if (Avx2.IsSupported)
        {
            for (; 2 * k + 16 <= width; k += 8)
            {
                var a = Avx.LoadVector256(src + 2 * k);
                var b = Avx.LoadVector256(src + 2 * k + 8);
                // shuffle: a0 a2 b0 b2 | a4 a6 b4 b6, then 64-bit lanes 0, 2, 1, 3.
                var e = Avx2.Permute4x64(Avx.Shuffle(a, b, 0x88).AsDouble(), 0xD8).AsSingle();
                var o = Avx2.Permute4x64(Avx.Shuffle(a, b, 0xDD).AsDouble(), 0xD8).AsSingle();
                Avx.Store(even + k, e);
                Avx.Store(odd + k, o);
            }
            for (; 2 * k + 8 <= width; k += 4)
            {
                var a = Sse.LoadVector128(src + 2 * k);
                var b = Sse.LoadVector128(src + 2 * k + 4);
                Sse.Store(even + k, Sse.Shuffle(a, b, 0x88));
                Sse.Store(odd + k, Sse.Shuffle(a, b, 0xDD));
            }
        }
        for (; k < count; k++)
        {
            int col = 2 * k;
            even[k] = col < width ? src[col] : 0f;
            odd[k] = col + 1 < width ? src[col + 1] : 0f;
        }
    }

    /// <summary>dst[2k] = even[k] + bias, dst[2k + 1] = odd[k] + bias for the <paramref name="width"/> columns of a row.</summary>
    private static void Join(float* even, float* odd, float bias, float* dst, int width)
    {
        int k = 0;
        if (Avx2.IsSupported)
        {
            var vb = Vector256.Create(bias);
            for (; 2 * k + 16 <= width; k += 8)
            {
                var e = Avx.Add(Avx.LoadVector256(even + k), vb);
                var o = Avx.Add(Avx.LoadVector256(odd + k), vb);
                var lo = Avx.UnpackLow(e, o);   // e0 o0 e1 o1 | e4 o4 e5 o5
                var hi = Avx.UnpackHigh(e, o);  // e2 o2 e3 o3 | e6 o6 e7 o7
                Avx.Store(dst + 2 * k, Avx.Permute2x128(lo, hi, 0x20));
                Avx.Store(dst + 2 * k + 8, Avx.Permute2x128(lo, hi, 0x31));
            }
            var vb4 = Vector128.Create(bias);
            for (; 2 * k + 8 <= width; k += 4)
            {
                var e = Sse.Add(Sse.LoadVector128(even + k), vb4);
                var o = Sse.Add(Sse.LoadVector128(odd + k), vb4);
                Sse.Store(dst + 2 * k, Sse.UnpackLow(e, o));
                Sse.Store(dst + 2 * k + 4, Sse.UnpackHigh(e, o));
            }
        }
        for (; 2 * k + 1 < width; k++)
        {
            dst[2 * k] = even[k] + bias;
            dst[2 * k + 1] = odd[k] + bias;
        }
        if (2 * k < width) dst[2 * k] = even[k] + bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Add(float* a, float* b, float* d, int n)
    {
        int i = 0;
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(d + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) + Unsafe.ReadUnaligned<Vector<float>>(b + i));
        for (; i + 4 <= n; i += 4)
            Vector128.Store(Vector128.Load(a + i) + Vector128.Load(b + i), d + i);
        for (; i < n; i++) d[i] = a[i] + b[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Sub(float* a, float* b, float* d, int n)
    {
        int i = 0;
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(d + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) - Unsafe.ReadUnaligned<Vector<float>>(b + i));
        for (; i + 4 <= n; i += 4)
            Vector128.Store(Vector128.Load(a + i) - Vector128.Load(b + i), d + i);
        for (; i < n; i++) d[i] = a[i] - b[i];
    }

    /// <summary>d = a + sb * b + sc * c with sb, sc = +-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Sum3(float* a, float* b, float* c, float* d, int n, float sb, float sc)
    {
        int i = 0;
        var vb = new Vector<float>(sb);
        var vc = new Vector<float>(sc);
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(d + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) + vb * Unsafe.ReadUnaligned<Vector<float>>(b + i)
                + vc * Unsafe.ReadUnaligned<Vector<float>>(c + i));
        for (; i + 4 <= n; i += 4)
            Vector128.Store(Vector128.Load(a + i) + Vector128.Create(sb) * Vector128.Load(b + i) + Vector128.Create(sc) * Vector128.Load(c + i), d + i);
        for (; i < n; i++) d[i] = a[i] + sb * b[i] + sc * c[i];
    }

    /// <summary>d = sa * a + sb * b with sa, sb = +-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Combine(float* a, float* b, float* d, int n, float sa, float sb)
    {
        int i = 0;
        var va = new Vector<float>(sa);
        var vb = new Vector<float>(sb);
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(d + i, va * Unsafe.ReadUnaligned<Vector<float>>(a + i) + vb * Unsafe.ReadUnaligned<Vector<float>>(b + i));
        for (; i + 4 <= n; i += 4)
            Vector128.Store(Vector128.Create(sa) * Vector128.Load(a + i) + Vector128.Create(sb) * Vector128.Load(b + i), d + i);
        for (; i < n; i++) d[i] = sa * a[i] + sb * b[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scale(float* a, float s, float* d, int n)
    {
        int i = 0;
        var vs = new Vector<float>(s);
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(d + i, vs * Unsafe.ReadUnaligned<Vector<float>>(a + i));
        for (; i + 4 <= n; i += 4)
            Vector128.Store(Vector128.Create(s) * Vector128.Load(a + i), d + i);
        for (; i < n; i++) d[i] = s * a[i];
    }
}
