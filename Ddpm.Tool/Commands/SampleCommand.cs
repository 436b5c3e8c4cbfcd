using CommandLine;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
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

    [Option("class", HelpText = "A class-conditional model: draw this class (a name, case-insensitive, or an index), or 'all' for a grid with one row of --n images per class. Without it a conditional model draws from its unconditional branch.")]
    public string? Class { get; set; }

    [Option("guidance", HelpText = "Classifier-free guidance weight w >= 0 with --class: eps = eps_uncond + w (eps_cond - eps_uncond); 0 unconditional, 1 conditional, > 1 guided. Default 3.")]
    public float? Guidance { get; set; }

    [Option("each", HelpText = "Also write every image as its own PNG (at the model's resolution) into this folder.")]
    public string? Each { get; set; }

    [Option("init", HelpText = "Image-to-image (SDEdit): start from this image (a PNG/JPEG/BMP file or data:INDEX of the bundled test set) noised to t = --strength x T, and denoise it; with --class it is turned toward that class.")]
    public string? Init { get; set; }

    [Option("strength", HelpText = "With --init: how far to noise the image, 0 (return it) to 1 (pure noise: ordinary sampling); of the sampler's steps the last strength x steps run. Default 0.6.")]
    public float? Strength { get; set; }
}

/// <summary>
/// What a sampling request draws: <paramref name="Count"/> images with their class <paramref name="Labels"/> (null:
/// unconditional) and <paramref name="Guidance"/>, <paramref name="NRow"/> images per grid row, and words for them.
/// </summary>
public sealed record SamplePlan(int Count, int[]? Labels, float Guidance, int NRow, string What)
{
    /// <summary>Guidance other than 0 and 1 runs the conditional and unconditional halves as one batch of twice the chunk.</summary>
    public bool Doubled => Labels is not null && Guidance is not (0f or 1f);

    /// <summary>Images drawn at once: chunk k of the request draws from seed + k.</summary>
    public int Chunk => Math.Min(Count, Doubled ? SampleCommand.MaxChunk / 2 : SampleCommand.MaxChunk);

    /// <summary>Refuses the request, before anything is allocated, when the machine lacks the memory for it and a grid of <paramref name="gridBytes"/>.</summary>
    public void RequireMemory(UNetConfig mc, long gridBytes)
    {
        long per = (long)mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        MemoryEstimate.Require(4 * (Count * per + (long)Chunk * (Doubled ? 2 : 1) * MemoryEstimate.SamplingValuesPerImage(mc)) + gridBytes,
            $"sampling {Count:N0} images into one grid");
    }
}

public static class SampleCommand
{
    /// <summary>Images drawn at once at most; a larger --n is drawn in chunks so the activations stay bounded.</summary>
    public const int MaxChunk = 256;
    public const int MaxCount = 100_000, MaxScale = 64;

    /// <summary>--strength without a value: enough noise to change the image's details and keep its layout.</summary>
    public const float DefaultStrength = 0.6f;

    /// <summary>
    /// The images <c>sample</c> draws from a model <paramref name="mc"/> (read from <paramref name="path"/>) for
    /// <c>--class</c> <paramref name="cls"/> (a name, an index, "all" for one row of <paramref name="n"/> per class, or
    /// null), <c>--n</c>, <c>--guidance</c> and <c>--nrow</c>; a class the model does not have is a usage error.
    /// </summary>
    public static SamplePlan Plan(UNetConfig mc, string? cls, int n, float? guidance, int? nrow, string path)
    {
        float w = guidance ?? ClassCondition.DefaultGuidance;
        if (cls is not null && string.Equals(cls.Trim(), "all", StringComparison.OrdinalIgnoreCase))
        {
            if (!mc.IsConditional) ModelLoading.ResolveClass(mc, cls, path);
            if ((long)n * mc.NumClasses > MaxCount)
                throw new UsageError($"--class all with --n {n} draws {(long)n * mc.NumClasses:N0} images ({mc.NumClasses} classes); at most {MaxCount:N0} are allowed.");
            return new SamplePlan(n * mc.NumClasses, ClassCondition.Rows(mc.NumClasses, n, w).Labels, w,
                nrow ?? (mc.NumClasses == 1 ? ImageGrid.SquareRow(n) : n),
                $" per class, one row per class ({ModelLoading.ClassList(mc)}), guidance {w:G3}");
        }
        if (cls is not null)
        {
            int c = ModelLoading.ResolveClass(mc, cls, path);
            return new SamplePlan(n, ClassCondition.All(n, c, w).Labels, w, nrow ?? ImageGrid.SquareRow(n),
                $" of class {c} ({mc.ClassName(c)}), guidance {w:G3}");
        }
        return new SamplePlan(n, null, w, nrow ?? ImageGrid.SquareRow(n),
            mc.IsConditional ? " from the unconditional branch (--class picks a class)" : "");
    }

    public static int Run(SampleOptions o, ToolConsole con)
    {
        if (o.N <= 0 || o.N > MaxCount) throw new UsageError($"--n must be between 1 and {MaxCount:N0}, got {o.N}.");
        if (o.NRow is <= 0) throw new UsageError($"--nrow must be positive, got {o.NRow}.");
        if (o.Scale is <= 0 or > MaxScale) throw new UsageError($"--scale must be between 1 and {MaxScale}, got {o.Scale}.");
        if (o.Guidance is { } g && !(g >= 0 && float.IsFinite(g))) throw new UsageError($"--guidance must be a number >= 0, got {g}.");
        if (o.Guidance is not null && o.Class is null) throw new UsageError("--guidance needs --class (the class to guide toward).");
        if (o.Strength is not null && o.Init is null) throw new UsageError("--strength needs --init (the image to start from).");
        if (o.Strength is { } st && !(st >= 0 && st <= 1)) throw new UsageError($"--strength must be between 0 and 1, got {st}.");
        OutputFiles.CheckFile(o.Out, "--out");
        if (o.Each is not null) OutputFiles.CheckFolder(o.Each, "--each");
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        long per = (long)mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        var plan = Plan(mc, o.Class, o.N, o.Guidance, o.NRow, o.Checkpoint);
        var (n, labels, guidance, nrow, what) = plan;
        int scale = o.Scale ?? ImageGrid.AutoScale;
        long gridBytes = MemoryEstimate.GridBytes(n, nrow, mc.ImageChannels, mc.ImageSize, scale);
        if (gridBytes > Array.MaxLength || n * per > Array.MaxLength)
            throw new UsageError($"a grid of {n:N0} images of {mc.ImageSize}x{mc.ImageSize} at --nrow {nrow} and --scale {(scale == ImageGrid.AutoScale ? "auto" : scale)} is too large for one PNG; lower --n or --scale.");
        int chunk = plan.Chunk;
        plan.RequireMemory(mc, gridBytes);

        float strength = o.Strength ?? DefaultStrength;
        var init = o.Init is null ? null : ImageInputs.Load(o.Init, null, mc.ImageSize, mc.ImageChannels, diffusion.Config.DataRange, "--init");
        int steps = init is null ? o.StepsFor(diffusion.Steps) : Sampler.EditSteps(o.StepsFor(diffusion.Steps), strength);
        string from = init is null ? "" : $", edits of {o.Init} at strength {strength:G3} (the last {steps} steps),";
        con.Out.WriteLine($"sampling {o.N} images{what} with {o.Describe(diffusion.Steps)}{from} from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}");
        var progress = new ProgressLine(con);
        int chunks = (n + chunk - 1) / chunk;
        // Chunk k draws from seed + k (as eval's batches do); a grid of up to one chunk of images is one chunk.
        var data = ModelLoading.Draw(diffusion, o, n, chunk, labels, guidance, (k, _, p) =>
        {
            // Ctrl-C / SIGTERM: stop after the step that just ended (the caller reports "interrupted", exit 130).
            con.Cancel.ThrowIfCancellationRequested();
            progress.Report((long)k * steps + p.Step, (long)chunks * steps);
        }, init, strength);
        progress.Finish();
        var (w, h) = ImageGrid.SavePng(o.Out, data, n, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
            nrow, diffusion.Config.DataRange, scale: scale);
        con.Out.WriteLine($"wrote {o.Out} ({w}x{h}) in {progress.Elapsed:F1}s");
        if (o.Each is not null)
        {
            var paths = ImageGrid.SaveEach(o.Each, data, n, mc.ImageChannels, mc.ImageSize, mc.ImageSize, diffusion.Config.DataRange);
            con.Out.WriteLine($"wrote {paths.Length} images to {o.Each}");
        }
        return 0;
    }
}
