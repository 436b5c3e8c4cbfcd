using Ddpm.Diffusion.Data;
using Ddpm.Tensors.IO;
using Xunit;

namespace Ddpm.Tests.Data;

public class Cifar10Tests
{
    /// <summary>Record i: label labels[i], red plane i, green plane i + 100, blue plane 255 - i, pixel 0 of red = 7.</summary>
    private static byte[] Batch(params byte[] labels)
    {
        var b = new byte[labels.Length * Cifar10Dataset.RecordSize];
        for (int i = 0; i < labels.Length; i++)
        {
            var r = b.AsSpan(i * Cifar10Dataset.RecordSize, Cifar10Dataset.RecordSize);
            r[0] = labels[i];
            r.Slice(1, 1024).Fill((byte)i);
            r.Slice(1025, 1024).Fill((byte)(i + 100));
            r.Slice(2049, 1024).Fill((byte)(255 - i));
            r[1] = 7;
        }
        return b;
    }

    [Fact]
    public void LoadsAFileAsChwPlanes()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("data_batch_1.bin"), Batch(3, 9, 0));
        var d = Cifar10Dataset.Load(dir.File("data_batch_1.bin"));
        Assert.Equal((3, 3, 32, 32), (d.Count, d.Channels, d.Height, d.Width));
        Assert.Equal([3, 9, 0], d.Labels.ToArray());
        var x = new float[3 * 32 * 32];
        d.Get(1, x);
        Assert.Equal(7 / 255f, x[0]);
        Assert.Equal(1 / 255f, x[1023]);
        Assert.Equal(101 / 255f, x[1024]);
        Assert.Equal(254 / 255f, x[3071]);
    }

    [Fact]
    public void LoadsTheTrainingBatchesOfAFolderInOrder()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("data_batch_2.bin"), Batch(5));
        File.WriteAllBytes(dir.File("data_batch_1.bin"), Batch(1, 2));
        File.WriteAllBytes(dir.File("test_batch.bin"), Batch(8));
        Assert.Equal([1, 2, 5], Cifar10Dataset.Load(dir.Path).Labels.ToArray());
        Assert.Equal([1, 2, 5, 8], Cifar10Dataset.Load(dir.Path, includeTest: true).Labels.ToArray());
    }

    [Fact]
    public void MalformedBatchesNameFileAndOffset()
    {
        using var dir = new TempDir();
        string cut = dir.File("cut.bin");
        File.WriteAllBytes(cut, Batch(1, 2)[..^10]);
        var ex = Assert.Throws<DataFormatException>(() => Cifar10Dataset.Load(cut));
        Assert.Contains(cut, ex.Message);
        Assert.Contains("record 1 is cut short", ex.Message);
        Assert.Equal(3073, ex.Offset);

        string label = dir.File("label.bin");
        File.WriteAllBytes(label, Batch(1, 2, 10));
        ex = Assert.Throws<DataFormatException>(() => Cifar10Dataset.Load(label));
        Assert.Contains("record 2 has label 10", ex.Message);
        Assert.Equal(2 * 3073, ex.Offset);

        string empty = dir.File("empty.bin");
        File.WriteAllBytes(empty, []);
        Assert.Contains("empty", Assert.Throws<DataFormatException>(() => Cifar10Dataset.Load(empty)).Message);

        var sub = Directory.CreateDirectory(dir.File("nothing")).FullName;
        ex = Assert.Throws<DataFormatException>(() => Cifar10Dataset.Load(sub));
        Assert.Contains(sub, ex.Message);
        Assert.Contains("no CIFAR-10 batch files", ex.Message);
    }
}
