using System.Globalization;
using Ddpm.Tensors.IO;
using ScottPlot;

namespace Ddpm.Tool;

/// <summary>
/// The loss curve as a PNG (ScottPlot): every step's loss faint, a moving average bold, the loss axis
/// logarithmic (the loss falls by orders of magnitude in the first hundred steps).
/// </summary>
internal static class LossPlot
{
    public const int Width = 800, Height = 450;

    public static void Save(string path, IReadOnlyList<(double Step, double Loss)> points, IOutputFiles? files = null)
    {
        var kept = points.Where(p => double.IsFinite(p.Loss) && p.Loss > 0).ToArray();
        double[] steps = kept.Select(p => p.Step).ToArray();
        double[] logLoss = kept.Select(p => Math.Log10(p.Loss)).ToArray();

        using var plot = new Plot();
        if (kept.Length > 0)
        {
            var raw = plot.Add.ScatterLine(steps, logLoss);
            raw.LegendText = "loss per step";
            raw.Color = Colors.SteelBlue.WithAlpha(0.35);
            raw.LineWidth = 1;
            var smooth = plot.Add.ScatterLine(steps, Smooth(logLoss));
            smooth.LegendText = "moving average";
            smooth.Color = Colors.DarkBlue;
            smooth.LineWidth = 2.5f;
            plot.ShowLegend(Alignment.UpperRight);
        }
        // Log-scale axis: the values are log10(loss); the ticks are labelled with the loss itself.
        if (kept.Length > 0)
        {
            var ticks = new ScottPlot.TickGenerators.NumericManual();
            foreach (var (position, label) in LogTicks(logLoss.Min(), logLoss.Max())) ticks.AddMajor(position, label);
            plot.Axes.Left.TickGenerator = ticks;
        }
        plot.Title("Training loss");
        plot.XLabel("step");
        plot.YLabel("loss (log scale)");
        plot.Grid.MajorLineColor = Colors.Black.WithAlpha(0.12);
        Write(plot, path, files);
    }

    /// <summary>Writes <paramref name="plot"/> as a PNG whole or not at all (<see cref="AtomicFile"/>, through <paramref name="files"/>).</summary>
    internal static void Write(Plot plot, string path, IOutputFiles? files)
    {
        byte[] png = plot.GetImageBytes(Width, Height, ImageFormat.Png);
        AtomicFile.Write(path, s => s.Write(png), files);
    }

    /// <summary>
    /// Ticks for a log10 axis spanning [lo, hi]: the values 1, 2 and 5 (or every digit, over a short span) times a
    /// power of ten; over a span too short for two of those, evenly spaced round values of the loss.
    /// </summary>
    internal static (double Position, string Label)[] LogTicks(double lo, double hi)
    {
        List<double> values = [];
        foreach (int[] mantissas in new[] { new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, new[] { 1, 2, 5 }, new[] { 1 } })
        {
            values = [];
            for (int e = (int)Math.Floor(lo) - 1; e <= (int)Math.Ceiling(hi); e++)
                foreach (int m in mantissas)
                {
                    double v = m * Math.Pow(10, e);
                    if (Math.Log10(v) >= lo && Math.Log10(v) <= hi) values.Add(v);
                }
            if (values.Count <= 8) break;
        }
        if (values.Count < 2)
        {
            // The smallest step of 1, 2 or 5 times a power of ten that gives at most 7 ticks.
            double a = Math.Pow(10, lo), b = Math.Pow(10, hi), span = Math.Max(b - a, 1e-12);
            double unit = Math.Pow(10, Math.Floor(Math.Log10(span)) - 2);
            int[] mantissas = [1, 2, 5];
            int i = 0;
            while (span / (mantissas[i % 3] * unit * Math.Pow(10, i / 3)) > 7) i++;
            double step = mantissas[i % 3] * unit * Math.Pow(10, i / 3);
            values = [];
            for (long k = (long)Math.Ceiling(a / step); k * step <= b; k++) values.Add(k * step);
        }
        return values.Select(v => (Math.Log10(v), v.ToString("G3", CultureInfo.InvariantCulture))).ToArray();
    }

    /// <summary>
    /// Bias-corrected exponential moving average (as Adam corrects its moments) with a window of about a fiftieth
    /// of the run, in log space so that the early large losses do not dominate it.
    /// </summary>
    internal static double[] Smooth(IReadOnlyList<double> y)
    {
        double beta = Math.Min(0.99, 1 - 1.0 / Math.Max(1, y.Count / 50.0));
        var result = new double[y.Count];
        double m = 0, w = 0;
        for (int i = 0; i < y.Count; i++)
        {
            m = beta * m + (1 - beta) * y[i];
            w = beta * w + (1 - beta);
            result[i] = w > 0 ? m / w : y[i];
        }
        return result;
    }
}

/// <summary>FID by step as a PNG (ScottPlot), beside the loss curve.</summary>
internal static class FidPlot
{
    public static void Save(string path, IReadOnlyList<(long Step, double Fid)> points, IOutputFiles? files = null)
    {
        using var plot = new Plot();
        var line = plot.Add.Scatter(points.Select(p => (double)p.Step).ToArray(), points.Select(p => p.Fid).ToArray());
        line.LegendText = "FID (bundled classifier's features)";
        line.LineWidth = 2;
        line.MarkerSize = 8;
        plot.ShowLegend(Alignment.UpperRight);
        plot.Title("Sample quality while training");
        plot.XLabel("step");
        plot.YLabel("FID (lower is better)");
        plot.Grid.MajorLineColor = Colors.Black.WithAlpha(0.12);
        LossPlot.Write(plot, path, files);
    }
}
