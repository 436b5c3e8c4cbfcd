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
    private readonly AppendFile _file;
    private readonly List<(long Step, double Fid)> _fids = new();

    /// <summary>The log at <paramref name="path"/>, written through <paramref name="files"/> (null: the disk).</summary>
    public MetricsLog(string path, long? resumeStep, IOutputFiles? files = null)
    {
        _fids.AddRange(LossLog.Restart(path, Header, resumeStep, files));
        _file = new AppendFile(path, files);
    }

    /// <summary>The FIDs measured so far, by step.</summary>
    public IReadOnlyList<(long Step, double Fid)> Fids => _fids;

    /// <summary>The lowest FID so far (infinity before the first).</summary>
    public double BestFid => _fids.Count == 0 ? double.PositiveInfinity : _fids.Min(f => f.Fid);

    /// <summary>Appends a measurement and forces it to disk.</summary>
    public void Add(QualityResult r)
    {
        string accuracy = r.ClassAccuracy is { } a ? a.ToString("R", CultureInfo.InvariantCulture) : "";
        _file.Append(string.Create(CultureInfo.InvariantCulture,
            $"{r.Step},{r.Fid:R},{r.InceptionScore:R},{accuracy},{r.Samples},{r.Seconds:F2}\n"));
        _file.Flush(durable: true);
        _fids.Add((r.Step, r.Fid));
    }
}
