using System.Buffers.Binary;
using System.IO.Compression;

namespace Ddpm.Tests.Data;

/// <summary>Temporary folders and small hand-made data files for the data and imaging tests.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Path = Directory.CreateTempSubdirectory("ddpm-test-").FullName;

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose() => Directory.Delete(Path, recursive: true);
}

internal static class TestFiles
{
    /// <summary>The repository root (the folder holding Ddpm.sln), found upward from the test binaries.</summary>
    public static string RepoRoot
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Ddpm.sln"))) return d.FullName;
            throw new DirectoryNotFoundException($"No Ddpm.sln above {AppContext.BaseDirectory}.");
        }
    }

    /// <summary>An IDX file: header (00 00 08 rank, big-endian dims) then the bytes.</summary>
    public static byte[] Idx(int[] dims, byte[] data, byte typeCode = 0x08)
    {
        var b = new byte[4 + 4 * dims.Length + data.Length];
        b[2] = typeCode;
        b[3] = (byte)dims.Length;
        for (int i = 0; i < dims.Length; i++) BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4 + 4 * i), dims[i]);
        data.CopyTo(b, 4 + 4 * dims.Length);
        return b;
    }

    public static byte[] Gzip(byte[] raw)
    {
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) gz.Write(raw);
        return ms.ToArray();
    }
}
