using Ddpm.Diffusion.Data;

namespace Ddpm.Diffusion.Quality;

/// <summary>
/// How an inpainting compares with the true image: the RMS error of the generated region (on the [0, 1] pixel
/// scale) and how exactly the known region was kept. <see cref="KnownMismatches"/> counts known values whose bits
/// differ from the image's.
/// </summary>
public readonly record struct InpaintingError(double HoleRms, long HolePixels, double KnownMaxAbs, long KnownMismatches, long KnownPixels);

/// <summary>Measures of inpaintings against the true images, and the mean-fill baseline.</summary>
public static class InpaintingQuality
{
    /// <summary>
    /// <paramref name="results"/> [images x perImage, C, S, S] against <paramref name="images"/> [images, C, S, S]
    /// (both in <paramref name="range"/>), result r of image r / perImage; <paramref name="mask"/> [S, S], 1 = known.
    /// </summary>
    public static InpaintingError Measure(ReadOnlySpan<float> images, ReadOnlySpan<float> results, int perImage, ReadOnlySpan<float> mask,
        int channels, int size, DataRange range)
    {
        int plane = size * size, per = channels * plane;
        if (mask.Length != plane) throw new ArgumentException($"The mask has {mask.Length} values for {size}x{size} images.", nameof(mask));
        if (perImage <= 0 || images.Length % per != 0 || results.Length != images.Length * perImage)
            throw new ArgumentException($"{results.Length} result values for {images.Length / per} images of {per} values, {perImage} each.", nameof(results));
        double sum = 0, knownMax = 0;
        long hole = 0, known = 0, mismatches = 0;
        for (int r = 0; r < results.Length / per; r++)
        {
            var img = images.Slice(r / perImage * per, per);
            var res = results.Slice(r * per, per);
            for (int i = 0; i < per; i++)
            {
                if (mask[i % plane] == 0)
                {
                    double d = Math.Clamp(range.ToUnit(res[i]), 0f, 1f) - range.ToUnit(img[i]);
                    sum += d * d;
                    hole++;
                }
                else
                {
                    double d = Math.Abs((double)res[i] - img[i]);
                    if (!(d <= knownMax)) knownMax = d; // NaN-safe
                    if (BitConverter.SingleToInt32Bits(res[i]) != BitConverter.SingleToInt32Bits(img[i])) mismatches++;
                    known++;
                }
            }
        }
        return new InpaintingError(hole == 0 ? 0 : Math.Sqrt(sum / hole), hole, knownMax, mismatches, known);
    }

    /// <summary>
    /// The mean-fill baseline: each image with its unknown pixels set to the mean of its known pixels, channel by
    /// channel (black where nothing is known). images: [n, C, S, S]; mask [S, S], 1 = known.
    /// </summary>
    public static float[] MeanFill(ReadOnlySpan<float> images, ReadOnlySpan<float> mask, int channels, int size, DataRange range)
    {
        int plane = size * size;
        var r = images.ToArray();
        for (int p = 0; p < r.Length / plane; p++)
        {
            var img = r.AsSpan(p * plane, plane);
            double sum = 0;
            int count = 0;
            for (int i = 0; i < plane; i++) if (mask[i] != 0) { sum += img[i]; count++; }
            float fill = count > 0 ? (float)(sum / count) : range.FromUnit(0f);
            for (int i = 0; i < plane; i++) if (mask[i] == 0) img[i] = fill;
        }
        return r;
    }
}
