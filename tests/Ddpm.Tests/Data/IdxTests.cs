using Ddpm.Diffusion.Data;
using Ddpm.Tensors.IO;
using Xunit;

namespace Ddpm.Tests.Data;

public class IdxTests
{
    private static readonly string Bundled = Path.Combine(TestFiles.RepoRoot, "data", "fashion-mnist");

    [Fact]
    public void BundledFashionMnistSubsetLoads()
    {
        var train = IdxDataset.Load(Path.Combine(Bundled, "train-images-idx3-ubyte.gz"));
        var trainLabels = IdxLabels.Load(Path.Combine(Bundled, "train-labels-idx1-ubyte.gz"));
        var test = IdxDataset.Load(Path.Combine(Bundled, "t10k-images-idx3-ubyte.gz"));
        var testLabels = IdxLabels.Load(Path.Combine(Bundled, "t10k-labels-idx1-ubyte.gz"));

        Assert.Equal((10_000, 1, 28, 28), (train.Count, train.Channels, train.Height, train.Width));
        Assert.Equal((1_000, 1, 28, 28), (test.Count, test.Channels, test.Height, test.Width));
        Assert.Equal(train.Count, trainLabels.Count);
        Assert.Equal(test.Count, testLabels.Count);
        for (int k = 0; k < 10; k++)
        {
            // The first 10,000 training images are near balanced: 942..1,027 per class.
            int perClass = trainLabels.Values.ToArray().Count(l => l == k);
            Assert.InRange(perClass, 900, 1100);
        }

        // Fashion-MNIST's pixel mean is 0.286; the images have black backgrounds and bright garments.
        var img = new float[28 * 28];
        double sum = 0;
        for (int i = 0; i < train.Count; i += 10)
        {
            train.Get(i, img);
            Assert.All(img, v => Assert.InRange(v, 0f, 1f));
            sum += img.Sum();
        }
        double mean = sum / (train.Count / 10 * 784.0);
        Assert.InRange(mean, 0.26, 0.31);
        Assert.Equal(0f, img[0]);
    }

    [Fact]
    public void RawAndGzipFilesGiveTheSameImages()
    {
        using var dir = new TempDir();
        var pixels = new byte[] { 0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6 };
        var raw = TestFiles.Idx([2, 2, 3], pixels);
        File.WriteAllBytes(dir.File("imgs"), raw);
        File.WriteAllBytes(dir.File("imgs.gz"), TestFiles.Gzip(raw));

        foreach (var name in new[] { "imgs", "imgs.gz" })
        {
            var d = IdxDataset.Load(dir.File(name));
            Assert.Equal((2, 1, 2, 3), (d.Count, d.Channels, d.Height, d.Width));
            var x = new float[6];
            d.Get(0, x);
            Assert.Equal([0f, 0.2f, 0.4f, 0.6f, 0.8f, 1f], x);
            d.Get(1, x);
            Assert.Equal(4 / 255f, x[3]);
            Assert.Throws<ArgumentOutOfRangeException>(() => d.Get(2, x));
        }
    }

    public static TheoryData<string, byte[], bool, string, long?> MalformedImages() => new()
    {
        { "empty", [], false, "inside the 4-byte IDX magic", 0 },
        { "not idx", [0x1F, 0x00, 0x08, 0x03, 0, 0, 0, 1], false, "not an IDX file", 0 },
        { "labels magic", TestFiles.Idx([4], new byte[4]), false, "has 1 dimensions, expected 3 (magic 0x00000803)", 3 },
        { "float type", TestFiles.Idx([1, 1, 1], new byte[4], typeCode: 0x0D), false, "type code 0x0D is not supported", 2 },
        { "short header", TestFiles.Idx([1, 2, 2], [])[..10], false, "inside the 16-byte IDX header", 10 },
        { "zero rows", TestFiles.Idx([1, 0, 2], []), false, "dimension 1 is 0", 8 },
        { "truncated", TestFiles.Idx([2, 2, 2], new byte[7]), false, "the file is 23 bytes but the header's 2 x 2 x 2 values need 24", 23 },
        { "trailing", TestFiles.Idx([1, 2, 2], new byte[6]), false, "2 bytes trail", 20 },
        { "gz truncated", TestFiles.Idx([2, 2, 2], new byte[7]), true, "the data ends after 7 of the 8 bytes", 23 },
        { "gz trailing", TestFiles.Idx([1, 2, 2], new byte[5]), true, "bytes trail after", 20 },
        { "gz huge claim", TestFiles.Idx([2_000_000_000, 1, 1], new byte[100]), true, "the data ends after 100 of the 2000000000 bytes", 116 },
        { "huge dims", TestFiles.Idx([100_000, 100_000, 28], new byte[100]), false, "exceed the largest array", 8 },
    };

    [Theory]
    [MemberData(nameof(MalformedImages))]
    public void MalformedIdxImagesNameFileAndOffset(string name, byte[] content, bool gzip, string problem, long? offset)
    {
        using var dir = new TempDir();
        string path = dir.File(name + (gzip ? ".gz" : ""));
        File.WriteAllBytes(path, gzip ? TestFiles.Gzip(content) : content);
        var ex = Assert.Throws<DataFormatException>(() => IdxDataset.Load(path));
        Assert.Contains(problem, ex.Message);
        Assert.Contains(path, ex.Message);
        Assert.Equal(offset, ex.Offset);
        if (offset is not null) Assert.Contains($"at byte {offset}", ex.Message);
    }

    [Fact]
    public void CorruptGzipIsReported()
    {
        using var dir = new TempDir();
        var gz = TestFiles.Gzip(TestFiles.Idx([4, 8, 8], new byte[256]));
        for (int i = 12; i < gz.Length - 8; i++) gz[i] ^= 0x5A;
        string path = dir.File("bad.gz");
        File.WriteAllBytes(path, gz);
        var ex = Assert.ThrowsAny<DataFormatException>(() => IdxDataset.Load(path));
        Assert.Contains(path, ex.Message);
    }

    [Fact]
    public void LabelsAreValidated()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("ok"), TestFiles.Idx([3], [0, 9, 4]));
        Assert.Equal([0, 9, 4], IdxLabels.Load(dir.File("ok")).Values.ToArray());

        File.WriteAllBytes(dir.File("bad"), TestFiles.Idx([3], [0, 10, 4]));
        var ex = Assert.Throws<DataFormatException>(() => IdxLabels.Load(dir.File("bad")));
        Assert.Contains("label 1 is 10", ex.Message);
        Assert.Equal(9, ex.Offset);

        File.WriteAllBytes(dir.File("images"), TestFiles.Idx([1, 1, 1], [0]));
        Assert.Contains("expected 1", Assert.Throws<DataFormatException>(() => IdxLabels.Load(dir.File("images"))).Message);

        var missing = Assert.Throws<DataFormatException>(() => IdxLabels.Load(dir.File("none")));
        Assert.Contains("cannot open", missing.Message);
    }
}
