using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Ddpm.Tensors.IO;
using Xunit;

namespace Ddpm.Tests.IO;

public class SafeTensorsTests
{
    private static readonly string GoldenDir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "golden", "labml-unet-tiny");

    /// <summary>A safetensors file from a header text and a data section of the given size (bytes 0, 1, 2...).</summary>
    private static byte[] Make(string header, int dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)h.Length);
        h.CopyTo(b, 8);
        for (int i = 0; i < dataBytes; i++) b[8 + h.Length + i] = (byte)i;
        return b;
    }

    private static byte[] MakeRaw(byte[] header, int dataBytes)
    {
        var b = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)header.Length);
        header.CopyTo(b, 8);
        return b;
    }

    private static byte[] WithLength(ulong length, int total)
    {
        var b = new byte[total];
        BinaryPrimitives.WriteUInt64LittleEndian(b, length);
        return b;
    }

    [Fact]
    public void RoundTripKeepsValuesOrderAndMetadata()
    {
        var dir = Directory.CreateTempSubdirectory("st-");
        try
        {
            var w = new float[] { 1.5f, -2.25f, float.MaxValue, float.Epsilon, 0f, -0f };
            var t = new long[] { 0, -1, long.MaxValue, 999 };
            var entries = new[]
            {
                SafeTensorEntry.F32("z.weight", [2, 3], w),
                SafeTensorEntry.I64("a.steps", [4], t),
                SafeTensorEntry.F32("empty", [0, 5], []),
                SafeTensorEntry.F32("scalar", [], [42f]),
            };
            var meta = new Dictionary<string, string> { ["step"] = "17", ["config"] = "{\"x\":1}" };
            string path = Path.Combine(dir.FullName, "rt.safetensors");
            SafeTensorsFile.Write(path, entries, meta);

            var r = SafeTensorsFile.Read(path);
            Assert.Equal(["z.weight", "a.steps", "empty", "scalar"], r.Entries.Select(e => e.Name));
            Assert.Equal(SafeTensorsDType.F32, r["z.weight"].DType);
            Assert.Equal([2, 3], r["z.weight"].Shape);
            Assert.Equal(w, r["z.weight"].AsFloats());
            Assert.Equal(SafeTensorsDType.I64, r["a.steps"].DType);
            Assert.Equal(t, r["a.steps"].AsLongs());
            Assert.Empty(r["empty"].AsFloats());
            Assert.Equal([0, 5], r["empty"].Shape);
            Assert.Empty(r["scalar"].Shape);
            Assert.Equal([42f], r["scalar"].AsFloats());
            Assert.Equal(meta.OrderBy(kv => kv.Key), r.Metadata.OrderBy(kv => kv.Key));
            Assert.Throws<InvalidOperationException>(() => r["a.steps"].AsFloats());

            // Same content, same bytes; the data section starts 8-byte aligned; no temporary file is left over.
            var bytes = File.ReadAllBytes(path);
            string path2 = Path.Combine(dir.FullName, "rt2.safetensors");
            r.Write(path2);
            Assert.Equal(bytes, File.ReadAllBytes(path2));
            Assert.Equal(0, (8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes)) % 8);
            Assert.Equal(2, Directory.GetFiles(dir.FullName).Length);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void WriteReplacesAnExistingFileWhole()
    {
        var dir = Directory.CreateTempSubdirectory("st-");
        try
        {
            string path = Path.Combine(dir.FullName, "w.safetensors");
            SafeTensorsFile.Write(path, [SafeTensorEntry.F32("big", [1000], new float[1000])]);
            SafeTensorsFile.Write(path, [SafeTensorEntry.F32("small", [1], [3f])]);
            var r = SafeTensorsFile.Read(path);
            Assert.Equal("small", Assert.Single(r.Entries).Name);
            Assert.Single(Directory.GetFiles(dir.FullName));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void WriterRejectsDuplicateNamesAndBadShapes()
    {
        var ms = new MemoryStream();
        Assert.Throws<ArgumentException>(() => SafeTensorsFile.Write(ms,
            [SafeTensorEntry.F32("a", [1], [1f]), SafeTensorEntry.F32("a", [1], [2f])]));
        Assert.Throws<ArgumentException>(() => SafeTensorEntry.F32("b", [2, 2], [1f, 2f, 3f]));
        Assert.Throws<ArgumentException>(() => new SafeTensorsFile([SafeTensorEntry.F32("__metadata__", [1], [1f])]));
    }

    [Fact]
    public void ReadsConvertedDTypes()
    {
        // F64 [2], F16 [2], BF16 [2], I32 [2], laid out back to back.
        var data = new byte[16 + 4 + 4 + 8];
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(0), 0.1);
        BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(8), -3.5);
        BinaryPrimitives.WriteHalfLittleEndian(data.AsSpan(16), (Half)1.5f);
        BinaryPrimitives.WriteHalfLittleEndian(data.AsSpan(18), (Half)(-0.25f));
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(20), 0x3FC0); // bf16 1.5
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(22), 0xC120); // bf16 -10
        BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(24), -7);
        BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(28), int.MaxValue);
        string header = """
            {"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},
             "h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},
             "b":{"dtype":"BF16","shape":[2],"data_offsets":[20,24]},
             "i":{"dtype":"I32","shape":[2],"data_offsets":[24,32]}}
            """;
        var bytes = Make(header, 0).Concat(data).ToArray();
        var r = SafeTensorsFile.Read(bytes, "converted");
        Assert.Equal([0.1f, -3.5f], r["d"].AsFloats());
        Assert.Equal([1.5f, -0.25f], r["h"].AsFloats());
        Assert.Equal([1.5f, -10f], r["b"].AsFloats());
        Assert.Equal([-7L, int.MaxValue], r["i"].AsLongs());
        Assert.Equal(SafeTensorsDType.BF16, r["b"].DType);
    }

    [Fact]
    public void ReadsTheLabmlGoldenModel()
    {
        var model = SafeTensorsFile.Read(Path.Combine(GoldenDir, "model.safetensors"));
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(GoldenDir, "config.json")));
        var order = config.RootElement.GetProperty("state_dict_order").EnumerateArray().Select(e => e.GetString()!).ToList();

        Assert.Equal(128, model.Entries.Count);
        Assert.Equal(order, model.Entries.Select(e => e.Name));
        Assert.All(model.Entries, e => Assert.Equal(SafeTensorsDType.F32, e.DType));
        Assert.Equal(595_393, model.Entries.Sum(e => e.Count));
        Assert.Equal(config.RootElement.GetProperty("param_count").GetInt64(), model.Entries.Sum(e => e.Count));
        Assert.Equal([32, 1, 3, 3], model["image_proj.weight"].Shape);
        Assert.Equal([128, 32], model["time_emb.lin1.weight"].Shape);
        Assert.Equal("pt", model.Metadata["format"]);
        Assert.All(model.Entries.SelectMany(e => e.AsFloats()), v => Assert.True(float.IsFinite(v)));

        // The header alone gives the same names and shapes without loading the data.
        var header = SafeTensorsFile.ReadHeader(Path.Combine(GoldenDir, "model.safetensors"));
        Assert.Equal(order, header.Tensors.Select(t => t.Name));
        Assert.Equal(model.Entries.Select(e => e.ShapeText), header.Tensors.Select(t => "[" + string.Join(",", t.Shape) + "]"));
        Assert.Equal(595_393 * 4L, header.Tensors.Max(t => t.End));
        Assert.Equal("pt", header.Metadata["format"]);
    }

    [Fact]
    public void ReadsTheLabmlGoldenIo()
    {
        var io = SafeTensorsFile.Read(Path.Combine(GoldenDir, "io.safetensors"));
        var t = io["t"];
        Assert.Equal(SafeTensorsDType.I64, t.DType);
        Assert.Equal([2], t.Shape);
        Assert.All(t.AsLongs(), v => Assert.InRange(v, 0, 999));
        Assert.Equal([2, 1, 16, 16], io["x"].Shape);
        Assert.Equal([2, 1, 16, 16], io["eps"].Shape);
        Assert.Equal([32, 1, 3, 3], io["grad.image_proj.weight"].Shape);

        // L = mean(eps^2) is stored beside eps: recomputing it checks that the data offsets were honoured.
        double l = io["eps"].AsFloats().Average(v => (double)v * v);
        Assert.Equal(io["L"].AsFloats()[0], l, 1e-5 * Math.Abs(l));
        Assert.Equal(1000, io["sched.beta"].Count);
    }

    public static TheoryData<string, byte[], string, string?> Malformed()
    {
        const string ok = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
        return new TheoryData<string, byte[], string, string?>
        {
            { "empty file", [], "the file is empty", null },
            { "truncated header length", [1, 2, 3, 4, 5], "shorter than the 8-byte header length", null },
            { "header length beyond file", WithLength(500, 64), "runs past the end of the file (64 bytes)", null },
            { "hostile header length", WithLength(ulong.MaxValue - 3, 16), "exceeds the limit", null },
            { "bad JSON", Make("{\"a\": {\"dtype\": ", 8), "not valid JSON", null },
            { "JSON array", Make("[1,2,3]", 8), "must be a JSON object, found an array", null },
            { "entry not an object", Make("{\"a\":[1]}", 8), "must be a JSON object, found an array", "a" },
            { "missing dtype", Make("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "no 'dtype'", "a" },
            { "missing shape", Make("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8), "no 'shape'", "a" },
            { "missing data_offsets", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8), "no 'data_offsets'", "a" },
            { "unknown dtype", Make("{\"a\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "unknown dtype 'F31'", "a" },
            { "unsupported dtype", Make("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8), "not supported here", "a" },
            { "negative dim", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8), "dimension 0 is negative (-2)", "a" },
            { "fractional dim", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8), "is not an integer", "a" },
            { "offsets past end", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8), "run past the end of the data section (8 bytes)", "a" },
            { "offsets reversed", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8), "end before they begin", "a" },
            { "negative offset", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-8,0]}}", 8), "not a non-negative integer", "a" },
            { "one offset", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0]}}", 8), "array of two integers", "a" },
            { "size mismatch", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16), "span 8 bytes but F32 [3] needs 12", "a" },
            { "huge shape", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2000000000,2000000000],\"data_offsets\":[0,8]}}", 8), "needs more bytes than the whole data section holds (8)", "a" },
            { "overflowing shape", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647,2147483647],\"data_offsets\":[0,8]}}", 8), "overflows", "a" },
            { "overlapping entries", Make("{" + ok + ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16), "overlap those of 'a' [0,8]", "b" },
            { "duplicate name", Make("{" + ok + "," + ok + "}", 16), "appears twice", "a" },
            { "metadata not an object", Make("{\"__metadata__\":\"x\"," + ok + "}", 8), "must be a JSON object of strings", null },
            { "non-string metadata", Make("{\"__metadata__\":{\"step\":3}," + ok + "}", 8), "metadata value 'step' must be a string, found a number", null },
            { "trailing bytes", Make("{" + ok + "}", 12), "the tensors end at byte 8 of the data section but it holds 12 bytes; 4 bytes trail", null },
            { "leading gap", Make("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8), "leave the first 4 bytes of the data section unused", "a" },
            { "gap between tensors", Make("{" + ok + ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16), "leave bytes 8..11 after 'a' unused", "b" },
            { "empty name", Make("{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "a tensor has an empty name", null },
            { "invalid UTF-8", MakeRaw([.. "{\"a"u8, 0xFF, .. "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"u8], 8), "not valid UTF-8 (first bad byte at offset 11)", null },
        };
    }

    [Theory]
    [MemberData(nameof(Malformed))]
    public void MalformedFilesAreRejectedWithAClearMessage(string source, byte[] bytes, string problem, string? tensor)
    {
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(bytes, source));
        Assert.Contains(problem, ex.Message);
        Assert.Contains($"'{source}'", ex.Message);
        Assert.Equal(tensor, ex.TensorName);
        if (tensor is not null) Assert.Contains($"tensor '{tensor}'", ex.Message);
        Assert.IsAssignableFrom<IOException>(ex);
    }

    [Fact]
    public void HeaderLengthOffByOneIsRefusedNotReadShifted()
    {
        // The writer pads the header with spaces, so one byte less is still valid JSON: only the rule that the
        // tensors tile the data section exactly catches that every value would be read one byte early.
        var ms = new MemoryStream();
        SafeTensorsFile.Write(ms, [SafeTensorEntry.F32("w", [5], [1, 2, 3, 4, 5])]);
        var bytes = ms.ToArray();
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal((byte)' ', bytes[8 + (int)n - 1]);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, n - 1);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(bytes, "off.safetensors"));
        Assert.Contains("1 bytes trail (is the header length wrong?)", ex.Message);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, n);
        Assert.Equal([1f, 2, 3, 4, 5], SafeTensorsFile.Read(bytes, "ok.safetensors")["w"].AsFloats());
    }

    [Fact]
    public void NamesFromTheFileCannotBreakTheMessageLine()
    {
        var bytes = Make("{\"a\\nb\\u0000c\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(bytes, "names.safetensors"));
        Assert.Equal("a\nb\0c", ex.TensorName);
        Assert.Contains("tensor 'a\\u000Ab\\u0000c': unknown dtype 'F99'", ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
        Assert.DoesNotContain('\0', ex.Message);
    }

    [Fact]
    public void FirstNonFiniteFindsTheFirstNaNOrInfinity()
    {
        // Every position of a length that covers whole vectors and a scalar tail.
        for (int len = 1; len <= 40; len++)
        {
            for (int at = 0; at < len; at++)
            {
                foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                {
                    var v = Enumerable.Range(0, len).Select(i => (float)i - 3.5f).ToArray();
                    v[at] = bad;
                    if (at + 2 < len) v[at + 2] = float.NaN;
                    Assert.Equal(at, SafeTensorEntry.F32("t", [len], v).FirstNonFinite());
                }
            }
            Assert.Equal(-1, SafeTensorEntry.F32("t", [len], Enumerable.Range(0, len).Select(i => float.MaxValue - i).ToArray()).FirstNonFinite());
        }
        Assert.Equal(-1, SafeTensorEntry.I64("i", [2], [long.MaxValue, long.MinValue]).FirstNonFinite());
    }

    [Fact]
    public void TruncatedFileOnDiskNamesThePath()
    {
        var dir = Directory.CreateTempSubdirectory("st-");
        try
        {
            string path = Path.Combine(dir.FullName, "cut.safetensors");
            SafeTensorsFile.Write(path, [SafeTensorEntry.F32("w", [100], new float[100])]);
            var bytes = File.ReadAllBytes(path);
            File.WriteAllBytes(path, bytes[..^4]);
            var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(path));
            Assert.Contains(path, ex.Message);
            Assert.Contains("run past the end of the data section", ex.Message);
            Assert.Contains(path, Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.ReadHeader(path)).Message);

            var missing = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Read(Path.Combine(dir.FullName, "none.safetensors")));
            Assert.Contains("cannot open", missing.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
