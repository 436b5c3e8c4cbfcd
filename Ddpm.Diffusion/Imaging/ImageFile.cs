using System.Buffers.Binary;
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

    /// <summary>Image files larger than this are refused unread (a 8192 x 8192 RGB PNG stored raw is 201 MB).</summary>
    public const long MaxFileBytes = 256L << 20;

    /// <summary>Images with more pixels than this are refused before decoding (8192 x 8192).</summary>
    public const long MaxPixels = 1L << 26;

    private static readonly byte[] PngSignature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>
    /// Reads an image as grey (1 channel, stb's luma weights) or RGB (3); an alpha channel is dropped, not
    /// composited. Throws <see cref="DataFormatException"/> naming the file when it cannot be decoded, holds
    /// more than <see cref="MaxFileBytes"/> or <see cref="MaxPixels"/>, is a PNG with a damaged chunk (stb_image
    /// does not check PNG checksums, so a flipped bit would otherwise become a wrong pixel) or a JPEG whose
    /// segments do not fit the file.
    /// </summary>
    public static DecodedImage Load(string path, int channels)
    {
        if (channels is not (1 or 3))
            throw new ArgumentOutOfRangeException(nameof(channels), $"Images are read as 1 (grey) or 3 (RGB) channels, not {channels}.");
        byte[] bytes = BoundedFile.ReadAllBytes(path, MaxFileBytes, "an image file may hold");
        if (bytes.Length == 0)
            throw new DataFormatException(path, "the file is empty");
        if (bytes.AsSpan().StartsWith(PngSignature)) CheckPngChunks(bytes, path);
        else if (bytes.Length >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8) CheckJpegSegments(bytes, path);

        ImageResult img;
        try
        {
            var info = ImageInfo.FromStream(new MemoryStream(bytes, writable: false))
                ?? throw new DataFormatException(path, "cannot decode the image: not a PNG, JPEG or BMP file stb_image recognises");
            // A BMP stored top-down reports a negative height; stb_image decodes it upright.
            long height = Math.Abs((long)info.Height);
            if (info.Width <= 0 || height == 0 || info.Width * height > MaxPixels)
                throw new DataFormatException(path, $"the image is {info.Width}x{height}; at most {MaxPixels} pixels are read");
            img = ImageResult.FromMemory(bytes, channels == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue);
        }
        catch (Exception ex) when (ex is not (OutOfMemoryException or DataFormatException))
        {
            // stb reports unknown formats and corrupt data alike as exceptions with a short reason, which some
            // paths leave padded with NUL characters from a C string buffer.
            throw new DataFormatException(path, $"cannot decode the image: {ex.Message.TrimEnd('\0', ' ')}", null, ex);
        }
        if (img is null || img.Width <= 0 || img.Height <= 0 || img.Data is null || img.Data.Length < img.Width * img.Height * channels)
            throw new DataFormatException(path, "cannot decode the image: the decoder returned no pixels");
        return new DecodedImage(img.Width, img.Height, channels, img.Data);
    }

    /// <summary>
    /// Walks a PNG's chunks: each must lie inside the file and match its CRC-32, IHDR must come first and IEND
    /// must end the chunk sequence (a file cut short loses it).
    /// </summary>
    private static void CheckPngChunks(byte[] png, string path)
    {
        long at = PngSignature.Length;
        bool first = true;
        while (true)
        {
            if (at + 12 > png.Length)
                throw new DataFormatException(path, at == png.Length
                    ? "the PNG ends without an IEND chunk; it is truncated"
                    : "the PNG ends inside a chunk header; it is truncated", at);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan((int)at));
            var type = png.AsSpan((int)at + 4, 4);
            string typeText = string.Concat(type.ToArray().Select(b => b is >= 0x20 and < 0x7F ? ((char)b).ToString() : $"\\x{b:X2}"));
            if (length > int.MaxValue || at + 12 + length > png.Length)
                throw new DataFormatException(path, $"PNG chunk '{typeText}' of {length} bytes runs past the end of the file ({png.Length} bytes); it is truncated", at);
            if (first && typeText != "IHDR")
                throw new DataFormatException(path, $"the first PNG chunk is '{typeText}', not IHDR", at);
            first = false;
            uint stored = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan((int)(at + 8 + length)));
            uint actual = Crc32(png.AsSpan((int)at + 4, (int)length + 4));
            if (stored != actual)
                throw new DataFormatException(path, $"PNG chunk '{typeText}' fails its CRC check (stored {stored:X8}, computed {actual:X8}); the file is damaged", at);
            at += 12 + length;
            if (typeText == "IEND") return;
        }
    }

    /// <summary>
    /// Walks a JPEG's markers from SOI to EOI: every segment's declared length must lie inside the file and
    /// the entropy-coded data after each SOS must end at a marker. stb_image trusts segment lengths and, once
    /// one points past the end of the data, scans for the next marker without end, so a file that fails this
    /// walk never reaches it. Bytes between segments are skipped as decoders do.
    /// </summary>
    private static void CheckJpegSegments(byte[] jpg, string path)
    {
        int at = 2;
        while (true)
        {
            while (at < jpg.Length && jpg[at] != 0xFF) at++;
            while (at < jpg.Length && jpg[at] == 0xFF) at++;
            if (at >= jpg.Length)
                throw new DataFormatException(path, "the JPEG ends without an EOI marker; it is truncated", jpg.Length);
            int marker = jpg[at++];
            if (marker == 0xD9) return;
            // Stand-alone markers: restart intervals, TEM, and a stuffed zero outside a scan.
            if (marker is >= 0xD0 and <= 0xD7 or 0x01 or 0x00) continue;
            if (at + 2 > jpg.Length)
                throw new DataFormatException(path, $"the JPEG ends inside the length of marker FF{marker:X2}; it is truncated", at);
            int length = (jpg[at] << 8) | jpg[at + 1];
            if (length < 2)
                throw new DataFormatException(path, $"JPEG marker FF{marker:X2} declares a segment of {length} bytes, less than its own length field", at);
            if (at + length > jpg.Length)
                throw new DataFormatException(path, $"JPEG segment FF{marker:X2} of {length} bytes runs past the end of the file ({jpg.Length} bytes); it is truncated", at);
            at += length;
            if (marker != 0xDA) continue;
            // Entropy-coded data: FF 00 is a stuffed byte and FF D0..D7 a restart; any other FF xx ends the scan.
            while (true)
            {
                if (at + 1 >= jpg.Length)
                    throw new DataFormatException(path, "the JPEG's scan data ends without a marker; it is truncated", jpg.Length);
                if (jpg[at] == 0xFF && jpg[at + 1] is not (0x00 or 0xFF or (>= 0xD0 and <= 0xD7))) break;
                at++;
            }
        }
    }

    private static readonly uint[] CrcTable = MakeCrcTable();

    private static uint[] MakeCrcTable()
    {
        var t = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }

    /// <summary>The CRC-32 of the PNG specification (ISO 3309, reflected polynomial 0xEDB88320).</summary>
    internal static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }
}
