using System.Diagnostics;
using System.Globalization;

namespace Ddpm.Tool;

/// <summary>
/// Progress of a long loop (training steps, sampling steps): a live line redrawn at most five times a second on a
/// terminal; otherwise a plain line at the first step, every <c>every</c> steps and at the last (none when
/// <c>every</c> is 0, for verbs that print their own summary).
/// </summary>
public sealed class ProgressLine(ToolConsole con, long start = 0, int every = 0)
{
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private DateTime _lastDraw = DateTime.MinValue;
    private bool _drew;

    public double Elapsed => _sw.Elapsed.TotalSeconds;

    /// <summary>Steps per second since the start.</summary>
    public double Rate(long step) => (step - start) / Math.Max(Elapsed, 1e-9);

    /// <summary>Reports step <paramref name="step"/> of <paramref name="total"/>, with <paramref name="detail"/> after the count.</summary>
    public void Report(long step, long total, string detail = "")
    {
        double eta = (total - step) / Math.Max(Rate(step), 1e-9);
        string line = string.Create(CultureInfo.InvariantCulture,
            $"step {step,7:N0}/{total:N0}  {(detail.Length > 0 ? detail + "  " : "")}{Duration.Format(Elapsed)} elapsed, ETA {Duration.Format(eta)}");
        if (con.Interactive)
        {
            if ((DateTime.UtcNow - _lastDraw).TotalMilliseconds < 200 && step != total) return;
            _lastDraw = DateTime.UtcNow;
            con.Out.Write("\r" + line.PadRight(110));
            _drew = true;
        }
        else if (every > 0 && (step % every == 0 || step == total || step - start == 1))
        {
            con.Out.WriteLine(line);
        }
    }

    /// <summary>Prints a line of its own between progress lines (the live line is redrawn at the next report).</summary>
    public void Note(string line)
    {
        Finish();
        con.Out.WriteLine(line);
        _lastDraw = DateTime.MinValue;
    }

    /// <summary>Ends the live line so that the next output starts on a fresh one.</summary>
    public void Finish()
    {
        if (_drew) con.Out.WriteLine();
        _drew = false;
    }
}
