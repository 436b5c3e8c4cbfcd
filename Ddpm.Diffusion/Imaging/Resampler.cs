namespace Ddpm.Diffusion.Imaging;

/// <summary>How <see cref="Resampler"/> interpolates.</summary>
public enum ResizeFilter
{
    /// <summary>Area averaging when shrinking (no aliasing), bilinear when enlarging.</summary>
    Auto,

    /// <summary>Each output pixel is the mean of the source area it covers (box filter, like OpenCV's INTER_AREA).</summary>
    Area,

    /// <summary>Two-tap linear interpolation with pixel centres at +0.5 (PyTorch's align_corners=False).</summary>
    Bilinear,
}

/// <summary>
/// Resize-then-center-crop, the usual preparation of photos for a square model input: the largest centred
/// window of the target's aspect ratio is cut from the source and resampled to the target size. This is what
/// torchvision's Resize(size) followed by CenterCrop(size) computes, without the intermediate image.
/// </summary>
public static class Resampler
{
    /// <summary>
    /// src: HWC bytes [srcH, srcW, channels]; returns CHW floats [channels, dstH, dstW] in [0, 1].
    /// </summary>
    public static float[] CenterCropResize(DecodedImage src, int dstH, int dstW, ResizeFilter filter)
    {
        if (dstH <= 0 || dstW <= 0) throw new ArgumentOutOfRangeException(nameof(dstH), "Target size must be positive.");
        // The crop window in source pixels: full height or full width, whichever limits the aspect ratio.
        double winW = src.Width, winH = src.Height;
        if ((double)src.Width / src.Height > (double)dstW / dstH) winW = src.Height * (double)dstW / dstH;
        else winH = src.Width * (double)dstH / dstW;
        double x0 = (src.Width - winW) / 2, y0 = (src.Height - winH) / 2;

        var wx = Weights(x0, winW, src.Width, dstW, filter);
        var wy = Weights(y0, winH, src.Height, dstH, filter);

        int ch = src.Channels;
        // Rows first: tmp [srcH, dstW, ch] in double, then columns into the CHW output.
        var tmp = new double[src.Height * dstW * ch];
        for (int y = 0; y < src.Height; y++)
            for (int ox = 0; ox < dstW; ox++)
                foreach (var (ix, w) in wx[ox])
                    for (int c = 0; c < ch; c++)
                        tmp[(y * dstW + ox) * ch + c] += w * src.Pixels[(y * src.Width + ix) * ch + c];

        var dst = new float[ch * dstH * dstW];
        for (int oy = 0; oy < dstH; oy++)
            for (int ox = 0; ox < dstW; ox++)
                for (int c = 0; c < ch; c++)
                {
                    double v = 0;
                    foreach (var (iy, w) in wy[oy]) v += w * tmp[(iy * dstW + ox) * ch + c];
                    dst[(c * dstH + oy) * dstW + ox] = (float)Math.Clamp(v / 255.0, 0.0, 1.0);
                }
        return dst;
    }

    /// <summary>
    /// For each of <paramref name="n"/> outputs, the source indices and weights (summing to 1) that sample the
    /// window [start, start + length) of an axis of <paramref name="size"/> pixels.
    /// </summary>
    internal static (int Index, double Weight)[][] Weights(double start, double length, int size, int n, ResizeFilter filter)
    {
        double scale = length / n;
        if (filter == ResizeFilter.Auto) filter = scale > 1 ? ResizeFilter.Area : ResizeFilter.Bilinear;
        var r = new (int, double)[n][];
        for (int o = 0; o < n; o++)
        {
            if (filter == ResizeFilter.Area)
            {
                double a = start + o * scale, b = a + scale;
                var taps = new List<(int, double)>();
                for (int i = (int)Math.Floor(a); i < b && i < size; i++)
                {
                    double overlap = Math.Min(b, i + 1) - Math.Max(a, i);
                    if (overlap > 1e-12) taps.Add((Math.Max(i, 0), overlap / scale));
                }
                r[o] = [.. taps];
            }
            else
            {
                double s = start + (o + 0.5) * scale - 0.5;
                s = Math.Clamp(s, 0, size - 1);
                int i0 = (int)Math.Floor(s);
                int i1 = Math.Min(i0 + 1, size - 1);
                double f = s - i0;
                r[o] = f == 0 || i1 == i0 ? [(i0, 1.0)] : [(i0, 1 - f), (i1, f)];
            }
        }
        return r;
    }
}
