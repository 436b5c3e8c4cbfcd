using System.Globalization;
using System.Text;
using System.Text.Json;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool.Serve;

/// <summary>loss.csv for the page: per point the step, the loss and grad norm (means over <c>Every</c> rows), the learning rate; the last row as written.</summary>
public sealed record LossSeries(int Rows, int Every, long[] Step, double[] Loss, double[] GradNorm, double[] Lr, string[]? Last);

/// <summary>metrics.csv as written: its columns and its complete rows.</summary>
public sealed record MetricsTable(string[] Columns, string[][] Rows);

/// <summary>A sample grid of the run: its file name, step (null for the final samples.png), size and a version for the page's cache.</summary>
public sealed record GridFile(string Name, long? Step, long Bytes, string Version);

/// <summary>What the Run view shows of a run folder at one moment.</summary>
public sealed record RunSnapshot(string Folder, string Version, JsonElement? Config, LossSeries Loss, MetricsTable Metrics,
    GridFile[] Grids, string? LatestGrid, long[] Checkpoints, string[] Notes, long? UpdatedMs, long NowMs);

/// <summary>
/// Reads a run folder while <c>train</c> writes it (docs/run-folder.md), for the Run view: config.json, loss.csv,
/// metrics.csv, the step-numbered checkpoints and the sample grids. It reads only the files of that layout, by
/// their names in the folder, never a path from a request; a symbolic link or a file that is not a regular file is
/// left unread and noted. The CSV logs are appended while they are read: a last line without its newline is not
/// read yet, and a line that does not parse is skipped and counted. Files replaced by rename (config.json, grids, a
/// resumed run's logs) are read again when their size or time changes; a file renamed away between the listing
/// and the read is read at the next look. Safe to call from any thread.
/// </summary>
public sealed class RunWatcher(string folder)
{
    /// <summary>Points of the loss curve sent to the page at most; longer runs are averaged over buckets of rows.</summary>
    public const int MaxPoints = 2000;

    /// <summary>The most of a CSV log read (its end); the most of config.json and of a grid.</summary>
    public const long MaxCsvBytes = 64L << 20, MaxConfigBytes = 1L << 20, MaxGridBytes = 64L << 20;

    private static readonly string[] LossColumns = ["step", "loss", "grad_norm", "lr"];

    private readonly object _lock = new();
    private readonly Dictionary<string, (Stamp Stamp, object Value, string? Note)> _parsed = new();
    private RunSnapshot? _last;

    public string Folder { get; } = folder;

    /// <summary>A file's size and time of last change: a file replaced or appended to changes it.</summary>
    private readonly record struct Stamp(long Length, long Ticks);

    /// <summary>The folder now (the previous snapshot when nothing changed).</summary>
    public RunSnapshot Snapshot()
    {
        lock (_lock)
        {
            var notes = new List<string>();
            if (!Directory.Exists(Folder))
                return _last = Empty($"the run folder {Folder} is not there (yet)");
            var files = List(notes);
            string version = Version(files);
            if (_last is { } last && last.Version == version)
                return last with { NowMs = Now() };

            var config = Read(files, RunFolder.ConfigName, MaxConfigBytes, ParseConfig, notes);
            var loss = Read(files, RunFolder.LossName, MaxCsvBytes, ParseLoss, notes) ?? new LossSeries(0, 1, [], [], [], [], null);
            var metrics = Read(files, RunFolder.MetricsName, MaxCsvBytes, ParseMetrics, notes) ?? new MetricsTable(MetricsLog.Header.Split(','), []);
            var grids = files.Where(f => IsGrid(f.Key))
                .Select(f => new GridFile(f.Key, GridStep(f.Key), f.Value.Length, f.Value.Ticks.ToString("x", CultureInfo.InvariantCulture)))
                .OrderBy(g => g.Step ?? long.MaxValue).ToArray();
            string? latest = files.Where(f => IsGrid(f.Key)).OrderByDescending(f => f.Value.Ticks).ThenBy(f => GridStep(f.Key) ?? long.MaxValue)
                .Select(f => f.Key).FirstOrDefault();
            var checkpoints = RunFolder.Checkpoints(Folder).Select(c => c.Step).ToArray();
            long? updated = files.Count == 0 ? null : new DateTime(files.Values.Max(s => s.Ticks), DateTimeKind.Utc).Subtract(DateTime.UnixEpoch).Ticks / TimeSpan.TicksPerMillisecond;
            return _last = new RunSnapshot(Folder, version, config?.Json, loss, metrics, grids, latest, checkpoints, [.. notes], updated, Now());
        }
    }

    /// <summary>
    /// The bytes of the grid called <paramref name="name"/> if the folder's listing has one by that name now (the
    /// name is looked up, never joined to a path), else null.
    /// </summary>
    public byte[]? Grid(string name)
    {
        var snapshot = Snapshot();
        var grid = snapshot.Grids.FirstOrDefault(g => g.Name == name);
        if (grid is null) return null;
        try
        {
            return ReadBytes(System.IO.Path.Combine(Folder, grid.Name), MaxGridBytes, tail: false).Bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // renamed away or replaced in between: the next listing says what is there
        }
    }

    private RunSnapshot Empty(string note) =>
        new(Folder, "none", null, new LossSeries(0, 1, [], [], [], [], null), new MetricsTable(MetricsLog.Header.Split(','), []), [], null, [], [note], null, Now());

    private static long Now() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    /// <summary>The regular files of the layout in the folder, by name, with their stamps.</summary>
    private SortedDictionary<string, Stamp> List(List<string> notes)
    {
        var files = new SortedDictionary<string, Stamp>(StringComparer.Ordinal);
        IEnumerable<string> names;
        try
        {
            names = Directory.EnumerateFiles(Folder).Select(p => System.IO.Path.GetFileName(p)).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            notes.Add($"the run folder cannot be listed: {e.Message}");
            return files;
        }
        foreach (var name in names)
        {
            bool wanted = name is RunFolder.ConfigName or RunFolder.LossName or RunFolder.MetricsName || IsGrid(name);
            if (!wanted) continue;
            var info = new FileInfo(System.IO.Path.Combine(Folder, name));
            try
            {
                if (!info.Exists) continue;
                if (info.LinkTarget is not null)
                {
                    notes.Add($"{name} is a symbolic link; only the folder's own files are read");
                    continue;
                }
                if (InputFile.NotRegular(info.FullName) is { } kind)
                {
                    notes.Add($"{name} is {kind}, not a regular file; not read");
                    continue;
                }
                files[name] = new Stamp(info.Length, info.LastWriteTimeUtc.Ticks);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Renamed away between the listing and the look: the next listing says what is there.
            }
        }
        return files;
    }

    private string Version(SortedDictionary<string, Stamp> files)
    {
        var hash = new HashCode();
        foreach (var (name, stamp) in files)
        {
            hash.Add(name, StringComparer.Ordinal);
            hash.Add(stamp);
        }
        foreach (var (step, _) in RunFolder.Checkpoints(Folder)) hash.Add(step);
        return ((uint)hash.ToHashCode()).ToString("x8", CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// The parsed content of <paramref name="name"/>: parsed again only when its stamp changed. A file that cannot
    /// be read now keeps the previous content; its problem goes to <paramref name="notes"/>.
    /// </summary>
    private T? Read<T>(SortedDictionary<string, Stamp> files, string name, long max, Func<byte[], bool, (T Value, string? Note)> parse,
        List<string> notes) where T : class
    {
        _parsed.TryGetValue(name, out var cached);
        if (!files.TryGetValue(name, out var stamp))
        {
            _parsed.Remove(name);
            return null;
        }
        if (cached.Value is not null && cached.Stamp == stamp)
        {
            if (cached.Note is not null) notes.Add(cached.Note);
            return (T)cached.Value;
        }
        try
        {
            var (bytes, fromTail) = ReadBytes(System.IO.Path.Combine(Folder, name), max, tail: true);
            var (value, note) = parse(bytes, fromTail);
            _parsed[name] = (stamp, value, note);
            if (note is not null) notes.Add(note);
            return value;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            if (e is not (FileNotFoundException or DirectoryNotFoundException)) notes.Add($"{name} could not be read: {e.Message}");
            return cached.Value as T;
        }
    }

    /// <summary>
    /// The file's bytes, at most <paramref name="max"/>: its end when <paramref name="tail"/> (then
    /// <c>FromTail</c> is true), else an error when larger.
    /// </summary>
    private static (byte[] Bytes, bool FromTail) ReadBytes(string path, long max, bool tail)
    {
        // Shared with the run that appends to the file, and with a rename over it.
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1);
        long length = fs.Length;
        bool fromTail = length > max;
        if (fromTail)
        {
            if (!tail) throw new IOException($"{System.IO.Path.GetFileName(path)} is larger than {max >> 20} MiB");
            fs.Seek(length - max, SeekOrigin.Begin);
            length = max;
        }
        var buffer = new byte[length];
        int read = 0;
        while (read < buffer.Length)
        {
            int r = fs.Read(buffer, read, buffer.Length - read);
            if (r == 0) break;
            read += r;
        }
        return (read == buffer.Length ? buffer : buffer[..read], fromTail);
    }

    /// <summary>The complete lines of a CSV log (a last line without its newline is still being written); the first when the file was read from its start is the header.</summary>
    private static List<string> Lines(byte[] bytes, bool fromTail)
    {
        int end = Array.LastIndexOf(bytes, (byte)'\n') + 1;
        int start = fromTail ? Array.IndexOf(bytes, (byte)'\n', 0, end) + 1 : 0;
        return Encoding.UTF8.GetString(bytes, start, Math.Max(0, end - start)).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.TrimEnd('\r')).ToList();
    }

    private static (LossSeries, string?) ParseLoss(byte[] bytes, bool truncated)
    {
        var lines = Lines(bytes, truncated);
        string[] header = truncated ? LossLog.Header.Split(',') : lines.Count > 0 ? lines[0].Split(',') : [];
        var at = LossColumns.Select(c => Array.IndexOf(header, c)).ToArray();
        if (at.Any(i => i < 0))
            return (new LossSeries(0, 1, [], [], [], [], null), lines.Count == 0 ? null : $"{RunFolder.LossName} does not begin with the header {LossLog.Header}");
        var rows = new List<(long Step, double Loss, double Grad, double Lr, string[] Fields)>();
        int skipped = 0;
        foreach (var line in lines.Skip(truncated ? 0 : 1))
        {
            var f = line.Split(',');
            if (f.Length == header.Length && long.TryParse(f[at[0]], NumberStyles.None, CultureInfo.InvariantCulture, out long step)
                && double.TryParse(f[at[1]], NumberStyles.Float, CultureInfo.InvariantCulture, out double loss) && double.IsFinite(loss)
                && double.TryParse(f[at[2]], NumberStyles.Float, CultureInfo.InvariantCulture, out double grad) && double.IsFinite(grad)
                && double.TryParse(f[at[3]], NumberStyles.Float, CultureInfo.InvariantCulture, out double lr) && double.IsFinite(lr))
                rows.Add((step, loss, grad, lr, f));
            else skipped++;
        }
        int every = Math.Max(1, (rows.Count + MaxPoints - 1) / MaxPoints);
        int points = (rows.Count + every - 1) / every;
        var steps = new long[points];
        double[] losses = new double[points], grads = new double[points], lrs = new double[points];
        for (int p = 0; p < points; p++)
        {
            int from = p * every, to = Math.Min(rows.Count, from + every);
            double l = 0, g = 0;
            for (int i = from; i < to; i++) { l += rows[i].Loss; g += rows[i].Grad; }
            steps[p] = rows[to - 1].Step;
            losses[p] = l / (to - from);
            grads[p] = g / (to - from);
            lrs[p] = rows[to - 1].Lr;
        }
        var notes = new List<string>();
        if (skipped > 0) notes.Add($"{skipped} line{(skipped == 1 ? "" : "s")} of {RunFolder.LossName} skipped (not {LossLog.Header})");
        if (truncated) notes.Add($"{RunFolder.LossName} is larger than {MaxCsvBytes >> 20} MiB: its last rows are shown");
        return (new LossSeries(rows.Count, every, steps, losses, grads, lrs, rows.Count > 0 ? rows[^1].Fields : null),
            notes.Count == 0 ? null : string.Join("; ", notes));
    }

    private static (MetricsTable, string?) ParseMetrics(byte[] bytes, bool truncated)
    {
        var lines = Lines(bytes, truncated);
        string[] header = truncated || lines.Count == 0 ? MetricsLog.Header.Split(',') : lines[0].Split(',');
        int step = Array.IndexOf(header, "step"), fid = Array.IndexOf(header, "fid");
        if (step < 0 || fid < 0)
            return (new MetricsTable(MetricsLog.Header.Split(','), []), $"{RunFolder.MetricsName} does not begin with the header {MetricsLog.Header}");
        var rows = new List<string[]>();
        int skipped = 0;
        foreach (var line in lines.Skip(truncated ? 0 : 1))
        {
            var f = line.Split(',');
            if (f.Length == header.Length && long.TryParse(f[step], NumberStyles.None, CultureInfo.InvariantCulture, out _)
                && double.TryParse(f[fid], NumberStyles.Float, CultureInfo.InvariantCulture, out _))
                rows.Add(f);
            else skipped++;
        }
        return (new MetricsTable(header, [.. rows]), skipped == 0 ? null : $"{skipped} line{(skipped == 1 ? "" : "s")} of {RunFolder.MetricsName} skipped");
    }

    /// <summary>config.json's content, or null when it is not JSON.</summary>
    private sealed record ConfigValue(JsonElement? Json);

    private static (ConfigValue, string?) ParseConfig(byte[] bytes, bool truncated)
    {
        if (truncated) return (new ConfigValue(null), $"{RunFolder.ConfigName} is larger than {MaxConfigBytes >> 20} MiB; not read");
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
            return (new ConfigValue(doc.RootElement.Clone()), null);
        }
        catch (JsonException e)
        {
            return (new ConfigValue(null), $"{RunFolder.ConfigName} is not valid JSON ({e.Message})");
        }
    }

    private static bool IsGrid(string name) => RunFolder.IsSampleGrid(name, out _);

    private static long? GridStep(string name) => RunFolder.IsSampleGrid(name, out long? step) ? step : null;
}
