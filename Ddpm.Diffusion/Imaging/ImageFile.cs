using Ddpm.Tensors.IO;
using StbImageSharp;

namespace Ddpm.Diffusion.Imaging;

/// <summary>An 8-bit image in interleaved HWC order (grey: 1 channel, RGB: 3).</summary>
public sealed record DecodedImage(int Width, int Height, int Channels, byte[] Pixels)
{
    /// <summary>Channel <paramref name="c"/> of the pixel at (x, y).</summary>
    public byte this[int x, int y, int c] => Pixels[(y * Width + x) * Channels + c];
}

/// <summary>Decodes PNG, JPEG and BMP (and the other formats stb_image reads) through StbImageSharp.</summary>
public static class ImageFile
{
    public static readonly string[] Extensions = [".png", ".jpg", ".jpeg", ".bmp"];

    public static bool HasImageExtension(string path) =>
        Extensions.Contains(Path.GetExtension(path), StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Reads an image as grey (1 channel, stb's luma weights) or RGB (3); an alpha channel is dropped, not
    /// composited. Throws <see cref="DataFormatException"/> naming the file when it cannot be decoded.
    /// </summary>
    public static DecodedImage Load(string path, int channels)
    {
        if (channels is not (1 or 3))
            throw new ArgumentOutOfRangeException(nameof(channels), $"Images are read as 1 (grey) or 3 (RGB) channels, not {channels}.");
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new DataFormatException(path, $"cannot read the file: {ex.Message}", null, ex);
        }
        if (bytes.Length == 0)
            throw new DataFormatException(path, "the file is empty");

        ImageResult img;
        try
        {
            img = ImageResult.FromMemory(bytes, channels == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // stb reports unknown formats and corrupt data alike as exceptions with a short reason.
            throw new DataFormatException(path, $"cannot decode the image: {ex.Message}", null, ex);
        }
        if (img is null || img.Width <= 0 || img.Height <= 0 || img.Data is null || img.Data.Length < img.Width * img.Height * channels)
            throw new DataFormatException(path, "cannot decode the image: the decoder returned no pixels");
        return new DecodedImage(img.Width, img.Height, channels, img.Data);
    }
}
