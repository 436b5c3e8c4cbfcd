using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;

namespace Ddpm.Tests.Fuzz;

/// <summary>
/// Deterministic mutations of valid files: generic byte edits (truncation, bit flips, insertions, deletions,
/// duplicated ranges, boundary words) and format-aware edits of safetensors headers (length field, JSON
/// structure and values, dtypes, shapes, offsets, duplicate names, config settings, counters, invalid UTF-8,
/// non-finite values), IDX headers, PNG chunks, JPEG frame sizes, BMP headers, palettes and masks, CIFAR
/// records, config.json's sections, keys and values, and the rows of a run's CSV logs. Every random choice comes
/// from one seeded <see cref="Random"/>, so a mutant is reproduced by its seed and index.
/// </summary>
internal sealed class Mutator(int seed)
{
    private readonly Random _rng = new(seed);

    public int Next(int max) => _rng.Next(max);

    private T Pick<T>(IReadOnlyList<T> items) => items[_rng.Next(items.Count)];

    private static readonly uint[] Words = [0, 1, 2, 3, 7, 8, 31, 255, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xFFFF_FFFE, 65535, 65536, 1_000_000];

    // ---- generic byte mutations -------------------------------------------------------------------------

    public (byte[] Bytes, string What) Bytes(byte[] b)
    {
        int len = b.Length;
        switch (_rng.Next(9))
        {
            case 0:
            {
                int cut = _rng.Next(len);
                return (b[..cut], $"truncated to {cut} bytes");
            }
            case 1:
            {
                var r = (byte[])b.Clone();
                int n = 1 + _rng.Next(4);
                for (int i = 0; i < n; i++) r[_rng.Next(len)] ^= (byte)(1 << _rng.Next(8));
                return (r, $"{n} bit flips");
            }
            case 2:
            {
                var r = (byte[])b.Clone();
                int n = 1 + _rng.Next(8);
                for (int i = 0; i < n; i++) r[_rng.Next(len)] = (byte)_rng.Next(256);
                return (r, $"{n} random bytes");
            }
            case 3:
            {
                int at = _rng.Next(len + 1), n = 1 + _rng.Next(16);
                var ins = new byte[n];
                _rng.NextBytes(ins);
                return ([.. b[..at], .. ins, .. b[at..]], $"{n} bytes inserted at {at}");
            }
            case 4:
            {
                int at = _rng.Next(len), n = 1 + _rng.Next(Math.Min(64, len - at));
                return ([.. b[..at], .. b[(at + n)..]], $"{n} bytes deleted at {at}");
            }
            case 5:
            {
                int at = _rng.Next(len), n = 1 + _rng.Next(Math.Min(64, len - at)), to = _rng.Next(len + 1);
                return ([.. b[..to], .. b[at..(at + n)], .. b[to..]], $"{n} bytes from {at} duplicated at {to}");
            }
            case 6:
            {
                int n = 1 + _rng.Next(4096);
                var tail = new byte[n];
                if (_rng.Next(2) == 0) _rng.NextBytes(tail);
                return ([.. b, .. tail], $"{n} bytes appended");
            }
            case 7:
            {
                if (len < 4) goto case 1;
                var r = (byte[])b.Clone();
                int at = _rng.Next(len - 3);
                uint w = Pick(Words);
                if (_rng.Next(2) == 0) BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(at), w);
                else BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(at), w);
                return (r, $"word {w} at {at}");
            }
            default:
            {
                int at = _rng.Next(len), n = 1 + _rng.Next(Math.Min(256, len - at));
                var r = (byte[])b.Clone();
                r.AsSpan(at, n).Fill(_rng.Next(2) == 0 ? (byte)0 : (byte)0xFF);
                return (r, $"{n} bytes filled at {at}");
            }
        }
    }

    // ---- safetensors ------------------------------------------------------------------------------------

    private static readonly string[] DTypes = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "X"];

    /// <summary>Values that break config settings in every way a header can: wrong type, range, sign, size.</summary>
    private static readonly string[] ConfigValues =
    [
        "0", "-1", "1", "2", "3", "7", "8", "16", "31", "33", "64", "1000000", "2147483647", "2147483648", "-2147483648",
        "1.5", "-0.5", "0.99", "1e39", "1e-45", "null", "\"abc\"", "\"\"", "[]", "[0]", "[1]", "[1,2]", "[1,65536]", "[2147483647]",
        "[true]", "[false,false]", "true", "false", "{}", "\"Cosine\"", "\"Linear\"", "\"V\"", "\"Bogus\"", "5",
    ];

    private static readonly string[] CounterValues =
        ["-1", "abc", "", "1e3", "99999999999999999999", " 5", "5 ", "+5", "0", "18446744073709551615", "18446744073709551616", "0x10", "1\n2"];

    private static readonly string[] Names = ["a\nb", "x\0y", "", " ", "__metadata__", "model.", "ema.x", "\u2028", "\u00e9t\u00e9", new string('n', 300)];

    public (byte[] Bytes, string What) SafeTensors(byte[] file)
    {
        int choice = _rng.Next(10);
        if (choice < 2) return Bytes(file);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file);
        byte[] header = file[8..(8 + (int)n)], data = file[(8 + (int)n)..];
        if (choice == 2)
        {
            long delta = Pick(new long[] { -1, 1, -2, 2, -7, 7, -8, 8, -64, 64 });
            ulong len = _rng.Next(4) switch
            {
                0 => 0,
                1 => ulong.MaxValue - (ulong)_rng.Next(16),
                2 => (ulong)_rng.NextInt64(0, file.Length + 64),
                _ => (ulong)((long)n + delta),
            };
            var r = (byte[])file.Clone();
            BinaryPrimitives.WriteUInt64LittleEndian(r, len);
            return (r, $"header length {len} instead of {n}");
        }
        if (choice == 3)
        {
            // Invalid UTF-8 or a raw control byte inside the JSON text.
            var h = (byte[])header.Clone();
            int at = _rng.Next(h.Length);
            byte bad = Pick(new byte[] { 0xFF, 0xC3, 0x80, 0xED, 0xF8, 0x00, 0x0A });
            h[at] = bad;
            return (Assemble(h, data), $"header byte {at} set to 0x{bad:X2}");
        }
        if (choice == 4) return NonFinite(header, data, file, n);

        var root = JsonNode.Parse(Encoding.UTF8.GetString(header))!.AsObject();
        string what = MutateJson(root, data.Length, out string? duplicate);
        string json = root.ToJsonString();
        if (duplicate is not null)
        {
            // JsonObject cannot hold a key twice, so the duplicate goes in as text.
            json = "{" + duplicate + "," + json[1..];
        }
        return (Assemble(Encoding.UTF8.GetBytes(json), data), what);
    }

    private (byte[] Bytes, string What) NonFinite(byte[] header, byte[] data, byte[] file, ulong n)
    {
        var root = JsonNode.Parse(Encoding.UTF8.GetString(header))!.AsObject();
        var tensors = root.Where(kv => kv.Key != "__metadata__").ToList();
        var (name, entry) = Pick(tensors);
        var offsets = entry!["data_offsets"]!.AsArray();
        long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
        if (end - begin < 4) return Bytes(file);
        var r = (byte[])file.Clone();
        long at = 8 + (long)n + begin + 4 * _rng.NextInt64((end - begin) / 4);
        float v = Pick(new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity, -float.NaN });
        BinaryPrimitives.WriteSingleLittleEndian(r.AsSpan((int)at), v);
        return (r, $"tensor '{name}' element at byte {at} set to {v}");
    }

    private string MutateJson(JsonObject root, int dataLength, out string? duplicate)
    {
        duplicate = null;
        var tensors = root.Where(kv => kv.Key != "__metadata__").Select(kv => kv.Key).ToList();
        string name = Pick(tensors);
        var entry = root[name]!.AsObject();
        var meta = root["__metadata__"] as JsonObject;
        switch (_rng.Next(meta is null ? 8 : 12))
        {
            case 0:
            {
                string d = Pick(DTypes);
                entry["dtype"] = d;
                return $"tensor '{name}' dtype {d}";
            }
            case 1:
            {
                var shape = entry["shape"]!.AsArray();
                var dims = shape.Select(x => x!.GetValue<long>()).ToList();
                string what;
                switch (_rng.Next(5))
                {
                    case 0 when dims.Count > 0:
                        int i = _rng.Next(dims.Count);
                        dims[i] = Pick(new[] { dims[i] + 1, dims[i] - 1, 0, dims[i] * 2, -dims[i], 1L << 31, 1L << 40 });
                        what = $"shape dim {i}";
                        break;
                    case 1:
                        dims.Insert(_rng.Next(dims.Count + 1), Pick(new long[] { 1, 2, 0 }));
                        what = "shape dim added";
                        break;
                    case 2 when dims.Count > 0:
                        dims.RemoveAt(_rng.Next(dims.Count));
                        what = "shape dim removed";
                        break;
                    case 3 when dims.Count > 1:
                        dims.Reverse();
                        what = "shape reversed";
                        break;
                    default:
                        entry["shape"] = JsonNode.Parse(Pick(new[] { "[2.5]", "[\"4\"]", "null", "4", "[[1]]", "[-1]", "[9223372036854775807,2]" }));
                        return $"tensor '{name}' shape {entry["shape"]?.ToJsonString() ?? "null"}";
                }
                entry["shape"] = new JsonArray(dims.Select(d => (JsonNode?)JsonValue.Create(d)).ToArray());
                return $"tensor '{name}' {what}: [{string.Join(",", dims)}]";
            }
            case 2:
            {
                var off = entry["data_offsets"]!.AsArray();
                long b = off[0]!.GetValue<long>(), e = off[1]!.GetValue<long>();
                long k = Pick(new long[] { 1, 2, 4, 8, -1, -4, -8, dataLength });
                (long nb, long ne) = _rng.Next(5) switch
                {
                    0 => (b + k, e + k),
                    1 => (b, e + k),
                    2 => (b + k, e),
                    3 => (e, b),
                    _ => (0, e - b),
                };
                entry["data_offsets"] = new JsonArray(JsonValue.Create(nb), JsonValue.Create(ne));
                return $"tensor '{name}' data_offsets [{nb},{ne}] instead of [{b},{e}]";
            }
            case 3:
            {
                var key = Pick(new[] { "dtype", "shape", "data_offsets" });
                entry.Remove(key);
                return $"tensor '{name}' without '{key}'";
            }
            case 4:
                root.Remove(name);
                return $"tensor '{name}' removed";
            case 5:
            {
                string to = _rng.Next(3) == 0 ? Pick(tensors) : Pick(Names);
                var clone = entry.DeepClone();
                root.Remove(name);
                if (root.ContainsKey(to))
                {
                    duplicate = System.Text.Json.JsonSerializer.Serialize(to) + ":" + clone.ToJsonString();
                    return $"tensor '{name}' renamed to the existing '{to}' (duplicate key)";
                }
                root[to] = clone;
                return $"tensor '{name}' renamed";
            }
            case 6:
                duplicate = System.Text.Json.JsonSerializer.Serialize(name) + ":" + entry.ToJsonString();
                return $"tensor '{name}' duplicated";
            case 7:
                root[name] = JsonNode.Parse(Pick(new[] { "[1]", "null", "\"F32\"", "{}", "{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}" }));
                return $"tensor '{name}' entry replaced";
            case 8:
            case 9:
                return MutateConfig(meta!);
            case 10:
            {
                var counters = new[] { "step", "noise_offset", "dropout_offset", "data_epoch", "data_index", "ddpm_format" };
                string key = Pick(counters);
                if (_rng.Next(4) == 0) { meta!.Remove(key); return $"metadata '{key}' removed"; }
                string v = key == "ddpm_format" ? Pick(new[] { "ddpm-checkpoint/2", "", "ddpm-checkpoint/1 " }) : Pick(CounterValues);
                meta![key] = v;
                return $"metadata '{key}' = '{v}'";
            }
            default:
            {
                string key = Pick(meta!.Select(kv => kv.Key).ToList());
                meta![key] = JsonNode.Parse(Pick(new[] { "3", "null", "[]", "{}", "true" }));
                return $"metadata '{key}' not a string";
            }
        }
    }

    private string MutateConfig(JsonObject meta)
    {
        var configs = new[] { "model", "diffusion", "training" }.Where(meta.ContainsKey).ToList();
        if (configs.Count == 0) return "no config to mutate";
        string which = Pick(configs);
        string text = meta[which]!.GetValue<string>();
        if (_rng.Next(8) == 0)
        {
            string v = Pick(new[] { "null", "[]", "{", "", "3", "{\"n_blocks\":1}" });
            meta[which] = v;
            return $"metadata '{which}' = '{v}'";
        }
        var cfg = JsonNode.Parse(text)!.AsObject();
        string key = Pick(cfg.Select(kv => kv.Key).ToList());
        if (_rng.Next(6) == 0)
        {
            cfg.Remove(key);
            meta[which] = cfg.ToJsonString();
            return $"{which}.{key} removed";
        }
        string value = Pick(ConfigValues);
        cfg[key] = JsonNode.Parse(value);
        meta[which] = cfg.ToJsonString();
        return $"{which}.{key} = {value}";
    }

    // ---- config.json ---------------------------------------------------------------------------------------

    /// <summary>
    /// A mutated config.json (train --config): generic bytes, a value of the wrong type, range or size, a key
    /// removed, unknown, moved to another section or given twice, a section that is not an object or is missing,
    /// and whole-file edits (a byte-order mark, another top-level value, deep nesting, trailing text).
    /// </summary>
    public (byte[] Bytes, string What) Config(byte[] file)
    {
        int choice = _rng.Next(10);
        if (choice < 2) return Bytes(file);
        var root = JsonNode.Parse(file)!.AsObject();
        var sections = root.Select(kv => kv.Key).ToList();
        string section = Pick(sections);
        var values = root[section]!.AsObject();
        var keys = values.Select(kv => kv.Key).ToList();
        switch (choice)
        {
            case 2:
            case 3:
            case 4:
            {
                string key = Pick(keys), v = Pick(ConfigValues);
                values[key] = JsonNode.Parse(v);
                return (Utf8(root.ToJsonString()), $"{section}.{key} = {v}");
            }
            case 5:
            {
                if (_rng.Next(2) == 0)
                {
                    string key = Pick(keys);
                    values.Remove(key);
                    return (Utf8(root.ToJsonString()), $"{section}.{key} removed");
                }
                // A name from nowhere, or another section's key.
                string other = Pick(sections), name = _rng.Next(2) == 0 ? Pick(Names) : Pick(root[other]!.AsObject().Select(kv => kv.Key).ToList());
                if (values.ContainsKey(name)) return (Utf8(root.ToJsonString()), "unchanged");
                values[name] = JsonNode.Parse(Pick(ConfigValues));
                return (Utf8(root.ToJsonString()), $"{section}.{name} added");
            }
            case 6:
            {
                // JsonObject cannot hold a key twice, so the section goes in as text.
                string key = Pick(keys), v = Pick(ConfigValues), text = values.ToJsonString();
                string twice = "{" + System.Text.Json.JsonSerializer.Serialize(key) + ":" + v + "," + text[1..];
                string json = "{" + string.Join(",", sections.Select(s => System.Text.Json.JsonSerializer.Serialize(s) + ":" + (s == section ? twice : root[s]!.ToJsonString()))) + "}";
                return (Utf8(json), $"{section}.{key} given twice ({v} first)");
            }
            case 7:
            {
                if (_rng.Next(3) == 0)
                {
                    root.Remove(section);
                    return (Utf8(root.ToJsonString()), $"section {section} removed");
                }
                string v = Pick(ConfigValues);
                root[section] = JsonNode.Parse(v);
                return (Utf8(root.ToJsonString()), $"section {section} = {v}");
            }
            case 8:
            {
                string json = root.ToJsonString();
                int depth = 10 + _rng.Next(200);
                return _rng.Next(5) switch
                {
                    0 => ([0xEF, 0xBB, 0xBF, .. Utf8(json)], "a byte-order mark first"),
                    1 => (Utf8(Pick(new[] { "[]", "null", "3", "\"config\"", "" })), "another top-level value"),
                    2 => (Utf8("{\"" + section + "\":{\"" + Pick(keys) + "\":" + new string('[', depth) + new string(']', depth) + "}}"), $"a value nested {depth} deep"),
                    3 => (Utf8(json + Pick(new[] { "}", " x", "{}", "\u0000", "//\n", "/*" })), "trailing text"),
                    _ => (Utf8(json[..^1] + ",}"), "a trailing comma"),
                };
            }
            default:
            {
                // Invalid UTF-8 or a raw control byte inside the text.
                var r = (byte[])file.Clone();
                int at = _rng.Next(r.Length);
                byte bad = Pick(new byte[] { 0xFF, 0xC3, 0x80, 0xED, 0xF8, 0x00, 0x0A, 0x22, 0x5C });
                r[at] = bad;
                return (r, $"byte {at} set to 0x{bad:X2}");
            }
        }
    }

    private static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    // ---- loss.csv, metrics.csv ---------------------------------------------------------------------------------

    private static readonly string[] CsvValues =
        ["", "NaN", "Infinity", "-Infinity", "-1", "0", "1e400", "-0", "99999999999999999999", "1.5", "abc", "4\r", " 4", "+4", "0x10", "\"4\""];

    /// <summary>
    /// A mutated CSV log of a run folder: generic bytes, a field set to a value that is not a number or not finite,
    /// a field added or removed, a row repeated, removed or moved, the last newline gone, CRLF line ends, the header
    /// changed or repeated, a very long line.
    /// </summary>
    public (byte[] Bytes, string What) Csv(byte[] file)
    {
        int choice = _rng.Next(10);
        if (choice < 2) return Bytes(file);
        string text = Encoding.UTF8.GetString(file);
        var lines = text.Split('\n').ToList();
        lines.RemoveAt(lines.Count - 1); // after the last newline
        int row = 1 + _rng.Next(lines.Count - 1);
        var fields = lines[row].Split(',').ToList();
        string Join() => string.Join("\n", lines) + "\n";
        switch (choice)
        {
            case 2:
            case 3:
            {
                int f = _rng.Next(fields.Count);
                string v = Pick(CsvValues);
                fields[f] = v;
                lines[row] = string.Join(",", fields);
                return (Utf8(Join()), $"row {row} field {f} = '{v}'");
            }
            case 4:
            {
                if (_rng.Next(2) == 0) fields.Add(Pick(CsvValues));
                else fields.RemoveAt(_rng.Next(fields.Count));
                lines[row] = string.Join(",", fields);
                return (Utf8(Join()), $"row {row} with {fields.Count} fields");
            }
            case 5:
            {
                int to = 1 + _rng.Next(lines.Count - 1);
                string what;
                switch (_rng.Next(3))
                {
                    case 0: lines.Insert(to, lines[row]); what = $"row {row} repeated at {to}"; break;
                    case 1: lines.RemoveAt(row); what = $"row {row} removed"; break;
                    default: (lines[row], lines[to]) = (lines[to], lines[row]); what = $"rows {row} and {to} swapped"; break;
                }
                return (Utf8(Join()), what);
            }
            case 6:
                return _rng.Next(2) == 0 ? (Utf8(Join()[..^1]), "no last newline") : (Utf8(Join().Replace("\n", "\r\n", StringComparison.Ordinal)), "CRLF line ends");
            case 7:
            {
                if (_rng.Next(2) == 0)
                {
                    lines.Insert(1 + _rng.Next(lines.Count - 1), lines[0]);
                    return (Utf8(Join()), "the header repeated");
                }
                var header = lines[0].Split(',').ToList();
                int h = _rng.Next(header.Count);
                header[h] = Pick(new[] { "", "Step", "x", header[header.Count - 1 - h] });
                lines[0] = string.Join(",", header);
                return (Utf8(Join()), $"header '{lines[0]}'");
            }
            case 8:
            {
                int n = 1 + _rng.Next(1 << 16);
                lines[row] += new string(Pick(new[] { '0', ',', ' ', '9' }), n);
                return (Utf8(Join()), $"row {row} {n} characters longer");
            }
            default:
            {
                var r = (byte[])file.Clone();
                int at = _rng.Next(r.Length);
                byte bad = Pick(new byte[] { 0xFF, 0xC3, 0x00, 0x0A, 0x0D, 0x2C, 0x2D, 0x2E });
                r[at] = bad;
                return (r, $"byte {at} set to 0x{bad:X2}");
            }
        }
    }


    private static byte[] Assemble(byte[] header, byte[] data)
    {
        var r = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(r, (ulong)header.Length);
        header.CopyTo(r, 8);
        data.CopyTo(r, 8 + header.Length);
        return r;
    }

    // ---- IDX ---------------------------------------------------------------------------------------------

    /// <summary>A mutated raw IDX file: header fields or generic bytes.</summary>
    public (byte[] Bytes, string What) Idx(byte[] raw)
    {
        if (_rng.Next(3) == 0) return Bytes(raw);
        var r = (byte[])raw.Clone();
        int rank = r[3];
        switch (_rng.Next(3))
        {
            case 0:
                r[2] = Pick(new byte[] { 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00 });
                return (r, $"type code 0x{r[2]:X2}");
            case 1:
                r[3] = (byte)Pick(new[] { 0, 1, 2, 3, 4, 255 });
                return (r, $"rank {r[3]}");
            default:
            {
                int d = _rng.Next(rank);
                uint old = BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4 + 4 * d));
                uint v = Pick(new uint[] { 0u, old + 1, old - 1, old * 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 60000u, 1u << 20 });
                BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(4 + 4 * d), v);
                return (r, $"dimension {d} = {v}");
            }
        }
    }

    // ---- PNG / JPEG --------------------------------------------------------------------------------------

    public (byte[] Bytes, string What) Png(byte[] png)
    {
        if (_rng.Next(3) == 0) return Bytes(png);
        var chunks = new List<(int At, int Length, string Type)>();
        for (int at = 8; at + 12 <= png.Length;)
        {
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(at));
            chunks.Add((at, length, Encoding.ASCII.GetString(png, at + 4, 4)));
            at += 12 + length;
        }
        var r = (byte[])png.Clone();
        var (cAt, cLen, cType) = Pick(chunks);
        string what;
        switch (_rng.Next(4))
        {
            case 0 when cType == "IHDR" || _rng.Next(2) == 0:
            {
                var ihdr = chunks[0];
                int field = _rng.Next(4);
                if (field < 2)
                {
                    uint v = Pick(new uint[] { 0u, 1u, 0x7FFF_FFFF, 1u << 16, 1u << 24, 100_000u });
                    BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(ihdr.At + 8 + 4 * field), v);
                    what = $"IHDR {(field == 0 ? "width" : "height")} {v}";
                }
                else
                {
                    byte v = Pick(new byte[] { 0, 1, 2, 3, 4, 6, 7, 16, 255 });
                    r[ihdr.At + 8 + 8 + (field - 2)] = v;
                    what = $"IHDR {(field == 2 ? "bit depth" : "colour type")} {v}";
                }
                (cAt, cLen) = (ihdr.At, ihdr.Length);
                break;
            }
            case 1 when cLen > 0:
            {
                int n = 1 + _rng.Next(4);
                for (int i = 0; i < n; i++) r[cAt + 8 + _rng.Next(cLen)] ^= (byte)(1 << _rng.Next(8));
                what = $"{n} bit flips in {cType}";
                break;
            }
            case 2:
                BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(cAt), Pick(new uint[] { 0u, (uint)cLen + 1, (uint)cLen - 1, 0x7FFF_FFFF, 0xFFFF_FFFF }));
                return (r, $"{cType} length field changed");
            default:
                return ([.. r[..cAt], .. r[(cAt + 12 + cLen)..]], $"{cType} chunk removed");
        }
        // Mostly with a repaired CRC, so the decoder itself meets the damage; sometimes without.
        if (_rng.Next(4) != 0)
        {
            uint crc = Ddpm.Tests.Fuzz.Crc.Png(r.AsSpan(cAt + 4, cLen + 4));
            BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(cAt + 8 + cLen), crc);
            what += " (CRC repaired)";
        }
        return (r, what);
    }

    public (byte[] Bytes, string What) Jpeg(byte[] jpg)
    {
        if (_rng.Next(2) == 0) return Bytes(jpg);
        var r = (byte[])jpg.Clone();
        // The frame header (SOF0/SOF2): FF C0|C2, length, precision, height, width.
        for (int i = 2; i + 9 < r.Length; i++)
        {
            if (r[i] == 0xFF && (r[i + 1] == 0xC0 || r[i + 1] == 0xC2))
            {
                int field = _rng.Next(3);
                ushort v = Pick(new ushort[] { 0, 1, 65535, 16384, 9 });
                if (field == 2) r[i + 4] = (byte)v;
                else BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(i + 5 + 2 * field), v);
                return (r, $"SOF {(field == 0 ? "height" : field == 1 ? "width" : "precision")} {v}");
            }
        }
        return Bytes(jpg);
    }

    // ---- BMP ---------------------------------------------------------------------------------------------

    /// <summary>
    /// The fields of a BMP's file header and BITMAPINFOHEADER (little-endian): offset, size in bytes, and the values
    /// that break them (zero, one off, negative sizes, sizes beyond the file or a 32-bit count).
    /// </summary>
    private static readonly (string Name, int Offset, int Size, long[] Values)[] BmpFields =
    [
        ("file size", 2, 4, [0, 1, 54, 0xFFFF_FFFF]),
        ("data offset", 10, 4, [0, 1, 14, 53, 54, 0x7FFF_FFFF, 0xFFFF_FFFF]),
        ("header size", 14, 4, [0, 4, 12, 16, 39, 40, 52, 56, 64, 108, 124, 125, 0xFFFF_FFFF]),
        ("width", 18, 4, [0, 1, -1, -7, 65_535, 65_536, 1_000_000, int.MaxValue, int.MinValue]),
        ("height", 22, 4, [0, 1, -1, -5, 65_536, 1_000_000, int.MaxValue, int.MinValue, -int.MaxValue]),
        ("planes", 26, 2, [0, 2, 0xFFFF]),
        ("bits per pixel", 28, 2, [0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 32, 48, 64, 0xFFFF]),
        ("compression", 30, 4, [0, 1, 2, 3, 4, 5, 6, 11, 0xFFFF_FFFF]),
        ("image size", 34, 4, [0, 1, 0xFFFF_FFFF]),
        ("colours used", 46, 4, [0, 1, 2, 15, 16, 255, 256, 257, 65_536, 0x7FFF_FFFF, 0xFFFF_FFFF]),
    ];

    /// <summary>A BMP with one to three header fields set to a breaking value, its palette or masks damaged, or generic byte edits.</summary>
    public (byte[] Bytes, string What) Bmp(byte[] bmp)
    {
        if (bmp.Length < 54 || _rng.Next(4) == 0) return Bytes(bmp);
        var r = (byte[])bmp.Clone();
        if (_rng.Next(6) == 0)
        {
            // The palette or the channel masks: what follows the info header, before the pixels.
            int dataOffset = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(10)), (uint)r.Length);
            if (dataOffset > 54)
            {
                int n = 1 + _rng.Next(8);
                for (int i = 0; i < n; i++) r[54 + _rng.Next(dataOffset - 54)] = (byte)_rng.Next(256);
                return (r, $"{n} bytes of the palette or masks changed");
            }
        }
        var names = new List<string>();
        for (int k = 1 + _rng.Next(3); k > 0; k--)
        {
            var (name, offset, size, values) = Pick(BmpFields);
            long v = Pick(values);
            if (size == 2) BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(offset), (ushort)v);
            else BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(offset), unchecked((uint)v));
            names.Add($"{name} {v}");
        }
        string what = string.Join(", ", names);
        if (_rng.Next(5) == 0)
        {
            int cut = 14 + _rng.Next(r.Length - 14);
            return (r[..cut], what + $", cut to {cut} bytes");
        }
        return (r, what);
    }

    // ---- CIFAR-10 ----------------------------------------------------------------------------------------

    public (byte[] Bytes, string What) Cifar(byte[] file, int recordSize)
    {
        if (_rng.Next(2) == 0) return Bytes(file);
        var r = (byte[])file.Clone();
        int rec = _rng.Next(file.Length / recordSize);
        switch (_rng.Next(3))
        {
            case 0:
                r[rec * recordSize] = (byte)(10 + _rng.Next(246));
                return (r, $"record {rec} label {r[rec * recordSize]}");
            case 1:
            {
                int cut = rec * recordSize + _rng.Next(recordSize);
                return (r[..cut], $"cut at {cut}");
            }
            default:
                return ([.. r, .. r[..(recordSize * (1 + _rng.Next(2)))]], "records appended");
        }
    }
}

internal static class Crc
{
    private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    /// <summary>CRC-32 as the PNG specification defines it, written out here independently of the reader's.</summary>
    public static uint Png(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = Table[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }
}
