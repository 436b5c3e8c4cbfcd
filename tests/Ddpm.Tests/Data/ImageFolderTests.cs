using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors.IO;
using StbImageWriteSharp;
using Xunit;

namespace Ddpm.Tests.Data;

public class ImageFolderTests
{
    /// <summary>Writes an HWC byte image as PNG, BMP or JPEG (by extension).</summary>
    internal static void Save(string path, byte[] hwc, int w, int h, int c)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var comp = c == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue;
        using var fs = File.Create(path);
        var writer = new ImageWriter();
        switch (Path.GetExtension(path))
        {
            case ".png": writer.WritePng(hwc, w, h, comp, fs); break;
            case ".bmp": writer.WriteBmp(hwc, w, h, comp, fs); break;
            default: writer.WriteJpg(hwc, w, h, comp, fs, 100); break;
        }
    }

    private static byte[] Fill(int w, int h, int c, Func<int, int, int, byte> f)
    {
        var b = new byte[w * h * c];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int k = 0; k < c; k++) b[(y * w + x) * c + k] = f(x, y, k);
        return b;
    }

    [Fact]
    public void ATopDownBmpIsReadUpright()
    {
        using var dir = new TempDir();
        // A 24-bit BMP as written (rows bottom-up), and the same image stored top-down: height negated, rows reversed.
        var hwc = Fill(5, 3, 3, (x, y, k) => (byte)(40 * y + 10 * x + k));
        Save(dir.File("up.bmp"), hwc, 5, 3, 3);
        var bmp = File.ReadAllBytes(dir.File("up.bmp"));
        var down = (byte[])bmp.Clone();
        int offset = BitConverter.ToInt32(bmp, 10), stride = (5 * 3 + 3) & ~3;
        for (int y = 0; y < 3; y++) bmp.AsSpan(offset + y * stride, stride).CopyTo(down.AsSpan(offset + (2 - y) * stride));
        BitConverter.TryWriteBytes(down.AsSpan(22), -3);
        File.WriteAllBytes(dir.File("down.bmp"), down);
        var a = ImageFile.Load(dir.File("up.bmp"), 3);
        var b = ImageFile.Load(dir.File("down.bmp"), 3);
        Assert.Equal((5, 3), (b.Width, b.Height));
        Assert.Equal(hwc, a.Pixels);
        Assert.Equal(hwc, b.Pixels);
    }

    [Fact]
    public async Task LinksBackUpTheTreeAreNotWalkedAgain()
    {
        using var dir = new TempDir();
        // Two class folders, each with a link to the root: a walk that follows them lists the images again at every
        // level, twice as many each time, and does not end in any useful time.
        Save(dir.File(Path.Combine("a", "x.png")), Fill(4, 4, 1, (x, y, k) => 10), 4, 4, 1);
        Save(dir.File(Path.Combine("b", "y.png")), Fill(4, 4, 1, (x, y, k) => 200), 4, 4, 1);
        Directory.CreateSymbolicLink(dir.File(Path.Combine("a", "up")), dir.Path);
        Directory.CreateSymbolicLink(dir.File(Path.Combine("b", "up")), dir.Path);
        // A link to a folder elsewhere is followed: a class may live on another disk.
        using var elsewhere = new TempDir();
        Save(elsewhere.File("z.png"), Fill(4, 4, 1, (x, y, k) => 90), 4, 4, 1);
        Directory.CreateSymbolicLink(dir.File("c"), elsewhere.Path);
        // A walk that does not end fails here with a TimeoutException.
        var d = await Task.Run(() => ImageFolderDataset.Load(dir.Path, 4, 4, 1)).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal([Path.Combine("a", "x.png"), Path.Combine("b", "y.png"), Path.Combine("c", "z.png")],
            d.Files.Select(f => Path.GetRelativePath(dir.Path, f)));
        Assert.Equal(["a", "b", "c"], d.ByFolder()!.ClassNames!);
    }

    [Fact]
    public void WideImageIsCenterCroppedToASquare()
    {
        using var dir = new TempDir();
        // 8 wide, 4 high: columns 0-3 red, 4-7 blue, and column 1 and 6 (cut by the crop) green.
        Save(dir.File("wide.png"), Fill(8, 4, 3, (x, y, k) =>
            x is 1 or 6 ? (byte)(k == 1 ? 255 : 0) : (byte)(k == (x < 4 ? 0 : 2) ? 255 : 0)), 8, 4, 3);
        var d = ImageFolderDataset.Load(dir.Path, 4, 4, 3, ResizeFilter.Area);
        Assert.Equal((1, 3, 4, 4), (d.Count, d.Channels, d.Height, d.Width));
        var x = new float[3 * 16];
        d.Get(0, x);
        for (int row = 0; row < 4; row++)
        {
            Assert.Equal([1f, 1f, 0f, 0f], x.AsSpan(row * 4, 4).ToArray());           // red
            Assert.Equal([0f, 0f, 0f, 0f], x.AsSpan(16 + row * 4, 4).ToArray());      // green
            Assert.Equal([0f, 0f, 1f, 1f], x.AsSpan(32 + row * 4, 4).ToArray());      // blue
        }
    }

    [Fact]
    public void AreaAveragesWhereBilinearSamples()
    {
        using var dir = new TempDir();
        // Every fourth column is white: area-averaging a 4x shrink gives 1/4, bilinear sees columns 1 and 2 only.
        Save(dir.File("stripes.png"), Fill(16, 16, 1, (x, y, k) => (byte)(x % 4 == 3 ? 255 : 0)), 16, 16, 1);
        var area = ImageFolderDataset.Load(dir.Path, 4, 4, 1, ResizeFilter.Area);
        var bilinear = ImageFolderDataset.Load(dir.Path, 4, 4, 1, ResizeFilter.Bilinear);
        var auto = ImageFolderDataset.Load(dir.Path, 4, 4, 1);
        Assert.All(area.GetBytes(0).ToArray(), v => Assert.Equal(64, v));
        Assert.All(bilinear.GetBytes(0).ToArray(), v => Assert.Equal(0, v));
        Assert.Equal(area.GetBytes(0).ToArray(), auto.GetBytes(0).ToArray());
    }

    [Fact]
    public void EnlargingInterpolatesBilinearly()
    {
        using var dir = new TempDir();
        // Two pixels, 0 and 255, enlarged to 4: centres at -0.25, 0.25, 0.75, 1.25 -> 0, 0.25, 0.75, 1 (clamped).
        Save(dir.File("two.png"), [0, 255, 0, 255], 2, 2, 1);
        var d = ImageFolderDataset.Load(dir.Path, 4, 4, 1);
        Assert.Equal(new byte[] { 0, 64, 191, 255 }, d.GetBytes(0)[..4].ToArray());
    }

    [Fact]
    public void FilesAreOrderedAndFormatsDecode()
    {
        using var dir = new TempDir();
        Save(dir.File("b.png"), Fill(4, 4, 1, (_, _, _) => 10), 4, 4, 1);
        Save(dir.File(Path.Combine("a", "x.bmp")), Fill(4, 4, 3, (_, _, _) => 200), 4, 4, 3);
        Save(dir.File("c.jpg"), Fill(4, 4, 3, (_, _, _) => 120), 4, 4, 3);
        File.WriteAllText(dir.File("notes.txt"), "not an image");

        var d = ImageFolderDataset.Load(dir.Path, 4, 4, 1);
        Assert.Equal(3, d.Count);
        Assert.Equal(["x.bmp", "b.png", "c.jpg"], d.Files.Select(Path.GetFileName));
        Assert.All(d.GetBytes(0).ToArray(), v => Assert.Equal(200, v));
        Assert.All(d.GetBytes(1).ToArray(), v => Assert.Equal(10, v));
        Assert.All(d.GetBytes(2).ToArray(), v => Assert.InRange(v, 116, 124));

        var rgb = ImageFolderDataset.Load(dir.Path, 2, 2, 3);
        Assert.Equal(3, rgb.Channels);
        Assert.All(rgb.GetBytes(1).ToArray(), v => Assert.Equal(10, v));

        var top = ImageFolderDataset.Load(dir.Path, 4, 4, 1, recursive: false);
        Assert.Equal(2, top.Count);
    }

    [Fact]
    public void GreyConversionUsesLuma()
    {
        using var dir = new TempDir();
        Save(dir.File("red.png"), Fill(2, 2, 3, (_, _, k) => (byte)(k == 0 ? 255 : 0)), 2, 2, 3);
        var d = ImageFolderDataset.Load(dir.Path, 2, 2, 1);
        // stb_image's luma: (77 r + 150 g + 29 b) >> 8.
        Assert.All(d.GetBytes(0).ToArray(), v => Assert.Equal(76, v));
    }

    [Fact]
    public void ProblemsNameTheFolderOrFile()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("readme.txt"), "x");
        var ex = Assert.Throws<DataFormatException>(() => ImageFolderDataset.Load(dir.Path, 8, 8, 1));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("no images", ex.Message);

        // Several bad files: the first in index order is reported, whichever thread decoded it first.
        File.WriteAllBytes(dir.File("broken.png"), [0x89, (byte)'P', (byte)'N', (byte)'G', 1, 2, 3]);
        File.WriteAllBytes(dir.File("zero.png"), []);
        Save(dir.File("a.png"), new byte[4], 2, 2, 1);
        ex = Assert.Throws<DataFormatException>(() => ImageFolderDataset.Load(dir.Path, 8, 8, 1));
        Assert.Equal(dir.File("broken.png"), ex.SourceName);
        Assert.Contains("cannot decode", ex.Message);

        string missing = dir.File("missing");
        ex = Assert.Throws<DataFormatException>(() => ImageFolderDataset.Load(missing, 8, 8, 1));
        Assert.Contains(missing, ex.Message);
    }
}
