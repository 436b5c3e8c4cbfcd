namespace Ddpm.Diffusion.Data;

/// <summary>
/// A finite, random-access set of images of one size. <see cref="Get"/> writes an image by its index
/// as CHW floats in [0, 1] (0 = black); mapping to the model's data range,
/// padding and augmentation are the <see cref="DataLoader"/>'s job.
/// </summary>
public interface IImageDataset
{
    int Count { get; }
    int Channels { get; }
    int Height { get; }
    int Width { get; }

    /// <summary>Writes image <paramref name="index"/>: dst is [C, H, W], values in [0, 1].</summary>
    void Get(int index, Span<float> dst);
}

/// <summary>The value range the model sees: [-1, 1] as in the DDPM paper, or [0, 1] as labml feeds it.</summary>
public enum DataRange
{
    MinusOneToOne,
    ZeroToOne,
}

public static class DataRangeExtensions
{
    /// <summary>Maps a [0, 1] pixel value into the data range.</summary>
    public static float FromUnit(this DataRange range, float v) => range == DataRange.MinusOneToOne ? 2f * v - 1f : v;

    /// <summary>Maps a value of the data range back to [0, 1] (not clamped).</summary>
    public static float ToUnit(this DataRange range, float v) => range == DataRange.MinusOneToOne ? (v + 1f) * 0.5f : v;
}

/// <summary>
/// Images held as 8-bit CHW planes, the form IDX, CIFAR-10 and decoded image files all arrive in; a quarter
/// of the memory of floats, converted on <see cref="Get"/>.
/// </summary>
public abstract class ByteImageDataset : IImageDataset
{
    /// <summary>b / 255f for every byte, correctly rounded (multiplying by 1/255f is not).</summary>
    private static readonly float[] UnitValues = Enumerable.Range(0, 256).Select(b => b / 255f).ToArray();

    private readonly byte[] _pixels;

    protected ByteImageDataset(string source, byte[] pixels, int count, int channels, int height, int width)
    {
        if (count < 0 || channels <= 0 || height <= 0 || width <= 0)
            throw new ArgumentException($"Bad image set geometry {count} x {channels} x {height} x {width}.");
        if (pixels.LongLength != (long)count * channels * height * width)
            throw new ArgumentException($"{pixels.Length} bytes do not fill {count} x {channels} x {height} x {width} images.");
        Source = source;
        _pixels = pixels;
        Count = count;
        Channels = channels;
        Height = height;
        Width = width;
    }

    /// <summary>Where the images came from (file or folder), for messages.</summary>
    public string Source { get; }

    public int Count { get; }
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }

    public int ImageSize => Channels * Height * Width;

    /// <summary>The raw bytes of image <paramref name="index"/>, [C, H, W].</summary>
    public ReadOnlySpan<byte> GetBytes(int index)
    {
        CheckIndex(index);
        return _pixels.AsSpan(index * ImageSize, ImageSize);
    }

    public void Get(int index, Span<float> dst)
    {
        var src = GetBytes(index);
        if (dst.Length != src.Length)
            throw new ArgumentException($"Destination holds {dst.Length} floats; an image of {Source} is {src.Length}.");
        for (int i = 0; i < src.Length; i++) dst[i] = UnitValues[src[i]];
    }

    private void CheckIndex(int index)
    {
        if ((uint)index >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(index), $"Image {index} of {Source}, which has {Count}.");
    }
}
