using System.Globalization;

namespace Ddpm.Diffusion.Imaging;

/// <summary>
/// A small self-contained line chart rendered to PNG (loss curves): axes, ticks with labels drawn in a built-in
/// 5x7 pixel font, a faint raw series and a bold smoothed one, optional log-scale y. No native dependencies.
/// </summary>
public static class LinePlot
{
    private const int W = 720, H = 400, Left = 70, Right = 20, Top = 30, Bottom = 40;

    /// <summary>
    /// Plots y against x; the bold line is a bias-corrected exponential moving average whose window is about a
    /// fiftieth of the run (at most 0.99 per point).
    /// </summary>
    public static void SavePng(string path, IReadOnlyList<double> x, IReadOnlyList<double> y, string title, bool logY)
    {
        if (x.Count != y.Count) throw new ArgumentException("x and y differ in length.");
        var img = new byte[W * H * 3];
        Array.Fill(img, (byte)255);
        var pts = Enumerable.Range(0, x.Count).Where(i => double.IsFinite(y[i]) && (!logY || y[i] > 0)).ToList();
        double Ty(double v) => logY ? Math.Log10(v) : v;
        double x0 = pts.Count > 0 ? pts.Min(i => x[i]) : 0, x1 = pts.Count > 0 ? pts.Max(i => x[i]) : 1;
        double y0 = pts.Count > 0 ? pts.Min(i => Ty(y[i])) : 0, y1 = pts.Count > 0 ? pts.Max(i => Ty(y[i])) : 1;
        if (x1 <= x0) x1 = x0 + 1;
        if (y1 <= y0) { y1 = y0 + 0.5; y0 -= 0.5; }
        double pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
        int Px(double v) => Left + (int)Math.Round((v - x0) / (x1 - x0) * (W - Left - Right));
        int Py(double v) => H - Bottom - (int)Math.Round((Ty(v) - y0) / (y1 - y0) * (H - Top - Bottom));

        // Grid and ticks.
        foreach (double t in Ticks(y0, y1, 6))
        {
            int py = H - Bottom - (int)Math.Round((t - y0) / (y1 - y0) * (H - Top - Bottom));
            Line(img, Left, py, W - Right, py, 230, 230, 230, 1);
            double label = logY ? Math.Pow(10, t) : t;
            string s = label.ToString(Math.Abs(label) < 0.01 || Math.Abs(label) >= 1e5 ? "0.0e0" : "G3", CultureInfo.InvariantCulture);
            Text(img, s, Left - 6 - s.Length * 6, py - 3);
        }
        foreach (double t in Ticks(x0, x1, 8))
        {
            int px = Px(t);
            Line(img, px, Top, px, H - Bottom, 230, 230, 230, 1);
            string s = t.ToString("G6", CultureInfo.InvariantCulture);
            Text(img, s, px - s.Length * 3, H - Bottom + 8);
        }
        Line(img, Left, H - Bottom, W - Right, H - Bottom, 0, 0, 0, 1);
        Line(img, Left, Top, Left, H - Bottom, 0, 0, 0, 1);
        Text(img, title, Left, 10);
        Text(img, "step", W - Right - 24, H - 14);

        // Raw series, then an exponential moving average on top.
        for (int k = 1; k < pts.Count; k++)
            Line(img, Px(x[pts[k - 1]]), Py(y[pts[k - 1]]), Px(x[pts[k]]), Py(y[pts[k]]), 160, 190, 230, 1);
        double smoothing = Math.Clamp(1 - 50.0 / Math.Max(pts.Count, 1), 0, 0.99);
        double ema = 0, weight = 0; int? lx = null, ly = null;
        foreach (int i in pts)
        {
            ema = smoothing * ema + (1 - smoothing) * (logY ? Math.Log(y[i]) : y[i]);
            weight = smoothing * weight + (1 - smoothing);
            double v = ema / weight;
            int px = Px(x[i]), py = Py(logY ? Math.Exp(v) : v);
            if (lx is not null) Line(img, lx.Value, ly!.Value, px, py, 20, 60, 160, 2);
            lx = px; ly = py;
        }
        ImageGrid.WritePng(path, img, W, H, 3);
    }

    private static IEnumerable<double> Ticks(double lo, double hi, int target)
    {
        double raw = (hi - lo) / target;
        double mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 5, 10 }.Select(m => m * mag).First(s => s >= raw);
        for (double t = Math.Ceiling(lo / step) * step; t <= hi + 1e-12; t += step) yield return Math.Abs(t) < step * 1e-9 ? 0 : t;
    }

    private static void Put(byte[] img, int x, int y, byte r, byte g, byte b)
    {
        if ((uint)x >= W || (uint)y >= H) return;
        int o = (y * W + x) * 3;
        img[o] = r; img[o + 1] = g; img[o + 2] = b;
    }

    private static void Line(byte[] img, int xa, int ya, int xb, int yb, byte r, byte g, byte b, int width)
    {
        int dx = Math.Abs(xb - xa), dy = -Math.Abs(yb - ya), sx = xa < xb ? 1 : -1, sy = ya < yb ? 1 : -1, err = dx + dy;
        while (true)
        {
            for (int ox = 0; ox < width; ox++) for (int oy = 0; oy < width; oy++) Put(img, xa + ox, ya + oy, r, g, b);
            if (xa == xb && ya == yb) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; xa += sx; }
            if (e2 <= dx) { err += dx; ya += sy; }
        }
    }

    // 5x7 glyphs, one string of 7 rows of 5 bits per character.
    private static readonly Dictionary<char, string> Font = new()
    {
        ['0'] = "01110100011001110101110011000101110", ['1'] = "00100011000010000100001000010001110",
        ['2'] = "01110100010000100010001000100011111", ['3'] = "11111000100010000010000011000101110",
        ['4'] = "00010001100101010010111110001000010", ['5'] = "11111100001111000001000011000101110",
        ['6'] = "00110010001000011110100011000101110", ['7'] = "11111000010001000100010000100001000",
        ['8'] = "01110100011000101110100011000101110", ['9'] = "01110100011000101111000010001001100",
        ['.'] = "00000000000000000000000000110001100", ['-'] = "00000000000000011111000000000000000",
        ['+'] = "00000001000010011111001000010000000", ['e'] = "00000000000111010001111111000001110",
        ['s'] = "00000000000111010000011100000111110", ['t'] = "01000010001110001000010000100100110",
        ['p'] = "00000000001111010001111101000010000", ['l'] = "01100001000010000100001000010001110",
        ['o'] = "00000000000111010001100011000101110", ['a'] = "00000000000111000001011111000101111",
        ['i'] = "00100000000110000100001000010001110", ['n'] = "00000000001011011001100011000110001",
        ['g'] = "00000000000111110001011110000101110", ['r'] = "00000000001011011001100001000010000",
        ['m'] = "00000000001101010101101011000110001", ['(' ] = "00010001000100001000010000010000010",
        [')'] = "01000001000001000010000100010001000", [' '] = "00000000000000000000000000000000000",
        ['L'] = "10000100001000010000100001000011111", [','] = "00000000000000000000001100010001000",
        ['E'] = "11111100001000011110100001000011111", ['M'] = "10001110111010110101100011000110001",
        ['A'] = "01110100011000111111100011000110001", ['h'] = "10000100001011011001100011000110001",
        ['d'] = "00001000010110110011100011000101111", ['c'] = "00000000000111010000100001000101110",
        ['u'] = "00000000001000110001100011001101101", ['v'] = "00000000001000110001100010101000100",
        ['w'] = "00000000001000110001101011010101010", ['=' ] = "00000000001111100000111110000000000",
        ['x'] = "00000000001000101010001000101010001", ['y'] = "00000000001000110001011110000101110",
        ['b'] = "10000100001011011001100011000111110", ['f'] = "00110010010100011100010000100001000",
        ['k'] = "10000100001001010100110001010010010", ['T'] = "11111001000010000100001000010000100",
        ['D'] = "11100100101000110001100011001011100", ['I'] = "01110001000010000100001000010001110",
        ['S'] = "01111100001000001110000010000111110", ['P'] = "11110100011000111110100001000010000",
    };

    private static void Text(byte[] img, string s, int x, int y)
    {
        foreach (char ch in s)
        {
            if (Font.TryGetValue(ch, out var g) || Font.TryGetValue(char.ToLowerInvariant(ch), out g))
                for (int r = 0; r < 7; r++)
                    for (int c = 0; c < 5; c++)
                        if (g[r * 5 + c] == '1') Put(img, x + c, y + r, 40, 40, 40);
            x += 6;
        }
    }
}
