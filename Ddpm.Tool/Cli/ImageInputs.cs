using System.Globalization;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;

namespace Ddpm.Tool;

/// <summary>
/// Images named on the command line: a PNG/JPEG/BMP file (center-cropped and resized to the model), or data:INDEX
/// (data:FIRST..LAST for several) for images of a dataset (the bundled Fashion-MNIST test set unless given),
/// padded with black to the model's size.
/// </summary>
public static class ImageInputs
{
    /// <summary>Most images one data:FIRST..LAST names.</summary>
    public const int MaxImages = 10_000;

    /// <summary>One image as [C, S, S] in the model's data range.</summary>
    public static float[] Load(string spec, string? data, int size, int channels, DataRange range, string option)
    {
        var (images, count, _) = LoadMany(spec, data, size, channels, range, option, allowRange: false);
        return count == 1 ? images : throw new InvalidOperationException("one image expected");
    }

    /// <summary>
    /// The images <paramref name="spec"/> names as [count, C, S, S] in the data range, with their dataset indices
    /// (null for a file). <paramref name="option"/> names the option in messages.
    /// </summary>
    public static (float[] Images, int Count, int[]? Indices) LoadMany(string spec, string? data, int size, int channels, DataRange range,
        string option, bool allowRange = true)
    {
        if (!spec.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            var unit = LoadFile(spec, size, channels);
            return (unit.Select(v => range.FromUnit(v)).ToArray(), 1, null);
        }
        var (first, last) = ParseIndices(spec, option, allowRange);
        string path = data ?? BundledFiles.Data(BundledFiles.TestImages);
        var ds = Datasets.Open(path, size, channels);
        if (last >= ds.Count) throw new UserError($"{path} has {ds.Count} images; there is no index {last} ({option} {spec}).");
        if (ds.Channels != channels) throw new UserError($"{path} has {ds.Channels}-channel images; the model takes {channels}.");
        if (ds.Height > size || ds.Width > size) throw new UserError($"{path} has {ds.Height}x{ds.Width} images; the model is {size}x{size}.");
        int count = last - first + 1, per = channels * size * size;
        var result = new float[count * per];
        var raw = new float[ds.Channels * ds.Height * ds.Width];
        int top = (size - ds.Height) / 2, left = (size - ds.Width) / 2;
        for (int k = 0; k < count; k++)
        {
            ds.Get(first + k, raw);
            var dst = result.AsSpan(k * per, per);
            dst.Fill(range.FromUnit(0f));
            for (int ch = 0; ch < channels; ch++)
                for (int y = 0; y < ds.Height; y++)
                    for (int x = 0; x < ds.Width; x++)
                        dst[(ch * size + top + y) * size + left + x] = range.FromUnit(raw[(ch * ds.Height + y) * ds.Width + x]);
        }
        return (result, count, Enumerable.Range(first, count).ToArray());
    }

    /// <summary>An image file in [0, 1], [C, S, S]: center-cropped and resized.</summary>
    public static float[] LoadFile(string path, int size, int channels)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such image file.");
        try
        {
            return Resampler.CenterCropResize(ImageFile.Load(path, channels), size, size, ResizeFilter.Auto);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException)
        {
            throw new UserError($"{path}: {e.Message}", e);
        }
    }

    private static (int First, int Last) ParseIndices(string spec, string option, bool allowRange)
    {
        string body = spec[5..];
        int dots = body.IndexOf("..", StringComparison.Ordinal);
        string a = dots < 0 ? body : body[..dots], b = dots < 0 ? body : body[(dots + 2)..];
        if (!int.TryParse(a, NumberStyles.None, CultureInfo.InvariantCulture, out int first)
            || !int.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out int last))
            throw new UsageError($"{option} '{spec}' is not data:INDEX{(allowRange ? " or data:FIRST..LAST" : "")}.");
        if (dots >= 0 && !allowRange) throw new UsageError($"{option} takes one image (data:INDEX), not '{spec}'.");
        if (last < first) throw new UsageError($"{option} '{spec}': the last index is below the first.");
        if (last - first + 1 > MaxImages) throw new UsageError($"{option} '{spec}' names {last - first + 1:N0} images; at most {MaxImages:N0} are allowed.");
        return (first, last);
    }
}
