using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Imaging;

public class ImageGridTests
{
    [Fact]
    public void GreyGridHasTheLayoutAndValuesOfTheInput()
    {
        using var dir = new TempDir();
        // Three 2x2 images in [-1, 1]; -1 -> 0, 1 -> 255, 0 -> 128; out-of-range values clamp.
        float[] images =
        [
            -1f, 1f, 0f, 0.5f,
            5f, -3f, -2f, 1f,
            0f, 0f, 0f, 0f,
        ];
        string path = dir.File("grid.png");
        var (gw, gh) = ImageGrid.SavePng(path, images, 3, 1, 2, 2, nrow: 2, DataRange.MinusOneToOne, padding: 1, padValue: 1f);
        Assert.Equal((7, 7), (gw, gh));

        var png = ImageFile.Load(path, 1);
        Assert.Equal((7, 7), (png.Width, png.Height));
        // Image 0 at (1,1), image 1 at (4,1), image 2 at (1,4); padding white.
        Assert.Equal([0, 255, 128, 191], new[] { png[1, 1, 0], png[2, 1, 0], png[1, 2, 0], png[2, 2, 0] });
        Assert.Equal([255, 0, 0, 255], new[] { png[4, 1, 0], png[5, 1, 0], png[4, 2, 0], png[5, 2, 0] });
        Assert.Equal(128, png[1, 4, 0]);
        Assert.Equal(255, png[0, 0, 0]);
        Assert.Equal(255, png[3, 2, 0]);
        Assert.Equal(255, png[5, 5, 0]); // the empty fourth cell
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
    }

    [Fact]
    public void RgbGridKeepsChannelsApart()
    {
        using var dir = new TempDir();
        // One 1x2 RGB image in [0, 1]: pixel 0 pure red, pixel 1 (0.2, 0.4, 0.6).
        float[] image = [1f, 0.2f, 0f, 0.4f, 0f, 0.6f];
        string path = dir.File("rgb.png");
        ImageGrid.SavePng(path, image, 1, 3, 1, 2, nrow: 8, DataRange.ZeroToOne, padding: 0);
        var png = ImageFile.Load(path, 3);
        Assert.Equal((2, 1), (png.Width, png.Height));
        Assert.Equal([255, 0, 0], new[] { png[0, 0, 0], png[0, 0, 1], png[0, 0, 2] });
        Assert.Equal([51, 102, 153], new[] { png[1, 0, 0], png[1, 0, 1], png[1, 0, 2] });
    }

    [Fact]
    public void ScaledGridRepeatsEveryPixelOfTheRawGrid()
    {
        using var dir = new TempDir();
        var rng = new Random(3);
        // Five 3x2 RGB images with distinct values, 3 per row, padding 2: a 14x12 raw grid.
        var images = Enumerable.Range(0, 5 * 3 * 3 * 2).Select(_ => (float)rng.NextDouble() * 2 - 1).ToArray();
        var raw = ImageGrid.SavePng(dir.File("raw.png"), images, 5, 3, 3, 2, nrow: 3);
        var big = ImageGrid.SavePng(dir.File("big.png"), images, 5, 3, 3, 2, nrow: 3, scale: 3);
        Assert.Equal((14, 12), raw);
        Assert.Equal((42, 36), big);
        var a = ImageFile.Load(dir.File("raw.png"), 3);
        var b = ImageFile.Load(dir.File("big.png"), 3);
        for (int y = 0; y < 36; y++)
            for (int x = 0; x < 42; x++)
                for (int ch = 0; ch < 3; ch++)
                    Assert.Equal(a[x / 3, y / 3, ch], b[x, y, ch]);
    }

    [Theory]
    [InlineData(16, 32, 4, 138, 4)]   // the 4x4 grid of 32-pixel samples: 138 -> 552 pixels
    [InlineData(64, 32, 8, 274, 2)]   // 8x8: 274 -> 548
    [InlineData(4, 256, 2, 518, 1)]   // already readable: the model's pixels
    [InlineData(1, 1, 1, 5, 103)]     // 5 -> 515, not 510
    public void AutoScaleIsTheSmallestThatReachesTheReadableWidth(int n, int size, int nrow, int rawWidth, int scale)
    {
        using var dir = new TempDir();
        var images = new float[n * size * size];
        var (w, h) = ImageGrid.SavePng(dir.File("g.png"), images, n, 1, size, size, nrow: nrow, scale: ImageGrid.AutoScale);
        Assert.Equal(rawWidth * scale, w);
        Assert.True(w >= ImageGrid.ReadableWidth && rawWidth * (scale - 1) < ImageGrid.ReadableWidth);
        var png = ImageFile.Load(dir.File("g.png"), 1);
        Assert.Equal((w, h), (png.Width, png.Height));
    }

    [Fact]
    public void SaveEachWritesOneFilePerImage()
    {
        using var dir = new TempDir();
        float[] images = [-1f, -1f, 1f, 1f];
        var paths = ImageGrid.SaveEach(Path.Combine(dir.Path, "out"), images, 2, 1, 1, 2, DataRange.MinusOneToOne, "x_", 10);
        Assert.Equal(["x_00010.png", "x_00011.png"], paths.Select(Path.GetFileName));
        Assert.Equal(new byte[] { 0, 0 }, ImageFile.Load(paths[0], 1).Pixels);
        Assert.Equal(new byte[] { 255, 255 }, ImageFile.Load(paths[1], 1).Pixels);
    }

    [Fact]
    public void ImagesThatAreNotFiniteAreRefusedBeforeAnythingIsWritten()
    {
        using var dir = new TempDir();
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
        {
            // Three 1x2 images; the third holds the bad value, so writing one file per image would leave two behind.
            float[] images = [-1f, 1f, 0f, 0.5f, 0.25f, bad];
            var grid = Assert.Throws<NonFiniteOutputException>(() => ImageGrid.SavePng(dir.File("g.png"), images, 3, 1, 1, 2));
            Assert.Equal($"{dir.File("g.png")} was not written: image 2 holds {bad} (value 1 of 2); images must be finite.", grid.Message);
            var each = Assert.Throws<NonFiniteOutputException>(() => ImageGrid.SaveEach(dir.File("each"), images, 3, 1, 1, 2));
            Assert.Contains("image 2 holds", each.Message);
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void BadGeometryIsRejected()
    {
        using var dir = new TempDir();
        Assert.Throws<ArgumentException>(() => ImageGrid.SavePng(dir.File("a.png"), new float[8], 2, 2, 1, 2));
        Assert.Throws<ArgumentException>(() => ImageGrid.SavePng(dir.File("a.png"), new float[7], 2, 1, 2, 2));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Theory]
    [InlineData(0f, 0)]
    [InlineData(1f, 255)]
    [InlineData(0.5f, 128)]
    [InlineData(-0.1f, 0)]
    [InlineData(1.7f, 255)]
    [InlineData(float.NaN, 0)]
    public void ToByteRoundsAndClamps(float v, byte expected) => Assert.Equal(expected, ImageGrid.ToByte(v));
}
