using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Imaging;

public class ImageGridTests
{
    [Fact]
    public void GreyGridHasTheLayoutAndValuesOfTheInput()
    {
        using var dir = new TempDir();
        // Three 2x2 images in [-1, 1]; -1 -> 0, 1 -> 255, 0 -> 128; out-of-range values clamp, NaN -> 0.
        float[] images =
        [
            -1f, 1f, 0f, 0.5f,
            5f, -3f, float.NaN, 1f,
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
