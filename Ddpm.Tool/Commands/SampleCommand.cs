using CommandLine;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("sample", HelpText = "Draw images from a trained model into a PNG grid (and optionally one PNG each).")]
public sealed class SampleOptions : SamplingOptions
{
    [Option('n', "count", Default = 16, HelpText = "Number of images (also --n).")]
    public int N { get; set; }

    [Option("out", Default = "samples.png", HelpText = "The grid PNG to write.")]
    public string Out { get; set; } = "samples.png";

    [Option("nrow", HelpText = "Images per grid row (default: square).")]
    public int? NRow { get; set; }

    [Option("scale", HelpText = "Pixel scale of the grid (nearest neighbour). Default: the smallest that makes it at least 512 pixels wide; 1 writes the model's pixels.")]
    public int? Scale { get; set; }

    [Option("each", HelpText = "Also write every image as its own PNG (at the model's resolution) into this folder.")]
    public string? Each { get; set; }
}

public static class SampleCommand
{
    public static int Run(SampleOptions o, ToolConsole con)
    {
        if (o.N <= 0) throw new UsageError($"-n must be positive, got {o.N}.");
        if (o.NRow is <= 0) throw new UsageError($"--nrow must be positive, got {o.NRow}.");
        if (o.Scale is <= 0) throw new UsageError($"--scale must be positive, got {o.Scale}.");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        con.Out.WriteLine($"sampling {o.N} images with {o.Describe(diffusion.Steps)} from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}");
        var progress = new ProgressLine(con);
        using var scope = new TensorScope();
        var x = new Sampler(diffusion).Sample(o.N, o.Sampler, o.Steps, o.Eta, o.Seed, p => progress.Report(p.Step, p.Of));
        progress.Finish();
        var data = x.ToArray();
        string? dir = Path.GetDirectoryName(Path.GetFullPath(o.Out));
        if (dir is not null) Directory.CreateDirectory(dir);
        var (w, h) = ImageGrid.SavePng(o.Out, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
            o.NRow ?? ImageGrid.SquareRow(o.N), diffusion.Config.DataRange, scale: o.Scale ?? ImageGrid.AutoScale);
        con.Out.WriteLine($"wrote {o.Out} ({w}x{h}) in {progress.Elapsed:F1}s");
        if (o.Each is not null)
        {
            Directory.CreateDirectory(o.Each);
            var paths = ImageGrid.SaveEach(o.Each, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize, diffusion.Config.DataRange);
            con.Out.WriteLine($"wrote {paths.Length} images to {o.Each}");
        }
        return 0;
    }
}
