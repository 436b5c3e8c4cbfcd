using System.Buffers.Binary;
using System.IO.Compression;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Data;

/// <summary>
/// The IDX format of MNIST and Fashion-MNIST (LeCun et al.): a big-endian header (two zero bytes, a type code,
/// the number of dimensions, then each dimension as a 32-bit integer) followed by the values. Files may be raw
/// or gzip-compressed, told apart by the gzip magic; offsets in errors count bytes of the decompressed content.
/// </summary>
internal static class IdxReader
{
    private const byte UnsignedByte = 0x08;

    /// <summary>Reads an unsigned-byte IDX file of <paramref name="rank"/> dimensions: (dims, values).</summary>
    public static (int[] Dims, byte[] Data) Read(string path, int rank)
    {
        using var file = InputFile.OpenRead(path);
        bool gz = IsGzip(file);
        using Stream content = gz ? new GZipStream(file, CompressionMode.Decompress) : file;
        string src = gz ? path + " (decompressed)" : path;
        try
        {
            return Read(content, src, rank, gz ? null : file.Length);
        }
        catch (InvalidDataException ex)
        {
            throw new DataFormatException(path, $"the gzip stream is corrupt ({ex.Message})", null, ex);
        }
    }

    private static (int[] Dims, byte[] Data) Read(Stream s, string src, int rank, long? rawLength)
    {
        int headerLength = 4 + 4 * rank;
        var header = new byte[headerLength];
        int got = s.ReadAtLeast(header, headerLength, throwOnEndOfStream: false);
        if (got < 4)
            throw new DataFormatException(src, $"the file ends after {got} bytes, inside the 4-byte IDX magic", got);
        if (header[0] != 0 || header[1] != 0)
            throw new DataFormatException(src, $"not an IDX file: the magic starts {header[0]:X2} {header[1]:X2}, expected 00 00", 0);
        if (header[2] != UnsignedByte)
            throw new DataFormatException(src, $"IDX type code 0x{header[2]:X2} is not supported (expected 0x08, unsigned byte)", 2);
        if (header[3] != rank)
            throw new DataFormatException(src,
                $"IDX magic 0x{BinaryPrimitives.ReadUInt32BigEndian(header):X8} has {header[3]} dimensions, expected {rank} (magic 0x{0x800 | rank:X8})", 3);
        if (got < headerLength)
            throw new DataFormatException(src, $"the file ends after {got} bytes, inside the {headerLength}-byte IDX header", got);

        var dims = new int[rank];
        long total = 1;
        for (int d = 0; d < rank; d++)
        {
            uint v = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4 + 4 * d));
            if (v == 0 || v > int.MaxValue)
                throw new DataFormatException(src, $"dimension {d} is {v}; it must be between 1 and {int.MaxValue}", 4 + 4 * d);
            dims[d] = (int)v;
            total *= v;
            if (total > Array.MaxLength)
                throw new DataFormatException(src, $"dimensions {string.Join(" x ", dims[..(d + 1)])} exceed the largest array this reader can hold", 4 + 4 * d);
        }

        long expectedEnd = headerLength + total;
        if (rawLength is { } len && len != expectedEnd)
            throw new DataFormatException(src, len < expectedEnd
                ? $"the file is {len} bytes but the header's {string.Join(" x ", dims)} values need {expectedEnd}; it is truncated"
                : $"the file is {len} bytes but the header's {string.Join(" x ", dims)} values end at byte {expectedEnd}; {len - expectedEnd} bytes trail",
                Math.Min(len, expectedEnd));

        // Grow with the data that actually arrives, so a lying header in a small .gz cannot make us allocate
        // gigabytes up front.
        var data = new byte[Math.Min(total, 1 << 20)];
        long filled = 0;
        while (filled < total)
        {
            if (filled == data.Length) Array.Resize(ref data, (int)Math.Min(total, 2L * data.Length));
            int n = s.Read(data, (int)filled, (int)(data.Length - filled));
            if (n == 0)
                throw new DataFormatException(src,
                    $"the data ends after {filled} of the {total} bytes the header's {string.Join(" x ", dims)} values need; it is truncated",
                    headerLength + filled);
            filled += n;
        }
        if (s.ReadByte() >= 0)
            throw new DataFormatException(src, $"bytes trail after the {string.Join(" x ", dims)} values the header declares", expectedEnd);
        return (dims, data);
    }

    private static bool IsGzip(FileStream f)
    {
        Span<byte> m = stackalloc byte[2];
        int n = f.ReadAtLeast(m, 2, throwOnEndOfStream: false);
        f.Position = 0;
        return n == 2 && m[0] == 0x1F && m[1] == 0x8B;
    }
}

/// <summary>Greyscale images from an IDX3 file (magic 0x00000803: unsigned bytes, N x rows x cols), raw or .gz.</summary>
public sealed class IdxDataset : ByteImageDataset
{
    private IdxDataset(string path, byte[] pixels, int count, int height, int width)
        : base(path, pixels, count, 1, height, width)
    {
    }

    public static IdxDataset Load(string path)
    {
        var (dims, data) = IdxReader.Read(path, 3);
        return new IdxDataset(path, data, dims[0], dims[1], dims[2]);
    }
}

/// <summary>Class labels from an IDX1 file (magic 0x00000801: unsigned bytes, N), raw or .gz.</summary>
public sealed class IdxLabels
{
    private readonly byte[] _labels;

    private IdxLabels(string source, byte[] labels)
    {
        Source = source;
        _labels = labels;
    }

    public string Source { get; }
    public int Count => _labels.Length;
    public byte this[int index] => _labels[index];
    public ReadOnlySpan<byte> Values => _labels;

    /// <summary>Loads the labels; each must be below <paramref name="classCount"/>.</summary>
    public static IdxLabels Load(string path, int classCount = 10)
    {
        var (_, data) = IdxReader.Read(path, 1);
        for (int i = 0; i < data.Length; i++)
            if (data[i] >= classCount)
                throw new DataFormatException(path, $"label {i} is {data[i]}, outside 0..{classCount - 1}", 8 + i);
        return new IdxLabels(path, data);
    }
}
