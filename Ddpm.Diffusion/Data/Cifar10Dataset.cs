using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Data;

/// <summary>
/// CIFAR-10 in its binary form (<c>cifar-10-batches-bin</c>): each record is 3073 bytes, a label 0..9
/// followed by the 32x32 red, green and blue planes, row-major, which is already CHW.
/// </summary>
public sealed class Cifar10Dataset : ByteImageDataset
{
    public const int RecordSize = 1 + ImageBytes;

    /// <summary>The most records one file may hold: all 60,000 images of CIFAR-10.</summary>
    public const int MaxRecordsPerFile = 60_000;
    private const int Side = 32;
    private const int ImageBytes = 3 * Side * Side;

    private readonly byte[] _labels;

    private Cifar10Dataset(string source, byte[] pixels, byte[] labels)
        : base(source, pixels, labels.Length, 3, Side, Side)
    {
        _labels = labels;
    }

    public ReadOnlySpan<byte> Labels => _labels;

    /// <summary>
    /// Loads one batch file, or from a folder the training batches <c>data_batch_*.bin</c> (in name order),
    /// plus <c>test_batch.bin</c> when <paramref name="includeTest"/> is set.
    /// </summary>
    public static Cifar10Dataset Load(string path, bool includeTest = false)
    {
        string[] files;
        if (Directory.Exists(path))
        {
            var list = Directory.GetFiles(path, "data_batch_*.bin").OrderBy(f => f, StringComparer.Ordinal).ToList();
            string test = Path.Combine(path, "test_batch.bin");
            if (includeTest && File.Exists(test)) list.Add(test);
            if (list.Count == 0)
                throw new DataFormatException(path, "the folder has no CIFAR-10 batch files (data_batch_*.bin)");
            files = [.. list];
        }
        else
        {
            files = [path];
        }

        var pixels = new List<byte[]>();
        var labels = new List<byte[]>();
        foreach (var f in files)
        {
            var (p, l) = ReadBatch(f);
            pixels.Add(p);
            labels.Add(l);
        }
        long total = pixels.Sum(p => (long)p.Length);
        if (total > Array.MaxLength)
            throw new DataFormatException(path, $"the {files.Length} batch files hold {total / ImageBytes} images, more than one array of {Array.MaxLength} bytes can hold");
        return new Cifar10Dataset(path, Concat(pixels), Concat(labels));
    }

    private static (byte[] Pixels, byte[] Labels) ReadBatch(string path)
    {
        // A real batch is 10,000 records (30 MB); the reported length is not trusted (a link to a device reports
        // none), so the read itself stops at the largest file a CIFAR-10 set could be.
        byte[] bytes = BoundedFile.ReadAllBytes(path, (long)MaxRecordsPerFile * RecordSize,
            $"a CIFAR-10 file may hold ({MaxRecordsPerFile} records of {RecordSize})");
        if (bytes.Length == 0)
            throw new DataFormatException(path, "the file is empty");
        if (bytes.Length % RecordSize != 0)
        {
            long whole = bytes.Length / RecordSize;
            throw new DataFormatException(path,
                $"the file is {bytes.Length} bytes, not a whole number of {RecordSize}-byte records; record {whole} is cut short",
                whole * RecordSize);
        }

        int count = bytes.Length / RecordSize;
        var pixels = new byte[count * ImageBytes];
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            byte label = bytes[i * RecordSize];
            if (label > 9)
                throw new DataFormatException(path, $"record {i} has label {label}, outside 0..9", (long)i * RecordSize);
            labels[i] = label;
            Buffer.BlockCopy(bytes, i * RecordSize + 1, pixels, i * ImageBytes, ImageBytes);
        }
        return (pixels, labels);
    }

    private static byte[] Concat(List<byte[]> parts)
    {
        if (parts.Count == 1) return parts[0];
        var r = new byte[parts.Sum(p => (long)p.Length)];
        long at = 0;
        foreach (var p in parts)
        {
            Buffer.BlockCopy(p, 0, r, (int)at, p.Length);
            at += p.Length;
        }
        return r;
    }
}
