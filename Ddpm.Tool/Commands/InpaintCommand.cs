using System.Globalization;
using System.Text.Json;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("inpaint", HelpText = "Fill in the masked part of images with the model (RePaint), keeping the rest exactly; prints the fill's error against the true pixels.")]
public sealed class InpaintOptions : SamplingOptions
{
    [Option("image", Required = true, HelpText = "The image: a PNG/JPEG/BMP file, or data:INDEX / data:FIRST..LAST for images of --data (default the bundled Fashion-MNIST test set).")]
    public string Image { get; set; } = "";

    [Option("data", HelpText = "Dataset for data:INDEX images (IDX file, CIFAR-10 folder, image folder).")]
    public string? Data { get; set; }

    [Option("mask", Default = "center", HelpText = "What to keep: a mask image (white = keep, black = fill in; resized to the model) or a built-in mask: center (the central square of half the side is filled in), left (the left half), random:SEED (cells of an 8x8 board, each filled in with probability 1/2).")]
    public string Mask { get; set; } = "center";

    [Option('n', "count", Default = 1, HelpText = "Inpaintings of each image (also --n). They are drawn in chunks of 256 (128 when guided), chunk k from seed + k.")]
    public int N { get; set; }

    [Option("jump-length", Default = 10, HelpText = "RePaint's jump length: sampler steps gone back up before coming down again.")]
    public int JumpLength { get; set; }

    [Option("resamples", Default = 10, HelpText = "RePaint's resamplings: each stretch of --jump-length steps is done this many times (1: plain replacement, no going back).")]
    public int Resamples { get; set; }

    [Option("class", HelpText = "A class-conditional model: guide the filled-in part toward this class (a name or an index). Without it a conditional model inpaints with its unconditional branch.")]
    public string? Class { get; set; }

    [Option("guidance", HelpText = "Classifier-free guidance weight w >= 0 with --class (default 3).")]
    public float? Guidance { get; set; }

    [Option("grid", Default = false, HelpText = "Write one row per image: the input, the mask (white = kept), the input with the hole in grey, then the inpaintings.")]
    public bool Grid { get; set; }

    [Option("out", Default = "inpaint.png", HelpText = "The PNG to write: the inpaintings, one row per image (or the --grid rows).")]
    public string Out { get; set; } = "inpaint.png";

    [Option("scale", HelpText = "Pixel scale of the PNG (nearest neighbour). Default: at least 512 pixels wide; 1 writes the model's pixels.")]
    public int? Scale { get; set; }

    [Option("each", HelpText = "Also write every inpainting as its own PNG (at the model's resolution) into this folder.")]
    public string? Each { get; set; }

    [Option("classify", Default = false, HelpText = "Also classify the true images, the inpaintings and the mean-filled images with the feature classifier, per class (needs labels: data: images of the bundled test set, or --labels).")]
    public bool Classify { get; set; }

    [Option("labels", HelpText = "IDX labels of --data for --classify.")]
    public string? Labels { get; set; }

    [Option("classifier", HelpText = "The feature model for --classify. Default: the bundled Fashion-MNIST classifier.")]
    public string? Classifier { get; set; }

    [Option("json", Default = false, HelpText = "Also print the figures as one JSON object on the last line.")]
    public bool Json { get; set; }
}

public static class InpaintCommand
{
    /// <summary>Most inpaintings of one run (images x --n).</summary>
    public const int MaxCount = 10_000;

    public static int Run(InpaintOptions o, ToolConsole con)
    {
        if (o.N <= 0) throw new UsageError($"--n must be positive, got {o.N}.");
        if (o.JumpLength <= 0) throw new UsageError($"--jump-length must be positive, got {o.JumpLength}.");
        if (o.Resamples is <= 0 or > 100) throw new UsageError($"--resamples must be between 1 and 100, got {o.Resamples}.");
        if (o.Scale is <= 0 or > SampleCommand.MaxScale) throw new UsageError($"--scale must be between 1 and {SampleCommand.MaxScale}, got {o.Scale}.");
        if (o.Guidance is { } g && !(g >= 0 && float.IsFinite(g))) throw new UsageError($"--guidance must be a number >= 0, got {g}.");
        if (o.Guidance is not null && o.Class is null) throw new UsageError("--guidance needs --class (the class to guide toward).");
        if (o.Labels is not null && !o.Classify) throw new UsageError("--labels is for --classify.");
        if (o.Classify && !o.Image.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
            throw new UsageError("--classify needs labelled images: give --image data:FIRST..LAST.");
        if (o.Classify && o.Data is not null && o.Labels is null) throw new UsageError("--classify with --data needs --labels (the IDX labels of --data).");
        OutputFiles.CheckFile(o.Out, "--out");
        if (o.Each is not null) OutputFiles.CheckFolder(o.Each, "--each");

        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        using var be = ToolBackends.Create(o);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        o.Check(diffusion.Steps);
        var mc = model.Config;
        var range = diffusion.Config.DataRange;
        int c = mc.ImageChannels, s = mc.ImageSize, per = c * s * s;
        var mask = LoadMask(o.Mask, s);
        var (images, count, indices) = ImageInputs.LoadMany(o.Image, o.Data, s, c, range, "--image");
        long total = (long)count * o.N;
        if (total > MaxCount) throw new UsageError($"{count:N0} images x --n {o.N} makes {total:N0} inpaintings; at most {MaxCount:N0} are allowed.");
        int n = (int)total;
        float guidance = o.Guidance ?? ClassCondition.DefaultGuidance;
        int? label = o.Class is null ? null : ModelLoading.ResolveClass(mc, o.Class, o.Checkpoint);
        int cols = o.Grid ? 3 + o.N : o.N > 1 ? o.N : ImageGrid.SquareRow(n);
        int cells = o.Grid ? count * (3 + o.N) : n;
        int scale = o.Scale ?? ImageGrid.AutoScale;
        long gridBytes = MemoryEstimate.GridBytes(cells, cols, c, s, scale);
        if (gridBytes > Array.MaxLength) throw new UsageError($"a PNG of {cells:N0} images at --scale {o.Scale} is too large; lower the image count or --scale.");
        bool doubled = label is not null && guidance is not (0f or 1f);
        int chunk = Math.Min(n, doubled ? SampleCommand.MaxChunk / 2 : SampleCommand.MaxChunk);
        MemoryEstimate.Require(4 * (3L * n * per + (long)chunk * (doubled ? 2 : 1) * MemoryEstimate.SamplingValuesPerImage(mc)) + gridBytes,
            $"inpainting {n:N0} images");

        var options = new RePaintOptions(o.JumpLength, o.Resamples);
        int stepsPerImage = Inpainting.ReverseSteps(Inpainting.Schedule(o.StepsFor(diffusion.Steps), options));
        int hole = mask.Count(v => v == 0);
        con.Out.WriteLine($"inpainting {count} image(s) of {o.Image}{(o.N > 1 ? $", {o.N} each," : "")} with {o.Describe(diffusion.Steps)}, RePaint jump length {o.JumpLength}, "
            + $"{o.Resamples} resample(s): {stepsPerImage} model evaluations per image; mask {o.Mask}: {hole} of {s * s} pixels filled in"
            + (label is { } l ? $", class {l} ({mc.ClassName(l)}) at guidance {guidance:G3}" : mc.IsConditional ? ", unconditional branch" : "")
            + $"; from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}");

        // Inpainting r is of image r / --n; chunk k starts from seed + k.
        var progress = new ProgressLine(con);
        int chunks = (n + chunk - 1) / chunk;
        var results = new float[(long)n * per];
        for (int start = 0, k = 0; start < n; start += chunk, k++)
        {
            int size = Math.Min(chunk, n - start), chunkIndex = k;
            var batch = new float[size * per];
            for (int r = 0; r < size; r++) images.AsSpan((start + r) / o.N * per, per).CopyTo(batch.AsSpan(r * per));
            using var scope = new TensorScope();
            var condition = label is { } cl ? ClassCondition.All(size, cl, guidance) : null;
            var x = Tensor.FromArray(be, batch, size, c, s, s);
            var m = Tensor.FromArray(be, mask, 1, 1, s, s);
            var y = Inpainting.Inpaint(new Sampler(diffusion, condition), x, m, o.Sampler, o.Steps, o.Eta, options, o.Seed + (ulong)k, p =>
            {
                con.Cancel.ThrowIfCancellationRequested();
                progress.Report((long)chunkIndex * stepsPerImage + p.Step, (long)chunks * stepsPerImage);
            });
            y.ToArray().CopyTo(results, (long)start * per);
        }
        progress.Finish();

        var error = InpaintingQuality.Measure(images, results, o.N, mask, c, s, range);
        var meanFilled = InpaintingQuality.MeanFill(images, mask, c, s, range);
        var baseline = InpaintingQuality.Measure(images, meanFilled, 1, mask, c, s, range);
        WriteOutputs(o, con, images, count, results, mask, c, s, range, scale, cols);
        con.Out.WriteLine($"filled-in region, RMS error against the true pixels (0..1 scale): {error.HoleRms:F4}; mean fill {baseline.HoleRms:F4} ({error.HoleRms / baseline.HoleRms:F2} of it); {error.HolePixels:N0} values");
        con.Out.WriteLine(error.KnownMismatches == 0
            ? $"known region: kept exactly ({error.KnownPixels:N0} values, bit for bit)"
            : $"known region: {error.KnownMismatches:N0} of {error.KnownPixels:N0} values differ from the image (max |diff| {error.KnownMaxAbs:E2})");

        ClassifyResult? classes = o.Classify ? ClassifyAll(o, con, be, indices!, images, count, results, meanFilled, mc, range) : null;
        con.Out.WriteLine($"time {progress.Elapsed:F1}s");
        if (o.Json)
            con.Out.WriteLine(JsonSerializer.Serialize(new
            {
                images = count,
                per_image = o.N,
                image = o.Image,
                mask = o.Mask,
                masked_pixels = hole,
                sampler = o.Describe(diffusion.Steps),
                jump_length = o.JumpLength,
                resamples = o.Resamples,
                model_evaluations_per_image = stepsPerImage,
                seed = o.Seed,
                hole_rms = error.HoleRms,
                mean_fill_hole_rms = baseline.HoleRms,
                known_values = error.KnownPixels,
                known_mismatches = error.KnownMismatches,
                known_max_abs = error.KnownMaxAbs,
                class_names = classes?.Names,
                // A class without images has no accuracy (NaN, which JSON cannot hold): null.
                real_accuracy = classes?.Real.Select(NullIfNaN),
                inpainted_accuracy = classes?.Inpainted.Select(NullIfNaN),
                mean_fill_accuracy = classes?.MeanFill.Select(NullIfNaN),
                class_counts = classes?.Counts,
                source = o.Checkpoint,
                backend = be.Name,
                seconds = progress.Elapsed,
            }));
        return 0;
    }

    private static double? NullIfNaN(double v) => double.IsNaN(v) ? null : v;

    /// <summary>A built-in mask by name, or a mask image: white (grey &gt;= 0.5) keeps, black is filled in; [S, S] of 0 and 1.</summary>
    private static float[] LoadMask(string spec, int size)
    {
        if (InpaintMasks.Parse(spec, size) is { } builtIn) return builtIn;
        if (!File.Exists(spec)) throw new UsageError($"--mask '{spec}' is neither a mask image file nor a built-in mask ({InpaintMasks.Names}).");
        var grey = ImageInputs.LoadFile(spec, size, 1);
        var mask = grey.Select(v => v >= 0.5f ? 1f : 0f).ToArray();
        if (mask.All(v => v == 1f)) throw new UserError($"{spec}: the mask is white everywhere (white = keep); nothing would be filled in.");
        return mask;
    }

    private static void WriteOutputs(InpaintOptions o, ToolConsole con, float[] images, int count, float[] results, float[] mask,
        int c, int s, DataRange range, int scale, int cols)
    {
        int per = c * s * s, plane = s * s;
        float[] cellsData;
        int cells;
        if (o.Grid)
        {
            cells = count * cols;
            cellsData = new float[(long)cells * per];
            for (int i = 0; i < count; i++)
            {
                var row = cellsData.AsSpan(i * cols * per, cols * per);
                var img = images.AsSpan(i * per, per);
                img.CopyTo(row);
                for (int j = 0; j < per; j++)
                {
                    row[per + j] = range.FromUnit(mask[j % plane]);
                    row[2 * per + j] = mask[j % plane] != 0 ? img[j] : range.FromUnit(0.5f);
                }
                results.AsSpan(i * o.N * per, o.N * per).CopyTo(row[(3 * per)..]);
            }
        }
        else
        {
            cells = results.Length / per;
            cellsData = results;
        }
        var (w, h) = ImageGrid.SavePng(o.Out, cellsData, cells, c, s, s, cols, range, scale: scale);
        con.Out.WriteLine($"wrote {o.Out} ({w}x{h}{(o.Grid ? ": input, mask, masked input, inpaintings" : "")})");
        if (o.Each is not null)
        {
            var paths = ImageGrid.SaveEach(o.Each, results, results.Length / per, c, s, s, range);
            con.Out.WriteLine($"wrote {paths.Length} images to {o.Each}");
        }
    }

    private sealed record ClassifyResult(string[] Names, double[] Real, double[] Inpainted, double[] MeanFill, int[] Counts);

    /// <summary>
    /// The share of each class's true images, inpaintings and mean-filled images that the feature classifier puts in
    /// the true class.
    /// </summary>
    private static ClassifyResult ClassifyAll(InpaintOptions o, ToolConsole con, IBackend be, int[] indices, float[] images, int count,
        float[] results, float[] meanFilled, UNetConfig mc, DataRange range)
    {
        string classifierPath = o.Classifier ?? BundledFiles.Model(BundledFiles.Classifier);
        var (classifier, meta) = EvalCommand.LoadClassifier(classifierPath, be);
        using var _c = classifier;
        var cfg = classifier.Config;
        string labelsPath = o.Labels ?? BundledFiles.Data(BundledFiles.TestLabels);
        if (!File.Exists(labelsPath)) throw new UserError($"{labelsPath}: no such IDX label file.");
        IdxLabels all;
        try { all = IdxLabels.Load(labelsPath, cfg.Classes); }
        catch (Exception e) when (e is InvalidDataException or IOException) { throw new UserError(e.Message, e); }
        if (indices[^1] >= all.Count) throw new UserError($"{labelsPath} has {all.Count} labels; image {indices[^1]} has none.");
        var labels = indices.Select(i => (int)all[i]).ToArray();
        var names = meta.TryGetValue("class_names", out var cn) && cn.Split(',').Length == cfg.Classes
            ? cn.Split(',') : Enumerable.Range(0, cfg.Classes).Select(k => k.ToString(CultureInfo.InvariantCulture)).ToArray();
        int n = results.Length / images.Length * count;
        double[] Accuracy(float[] set, int m, int[] setLabels)
        {
            float[] input;
            try { input = SampleQuality.PrepareSamples(set, m, mc.ImageChannels, mc.ImageSize, range, cfg); }
            catch (ArgumentException e) { throw new UserError($"{e.Message} ({classifierPath})", e); }
            var outputs = SampleQuality.Classify(classifier, input, m);
            return SampleQuality.ClassAccuracy(SampleQuality.Predictions(outputs.Probabilities, m, cfg.Classes), setLabels, cfg.Classes);
        }
        var real = Accuracy(images, count, labels);
        var inpainted = Accuracy(results, n, Enumerable.Range(0, n).Select(r => labels[r / o.N]).ToArray());
        var mean = Accuracy(meanFilled, count, labels);
        var counts = Enumerable.Range(0, cfg.Classes).Select(k => labels.Count(l => l == k)).ToArray();
        con.Out.WriteLine($"classified as their true class by {classifierPath}: true images / inpainted / mean-filled");
        for (int k = 0; k < cfg.Classes; k++)
            if (counts[k] > 0) con.Out.WriteLine($"  {names[k],-12} {real[k],7:P1} {inpainted[k],7:P1} {mean[k],7:P1}   ({counts[k]} images)");
        double Mean(double[] a) => Enumerable.Range(0, cfg.Classes).Where(k => counts[k] > 0).Average(k => a[k]);
        con.Out.WriteLine($"  {"mean",-12} {Mean(real),7:P1} {Mean(inpainted),7:P1} {Mean(mean),7:P1}");
        return new ClassifyResult(names, real, inpainted, mean, counts);
    }
}
