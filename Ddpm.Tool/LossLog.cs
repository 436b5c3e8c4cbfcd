using System.Globalization;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool;

/// <summary>The training log: loss.csv (step, loss, grad norm, lr, seconds) and a loss-curve PNG.</summary>
internal sealed class LossLog
{
    private readonly string _path;
    private readonly List<string> _pending = new();
    private readonly List<(double Step, double Loss)> _all = new();

    public LossLog(string path, bool append)
    {
        _path = path;
        if (append && File.Exists(path))
        {
            foreach (var line in File.ReadLines(path).Skip(1))
            {
                var f = line.Split(',');
                if (f.Length >= 2 && double.TryParse(f[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var s)
                    && double.TryParse(f[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var l))
                    _all.Add((s, l));
            }
        }
        else
        {
            File.WriteAllText(path, "step,loss,grad_norm,lr,seconds\n");
        }
    }

    public IReadOnlyList<(double Step, double Loss)> Points => _all;

    public void Add(TrainStep s)
    {
        _all.Add((s.Step, s.Loss));
        _pending.Add(string.Create(CultureInfo.InvariantCulture, $"{s.Step},{s.Loss:R},{s.GradNorm:G6},{s.LearningRate:G6},{s.Seconds:F4}"));
        if (_pending.Count >= 100) Flush();
    }

    public void Flush()
    {
        if (_pending.Count == 0) return;
        File.AppendAllLines(_path, _pending);
        _pending.Clear();
    }

    public void Plot(string path) =>
        LinePlot.SavePng(path, _all.Select(p => p.Step).ToList(), _all.Select(p => p.Loss).ToList(), "training loss (L_simple), log scale", logY: true);
}
