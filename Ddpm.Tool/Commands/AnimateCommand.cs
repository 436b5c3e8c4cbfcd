using System.Diagnostics;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.PixelFormats;

namespace Ddpm.Tool.Commands;

[Verb("animate", HelpText = "Show the reverse process: predicted-x0 frames of a few samples as a PNG strip and an animated GIF.")]
public sealed class AnimateOptions : SamplingOptions
{
    [Option('n', "count", Default = 4, HelpText = "Number of samples, one row each (also --n).")]
    public int N { get; set; }

    [Option("frames", Default = 10, HelpText = "Frames recorded over the reverse process.")]
    public int Frames { get; set; }

    [Option("out", Default = "animation", HelpText = "Output path without extension: writes OUT.png (strip) and OUT.gif.")]
    public string Out { get; set; } = "animation";

    [Option("scale", Default = 4, HelpText = "Pixel scale (nearest neighbour) of the PNG strip and the GIF.")]
    public int Scale { get; set; }
}

public static class AnimateCommand
{
    /// <summary>Every sample and frame is kept for the strip and the GIF, so their counts are bounded.</summary>
    public const int MaxCount = 256, MaxFrames = 1000, MaxScale = 64;

    public static int Run(AnimateOptions o, ToolConsole con)
    {
        if (o.N is <= 0 or > MaxCount) throw new UsageError($"--n must be between 1 and {MaxCount}, got {o.N}.");
        if (o.Frames is < 2 or > MaxFrames) throw new UsageError($"--frames must be between 2 and {MaxFrames}, got {o.Frames}.");
        if (o.Scale is <= 0 or > MaxScale) throw new UsageError($"--scale must be between 1 and {MaxScale}, got {o.Scale}.");
        OutputFiles.CheckFile(o.Out + ".png", "--out");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, _) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        int c = mc.ImageChannels, s = mc.ImageSize, per = c * s * s;
        long stripBytes = MemoryEstimate.GridBytes(o.N * o.Frames, o.Frames, c, s, o.Scale);
        if (stripBytes > Array.MaxLength || (long)o.N * o.Frames * per > Array.MaxLength)
            throw new UsageError($"a strip of {o.N} x {o.Frames} frames of {s}x{s} at --scale {o.Scale} is too large for one PNG; lower --n, --frames or --scale.");
        MemoryEstimate.Require(4 * ((long)o.N * (o.Frames + 1) * per + o.N * MemoryEstimate.SamplingValuesPerImage(mc)) + 2 * stripBytes,
            $"animating {o.N} samples over {o.Frames} frames");
        var progress = new ProgressLine(con);
        var frames = Evaluation.PredictedX0Frames(new Sampler(diffusion), o.N, o.Sampler, o.Steps, o.Eta, o.Seed, o.Frames,
            p =>
            {
                con.Cancel.ThrowIfCancellationRequested();
                progress.Report(p.Step, p.Of);
            });
        progress.Finish();
        int f = frames.Count;
        // Strip: one row per sample, one column per frame.
        var strip = new float[o.N * f * per];
        for (int i = 0; i < o.N; i++)
            for (int k = 0; k < f; k++)
                Array.Copy(frames[k], i * per, strip, (i * f + k) * per, per);
        string dir = Path.GetDirectoryName(Path.GetFullPath(o.Out)) ?? ".";
        Directory.CreateDirectory(dir);
        ImageGrid.SavePng(o.Out + ".png", strip, o.N * f, c, s, s, f, diffusion.Config.DataRange, 2, scale: o.Scale);
        WriteGif(o.Out + ".gif", frames, o.N, c, s, diffusion.Config.DataRange, o.Scale);
        con.Out.WriteLine($"wrote {o.Out}.png ({o.N} samples x {f} predicted-x0 frames) and {o.Out}.gif in {progress.Elapsed:F1}s");
        return 0;
    }

    /// <summary>Each frame: the n samples side by side, scaled up; the last frame is held longer.</summary>
    private static void WriteGif(string path, List<float[]> frames, int n, int c, int s, DataRange range, int scale)
    {
        int w = n * (s + 2) * scale, h = (s + 2) * scale, per = c * s * s;
        using var gif = new Image<Rgb24>(w, h);
        var meta = gif.Metadata.GetGifMetadata();
        meta.RepeatCount = 0;
        for (int k = 0; k < frames.Count; k++)
        {
            using var frame = new Image<Rgb24>(w, h, new Rgb24(0, 0, 0));
            for (int i = 0; i < n; i++)
                for (int y = 0; y < s; y++)
                    for (int x = 0; x < s; x++)
                    {
                        byte r = Px(frames[k], i * per, 0, y, x, s, range);
                        byte g = c == 3 ? Px(frames[k], i * per, 1, y, x, s, range) : r;
                        byte b = c == 3 ? Px(frames[k], i * per, 2, y, x, s, range) : r;
                        for (int dy = 0; dy < scale; dy++)
                            for (int dx = 0; dx < scale; dx++)
                                frame[(i * (s + 2) + 1 + x) * scale + dx, (1 + y) * scale + dy] = new Rgb24(r, g, b);
                    }
            frame.Frames.RootFrame.Metadata.GetGifMetadata().FrameDelay = k == frames.Count - 1 ? 150 : 25;
            gif.Frames.AddFrame(frame.Frames.RootFrame);
        }
        gif.Frames.RemoveFrame(0);
        string tmp = Ddpm.Tensors.IO.AtomicFile.TemporaryPath(path);
        try
        {
            gif.SaveAsGif(tmp, new GifEncoder { ColorTableMode = GifColorTableMode.Local });
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    private static byte Px(float[] img, int offset, int ch, int y, int x, int s, DataRange range) =>
        ImageGrid.ToByte(range.ToUnit(img[offset + (ch * s + y) * s + x]));
}
