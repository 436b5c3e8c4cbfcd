using System.Diagnostics;
using System.Globalization;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("train", HelpText = "Train a UNet denoiser (default: the small preset on the bundled Fashion-MNIST subset).")]
public sealed class TrainOptions : ModelOptions, IDiffusionOptions
{
    [Option("data", HelpText = "Training images: an IDX file (.gz or raw), a folder of PNG/JPEG/BMP, or a CIFAR-10 batch folder. Default: the bundled Fashion-MNIST subset.")]
    public string? Data { get; set; }

    [Option("max-images", HelpText = "Use only the first N images of the data.")]
    public int? MaxImages { get; set; }

    [Option("steps", HelpText = "Total optimisation steps (default 2000, or from --epochs).")]
    public long? Steps { get; set; }

    [Option("epochs", HelpText = "Train for this many passes over the data instead of --steps.")]
    public int? Epochs { get; set; }

    [Option("batch", HelpText = "Batch size (default 32 for training; the preset's benchmark batch is larger).")]
    public int? Batch { get; set; }

    [Option("lr", Default = 1e-3f, HelpText = "Adam learning rate (after the warm-up; gradients are clipped to norm 1).")]
    public float Lr { get; set; }

    [Option("lr-schedule", Default = "cosine", HelpText = "After the warm-up: cosine (decay to --lr-final x lr at the last step) or constant.")]
    public string LrSchedule { get; set; } = "cosine";

    [Option("lr-final", Default = 0f, HelpText = "The learning rate at the end of the cosine decay, as a fraction of --lr.")]
    public float LrFinal { get; set; }

    [Option("warmup", Default = 100, HelpText = "Linear learning-rate warm-up steps.")]
    public int Warmup { get; set; }

    [Option("grad-clip", Default = 1f, HelpText = "Global gradient-norm clip (0: off).")]
    public float GradClip { get; set; }

    [Option("ema", Default = 0.995f, HelpText = "EMA decay of the weights (0: off); samples use the EMA weights.")]
    public float Ema { get; set; }

    [Option("seed", Default = 0UL, HelpText = "Seed of every random stream (init, data order, noise, dropout).")]
    public ulong Seed { get; set; }

    [Option("hflip", Default = false, HelpText = "Random horizontal flips of the training images.")]
    public bool HFlip { get; set; }

    [Option("data-range", Default = "-1,1", HelpText = "Pixel range the model sees: -1,1 (paper) or 0,1 (labml).")]
    public string DataRangeText { get; set; } = "-1,1";

    [Option("no-clip", Default = false, HelpText = "Do not clip the predicted x0 while sampling.")]
    public bool NoClip { get; set; }

    [Option("labml-exact", Default = false, HelpText = "The seed's diffusion exactly: float32 schedule, sigma^2 = beta, no clipping, noise at t=0, data in [0,1].")]
    public bool LabmlExact { get; set; }

    [Option("prediction", HelpText = "What the network learns: v (sqrt(ab) eps - sqrt(1-ab) x0, the default: clean DDIM samples from short runs) or eps (the noise: the seed's L_simple; the default with --labml-exact).")]
    public string? Prediction { get; set; }

    [Option("schedule", HelpText = "Beta schedule: linear (default) or cosine.")]
    public string? Schedule { get; set; }

    [Option("variance", HelpText = "Reverse-step variance: large (beta, default) or small (posterior).")]
    public string? Variance { get; set; }

    [Option("diffusion-steps", HelpText = "T, the number of diffusion steps (default 1000).")]
    public int? DiffusionSteps { get; set; }

    [Option("out", Default = "runs/train", HelpText = "Output folder: checkpoint, sample grids, loss.csv, loss.png.")]
    public string Out { get; set; } = "runs/train";

    [Option("resume", HelpText = "Continue from a training checkpoint (its configs are used).")]
    public string? Resume { get; set; }

    [Option("sample-every", Default = 1000, HelpText = "Write a sample grid every N steps (0: only at the end).")]
    public int SampleEvery { get; set; }

    [Option("checkpoint-every", Default = 500, HelpText = "Write the checkpoint every N steps (0: only at the end).")]
    public int CheckpointEvery { get; set; }

    [Option("log-every", Default = 50, HelpText = "Print a progress line every N steps when the output is not a terminal.")]
    public int LogEvery { get; set; }

    [Option("samples", Default = 16, HelpText = "Images in each sample grid.")]
    public int Samples { get; set; }

    [Option("sample-steps", Default = 50, HelpText = "DDIM steps for the sample grids.")]
    public int SampleSteps { get; set; }
}

public static class TrainCommand
{
    public static int Run(TrainOptions o, Console2 con)
    {
        if (o.Steps is <= 0) throw new UsageError($"--steps must be positive, got {o.Steps}.");
        if (o.Epochs is <= 0) throw new UsageError($"--epochs must be positive, got {o.Epochs}.");
        if (o.Steps is not null && o.Epochs is not null) throw new UsageError("give --steps or --epochs, not both.");
        if (o.Batch is <= 0) throw new UsageError($"--batch must be positive, got {o.Batch}.");
        if (o.Samples <= 0 || o.SampleSteps <= 0) throw new UsageError("--samples and --sample-steps must be positive.");
        if (o.SampleEvery < 0 || o.CheckpointEvery < 0 || o.LogEvery <= 0) throw new UsageError("--sample-every and --checkpoint-every must be >= 0, --log-every positive.");
        var range = o.DataRangeText.Replace(" ", "") switch
        {
            "-1,1" => DataRange.MinusOneToOne,
            "0,1" => DataRange.ZeroToOne,
            _ => throw new UsageError($"--data-range is -1,1 or 0,1, not '{o.DataRangeText}'."),
        };

        Checkpoint? resume = o.Resume is null ? null : ModelLoading.OpenCheckpoint(o.Resume);
        if (resume is not null && !resume.IsTrainingCheckpoint)
            throw new UserError($"{o.Resume} is a weights file, not a training checkpoint; it cannot be resumed.");

        var preset = Presets.Get(o.Preset ?? "small");
        var model = resume?.Model ?? o.ResolveModel(preset.Model);
        var prediction = (o.Prediction ?? (o.LabmlExact ? "eps" : "v")).ToLowerInvariant() switch
        {
            "eps" => Prediction.Eps,
            "v" => Prediction.V,
            _ => throw new UsageError($"--prediction is eps or v, not '{o.Prediction}'."),
        };
        if (o.LabmlExact && prediction != Prediction.Eps) throw new UsageError("--labml-exact trains the seed's eps prediction; drop --prediction v.");
        var diffusionConfig = resume?.Diffusion ?? Cli.Diffusion(o) with
        {
            DataRange = o.LabmlExact ? DataRange.ZeroToOne : range, ClipX0 = !o.NoClip && !o.LabmlExact, Prediction = prediction,
        };
        var schedule = o.LrSchedule.ToLowerInvariant() switch
        {
            "cosine" => LrSchedule.Cosine,
            "constant" => LrSchedule.Constant,
            _ => throw new UsageError($"--lr-schedule is cosine or constant, not '{o.LrSchedule}'."),
        };
        var training = resume?.Training ?? new TrainingConfig
        {
            BatchSize = o.Batch ?? Math.Min(preset.Batch, 32), LearningRate = o.Lr, WarmupSteps = o.Warmup, GradClip = o.GradClip, EmaDecay = o.Ema,
            Seed = o.Seed, HorizontalFlip = o.HFlip, LrSchedule = schedule, LrFinal = o.LrFinal,
        };

        string dataPath = o.Data ?? Cli.BundledData();
        IImageDataset data = Cli.OpenDataset(dataPath, model.ImageSize, model.ImageChannels);
        if (o.MaxImages is { } max)
        {
            if (max <= 0) throw new UsageError($"--max-images must be positive, got {max}.");
            data = new SubsetDataset(data, Math.Min(max, data.Count));
        }
        if (data.Channels != model.ImageChannels)
        {
            if (resume is null && o.ImageChannels is null)
                model = model with { ImageChannels = data.Channels };
            else
                throw new UserError($"{dataPath} has {data.Channels}-channel images but the model takes {model.ImageChannels}.");
        }
        if (data.Height > model.ImageSize || data.Width > model.ImageSize || data.Height != data.Width)
            throw new UserError($"{dataPath} has {data.Height}x{data.Width} images; the model is {model.ImageSize}x{model.ImageSize} (square, at least as large: smaller images are padded).");
        DataLoader loader;
        try
        {
            loader = new DataLoader(data, new DataLoaderOptions
            {
                BatchSize = training.BatchSize, Seed = training.Seed, RandomHorizontalFlip = training.HorizontalFlip,
                PadTo = data.Height == model.ImageSize ? 0 : model.ImageSize, Range = diffusionConfig.DataRange,
            });
        }
        catch (ArgumentException e) { throw new UserError($"{dataPath}: {e.Message}"); }

        long totalSteps = o.Steps ?? (o.Epochs is { } ep ? (long)ep * loader.BatchesPerEpoch : 2000);
        string? decayNote = null;
        // A new run decays over its length; a resumed run that is extended stretches its decay to the new end.
        if (training.LrSchedule == LrSchedule.Cosine && (resume is null || totalSteps > training.DecaySteps))
        {
            if (resume is not null)
                decayNote = $"  the cosine learning-rate decay now ends at step {totalSteps:N0} instead of {training.DecaySteps:N0}";
            training = training with { DecaySteps = totalSteps };
        }
        if (training.LrSchedule == LrSchedule.Cosine && training.DecaySteps <= training.WarmupSteps)
            throw new UsageError($"the warm-up ({training.WarmupSteps} steps) must be shorter than the run ({totalSteps:N0} steps) for the cosine decay; lower --warmup or use --lr-schedule constant.");
        try { training.Validate(); }
        catch (ArgumentException e) { throw new UsageError(e.Message); }
        Directory.CreateDirectory(o.Out);
        string ckptPath = Path.Combine(o.Out, "checkpoint.safetensors");

        using var be = Cli.CreateBackend(o);
        using var unet = new UNet(be, model, new PhiloxGenerator(training.Seed));
        var diffusion = new DenoiseDiffusion(unet, diffusionConfig);
        using var trainer = new Trainer(diffusion, new LoaderBatchSource(loader), training);
        if (resume is not null)
        {
            try { resume.RestoreInto(trainer); }
            catch (InvalidDataException e) { throw new UserError(e.Message, e); }
        }

        con.Out.WriteLine($"ddpm-tool train: {model}");
        con.Out.WriteLine($"  {unet.ParameterCount():N0} parameters on {be.Description}");
        con.Out.WriteLine($"  data {dataPath}: {data.Count:N0} images {data.Channels}x{data.Height}x{data.Width}{(loader.Height != data.Height ? $" padded to {loader.Height}x{loader.Width}" : "")}, {loader.BatchesPerEpoch} batches of {training.BatchSize} per epoch");
        string lrText = training.LrSchedule == LrSchedule.Cosine
            ? $"lr {training.LearningRate:G3} (warm-up {training.WarmupSteps}, cosine to {training.LearningRate * training.LrFinal:G3})"
            : $"lr {training.LearningRate:G3} (warm-up {training.WarmupSteps}, then constant)";
        con.Out.WriteLine($"  {totalSteps:N0} steps{(resume is not null ? $" (resuming at {trainer.StepCount:N0})" : "")}, {lrText}, EMA {training.EmaDecay:G4}, T {diffusionConfig.NSteps}, {diffusionConfig.Prediction.ToString().ToLowerInvariant()} prediction, output {o.Out}");
        if (decayNote is not null) con.Out.WriteLine(decayNote);

        var log = new LossLog(Path.Combine(o.Out, "loss.csv"), append: resume is not null);
        var progress = new Progress(con, totalSteps, trainer.StepCount, o.LogEvery, training.BatchSize);
        bool interrupted = false;
        try
        {
            while (trainer.StepCount < totalSteps)
            {
                if (con.Cancel.IsCancellationRequested) { interrupted = true; break; }
                var s = trainer.Step();
                if (!float.IsFinite(s.Loss))
                    throw new UserError($"the loss became {s.Loss} at step {s.Step}; lower --lr or keep --grad-clip on. The last checkpoint is {ckptPath}.");
                log.Add(s);
                progress.Report(s);
                if (o.CheckpointEvery > 0 && s.Step % o.CheckpointEvery == 0 && s.Step < totalSteps) Save(trainer, ckptPath, con);
                if (o.SampleEvery > 0 && s.Step % o.SampleEvery == 0 && s.Step < totalSteps)
                    WriteSamples(trainer, Path.Combine(o.Out, $"samples-{s.Step:D7}.png"), o, con);
            }
        }
        finally
        {
            progress.Finish();
            log.Flush();
            if (trainer.StepCount > 0) Save(trainer, ckptPath, con);
        }
        if (interrupted)
        {
            con.Out.WriteLine($"interrupted at step {trainer.StepCount:N0}; checkpoint saved to {ckptPath}. Resume with --resume {ckptPath}.");
            return 130;
        }
        log.Plot(Path.Combine(o.Out, "loss.png"));
        WriteSamples(trainer, Path.Combine(o.Out, "samples.png"), o, con);
        using (trainer.UseEmaWeights())
            Checkpoint.SaveWeights(Path.Combine(o.Out, "model.safetensors"), unet, model);
        con.Out.WriteLine($"done: {trainer.StepCount:N0} steps in {Cli.Seconds(progress.Elapsed)}; final loss (smoothed) {progress.Smoothed:F4}.");
        con.Out.WriteLine($"  {Path.Combine(o.Out, "samples.png")}, loss.png, loss.csv, checkpoint.safetensors, model.safetensors ({(trainer.HasEma ? "EMA " : "")}weights)");
        return 0;
    }

    private static void Save(Trainer trainer, string path, Console2 con)
    {
        try
        {
            Checkpoint.Save(path, trainer);
        }
        catch (IOException e)
        {
            throw new UserError($"could not write the checkpoint {path}: {e.Message} (the previous checkpoint, if any, is intact).", e);
        }
    }

    private static void WriteSamples(Trainer trainer, string path, TrainOptions o, Console2 con)
    {
        var sw = Stopwatch.StartNew();
        var mc = trainer.Model.Config;
        using var ema = trainer.UseEmaWeights();
        trainer.Model.Eval();
        using var scope = new TensorScope();
        var sampler = new Sampler(trainer.Diffusion);
        var x = sampler.Sample(o.Samples, SamplerKind.Ddim, Math.Min(o.SampleSteps, trainer.Diffusion.Steps), 0f, trainer.Config.Seed + 1000);
        ImageGrid.SavePng(path, x.ToArray(), o.Samples, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
            (int)Math.Ceiling(Math.Sqrt(o.Samples)), trainer.Diffusion.Config.DataRange, 2);
        trainer.Model.Train();
        if (!con.Interactive) con.Out.WriteLine($"  wrote {path} ({o.SampleSteps} DDIM steps, {sw.Elapsed.TotalSeconds:F1}s)");
    }
}

/// <summary>The first <c>count</c> images of a dataset.</summary>
internal sealed class SubsetDataset(IImageDataset inner, int count) : IImageDataset
{
    public int Count => count;
    public int Channels => inner.Channels;
    public int Height => inner.Height;
    public int Width => inner.Width;
    public void Get(int index, Span<float> dst)
    {
        if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(nameof(index));
        inner.Get(index, dst);
    }
}

/// <summary>A live progress line on a terminal, a plain line every N steps otherwise.</summary>
internal sealed class Progress(Console2 con, long total, long start, int every, int batch)
{
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly long _start = start;
    private double _ema, _weight;
    private DateTime _lastDraw = DateTime.MinValue;
    private bool _drew;

    public double Elapsed => _sw.Elapsed.TotalSeconds;
    /// <summary>Bias-corrected moving average of the loss (as Adam corrects its moments), so early values are not dragged toward 0.</summary>
    public double Smoothed => _weight > 0 ? _ema / _weight : double.NaN;

    public void Report(TrainStep s)
    {
        _ema = 0.95 * _ema + 0.05 * s.Loss;
        _weight = 0.95 * _weight + 0.05;
        double el = _sw.Elapsed.TotalSeconds;
        long done = s.Step - _start;
        double rate = done / Math.Max(el, 1e-9);
        double eta = (total - s.Step) / Math.Max(rate, 1e-9);
        string line = string.Create(CultureInfo.InvariantCulture,
            $"step {s.Step,7:N0}/{total:N0}  loss {Smoothed:F4}  {rate * batch,6:F1} img/s  lr {s.LearningRate:G3}  |g| {s.GradNorm:F2}  {Cli.Seconds(el)} elapsed, ETA {Cli.Seconds(eta)}");
        if (con.Interactive)
        {
            if ((DateTime.UtcNow - _lastDraw).TotalMilliseconds < 200 && s.Step != total) return;
            _lastDraw = DateTime.UtcNow;
            con.Out.Write("\r" + line.PadRight(110));
            _drew = true;
        }
        else if (s.Step % every == 0 || s.Step == total || done == 1)
        {
            con.Out.WriteLine(line);
        }
    }

    public void Finish()
    {
        if (_drew) con.Out.WriteLine();
        _drew = false;
    }
}
