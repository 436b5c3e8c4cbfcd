using System.Buffers.Binary;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;
using Google.Protobuf;
using Xunit;
using Xunit.Sdk;

namespace Ddpm.Tests.TestUtil;

/// <summary>
/// Compares a run folder with an uninterrupted run's, bit for bit where the run promises it: the checkpoints kept
/// (every tensor and every header value: weights, EMA, Adam moments, step, random streams, data position),
/// model.safetensors and best.safetensors, every sample grid's bytes, loss.csv and metrics.csv without their
/// timing column, and the TensorBoard scalars and images as TensorBoard shows them (a start event, written when a run starts or
/// resumes, drops what earlier files logged at and after its step); and that no temporary file is left.
/// </summary>
internal static class RunFolderCheck
{
    /// <summary>Throws (naming the first difference) unless <paramref name="actual"/> holds the run of <paramref name="expected"/>.</summary>
    public static void AssertSameRun(string expected, string actual)
    {
        var temporaries = Directory.EnumerateFiles(actual, "*", SearchOption.AllDirectories)
            .Where(f => AtomicFile.IsTemporaryName(Path.GetFileName(f))).ToList();
        if (temporaries.Count > 0) throw new XunitException($"{actual} holds temporary files: {string.Join(", ", temporaries)}");

        Assert.Equal(RunFolder.Checkpoints(expected).Select(c => c.Step), RunFolder.Checkpoints(actual).Select(c => c.Step));
        foreach (var (_, path) in RunFolder.Checkpoints(expected)) SameTensorFile(path, Path.Combine(actual, Path.GetFileName(path)));
        foreach (var name in new[] { RunFolder.ModelName, RunFolder.BestName })
        {
            Assert.True(File.Exists(Path.Combine(expected, name)) == File.Exists(Path.Combine(actual, name)), $"{name} in one folder only");
            if (File.Exists(Path.Combine(expected, name))) SameTensorFile(Path.Combine(expected, name), Path.Combine(actual, name));
        }
        var grids = Grids(expected);
        Assert.Equal(grids, Grids(actual));
        foreach (var g in grids)
            if (!File.ReadAllBytes(Path.Combine(expected, g)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, g))))
                throw new XunitException($"{Path.Combine(actual, g)} differs from the uninterrupted run's");
        SameCsv(expected, actual, RunFolder.LossName);
        SameCsv(expected, actual, RunFolder.MetricsName);

        var (es, ei) = Shown(Path.Combine(expected, RunFolder.LogsName));
        var (s, i) = Shown(Path.Combine(actual, RunFolder.LogsName));
        foreach (var tag in es.Keys.Union(s.Keys).Order(StringComparer.Ordinal))
        {
            if (tag is "train/images_per_s" or "eval/seconds") continue;
            Assert.True(s.TryGetValue(tag, out var got), $"TensorBoard shows no {tag}");
            Assert.True(es.TryGetValue(tag, out var want), $"TensorBoard shows a {tag} the uninterrupted run has not");
            Assert.True(want.SequenceEqual(got), $"{tag}: [{string.Join(" ", got)}], uninterrupted [{string.Join(" ", want)}]");
        }
        Assert.Equal(ei.Select(x => x.Step), i.Select(x => x.Step));
        for (int k = 0; k < ei.Count; k++) Assert.True(ei[k].Png.SequenceEqual(i[k].Png), $"the image of step {ei[k].Step} differs");
    }

    private static string[] Grids(string folder) =>
        Directory.GetFiles(folder, "samples*.png").Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray();

    /// <summary>Every tensor and every header value, bit for bit.</summary>
    public static void SameTensorFile(string expected, string actual)
    {
        var a = SafeTensorsFile.Read(expected);
        var b = SafeTensorsFile.Read(actual);
        Assert.Equal(a.Metadata.OrderBy(kv => kv.Key), b.Metadata.OrderBy(kv => kv.Key));
        Assert.Equal(a.Entries.Select(e => e.Name), b.Entries.Select(e => e.Name));
        foreach (var e in a.Entries)
            if (!e.AsFloats().AsSpan().SequenceEqual(b[e.Name].AsFloats())) throw new XunitException($"{actual}: '{e.Name}' differs from the uninterrupted run's");
    }

    /// <summary>A run folder's CSV log without its last column (seconds: timing).</summary>
    public static string[] Rows(string folder, string name)
    {
        string path = Path.Combine(folder, name);
        if (!File.Exists(path)) return [];
        string text = File.ReadAllText(path);
        Assert.True(text.EndsWith('\n'), $"{path} does not end with a whole row");
        return text.Split('\n')[..^1].Select(l => l[..l.LastIndexOf(',')]).ToArray();
    }

    private static void SameCsv(string expected, string actual, string name)
    {
        var want = Rows(expected, name);
        var got = Rows(actual, name);
        Assert.True(want.SequenceEqual(got), $"{Path.Combine(actual, name)}:\n{string.Join("\n", got)}\nuninterrupted:\n{string.Join("\n", want)}");
    }

    /// <summary>
    /// What TensorBoard shows of a folder's event files, read in name order as it reads them: scalars by tag and the
    /// images, each as (step, value) in the order logged, after the purges of the start events (a start at step N
    /// drops every earlier event of step N or later, as TensorBoard's event accumulator does).
    /// </summary>
    public static (Dictionary<string, List<(long Step, float Value)>> Scalars, List<(long Step, byte[] Png)> Images) Shown(string logs)
    {
        var scalars = new Dictionary<string, List<(long, float)>>(StringComparer.Ordinal);
        var images = new List<(long Step, byte[] Png)>();
        foreach (var file in Directory.GetFiles(logs, EventFile.NamePrefix + "*").Order(StringComparer.Ordinal))
        {
            foreach (var record in Records(file))
            {
                var (step, start, values) = ParseEvent(record);
                if (start)
                {
                    foreach (var list in scalars.Values) list.RemoveAll(x => x.Item1 >= step);
                    images.RemoveAll(x => x.Step >= step);
                }
                foreach (var (tag, scalar, png) in values)
                {
                    if (scalar is { } v) (scalars.TryGetValue(tag, out var l) ? l : scalars[tag] = new()).Add((step, v));
                    if (png is not null) images.Add((step, png));
                }
            }
        }
        return (scalars, images);
    }

    /// <summary>
    /// The TFRecords of an event file. A torn record at the end (a writer killed inside its write) ends the file, as
    /// it does for TensorBoard; a torn record with others after it fails the check, as it would hide them.
    /// </summary>
    private static IEnumerable<byte[]> Records(string path)
    {
        var bytes = File.ReadAllBytes(path);
        int at = 0;
        while (at + 12 <= bytes.Length)
        {
            int length = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at)));
            if (EventFile.MaskedCrc(bytes.AsSpan(at, 8)) != BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8)))
                throw new XunitException($"{path}: a bad length CRC at byte {at}");
            if (at + 16 + length > bytes.Length) yield break;
            var data = bytes.AsSpan(at + 12, length);
            if (EventFile.MaskedCrc(data) != BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + length)))
                throw new XunitException($"{path}: a bad data CRC at byte {at}");
            yield return data.ToArray();
            at += 16 + length;
        }
    }

    // event.proto: Event { int64 step = 2; Summary summary = 5; SessionLog session_log = 6; }, SessionLog { status = 1 (START = 1) },
    // Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2; Image image = 4 }, Image { bytes encoded = 4 }.
    private static (long Step, bool Start, List<(string Tag, float? Scalar, byte[]? Png)> Values) ParseEvent(byte[] record)
    {
        long step = 0;
        bool start = false;
        var values = new List<(string, float?, byte[]?)>();
        var e = new CodedInputStream(record);
        for (uint tag; (tag = e.ReadTag()) != 0;)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 2: step = e.ReadInt64(); break;
                case 5:
                    var summary = new CodedInputStream(e.ReadBytes().ToByteArray());
                    for (uint st; (st = summary.ReadTag()) != 0;)
                    {
                        if (WireFormat.GetTagFieldNumber(st) != 1) { summary.SkipLastField(); continue; }
                        var v = new CodedInputStream(summary.ReadBytes().ToByteArray());
                        string name = "";
                        float? scalar = null;
                        byte[]? png = null;
                        for (uint vt; (vt = v.ReadTag()) != 0;)
                        {
                            switch (WireFormat.GetTagFieldNumber(vt))
                            {
                                case 1: name = v.ReadString(); break;
                                case 2: scalar = v.ReadFloat(); break;
                                case 4:
                                    var image = new CodedInputStream(v.ReadBytes().ToByteArray());
                                    for (uint it; (it = image.ReadTag()) != 0;)
                                        if (WireFormat.GetTagFieldNumber(it) == 4) png = image.ReadBytes().ToByteArray();
                                        else image.SkipLastField();
                                    break;
                                default: v.SkipLastField(); break;
                            }
                        }
                        values.Add((name, scalar, png));
                    }
                    break;
                case 6:
                    var log = new CodedInputStream(e.ReadBytes().ToByteArray());
                    for (uint lt; (lt = log.ReadTag()) != 0;)
                        if (WireFormat.GetTagFieldNumber(lt) == 1) start = log.ReadEnum() == 1;
                        else log.SkipLastField();
                    break;
                default: e.SkipLastField(); break;
            }
        }
        return (step, start, values);
    }
}
