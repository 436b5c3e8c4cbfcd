using System.Diagnostics;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("interpolate", HelpText = "Mix two images at noise level t and denoise the mixtures (labml's interpolate), as a PNG strip.")]
public sealed class InterpolateOptions : SamplingOptions
{
    [Option('a', "image-a", Required = true, HelpText = "(also --a) First image: a PNG/JPEG/BMP file, or data:INDEX for an image of --data (default the bundled test set).")]
    public string A { get; set; } = "";

    [Option('b', "image-b", Required = true, HelpText = "(also --b) Second image, as --a.")]
    public string B { get; set; } = "";

    [Option("data", HelpText = "Dataset for data:INDEX images (IDX file, CIFAR-10 folder, image folder).")]
    public string? Data { get; set; }

    [Option('t', "timestep", Default = 100, HelpText = "(also --t) Timestep both images are noised to before mixing.")]
    public int T { get; set; }

    [Option("frames", Default = 8, HelpText = "Mixing weights lambda = 0 .. 1 in this many steps.")]
    public int Frames { get; set; }

    [Option("out", Default = "interpolation.png", HelpText = "The strip to write: a, the mixtures, b.")]
    public string Out { get; set; } = "interpolation.png";
}

public static class InterpolateCommand
{
    /// <summary>The mixtures are denoised as one batch.</summary>
    public const int MaxFrames = 256;

    public static int Run(InterpolateOptions o, ToolConsole con)
    {
        if (o.Frames is < 2 or > MaxFrames) throw new UsageError($"--frames must be between 2 and {MaxFrames}, got {o.Frames}.");
        OutputFiles.CheckFile(o.Out, "--out");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, _) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        if (o.T < 0 || o.T >= diffusion.Steps) throw new UsageError($"--t must be in [0, {diffusion.Steps}), got {o.T}.");
        var mc = model.Config;
        int c = mc.ImageChannels, s = mc.ImageSize, per = c * s * s;
        var range = diffusion.Config.DataRange;
        var a = ImageInputs.Load(o.A, o.Data, mc.ImageSize, c, range, "--a");
        var b = ImageInputs.Load(o.B, o.Data, mc.ImageSize, c, range, "--b");

        var sw = Stopwatch.StartNew();
        var gen = new PhiloxGenerator(o.Seed);
        var strip = new float[(o.Frames + 2) * per];
        a.CopyTo(strip, 0);
        b.CopyTo(strip, (o.Frames + 1) * per);
        var lambdas = Enumerable.Range(0, o.Frames).Select(i => (float)i / (o.Frames - 1)).ToArray();
        Evaluation.Interpolate(new Sampler(diffusion), a, b, lambdas, o.T, gen).CopyTo(strip, per);
        string? dir = Path.GetDirectoryName(Path.GetFullPath(o.Out));
        if (dir is not null) Directory.CreateDirectory(dir);
        ImageGrid.SavePng(o.Out, strip, o.Frames + 2, c, s, s, o.Frames + 2, range, 2, scale: ImageGrid.AutoScale);
        con.Out.WriteLine($"wrote {o.Out}: {o.A}, {o.Frames} mixtures denoised from t={o.T}, {o.B} ({sw.Elapsed.TotalSeconds:F1}s)");
        return 0;
    }
}
