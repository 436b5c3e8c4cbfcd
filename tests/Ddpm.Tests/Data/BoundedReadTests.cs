using System.Buffers.Binary;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors.IO;
using StbImageWriteSharp;
using Xunit;

namespace Ddpm.Tests.Data;

/// <summary>Readers stop at the size a format allows and refuse damaged files with one clean line.</summary>
public class BoundedReadTests
{
    private static byte[] Png(int w, int h)
    {
        var ms = new MemoryStream();
        var px = new byte[w * h];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)(i * 13);
        new ImageWriter().WritePng(px, w, h, ColorComponents.Grey, ms);
        return ms.ToArray();
    }

    [Fact]
    public void AnEndlessDeviceIsRefusedBeforeItIsRead()
    {
        if (!File.Exists("/dev/zero")) return;
        using var dir = new TempDir();
        // A link to an endless device reports 0 bytes; reading it whole would never end.
        string link = dir.File("endless.bin");
        File.CreateSymbolicLink(link, "/dev/zero");
        var ex = Assert.Throws<DataFormatException>(() => BoundedFile.ReadAllBytes(link, 1000, "the test allows"));
        Assert.Equal($"'{link}': not a regular file but a character device", ex.Message);

        Directory.CreateDirectory(dir.File("images"));
        File.CreateSymbolicLink(dir.File(Path.Combine("images", "a.png")), "/dev/zero");
        var img = Assert.Throws<DataFormatException>(() => ImageFolderDataset.Load(dir.File("images"), 8, 8, 1));
        Assert.Equal($"'{dir.File(Path.Combine("images", "a.png"))}': not a regular file but a character device", img.Message);

        var cifar = Assert.Throws<DataFormatException>(() => Cifar10Dataset.Load(link));
        Assert.Equal($"'{link}': not a regular file but a character device", cifar.Message);
        var idx = Assert.Throws<DataFormatException>(() => IdxDataset.Load(link));
        Assert.Equal($"'{link}': not a regular file but a character device", idx.Message);
        var st = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(link));
        Assert.Equal($"safetensors '{link}': not a regular file but a character device", st.Message);
    }

    [Fact]
    public void ReadsAFileWhole()
    {
        using var dir = new TempDir();
        var bytes = Enumerable.Range(0, 200_000).Select(i => (byte)(i * 7)).ToArray();
        File.WriteAllBytes(dir.File("f"), bytes);
        Assert.Equal(bytes, BoundedFile.ReadAllBytes(dir.File("f"), bytes.Length, "-"));
        Assert.Contains("more than the 199999 bytes", Assert.Throws<DataFormatException>(() => BoundedFile.ReadAllBytes(dir.File("f"), bytes.Length - 1, "x")).Message);
        File.WriteAllBytes(dir.File("empty"), []);
        Assert.Empty(BoundedFile.ReadAllBytes(dir.File("empty"), 0, "-"));
    }

    [Fact]
    public void APngWhoseChunkFailsItsCrcIsRefused()
    {
        using var dir = new TempDir();
        var png = Png(6, 5);
        // The first IDAT's data: flip one bit of its compressed stream, leaving the stored CRC as it was.
        int at = 8;
        while (System.Text.Encoding.ASCII.GetString(png, at + 4, 4) != "IDAT") at += 12 + (int)BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(at));
        var bad = (byte[])png.Clone();
        bad[at + 8 + 2] ^= 0x10;
        string path = dir.File("bad.png");
        File.WriteAllBytes(path, bad);
        var ex = Assert.Throws<DataFormatException>(() => ImageFile.Load(path, 1));
        Assert.Contains("PNG chunk 'IDAT' fails its CRC check", ex.Message);
        Assert.Equal(at, ex.Offset);

        File.WriteAllBytes(path, png);
        Assert.Equal(6, ImageFile.Load(path, 1).Width);
    }

    [Fact]
    public void ATruncatedPngSaysSoInOneLine()
    {
        using var dir = new TempDir();
        var png = Png(6, 5);
        string path = dir.File("cut.png");
        for (int cut = 9; cut < png.Length; cut += 7)
        {
            File.WriteAllBytes(path, png[..cut]);
            var ex = Assert.Throws<DataFormatException>(() => ImageFile.Load(path, 3));
            Assert.Contains("truncated", ex.Message);
            Assert.DoesNotContain('\0', ex.Message);
            Assert.Contains(path, ex.Message);
        }
    }

    [Fact]
    public void AnImageTooLargeIsRefusedBeforeDecoding()
    {
        using var dir = new TempDir();
        var png = Png(6, 5);
        // IHDR width 100000, height 100000, CRC repaired: a valid-looking header for 4 x 10^8 pixels.
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(16), 20_000);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(20), 20_000);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Ddpm.Tests.Fuzz.Crc.Png(png.AsSpan(12, 17)));
        string path = dir.File("huge.png");
        File.WriteAllBytes(path, png);
        var ex = Assert.Throws<DataFormatException>(() => ImageFile.Load(path, 1));
        Assert.Contains($"the image is 20000x20000; at most {ImageFile.MaxPixels} pixels are read", ex.Message);
    }
}
