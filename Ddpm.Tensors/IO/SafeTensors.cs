using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Ddpm.Tensors.IO;

/// <summary>The element types of the safetensors format that this reader understands.</summary>
public enum SafeTensorsDType
{
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
}

/// <summary>
/// A malformed or unreadable safetensors file. The message names the file (or stream) and the problem, and
/// the tensor where one is concerned.
/// </summary>
public sealed class SafeTensorsFormatException : DataFormatException
{
    public SafeTensorsFormatException(string sourceName, string? tensorName, string problem, Exception? inner = null)
        : base(sourceName, problem, null, Compose(sourceName, tensorName, problem), inner)
    {
        TensorName = tensorName;
    }

    /// <summary>The tensor the problem concerns, or null for file-level problems.</summary>
    public string? TensorName { get; }

    private static string Compose(string source, string? tensor, string problem) =>
        tensor is null ? $"safetensors '{source}': {problem}" : $"safetensors '{source}', tensor '{Quote(tensor)}': {problem}";
}

/// <summary>
/// One named tensor held on the host. Floating dtypes (F32, F64, F16, BF16) are held as <see cref="float"/>,
/// integer dtypes (I64, I32) as <see cref="long"/>; <see cref="DType"/> is the dtype the file stored.
/// </summary>
public sealed class SafeTensorEntry
{
    private SafeTensorEntry(string name, SafeTensorsDType dtype, int[] shape, float[]? floats, long[]? longs)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
        DType = dtype;
        Shape = shape;
        Floats = floats;
        Longs = longs;
        long count = ElementCount(shape);
        long have = floats?.LongLength ?? longs!.LongLength;
        if (count != have)
            throw new ArgumentException($"Tensor '{name}': {have} values do not fill shape [{string.Join(",", shape)}] ({count} elements).");
    }

    public string Name { get; }

    /// <summary>The dtype in the file; entries made in memory are F32, F16 or I64, which is also what they are written as.</summary>
    public SafeTensorsDType DType { get; }

    public int[] Shape { get; }

    /// <summary>The values of a floating-point entry, otherwise null.</summary>
    public float[]? Floats { get; }

    /// <summary>The values of an integer entry, otherwise null.</summary>
    public long[]? Longs { get; }

    public bool IsFloat => Floats is not null;

    public long Count => Floats?.LongLength ?? Longs!.LongLength;

    public static SafeTensorEntry F32(string name, int[] shape, float[] data) =>
        new(name, SafeTensorsDType.F32, (int[])shape.Clone(), data, null);

    /// <summary>A float entry written as F16 (IEEE half): the values are rounded to half precision here, as the file will hold them.</summary>
    public static SafeTensorEntry F16(string name, int[] shape, float[] data) =>
        new(name, SafeTensorsDType.F16, (int[])shape.Clone(), data.Select(v => (float)(Half)v).ToArray(), null);

    public static SafeTensorEntry I64(string name, int[] shape, long[] data) =>
        new(name, SafeTensorsDType.I64, (int[])shape.Clone(), null, data);

    internal static SafeTensorEntry FromFile(string name, SafeTensorsDType dtype, int[] shape, float[]? floats, long[]? longs) =>
        new(name, dtype, shape, floats, longs);

    /// <summary>
    /// The index of the first NaN or infinite value, or -1 when every value is finite (integer entries always
    /// are).
    /// </summary>
    public long FirstNonFinite() => Floats is { } f ? Finite.FirstNonFinite(f) : -1;

    /// <summary>The first of <paramref name="entries"/> that holds a NaN or infinite value, with that value's index; null when none does.</summary>
    public static (SafeTensorEntry Entry, long Index)? FirstNonFinite(IEnumerable<SafeTensorEntry> entries)
    {
        foreach (var e in entries)
        {
            long bad = e.FirstNonFinite();
            if (bad >= 0) return (e, bad);
        }
        return null;
    }

    /// <summary>The float values; throws if the entry holds integers.</summary>
    public float[] AsFloats() =>
        Floats ?? throw new InvalidOperationException($"Tensor '{Name}' holds {DType} integers, not floats.");

    /// <summary>The integer values; throws if the entry holds floats.</summary>
    public long[] AsLongs() =>
        Longs ?? throw new InvalidOperationException($"Tensor '{Name}' holds {DType} floats, not integers.");

    public string ShapeText => "[" + string.Join(",", Shape) + "]";

    public override string ToString() => $"{Name} {DType} {ShapeText}";

    internal static long ElementCount(int[] shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"Negative dimension in shape [{string.Join(",", shape)}].");
            n = checked(n * d);
        }
        return n;
    }
}

/// <summary>What a validated header says about one tensor; offsets are relative to the data section.</summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, int[] Shape, long Count, long Begin, long End);

/// <summary>A validated safetensors header: the tensors in header order and the metadata.</summary>
public sealed record SafeTensorsHeader(long HeaderLength, IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata);

/// <summary>
/// A safetensors file held on the host, independent of any backend: an ordered list of tensors plus the
/// string map of <c>__metadata__</c>. Reading validates the whole header before it allocates tensor memory,
/// so a hostile header can neither make it read outside the file nor allocate more than the file holds; as in
/// the format's reference implementation, the tensors must tile the data section exactly, from its first byte
/// to the end of the file, so a header length that is off by a few bytes cannot shift every value.
/// Writing keeps the entries in the given order and the metadata sorted by key, so the same content always
/// gives the same bytes, and goes through a temporary file that is renamed over the target.
/// </summary>
public sealed class SafeTensorsFile
{
    /// <summary>Headers above this are refused before anything is allocated (the Rust reference uses 100 MB too).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const string MetadataKey = "__metadata__";

    private readonly List<SafeTensorEntry> _entries;
    private readonly Dictionary<string, SafeTensorEntry> _byName;

    public SafeTensorsFile(IEnumerable<SafeTensorEntry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        _entries = entries.ToList();
        _byName = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
        foreach (var e in _entries)
        {
            if (e.Name == MetadataKey)
                throw new ArgumentException($"'{MetadataKey}' is reserved and cannot name a tensor.");
            if (!_byName.TryAdd(e.Name, e))
                throw new ArgumentException($"Tensor name '{e.Name}' appears twice.");
        }
        Metadata = metadata is null
            ? new Dictionary<string, string>(StringComparer.Ordinal)
            : new Dictionary<string, string>(metadata, StringComparer.Ordinal);
    }

    /// <summary>The tensors in header order (file order when read; the given order when written).</summary>
    public IReadOnlyList<SafeTensorEntry> Entries => _entries;

    public IReadOnlyDictionary<string, string> Metadata { get; }

    public SafeTensorEntry this[string name] =>
        _byName.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"No tensor named '{name}' in the safetensors file.");

    public bool Contains(string name) => _byName.ContainsKey(name);

    public bool TryGet(string name, out SafeTensorEntry entry) => _byName.TryGetValue(name, out entry!);

    // ---- reading --------------------------------------------------------------------------------------

    public static SafeTensorsFile Read(string path) => Read(path, null);

    /// <summary>
    /// Reads a file, calling <paramref name="checkHeader"/> on the validated header before any tensor data is
    /// read or allocated, so a caller can refuse a file by its metadata without paying for its contents.
    /// </summary>
    public static SafeTensorsFile Read(string path, Action<SafeTensorsHeader>? checkHeader)
    {
        using var fs = OpenFile(path, 1 << 16);
        return Read(fs, path, checkHeader);
    }

    public static SafeTensorsFile Read(byte[] bytes, string sourceName)
    {
        using var ms = new MemoryStream(bytes, writable: false);
        return Read(ms, sourceName);
    }

    /// <summary>Reads from a stream; a stream that cannot seek is first copied to memory.</summary>
    public static SafeTensorsFile Read(Stream stream, string sourceName) => Read(stream, sourceName, null);

    /// <summary>Reads from a stream, calling <paramref name="checkHeader"/> before any tensor data is read.</summary>
    public static SafeTensorsFile Read(Stream stream, string sourceName, Action<SafeTensorsHeader>? checkHeader)
    {
        if (!stream.CanSeek)
        {
            var copy = new MemoryStream();
            stream.CopyTo(copy);
            copy.Position = 0;
            stream = copy;
        }
        long start = stream.Position;
        long size = stream.Length - start;
        var header = ParseHeader(stream, size, sourceName);
        checkHeader?.Invoke(header);
        long dataStart = start + 8 + header.HeaderLength;

        var entries = new List<SafeTensorEntry>(header.Tensors.Count);
        foreach (var info in header.Tensors)
        {
            stream.Position = dataStart + info.Begin;
            entries.Add(ReadData(stream, info, sourceName));
        }
        return new SafeTensorsFile(entries, header.Metadata);
    }

    /// <summary>
    /// Reads and validates only the header: names, dtypes, shapes and metadata, without loading tensor data
    /// (to check a checkpoint's config or shapes before committing memory to it).
    /// </summary>
    public static SafeTensorsHeader ReadHeader(string path)
    {
        using var fs = OpenFile(path, 4096);
        return ParseHeader(fs, fs.Length, path);
    }

    private static FileStream OpenFile(string path, int bufferSize) =>
        InputFile.OpenRead(path, bufferSize, (problem, inner) => new SafeTensorsFormatException(path, null, problem, inner));

    private static SafeTensorsHeader ParseHeader(Stream stream, long size, string src)
    {
        if (size == 0)
            throw new SafeTensorsFormatException(src, null, "the file is empty");
        if (size < 8)
            throw new SafeTensorsFormatException(src, null, $"the file is {size} bytes, shorter than the 8-byte header length");

        Span<byte> lenBytes = stackalloc byte[8];
        stream.ReadExactly(lenBytes);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (n > (ulong)MaxHeaderBytes)
            throw new SafeTensorsFormatException(src, null, $"the header length {n} exceeds the limit of {MaxHeaderBytes} bytes");
        if ((long)n > size - 8)
            throw new SafeTensorsFormatException(src, null, $"the header length {n} runs past the end of the file ({size} bytes)");
        if (n < 2)
            throw new SafeTensorsFormatException(src, null, $"the header length {n} is too short for a JSON object");

        long headerLength = (long)n;
        var json = new byte[headerLength];
        stream.ReadExactly(json);
        long dataSize = size - 8 - headerLength;
        // The JSON reader checks structure but leaves string contents undecoded until a name or value is asked
        // for, where bad UTF-8 would surface as an InvalidOperationException; the format requires UTF-8.
        if (!System.Text.Unicode.Utf8.IsValid(json))
            throw new SafeTensorsFormatException(src, null, $"the header is not valid UTF-8 (first bad byte at offset {8 + FirstInvalidUtf8(json)})");

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            throw new SafeTensorsFormatException(src, null, $"the header is not valid JSON ({ex.Message})", ex);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new SafeTensorsFormatException(src, null, $"the header must be a JSON object, found {Kind(root)}");

            var infos = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in root.EnumerateObject())
            {
                if (!seen.Add(prop.Name))
                    throw new SafeTensorsFormatException(src, prop.Name, "the name appears twice in the header");
                if (prop.Name.Length == 0)
                    throw new SafeTensorsFormatException(src, null, "a tensor has an empty name");
                if (prop.Name == MetadataKey)
                    ReadMetadata(prop.Value, metadata, src);
                else
                    infos.Add(ParseInfo(prop.Name, prop.Value, dataSize, src));
            }
            CheckCoverage(infos, dataSize, src);
            return new SafeTensorsHeader(headerLength, infos, metadata);
        }
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        Span<char> sink = stackalloc char[256];
        int at = 0;
        while (at < bytes.Length)
        {
            var status = System.Text.Unicode.Utf8.ToUtf16(bytes[at..], sink, out int read, out _, replaceInvalidSequences: false);
            if (status == System.Buffers.OperationStatus.InvalidData || status == System.Buffers.OperationStatus.NeedMoreData) return at + read;
            at += read;
        }
        return bytes.Length;
    }

    private static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata, string src)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException(src, null, $"'{MetadataKey}' must be a JSON object of strings, found {Kind(value)}");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new SafeTensorsFormatException(src, null, $"metadata value '{Quote(m.Name)}' must be a string, found {Kind(m.Value)}");
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw new SafeTensorsFormatException(src, null, $"metadata key '{Quote(m.Name)}' appears twice");
        }
    }

    private static SafeTensorInfo ParseInfo(string name, JsonElement value, long dataSize, string src)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException(src, name, $"the entry must be a JSON object, found {Kind(value)}");

        if (!value.TryGetProperty("dtype", out var dtypeEl))
            throw new SafeTensorsFormatException(src, name, "the entry has no 'dtype'");
        if (dtypeEl.ValueKind != JsonValueKind.String)
            throw new SafeTensorsFormatException(src, name, $"'dtype' must be a string, found {Kind(dtypeEl)}");
        var dtype = ParseDType(dtypeEl.GetString()!, name, src);

        if (!value.TryGetProperty("shape", out var shapeEl))
            throw new SafeTensorsFormatException(src, name, "the entry has no 'shape'");
        if (shapeEl.ValueKind != JsonValueKind.Array)
            throw new SafeTensorsFormatException(src, name, $"'shape' must be an array, found {Kind(shapeEl)}");
        var shape = new int[shapeEl.GetArrayLength()];
        long count = 1;
        int i = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim))
                throw new SafeTensorsFormatException(src, name, $"shape dimension {i} is not an integer ({Quote(d.GetRawText())})");
            if (dim < 0)
                throw new SafeTensorsFormatException(src, name, $"shape dimension {i} is negative ({dim})");
            if (dim > int.MaxValue)
                throw new SafeTensorsFormatException(src, name, $"shape dimension {i} ({dim}) is too large");
            shape[i++] = (int)dim;
            // The element count is bounded by the data section below, so an overflow here is a lie anyway.
            if (dim != 0 && count > long.MaxValue / dim)
                throw new SafeTensorsFormatException(src, name, $"the element count of shape {ShapeText(shape)} overflows");
            count *= dim;
        }

        if (!value.TryGetProperty("data_offsets", out var offEl))
            throw new SafeTensorsFormatException(src, name, "the entry has no 'data_offsets'");
        if (offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw new SafeTensorsFormatException(src, name, $"'data_offsets' must be an array of two integers, found {Quote(offEl.GetRawText())}");
        var begin = OffsetValue(offEl[0], name, src);
        var end = OffsetValue(offEl[1], name, src);
        if (end < begin)
            throw new SafeTensorsFormatException(src, name, $"data_offsets [{begin},{end}] end before they begin");
        if (end > dataSize)
            throw new SafeTensorsFormatException(src, name, $"data_offsets [{begin},{end}] run past the end of the data section ({dataSize} bytes)");

        long elemSize = ElementSize(dtype);
        if (count > dataSize / elemSize)
            throw new SafeTensorsFormatException(src, name,
                $"{dtype} {ShapeText(shape)} needs more bytes than the whole data section holds ({dataSize})");
        if (end - begin != count * elemSize)
            throw new SafeTensorsFormatException(src, name,
                $"data_offsets [{begin},{end}] span {end - begin} bytes but {dtype} {ShapeText(shape)} needs {count * elemSize}");
        if (count > Array.MaxLength)
            throw new SafeTensorsFormatException(src, name, $"{count} elements exceed the largest array this reader can hold");

        return new SafeTensorInfo(name, dtype, shape, count, begin, end);
    }

    private static long OffsetValue(JsonElement e, string name, string src)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v) || v < 0)
            throw new SafeTensorsFormatException(src, name, $"data offset {Quote(e.GetRawText())} is not a non-negative integer");
        return v;
    }

    private static SafeTensorsDType ParseDType(string s, string name, string src) => s switch
    {
        "F32" => SafeTensorsDType.F32,
        "F64" => SafeTensorsDType.F64,
        "F16" => SafeTensorsDType.F16,
        "BF16" => SafeTensorsDType.BF16,
        "I64" => SafeTensorsDType.I64,
        "I32" => SafeTensorsDType.I32,
        "BOOL" or "U8" or "I8" or "I16" or "U16" or "U32" or "U64" or "F8_E4M3" or "F8_E5M2" =>
            throw new SafeTensorsFormatException(src, name, $"dtype '{Quote(s)}' is valid safetensors but not supported here (F32, F64, F16, BF16, I64, I32 are)"),
        _ => throw new SafeTensorsFormatException(src, name, $"unknown dtype '{Quote(s)}'"),
    };

    public static int ElementSize(SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        SafeTensorsDType.F64 or SafeTensorsDType.I64 => 8,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>
    /// The tensors, ordered by their offsets, must tile the data section: the first begins at 0, each begins
    /// where the one before ends, and the last ends at the end of the file (the reference implementation's
    /// rule). A gap or trailing bytes mean the header and the data disagree, most often by a wrong header length.
    /// </summary>
    private static void CheckCoverage(List<SafeTensorInfo> infos, long dataSize, string src)
    {
        var spans = infos.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        long at = 0;
        SafeTensorInfo? prev = null;
        foreach (var cur in spans)
        {
            if (cur.Begin < at)
                throw new SafeTensorsFormatException(src, cur.Name,
                    $"data_offsets [{cur.Begin},{cur.End}] overlap those of '{Quote(prev!.Name)}' [{prev.Begin},{prev.End}]");
            if (cur.Begin > at)
                throw new SafeTensorsFormatException(src, cur.Name, prev is null
                    ? $"data_offsets [{cur.Begin},{cur.End}] leave the first {cur.Begin} bytes of the data section unused (is the header length wrong?)"
                    : $"data_offsets [{cur.Begin},{cur.End}] leave bytes {at}..{cur.Begin - 1} after '{Quote(prev.Name)}' unused");
            at = cur.End;
            prev = cur;
        }
        if (at != dataSize)
            throw new SafeTensorsFormatException(src, null,
                $"the tensors end at byte {at} of the data section but it holds {dataSize} bytes; {dataSize - at} bytes trail (is the header length wrong?)");
    }

    private static SafeTensorEntry ReadData(Stream stream, SafeTensorInfo info, string src)
    {
        int count = (int)info.Count;
        try
        {
            // F32 and I64 are the dtypes this engine writes: on a little-endian host they are read straight
            // into the array; everything else goes through a per-element conversion.
            if (BitConverter.IsLittleEndian && info.DType == SafeTensorsDType.F32)
            {
                var f = new float[count];
                stream.ReadExactly(MemoryMarshal.AsBytes(f.AsSpan()));
                return SafeTensorEntry.FromFile(info.Name, info.DType, info.Shape, f, null);
            }
            if (BitConverter.IsLittleEndian && info.DType == SafeTensorsDType.I64)
            {
                var l = new long[count];
                stream.ReadExactly(MemoryMarshal.AsBytes(l.AsSpan()));
                return SafeTensorEntry.FromFile(info.Name, info.DType, info.Shape, null, l);
            }
            return ReadConverted(stream, info, count);
        }
        catch (EndOfStreamException ex)
        {
            // Offsets were checked against the length; this only happens if the file shrank while being read.
            throw new SafeTensorsFormatException(src, info.Name, "the data ended early (was the file truncated while reading?)", ex);
        }
    }

    /// <summary>Reads dtypes that need a per-element conversion, in bounded chunks.</summary>
    private static SafeTensorEntry ReadConverted(Stream stream, SafeTensorInfo info, int count)
    {
        int es = ElementSize(info.DType);
        const int chunkElems = 1 << 14;
        var buf = new byte[Math.Min(count, chunkElems) * es];
        float[]? f = null;
        long[]? l = null;
        if (info.DType is SafeTensorsDType.I64 or SafeTensorsDType.I32) l = new long[count];
        else f = new float[count];

        for (int done = 0; done < count;)
        {
            int n = Math.Min(chunkElems, count - done);
            var span = buf.AsSpan(0, n * es);
            stream.ReadExactly(span);
            for (int k = 0; k < n; k++)
            {
                var b = span.Slice(k * es, es);
                switch (info.DType)
                {
                    case SafeTensorsDType.F32: f![done + k] = BinaryPrimitives.ReadSingleLittleEndian(b); break;
                    case SafeTensorsDType.F64: f![done + k] = (float)BinaryPrimitives.ReadDoubleLittleEndian(b); break;
                    case SafeTensorsDType.F16: f![done + k] = (float)BinaryPrimitives.ReadHalfLittleEndian(b); break;
                    // bfloat16 is the top half of a float32.
                    case SafeTensorsDType.BF16: f![done + k] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b) << 16); break;
                    case SafeTensorsDType.I32: l![done + k] = BinaryPrimitives.ReadInt32LittleEndian(b); break;
                    case SafeTensorsDType.I64: l![done + k] = BinaryPrimitives.ReadInt64LittleEndian(b); break;
                }
            }
            done += n;
        }
        return SafeTensorEntry.FromFile(info.Name, info.DType, info.Shape, f, l);
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => e.ValueKind.ToString(),
    };

    private static string ShapeText(int[] shape) => "[" + string.Join(",", shape) + "]";

    private static string Quote(string? text) => DataFormatException.Quote(text);

    // ---- writing --------------------------------------------------------------------------------------

    /// <summary>Writes this file's entries and metadata to <paramref name="path"/> atomically.</summary>
    public void Write(string path) => Write(path, _entries, Metadata);

    /// <summary>
    /// Writes to a temporary file in the target's folder, flushes it to disk, then renames it over the target,
    /// so a crash leaves either the old file or the complete new one, never a torn file (<see cref="AtomicFile"/>,
    /// through <paramref name="files"/>; null: the disk).
    /// </summary>
    public static void Write(string path, IEnumerable<SafeTensorEntry> entries, IReadOnlyDictionary<string, string>? metadata = null,
        IOutputFiles? files = null)
    {
        var list = entries as IReadOnlyList<SafeTensorEntry> ?? entries.ToList();
        AtomicFile.Write(path, fs => Write(fs, list, metadata), files);
    }

    /// <summary>Writes the safetensors bytes to a stream: F16 entries as F16, other float entries as F32, integer entries as I64.</summary>
    public static void Write(Stream stream, IReadOnlyList<SafeTensorEntry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (e.Name == MetadataKey) throw new ArgumentException($"'{MetadataKey}' is reserved and cannot name a tensor.");
            if (!names.Add(e.Name)) throw new ArgumentException($"Tensor name '{e.Name}' appears twice.");
        }

        byte[] header = BuildHeader(entries, metadata);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        stream.Write(len);
        stream.Write(header);
        foreach (var e in entries)
        {
            if (e.DType == SafeTensorsDType.F16) WriteHalves(stream, e.Floats!);
            else if (e.Floats is { } f) WriteLittleEndian(stream, f);
            else WriteLittleEndian(stream, e.Longs!);
        }
    }

    /// <summary>The serialized header, padded with spaces so the data section starts 8-byte aligned.</summary>
    private static byte[] BuildHeader(IReadOnlyList<SafeTensorEntry> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject(MetadataKey);
                foreach (var kv in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in entries)
            {
                bool half = e.DType == SafeTensorsDType.F16;
                long bytes = e.Count * (half ? 2 : e.IsFloat ? 4 : 8);
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", half ? "F16" : e.IsFloat ? "F32" : "I64");
                w.WriteStartArray("shape");
                foreach (int d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - (8 + ms.Length) % 8) % 8);
        for (int i = 0; i < pad; i++) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    private static void WriteLittleEndian(Stream s, float[] data)
    {
        if (BitConverter.IsLittleEndian)
        {
            s.Write(MemoryMarshal.AsBytes(data.AsSpan()));
            return;
        }
        Span<byte> b = stackalloc byte[4];
        foreach (float v in data)
        {
            BinaryPrimitives.WriteSingleLittleEndian(b, v);
            s.Write(b);
        }
    }

    private static void WriteHalves(Stream s, float[] data)
    {
        var b = new byte[2 * data.Length];
        for (int i = 0; i < data.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(b.AsSpan(2 * i), (Half)data[i]);
        s.Write(b);
    }

    private static void WriteLittleEndian(Stream s, long[] data)
    {
        if (BitConverter.IsLittleEndian)
        {
            s.Write(MemoryMarshal.AsBytes(data.AsSpan()));
            return;
        }
        Span<byte> b = stackalloc byte[8];
        foreach (long v in data)
        {
            BinaryPrimitives.WriteInt64LittleEndian(b, v);
            s.Write(b);
        }
    }
}
