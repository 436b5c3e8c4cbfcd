using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Quality;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("eval", HelpText = "Sample quality: FID on a classifier's features, its Inception Score analogue and the class histogram.")]
public sealed class EvalOptions : SamplerOptions
{
    [Option("checkpoint", HelpText = "Draw --n samples from this checkpoint or weights file and measure them.")]
    public string? Checkpoint { get; set; }

    [Option("images", HelpText = "Measure the first --n images of this IDX file instead (known-answer checks: the real set against itself).")]
    public string? Images { get; set; }

    [Option("scramble", Default = false, HelpText = "Permute the pixels of each measured image at random (a known-bad set: FID must be large).")]
    public bool Scramble { get; set; }

    [Option("real", HelpText = "Held-out real images (IDX). Default: the bundled Fashion-MNIST test set (1,000 images).")]
    public string? Real { get; set; }

    [Option("classifier", HelpText = "The feature model (from 'train-classifier'). Default: the bundled Fashion-MNIST classifier.")]
    public string? Classifier { get; set; }

    [Option('n', "count", Default = 1000, HelpText = "Samples to draw, or images to take from --images (also --n).")]
    public int N { get; set; }

    [Option("batch", Default = 250, HelpText = "Samples drawn at once; batch b starts from seed + b.")]
    public int Batch { get; set; }

    [Option("by-t", Default = false, HelpText = "Instead of FID: the model's error at 14 timesteps from 0 to T-1 on --n real images (--real): eps MSE and the RMS error of the implied x0.")]
    public bool ByT { get; set; }

    [Option("class-accuracy", Default = false, HelpText = "Instead of FID, for a class-conditional model: draw --n samples of each class at --guidance and report the share of each class's samples the feature classifier puts in that class, per class and averaged.")]
    public bool ClassAccuracy { get; set; }

    [Option("guidance", HelpText = "Classifier-free guidance weight w >= 0 for a class-conditional model (0 unconditional, 1 conditional, > 1 guided). " +
        "With --class-accuracy: default 3. For FID: the samples are drawn class-balanced (sample i of class i mod K) at this weight; without it, " +
        "from the unconditional branch.")]
    public float? Guidance { get; set; }

    [Option("json", Default = false, HelpText = "Also print one JSON object on the last line.")]
    public bool Json { get; set; }
}

public static class EvalCommand
{
    /// <summary>Every sample's features are kept for the statistics.</summary>
    public const int MaxCount = 100_000;

    public static int Run(EvalOptions o, ToolConsole con)
    {
        if ((o.Checkpoint is null) == (o.Images is null)) throw new UsageError("give --checkpoint (to sample) or --images (an IDX file), one of them.");
        if (o.N < 2) throw new UsageError($"-n must be at least 2 (a covariance needs two images), got {o.N}.");
        if (o.N > MaxCount) throw new UsageError($"-n must be at most {MaxCount:N0}, got {o.N}.");
        if (o.Batch is <= 0 or > SampleCommand.MaxChunk) throw new UsageError($"--batch must be between 1 and {SampleCommand.MaxChunk}, got {o.Batch}.");
        var total = Stopwatch.StartNew();
        if (o.Guidance is { } g && !(g >= 0 && float.IsFinite(g))) throw new UsageError($"--guidance must be a number >= 0, got {g}.");
        if (o.Guidance is not null && o.Checkpoint is null) throw new UsageError("--guidance applies to samples drawn from a --checkpoint.");
        if (o.ByT && o.ClassAccuracy) throw new UsageError("give --by-t or --class-accuracy, not both.");
        if (o.ByT) return ErrorByTimestep(o, con);
        string classifierPath = o.Classifier ?? BundledFiles.Model(BundledFiles.Classifier);
        string realPath = o.Real ?? BundledFiles.Data(BundledFiles.TestImages);
        using var be = ToolBackends.Create(o);
        var (classifier, meta) = LoadClassifier(classifierPath, be);
        using var _c = classifier;
        var cfg = classifier.Config;
        string[] names = meta.TryGetValue("class_names", out var cn) && cn.Split(',').Length == cfg.Classes
            ? cn.Split(',') : Enumerable.Range(0, cfg.Classes).Select(k => k.ToString(CultureInfo.InvariantCulture)).ToArray();
        string accuracy = meta.TryGetValue("test_accuracy", out var acc) ? $", test accuracy {acc}" : "";
        con.Out.WriteLine($"classifier {classifierPath}: {cfg.Describe()}{accuracy}");

        if (o.ClassAccuracy) return ClassAccuracy(o, con, be, classifier, classifierPath, names, total);
        var real = LoadImages(realPath);
        var realInput = Prepare(() => SampleQuality.PrepareReal(real, real.Count, cfg), classifierPath);

        float[] candidates;
        string source;
        double samplingSeconds = 0;
        string? sampling = null;
        if (o.Checkpoint is not null)
        {
            var (model, diffusion, ema) = LoadForSampling(o, be, cfg, classifierPath, o.Guidance is null ? null : "--guidance");
            using var _m = model;
            var mc = model.Config;
            sampling = o.Describe(diffusion.Steps);
            // Without --guidance a conditional model draws from its unconditional branch; with it, every class in turn.
            int[]? labels = o.Guidance is null ? null : Enumerable.Range(0, o.N).Select(i => i % mc.NumClasses).ToArray();
            if (o.Guidance is { } w) sampling += string.Create(CultureInfo.InvariantCulture, $", class-balanced at guidance {w:G3}");
            con.Out.WriteLine($"sampling {o.N} images with {sampling} from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}, {o.Batch} at a time");
            var progress = new ProgressLine(con);
            // Batch b starts from seed + b.
            var samples = ModelLoading.Draw(diffusion, o, o.N, o.Batch, labels, o.Guidance ?? 0f, (_, start, p) =>
            {
                con.Cancel.ThrowIfCancellationRequested();
                int count = Math.Min(o.Batch, o.N - start);
                progress.Report(start + count * p.Step / p.Of, o.N);
                if (p.Step == p.Of && !con.Interactive) con.Out.WriteLine($"  {start + count}/{o.N} samples  {Duration.Format(progress.Elapsed)}");
            });
            progress.Finish();
            samplingSeconds = progress.Elapsed;
            candidates = SampleQuality.PrepareSamples(samples, o.N, mc.ImageChannels, mc.ImageSize, diffusion.Config.DataRange, cfg);
            source = o.Checkpoint;
        }
        else
        {
            var images = LoadImages(o.Images!);
            if (o.N > images.Count) throw new UsageError($"-n {o.N} is more than the {images.Count} images of {o.Images}.");
            candidates = Prepare(() => SampleQuality.PrepareReal(images, o.N, cfg), classifierPath);
            source = o.Images!;
        }
        if (o.Scramble)
            candidates = SampleQuality.ScramblePixels(candidates, o.N, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize, o.Seed);

        var fsw = Stopwatch.StartNew();
        var realOut = SampleQuality.Classify(classifier, realInput, real.Count);
        var candOut = SampleQuality.Classify(classifier, candidates, o.N);
        double fid = Frechet.Distance(candOut.Statistics(), realOut.Statistics());
        double isScore = SampleQuality.InceptionScore(candOut.Probabilities, o.N, cfg.Classes);
        double realIs = SampleQuality.InceptionScore(realOut.Probabilities, real.Count, cfg.Classes);
        var hist = SampleQuality.ClassHistogram(candOut.Probabilities, o.N, cfg.Classes);
        var realHist = SampleQuality.ClassHistogram(realOut.Probabilities, real.Count, cfg.Classes);
        double featureSeconds = fsw.Elapsed.TotalSeconds;

        string what = (o.Checkpoint is not null ? "samples" : "images") + (o.Scramble ? " (pixels scrambled)" : "");
        con.Out.WriteLine($"FID  {fid,10:F3}   {o.N} {what} of {source} vs {real.Count} real images of {realPath}, {cfg.FeatureDim} features");
        con.Out.WriteLine($"IS   {isScore,10:F3}   (real images: {realIs:F3}; 1 = one class for all, {cfg.Classes} = confident and balanced)");
        con.Out.WriteLine("class histogram (measured / real):");
        for (int k = 0; k < cfg.Classes; k++)
            con.Out.WriteLine($"  {names[k],-12} {hist[k],6} {(double)hist[k] / o.N,7:P1}   {realHist[k],6} {(double)realHist[k] / real.Count,7:P1}");
        con.Out.WriteLine($"time: sampling {samplingSeconds:F1}s, features and statistics {featureSeconds:F1}s, total {total.Elapsed.TotalSeconds:F1}s");
        if (o.Json)
            con.Out.WriteLine(JsonSerializer.Serialize(new
            {
                fid,
                inception_score = isScore,
                real_inception_score = realIs,
                class_names = names,
                class_histogram = hist,
                real_class_histogram = realHist,
                n = o.N,
                real_n = real.Count,
                source,
                kind = o.Checkpoint is not null ? "samples" : "images",
                scrambled = o.Scramble,
                sampler = sampling,
                guidance = o.Guidance,
                seed = o.Seed,
                real = realPath,
                classifier = classifierPath,
                feature_dim = cfg.FeatureDim,
                backend = be.Name,
                sampling_s = samplingSeconds,
                features_s = featureSeconds,
                total_s = total.Elapsed.TotalSeconds,
            }));
        return 0;
    }

    /// <summary>
    /// The model of --checkpoint, checked before the long sampling run rather than after it: the sampler's steps
    /// against its T, that it is class-conditional when <paramref name="conditionalFor"/> names an option that
    /// needs it, and that its images fit the classifier.
    /// </summary>
    private static (UNet Model, DenoiseDiffusion Diffusion, bool Ema) LoadForSampling(EvalOptions o, IBackend be,
        ClassifierConfig cfg, string classifierPath, string? conditionalFor)
    {
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint!);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        try
        {
            o.Check(diffusion.Steps);
            var mc = model.Config;
            if (conditionalFor is not null && !mc.IsConditional)
                throw new UsageError($"{conditionalFor}: {o.Checkpoint} holds an unconditional model (trained without classes).");
            Prepare(() => SampleQuality.CheckFits(cfg, mc.ImageChannels, mc.ImageSize, mc.ImageSize, o.Checkpoint!), classifierPath);
            return (model, diffusion, ema);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>eval --class-accuracy: how often a conditional model's samples of class c are classified as c.</summary>
    private static int ClassAccuracy(EvalOptions o, ToolConsole con, IBackend be, FeatureClassifier classifier, string classifierPath,
        string[] names, Stopwatch total)
    {
        if (o.Checkpoint is null) throw new UsageError("--class-accuracy measures a conditional model: give --checkpoint.");
        if (o.Scramble) throw new UsageError("--scramble is an option of the FID measurement, not of --class-accuracy.");
        var cfg = classifier.Config;
        var (model, diffusion, ema) = LoadForSampling(o, be, cfg, classifierPath, "--class-accuracy");
        using var _m = model;
        var mc = model.Config;
        if (mc.NumClasses != cfg.Classes)
            throw new UserError($"{o.Checkpoint} is conditional on {mc.NumClasses} classes but {classifierPath} tells {cfg.Classes} apart; pass a --classifier trained on the same classes.");
        if (mc.ClassNames is { } modelNames && !modelNames.SequenceEqual(names, StringComparer.OrdinalIgnoreCase)
            && names.Any(n => !int.TryParse(n, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
            throw new UserError($"the classes of {o.Checkpoint} ({string.Join(", ", modelNames)}) are not those of {classifierPath} ({string.Join(", ", names)}).");
        long count = (long)o.N * mc.NumClasses;
        if (count > MaxCount) throw new UsageError($"-n {o.N} per class draws {count:N0} samples ({mc.NumClasses} classes); at most {MaxCount:N0} are allowed.");
        float guidance = o.Guidance ?? ClassCondition.DefaultGuidance;
        int n = (int)count;
        var labels = ClassCondition.Rows(mc.NumClasses, o.N, guidance).Labels;
        string sampling = o.Describe(diffusion.Steps);
        con.Out.WriteLine($"sampling {o.N} images of each of {mc.NumClasses} classes at guidance {guidance:G3} with {sampling} from {o.Checkpoint}{(ema ? " (EMA weights)" : "")} on {be.Name}, {o.Batch} at a time");
        var progress = new ProgressLine(con);
        var samples = ModelLoading.Draw(diffusion, o, n, o.Batch, labels, guidance, (_, first, p) =>
        {
            con.Cancel.ThrowIfCancellationRequested();
            int done = first + Math.Min(o.Batch, n - first) * p.Step / p.Of;
            progress.Report(done, n);
            if (p.Step == p.Of && !con.Interactive) con.Out.WriteLine($"  {done}/{n} samples  {Duration.Format(progress.Elapsed)}");
        });
        progress.Finish();
        var input = SampleQuality.PrepareSamples(samples, n, mc.ImageChannels, mc.ImageSize, diffusion.Config.DataRange, cfg);
        var outputs = SampleQuality.Classify(classifier, input, n);
        var predictions = SampleQuality.Predictions(outputs.Probabilities, n, cfg.Classes);
        var accuracy = SampleQuality.ClassAccuracy(predictions, labels, cfg.Classes);
        double mean = accuracy.Average();
        con.Out.WriteLine($"class accuracy (share of each class's samples that {classifierPath} puts in that class), guidance {guidance:G3}:");
        for (int c = 0; c < mc.NumClasses; c++) con.Out.WriteLine($"  {mc.ClassName(c),-12} {accuracy[c],7:P1}");
        con.Out.WriteLine($"  {"mean",-12} {mean,7:P1}   ({o.N} samples per class; chance {1.0 / mc.NumClasses:P1})");
        con.Out.WriteLine($"time: sampling {progress.Elapsed:F1}s, total {total.Elapsed.TotalSeconds:F1}s");
        if (o.Json)
            con.Out.WriteLine(JsonSerializer.Serialize(new
            {
                class_accuracy = accuracy,
                mean_class_accuracy = mean,
                class_names = Enumerable.Range(0, mc.NumClasses).Select(mc.ClassName),
                guidance,
                n_per_class = o.N,
                source = o.Checkpoint,
                sampler = sampling,
                seed = o.Seed,
                classifier = classifierPath,
                backend = be.Name,
                sampling_s = progress.Elapsed,
                total_s = total.Elapsed.TotalSeconds,
            }));
        return 0;
    }

    /// <summary>eval --by-t: where in the diffusion the model's error is, on real images.</summary>
    private static int ErrorByTimestep(EvalOptions o, ToolConsole con)
    {
        if (o.Checkpoint is null) throw new UsageError("--by-t measures a model: give --checkpoint.");
        string realPath = o.Real ?? BundledFiles.Data(BundledFiles.TestImages);
        var real = LoadImages(realPath);
        using var be = ToolBackends.Create(o);
        var ckpt = ModelLoading.OpenCheckpoint(o.Checkpoint);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, o, o, be, o.EmaChoice);
        using var _m = model;
        var mc = model.Config;
        if (real.Channels != mc.ImageChannels || real.Height > mc.ImageSize || real.Width > mc.ImageSize)
            throw new UserError($"{realPath} has {real.Channels}x{real.Height}x{real.Width} images; the model takes {mc.ImageChannels}x{mc.ImageSize}x{mc.ImageSize}.");
        int n = Math.Min(o.N, real.Count);
        var loader = new DataLoader(real, new DataLoaderOptions
        {
            BatchSize = n, Seed = o.Seed, PadTo = real.Height == mc.ImageSize ? 0 : mc.ImageSize, Range = diffusion.Config.DataRange,
        });
        var x0Host = new float[n * mc.ImageChannels * mc.ImageSize * mc.ImageSize];
        new LoaderBatchSource(loader).NextBatch(n, x0Host);
        using var x0 = Tensor.FromArray(be, x0Host, n, mc.ImageChannels, mc.ImageSize, mc.ImageSize);
        int T = diffusion.Steps;
        var ts = new[] { 0, 5, 20, 50, 100, 200, 300, 500, 700, 800, 900, 950, 980, 999 }
            .Select(t => (int)Math.Round(t * (T - 1) / 999.0)).Distinct().ToArray();
        con.Out.WriteLine($"error by timestep of {o.Checkpoint}{(ema ? " (EMA weights)" : "")}, {diffusion.Config.Prediction} prediction, on {n} images of {realPath}");
        double dataRms = Math.Sqrt(x0Host.Sum(v => (double)v * v) / x0Host.Length);
        con.Out.WriteLine($"     t    eps MSE  x0 RMS error   (x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab); RMS of the images themselves {dataRms:F3})");
        var rows = Evaluation.ErrorByTimestep(diffusion, x0, ts, new PhiloxGenerator(o.Seed));
        foreach (var r in rows) con.Out.WriteLine($"  {r.T,4}  {r.EpsMse,9:F5}  {r.X0Rms,9:F4}");
        if (o.Json)
            con.Out.WriteLine(JsonSerializer.Serialize(new { source = o.Checkpoint, n, t = rows.Select(r => r.T), eps_mse = rows.Select(r => r.EpsMse), x0_rms = rows.Select(r => r.X0Rms) }));
        return 0;
    }

    internal static (FeatureClassifier, IReadOnlyDictionary<string, string>) LoadClassifier(string path, IBackend be)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such classifier weights file.");
        try { return FeatureClassifier.Load(path, be); }
        catch (Exception e) when (e is InvalidDataException or IOException) { throw new UserError(e.Message, e); }
    }

    private static IdxDataset LoadImages(string path)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such IDX image file.");
        try { return IdxDataset.Load(path); }
        catch (Exception e) when (e is InvalidDataException or IOException) { throw new UserError(e.Message, e); }
    }

    /// <summary>Runs a step that checks image geometry against the classifier, turning a mismatch into advice.</summary>
    private static T Prepare<T>(Func<T> f, string classifierPath)
    {
        try { return f(); }
        catch (ArgumentException e)
        {
            throw new UserError($"{e.Message} {classifierPath} cannot measure them: for grey IDX data with labels make a classifier with "
                + "'ddpm-tool train-classifier --data IMAGES --labels LABELS --out PATH' and pass --classifier PATH; RGB data such as "
                + "CIFAR-10 is conventionally measured on Inception-v3 features, which this tool does not include.", e);
        }
    }

    private static void Prepare(Action f, string classifierPath) => Prepare(() => { f(); return 0; }, classifierPath);
}
