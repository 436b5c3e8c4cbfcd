using Ddpm.Tensors;

namespace Ddpm.Diffusion.Imaging;

/// <summary>
/// Inpainting masks of a square image, [size * size] row-major: 1 keeps the pixel, 0 has it generated. The same
/// convention as a mask image: white keeps, black is filled in.
/// </summary>
public static class InpaintMasks
{
    /// <summary>The names <see cref="Parse"/> takes.</summary>
    public const string Names = "center, left or random:SEED";

    /// <summary>The central square of half the side is generated (a quarter of the image).</summary>
    public static float[] Center(int size) => Rectangle(size, size / 4, size / 4, size - size / 4, size - size / 4);

    /// <summary>The left half is generated.</summary>
    public static float[] Left(int size) => Rectangle(size, 0, 0, size / 2, size);

    /// <summary>
    /// Square cells of side max(1, size / 8) (an 8 x 8 board), each generated with probability 1/2, drawn from
    /// the Philox stream of <paramref name="seed"/>.
    /// </summary>
    public static float[] Random(int size, ulong seed)
    {
        int cell = Math.Max(1, size / 8), cells = (size + cell - 1) / cell;
        var u = new float[cells * cells];
        Philox.FillUniform(u, seed, 0);
        var m = new float[size * size];
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                m[y * size + x] = u[(y / cell) * cells + x / cell] < 0.5f ? 0f : 1f;
        return m;
    }

    /// <summary>"center", "left" or "random:SEED" (case-insensitive); null for any other text.</summary>
    public static float[]? Parse(string text, int size)
    {
        string s = text.Trim().ToLowerInvariant();
        if (s is "center" or "centre") return Center(size);
        if (s == "left") return Left(size);
        if (s.StartsWith("random:", StringComparison.Ordinal)
            && ulong.TryParse(s.AsSpan(7), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out ulong seed))
            return Random(size, seed);
        return null;
    }

    /// <summary>Everything kept but the rectangle [x0, x1) x [y0, y1).</summary>
    private static float[] Rectangle(int size, int x0, int y0, int x1, int y1)
    {
        if (size <= 0) throw new ArgumentOutOfRangeException(nameof(size), $"The image side must be positive, got {size}.");
        var m = new float[size * size];
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                m[y * size + x] = x >= x0 && x < x1 && y >= y0 && y < y1 ? 0f : 1f;
        return m;
    }
}
