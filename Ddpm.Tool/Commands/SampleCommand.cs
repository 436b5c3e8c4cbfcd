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
    /// <summary>Images drawn at once at most; a larger --n is drawn in chunks so the activations stay bounded.</summary>
    public const int MaxChunk = 256;
    public const int MaxCount = 100_000, MaxScale = 64;

    public static int Run(SampleOptions o, ToolConsole con)
    {
        if (o.N <= 0 || o.N > MaxCount) throw new UsageError($"--n must be between 1 and {MaxCount:N0}, got {o.N}.");
        if (o.NRow is <= 0) throw new UsageError($"--nrow must be positive, got {o.NRow}.");
        if (o.Scale is <= 0 or > MaxScale) throw new UsageError($"--scale must be between 1 and {MaxScale}, got {o.Scale}.");
        OutputFiles.CheckFile(o.Out, "--out");
        if (o.Each is not null) OutputFiles.CheckFolder(o.Each, "--each");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        long per = (long)mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        int nrow = o.NRow ?? ImageGrid.SquareRow(o.N);
        int scale = o.Scale ?? ImageGrid.AutoScale;
        long gridBytes = MemoryEstimate.GridBytes(o.N, nrow, mc.ImageChannels, mc.ImageSize, scale);
        if (gridBytes > Array.MaxLength || o.N * per > Array.MaxLength)
            throw new UsageError($"a grid of {o.N:N0} images of {mc.ImageSize}x{mc.ImageSize} at --nrow {nrow} and --scale {(scale == ImageGrid.AutoScale ? "auto" : scale)} is too large for one PNG; lower --n or --scale.");
        int chunk = Math.Min(o.N, MaxChunk);
        MemoryEstimate.Require(4 * (o.N * per + (long)chunk * MemoryEstimate.SamplingValuesPerImage(mc)) + gridBytes,
            $"sampling {o.N:N0} images into one grid");

        con.Out.WriteLine($"sampling {o.N} images with {o.Describe(diffusion.Steps)} from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}");
        var progress = new ProgressLine(con);
        var data = new float[o.N * per];
        var sampler = new Sampler(diffusion);
        int chunks = (o.N + chunk - 1) / chunk, steps = o.StepsFor(diffusion.Steps);
        for (int k = 0; k < chunks; k++)
        {
            int first = k * chunk, count = Math.Min(chunk, o.N - first);
            using var scope = new TensorScope();
            // Chunk k draws from seed + k (as eval's batches do); a grid of up to MaxChunk images is one chunk.
            var x = sampler.Sample(count, o.Sampler, o.Steps, o.Eta, o.Seed + (ulong)k, p =>
            {
                // Ctrl-C / SIGTERM: stop after the step that just ended (the caller reports "interrupted", exit 130).
                con.Cancel.ThrowIfCancellationRequested();
                progress.Report((long)k * steps + p.Step, (long)chunks * steps);
            });
            x.ToArray().CopyTo(data, first * per);
        }
        progress.Finish();
        var (w, h) = ImageGrid.SavePng(o.Out, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
            nrow, diffusion.Config.DataRange, scale: scale);
        con.Out.WriteLine($"wrote {o.Out} ({w}x{h}) in {progress.Elapsed:F1}s");
        if (o.Each is not null)
        {
            var paths = ImageGrid.SaveEach(o.Each, data, o.N, mc.ImageChannels, mc.ImageSize, mc.ImageSize, diffusion.Config.DataRange);
            con.Out.WriteLine($"wrote {paths.Length} images to {o.Each}");
        }
        return 0;
    }
}
