using System.Globalization;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// The training log, loss.csv (step, loss, grad norm, lr, seconds). Rows are kept in
/// memory and appended by <see cref="Flush"/>, which the run calls (durably) before each checkpoint is renamed into
/// place, so the log on disk always covers the checkpoint on disk; rows past it (a run killed between the two) are
/// dropped when the run resumes.
/// </summary>
public sealed class LossLog
{
    /// <summary>loss.csv's first line: its columns.</summary>
    public const string Header = "step,loss,grad_norm,lr,seconds";
    private readonly string _path;
    private readonly List<string> _pending = new();
    private readonly List<(double Step, double Loss)> _all = new();

    /// <summary>
    /// A new log, or with <paramref name="resumeStep"/> the existing one cut to the rows of steps up to that step
    /// (the resumed checkpoint's), rewritten atomically.
    /// </summary>
    public LossLog(string path, long? resumeStep)
    {
        _path = path;
        foreach (var (step, value, _) in Restart(path, Header, resumeStep)) _all.Add((step, value));
    }

    /// <summary>
    /// Starts a CSV log of a run folder (<paramref name="header"/>, then rows "step,value,..."): a new run's is
    /// empty; a resumed run's keeps the rows of steps up to <paramref name="resumeStep"/> (the resumed checkpoint's,
    /// so rows a stopped run wrote after it go), rewritten atomically. Returns the kept rows' step and first value.
    /// </summary>
    internal static List<(double Step, double Value, string Line)> Restart(string path, string header, long? resumeStep)
    {
        var kept = new List<(double, double, string)>();
        if (resumeStep is { } last && File.Exists(path))
        {
            using var reader = new StreamReader(InputFile.OpenRead(path));
            reader.ReadLine();
            while (reader.ReadLine() is { } line)
            {
                var f = line.Split(',');
                if (f.Length >= 2 && double.TryParse(f[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var s)
                    && double.TryParse(f[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && s <= last)
                    kept.Add((s, v, line));
            }
        }
        AtomicFile.Write(path, stream =>
        {
            using var w = new StreamWriter(stream, leaveOpen: true);
            w.Write(header + "\n");
            foreach (var (_, _, line) in kept) w.Write(line + "\n");
        });
        return kept;
    }

    public IReadOnlyList<(double Step, double Loss)> Points => _all;

    public void Add(TrainStep s)
    {
        _all.Add((s.Step, s.Loss));
        _pending.Add(string.Create(CultureInfo.InvariantCulture, $"{s.Step},{s.Loss:R},{s.GradNorm:G6},{s.LearningRate:G6},{s.Seconds:F4}"));
        if (_pending.Count >= 100) Flush(durable: false);
    }

    /// <summary>Appends the pending rows; <paramref name="durable"/> also forces them to disk (before a checkpoint is renamed into place).</summary>
    public void Flush(bool durable)
    {
        if (_pending.Count == 0 && !durable) return;
        using var fs = new FileStream(_path, FileMode.Append, FileAccess.Write, FileShare.Read);
        using (var w = new StreamWriter(fs, leaveOpen: true))
            foreach (var line in _pending) w.Write(line + "\n");
        if (durable) fs.Flush(flushToDisk: true);
        _pending.Clear();
    }

}
