using System.Globalization;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// metrics.csv of a run folder: one row per sample-quality measurement (step, FID, IS, class accuracy, samples,
/// seconds). A resumed run keeps the rows up to its checkpoint's step (rewritten whole) and the best FID among them.
/// </summary>
public sealed class MetricsLog
{
    public const string Header = "step,fid,inception_score,class_accuracy,samples,seconds";
    private readonly string _path;
    private readonly List<(long Step, double Fid)> _fids = new();

    public MetricsLog(string path, long? resumeStep)
    {
        _path = path;
        var kept = new List<string>();
        if (resumeStep is { } last && File.Exists(path))
            foreach (var line in File.ReadLines(path).Skip(1))
            {
                var f = line.Split(',');
                if (f.Length >= 2 && long.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out long s) && s <= last
                    && double.TryParse(f[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double fid))
                {
                    kept.Add(line);
                    _fids.Add((s, fid));
                }
            }
        AtomicFile.Write(path, stream =>
        {
            using var w = new StreamWriter(stream, leaveOpen: true);
            w.Write(Header + "\n");
            foreach (var line in kept) w.Write(line + "\n");
        });
    }

    /// <summary>The FIDs measured so far, by step.</summary>
    public IReadOnlyList<(long Step, double Fid)> Fids => _fids;

    /// <summary>The lowest FID so far (infinity before the first).</summary>
    public double BestFid => _fids.Count == 0 ? double.PositiveInfinity : _fids.Min(f => f.Fid);

    /// <summary>Appends a measurement (and pushes it to the file).</summary>
    public void Add(QualityResult r)
    {
        _fids.Add((r.Step, r.Fid));
        string accuracy = r.ClassAccuracy is { } a ? a.ToString("R", CultureInfo.InvariantCulture) : "";
        File.AppendAllText(_path, string.Create(CultureInfo.InvariantCulture,
            $"{r.Step},{r.Fid:R},{r.InceptionScore:R},{accuracy},{r.Samples},{r.Seconds:F2}\n"));
    }
}
