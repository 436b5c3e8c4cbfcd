using Ddpm.Diffusion.Data;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using StbImageWriteSharp;

namespace Ddpm.Diffusion.Imaging;

/// <summary>
/// Writes model outputs as PNG: one grid of many images (torchvision's make_grid + save_image layout) or one
/// file per image. Values are mapped back from the data range to [0, 1], clamped, and rounded to 8 bits as
/// floor(255 v + 0.5). Images holding NaN or an infinity are refused before anything is written (a PNG would show
/// them as black or white, as if the model had drawn that). Files are written atomically.
/// </summary>
public static class ImageGrid
{
    /// <summary>
    /// The <c>scale</c> that picks the smallest whole pixel scale making a grid at least <see cref="ReadableWidth"/>
    /// pixels wide: a 4 x 4 grid of 32-pixel images is 138 pixels at scale 1, too small to judge on a screen.
    /// </summary>
    public const int AutoScale = 0;

    /// <summary>The width <see cref="AutoScale"/> reaches at least.</summary>
    public const int ReadableWidth = 512;

    /// <summary>Images per row of a square-ish grid of <paramref name="n"/> images.</summary>
    public static int SquareRow(int n) => Math.Max(1, (int)Math.Ceiling(Math.Sqrt(n)));

    /// <summary>
    /// images: [n, c, h, w] in the data range, c = 1 (grey) or 3 (RGB). Lays the images out row by row,
    /// <paramref name="nrow"/> per row, with <paramref name="padding"/> pixels of <paramref name="padValue"/>
    /// (on the [0, 1] scale) around and between them, then enlarges the grid <paramref name="scale"/> times by
    /// repeating pixels (nearest neighbour: no new values; <see cref="AutoScale"/> picks a readable size).
    /// Returns the written PNG's (width, height).
    /// </summary>
    public static (int Width, int Height) SavePng(string path, ReadOnlySpan<float> images, int n, int c, int h, int w,
        int nrow = 8, DataRange dataRange = DataRange.MinusOneToOne, int padding = 2, float padValue = 0f, int scale = 1)
    {
        var (pixels, gw, gh) = Compose(path, images, n, c, h, w, nrow, dataRange, padding, padValue, scale);
        WritePng(path, pixels, gw, gh, c);
        return (gw, gh);
    }

    /// <summary>
    /// The PNG file <see cref="SavePng"/> writes, as bytes in memory, and its size (<paramref name="name"/> names the
    /// grid in the message about a non-finite image).
    /// </summary>
    public static (byte[] Png, int Width, int Height) EncodePng(string name, ReadOnlySpan<float> images, int n, int c, int h, int w,
        int nrow = 8, DataRange dataRange = DataRange.MinusOneToOne, int padding = 2, float padValue = 0f, int scale = 1)
    {
        var (pixels, gw, gh) = Compose(name, images, n, c, h, w, nrow, dataRange, padding, padValue, scale);
        using var stream = new MemoryStream();
        new ImageWriter().WritePng(pixels, gw, gh, c == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue, stream);
        return (stream.ToArray(), gw, gh);
    }

    /// <summary>The grid's HWC bytes and size (see <see cref="SavePng"/>).</summary>
    private static (byte[] Pixels, int Width, int Height) Compose(string name, ReadOnlySpan<float> images, int n, int c, int h, int w,
        int nrow, DataRange dataRange, int padding, float padValue, int scale)
    {
        CheckGeometry(images, n, c, h, w);
        RequireFinite(name, images, n);
        if (nrow <= 0) throw new ArgumentOutOfRangeException(nameof(nrow), "Images per row must be positive.");
        ArgumentOutOfRangeException.ThrowIfNegative(padding);
        ArgumentOutOfRangeException.ThrowIfNegative(scale);

        int cols = Math.Min(nrow, n);
        int rows = (n + cols - 1) / cols;
        int gw = cols * (w + padding) + padding;
        int gh = rows * (h + padding) + padding;
        var pixels = new byte[gw * gh * c];
        pixels.AsSpan().Fill(ToByte(padValue));

        for (int i = 0; i < n; i++)
        {
            int ox = padding + i % cols * (w + padding);
            int oy = padding + i / cols * (h + padding);
            Blit(images.Slice(i * c * h * w, c * h * w), c, h, w, dataRange, pixels, gw, ox, oy);
        }
        if (scale == AutoScale) scale = Math.Max(1, (ReadableWidth + gw - 1) / gw);
        if ((long)gw * scale * gh * scale * c > Array.MaxLength)
            throw new ArgumentException($"A {gw}x{gh} grid at scale {scale} is too large for one PNG.");
        if (scale > 1) (pixels, gw, gh) = (Enlarge(pixels, gw, gh, c, scale), gw * scale, gh * scale);
        return (pixels, gw, gh);
    }

    /// <summary>An HWC byte image (width w, height h, c channels) with every pixel repeated into a scale x scale block.</summary>
    public static byte[] Enlarge(byte[] hwc, int w, int h, int c, int scale)
    {
        int sw = w * scale;
        var dst = new byte[(long)sw * h * scale * c];
        var row = new byte[sw * c];
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
                for (int r = 0; r < scale; r++)
                    hwc.AsSpan((y * w + x) * c, c).CopyTo(row.AsSpan((x * scale + r) * c));
            for (int r = 0; r < scale; r++) row.CopyTo(dst, ((long)y * scale + r) * sw * c);
        }
        return dst;
    }

    /// <summary>
    /// Writes each image of images [n, c, h, w] to <paramref name="folder"/> as <c>{prefix}{index:D5}.png</c>,
    /// numbering from <paramref name="firstIndex"/>; returns the paths.
    /// </summary>
    public static string[] SaveEach(string folder, ReadOnlySpan<float> images, int n, int c, int h, int w,
        DataRange dataRange = DataRange.MinusOneToOne, string prefix = "sample_", int firstIndex = 0)
    {
        CheckGeometry(images, n, c, h, w);
        RequireFinite(folder, images, n);
        var paths = new string[n];
        var pixels = new byte[h * w * c];
        for (int i = 0; i < n; i++)
        {
            Blit(images.Slice(i * c * h * w, c * h * w), c, h, w, dataRange, pixels, w, 0, 0);
            paths[i] = Path.Combine(folder, $"{prefix}{firstIndex + i:D5}.png");
            WritePng(paths[i], pixels, w, h, c);
        }
        return paths;
    }

    /// <summary>Maps a [0, 1] value to a byte the way torchvision's save_image does.</summary>
    public static byte ToByte(float unit)
    {
        float v = unit * 255f + 0.5f;
        if (!(v > 0f)) return 0; // also NaN
        return v >= 255f ? (byte)255 : (byte)v;
    }

    /// <summary>src: [c, h, w] in the data range -> the HWC byte image dst (width dstW) at (ox, oy).</summary>
    private static void Blit(ReadOnlySpan<float> src, int c, int h, int w, DataRange range, byte[] dst, int dstW, int ox, int oy)
    {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int ch = 0; ch < c; ch++)
                    dst[((oy + y) * dstW + ox + x) * c + ch] = ToByte(range.ToUnit(src[(ch * h + y) * w + x]));
    }

    /// <summary>Writes an HWC byte image (1 or 3 channels) as PNG, atomically.</summary>
    public static void WritePng(string path, byte[] hwc, int width, int height, int channels)
    {
        var components = channels == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue;
        AtomicFile.Write(path, s => new ImageWriter().WritePng(hwc, width, height, components, s));
    }

    /// <summary>Throws <see cref="NonFiniteOutputException"/> naming the first image that holds a non-finite value.</summary>
    private static void RequireFinite(string path, ReadOnlySpan<float> images, int n)
    {
        long bad = Finite.FirstNonFinite(images);
        if (bad < 0) return;
        long per = images.Length / n;
        throw new NonFiniteOutputException($"{path} was not written: image {bad / per} holds {images[(int)bad]} (value {bad % per} of {per}); images must be finite.");
    }

    private static void CheckGeometry(ReadOnlySpan<float> images, int n, int c, int h, int w)
    {
        if (n <= 0 || h <= 0 || w <= 0)
            throw new ArgumentException($"Bad image geometry [{n}, {c}, {h}, {w}].");
        if (c is not (1 or 3))
            throw new ArgumentException($"PNG output takes 1 (grey) or 3 (RGB) channels, not {c}.");
        if ((long)n * c * h * w != images.Length)
            throw new ArgumentException($"{images.Length} values do not fill [{n}, {c}, {h}, {w}].");
    }
}
