using System.Globalization;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// The training log, loss.csv (step, loss, grad norm, lr, seconds). Rows are kept in memory and appended by
/// <see cref="Flush"/>, which the run calls (durably) before each checkpoint is renamed into place, so the log on
/// disk always covers the checkpoint on disk; rows past it (a run killed between the two) are dropped when the run
/// resumes. Rows are appended whole (<see cref="AppendFile"/>): a failed append is cut off before the next.
/// </summary>
public sealed class LossLog
{
    /// <summary>loss.csv's first line: its columns.</summary>
    public const string Header = "step,loss,grad_norm,lr,seconds";
    private readonly AppendFile _file;
    private int _pending;
    private readonly List<(double Step, double Loss)> _all = new();

    /// <summary>
    /// A new log, or with <paramref name="resumeStep"/> the existing one cut to the rows of steps up to that step
    /// (the resumed checkpoint's), rewritten atomically; written through <paramref name="files"/> (null: the disk).
    /// </summary>
    public LossLog(string path, long? resumeStep, IOutputFiles? files = null)
    {
        foreach (var (step, value) in Restart(path, Header, resumeStep, files)) _all.Add((step, value));
        _file = new AppendFile(path, files);
    }

    /// <summary>
    /// Starts a CSV log of a run folder (<paramref name="header"/>, then rows "step,value,..."): a new run's is
    /// empty; a resumed run's keeps the rows of steps up to <paramref name="resumeStep"/> (the resumed checkpoint's,
    /// so rows a stopped run wrote after it go), rewritten atomically. Only whole rows are kept: the header's number
    /// of fields, numbers (or empty), a newline at the end, steps from 1 and increasing. Returns the kept rows' step
    /// and first value.
    /// </summary>
    internal static List<(long Step, double Value)> Restart(string path, string header, long? resumeStep, IOutputFiles? files)
    {
        var kept = new List<(long, double)>();
        var lines = new List<string>();
        if (resumeStep is { } last && File.Exists(path))
        {
            string text;
            using (var reader = new StreamReader(InputFile.OpenRead(path))) text = reader.ReadToEnd();
            int fields = header.Split(',').Length;
            string[] rows = text.Split('\n');
            // rows[^1] follows the last newline: empty, or a row a stopped run did not finish.
            for (int i = 1; i < rows.Length - 1; i++)
            {
                var f = rows[i].Split(',');
                if (f.Length == fields && long.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out long s)
                    && double.TryParse(f[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
                    && f.Skip(2).All(x => x.Length == 0 || double.TryParse(x, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
                    && s <= last && s > (kept.Count == 0 ? 0 : kept[^1].Item1))
                {
                    kept.Add((s, v));
                    lines.Add(rows[i]);
                }
            }
        }
        AtomicFile.Write(path, stream =>
        {
            using var w = new StreamWriter(stream, leaveOpen: true);
            w.Write(header + "\n");
            foreach (var line in lines) w.Write(line + "\n");
        }, files);
        return kept;
    }

    public IReadOnlyList<(double Step, double Loss)> Points => _all;

    public void Add(TrainStep s)
    {
        _all.Add((s.Step, s.Loss));
        _file.Append(string.Create(CultureInfo.InvariantCulture, $"{s.Step},{s.Loss:R},{s.GradNorm:G6},{s.LearningRate:G6},{s.Seconds:F4}\n"));
        if (++_pending >= 100) Flush(durable: false);
    }

    /// <summary>Appends the pending rows; <paramref name="durable"/> also forces them to disk (before a checkpoint is renamed into place).</summary>
    public void Flush(bool durable)
    {
        _file.Flush(durable);
        _pending = 0;
    }
}
