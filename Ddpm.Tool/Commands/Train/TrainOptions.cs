using CommandLine;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Training;

namespace Ddpm.Tool.Commands;

[Verb("train", HelpText = "Train a UNet denoiser (default: the small preset on the bundled Fashion-MNIST subset).")]
public sealed class TrainOptions : ModelOptions, IDiffusionOptions
{
    /// <summary>Training runs in the backend's default precision (tf32 on cuda).</summary>
    protected override bool UsesBackendDefaultPrecision => true;

    /// <summary>The warm-up of a run that does not set --warmup, when the run is long enough for it.</summary>
    public const int DefaultWarmup = 100;

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

    [Option("lr-schedule", Default = LrSchedule.Cosine, HelpText = "After the warm-up: cosine (decay to --lr-final x lr at the last step) or constant.")]
    public LrSchedule LrSchedule { get; set; } = LrSchedule.Cosine;

    [Option("lr-final", Default = 0f, HelpText = "The learning rate at the end of the cosine decay, as a fraction of --lr.")]
    public float LrFinal { get; set; }

    [Option("warmup", HelpText = "Linear learning-rate warm-up steps (default 100; a tenth of the run for runs under 1,000 steps).")]
    public int? Warmup { get; set; }

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

    [Option("labml-exact", Default = false, HelpText = "labml's DDPM exactly: float32 linear schedule, eps prediction, sigma^2 = beta, no clipping, noise at t=0, data in [0,1].")]
    public bool LabmlExact { get; set; }

    [Option("prediction", HelpText = "What the network learns: v (sqrt(ab) eps - sqrt(1-ab) x0, the default: clean DDIM samples from short runs) or eps (the noise: labml's L_simple; the default with --labml-exact).")]
    public Prediction? Prediction { get; set; }

    [Option("loss-weighting", Default = "uniform", HelpText = "Per-timestep weight of the loss: uniform (the default; labml's L_simple) or min-snr (Min-SNR-gamma: min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR+1) for v).")]
    public string LossWeightingText { get; set; } = "uniform";

    [Option("min-snr-gamma", Default = DiffusionConfig.DefaultMinSnrGamma, HelpText = "gamma of --loss-weighting min-snr: a positive number (default 5).")]
    public double MinSnrGamma { get; set; } = DiffusionConfig.DefaultMinSnrGamma;

    /// <summary>The weighting --loss-weighting names ("uniform" or "min-snr", any case).</summary>
    public LossWeighting LossWeighting => LossWeightingText.Trim().ToLowerInvariant() switch
    {
        "uniform" => LossWeighting.Uniform,
        "min-snr" or "minsnr" => LossWeighting.MinSnr,
        _ => throw new UsageError($"--loss-weighting is uniform or min-snr, not '{LossWeightingText}'."),
    };

    [Option("schedule", HelpText = "Beta schedule: linear (default) or cosine.")]
    public BetaSchedule? Schedule { get; set; }

    [Option("variance", HelpText = "Reverse-step variance: large (beta, default) or small (posterior).")]
    public ReverseVariance? Variance { get; set; }

    [Option("diffusion-steps", HelpText = "T, the number of diffusion steps (default 1000).")]
    public int? DiffusionSteps { get; set; }

    [Option("classes", Default = false, HelpText = "Train a class-conditional model on the data's labels (the default when the data has them: the bundled set's, CIFAR-10's, or one sub-folder per class of an image folder; off with --labml-exact and the labml preset). Samples are then guided toward a class with 'sample --class'.")]
    public bool Classes { get; set; }

    [Option("no-classes", Default = false, HelpText = "Train an unconditional model even when the data has labels.")]
    public bool NoClasses { get; set; }

    [Option("class-dropout", Default = 0.1f, HelpText = "Share of a conditional model's training labels replaced by the null class, in [0, 1] (default 0.1), so one network is conditional and unconditional (classifier-free guidance).")]
    public float ClassDropout { get; set; } = 0.1f;

    [Option("out", Default = "runs/train", HelpText = "Output folder: checkpoint, sample grids, loss.csv, loss.png.")]
    public string Out { get; set; } = "runs/train";

    [Option("resume", HelpText = "Continue from a training checkpoint (its configs are used).")]
    public string? Resume { get; set; }

    [Option("distributed", HelpText = "Data-parallel training: none, mpi (this process is one rank of an MPI job; --batch is the global batch; device gradients go through host memory) or nccl (an MPI job whose CUDA ranks all-reduce gradients on the device with NCCL's libnccl.so.2; --backend cuda only). Default: when an MPI launcher started several ranks (mpiexec, srun --mpi=pmi2), nccl for --backend cuda if libnccl.so.2 is found (else mpi, with a warning) and mpi for other backends; none otherwise.")]
    public DistributedMode? Distributed { get; set; }

    [Option("bucket-mb", Default = DataParallel.DefaultBucketMegabytes, HelpText = "Data-parallel: average the gradients in buckets of at least this many MB, " +
        "each sent as soon as the backward pass has finished it, so communication overlaps computation (0: one all-reduce of the whole gradient after the backward pass). " +
        "Default 4, range 0 to 1024.")]
    public double BucketMb { get; set; } = DataParallel.DefaultBucketMegabytes;

    /// <summary>Refuses a --bucket-mb outside 0 .. <see cref="DataParallel.MaxBucketMegabytes"/>.</summary>
    internal static void CheckBucketMb(double mb)
    {
        if (!(mb >= 0 && mb <= DataParallel.MaxBucketMegabytes))
            throw new UsageError($"--bucket-mb must be between 0 and {DataParallel.MaxBucketMegabytes:G}, got {mb.ToString(System.Globalization.CultureInfo.InvariantCulture)}.");
    }

    [Option("sample-every", Default = 1000, HelpText = "Write a sample grid every N steps (0: only at the end).")]
    public int SampleEvery { get; set; }

    [Option("checkpoint-every", Default = 500, HelpText = "Write the checkpoint every N steps (0: only at the end).")]
    public int CheckpointEvery { get; set; }

    [Option("save-spikes", Default = 0.0, HelpText = "Save every step whose gradient norm (before clipping) exceeds this as OUT/spikes/step-N.safetensors "
        + "(starting weights, batch, noise, gradient; the first 20 such steps) and name its largest gradients; replay one with 'parity --replay FILE'. 0: off.")]
    public double SaveSpikes { get; set; }

    [Option("log-every", Default = 50, HelpText = "Print a progress line every N steps when the output is not a terminal.")]
    public int LogEvery { get; set; }

    [Option("samples", Default = 16, HelpText = "Images in each sample grid.")]
    public int Samples { get; set; }

    [Option("sample-steps", Default = 50, HelpText = "DDIM steps for the sample grids.")]
    public int SampleSteps { get; set; }

    [Option("scale", HelpText = "Pixel scale of the sample grids (nearest neighbour). Default: at least 512 pixels wide; 1 writes the model's pixels.")]
    public int? Scale { get; set; }

    /// <summary>Upper bounds of the size-like options (the memory a run needs is checked separately, from the model).</summary>
    public const long MaxSteps = Ddpm.Diffusion.Training.TrainingConfig.MaxSteps;

    /// <summary>The most steps one run saves for --save-spikes (the help text says 20).</summary>
    public const int MaxSpikeFiles = 20;
    public const int MaxBatch = Ddpm.Diffusion.Training.TrainingConfig.MaxBatchSize, MaxSamples = 1024, MaxScale = 64;

    /// <summary>Checks the values that need no file; the rest is checked while the plan is resolved.</summary>
    public void Check()
    {
        CheckBucketMb(BucketMb);
        if (Steps is <= 0 or > MaxSteps) throw new UsageError($"--steps must be between 1 and {MaxSteps:N0}, got {Steps}.");
        if (!(Lr > 0 && float.IsFinite(Lr))) throw new UsageError($"--lr must be a positive number, got {Lr}.");
        if (Epochs is <= 0) throw new UsageError($"--epochs must be positive, got {Epochs}.");
        if (Steps is not null && Epochs is not null) throw new UsageError("give --steps or --epochs, not both.");
        if (Batch is <= 0 or > MaxBatch) throw new UsageError($"--batch must be between 1 and {MaxBatch:N0}, got {Batch}.");
        if (MaxImages is <= 0) throw new UsageError($"--max-images must be positive, got {MaxImages}.");
        if (Warmup is < 0) throw new UsageError($"--warmup must be >= 0, got {Warmup}.");
        if (Scale is <= 0 or > MaxScale) throw new UsageError($"--scale must be between 1 and {MaxScale}, got {Scale}.");
        if (Samples <= 0 || Samples > MaxSamples) throw new UsageError($"--samples must be between 1 and {MaxSamples}, got {Samples}.");
        if (SampleSteps <= 0) throw new UsageError($"--sample-steps must be positive, got {SampleSteps}.");
        if (SampleEvery < 0 || CheckpointEvery < 0 || LogEvery <= 0) throw new UsageError("--sample-every and --checkpoint-every must be >= 0, --log-every positive.");
        if (Seed > Ddpm.Diffusion.Training.TrainingConfig.MaxSeed) throw new UsageError($"--seed must be at most {Ddpm.Diffusion.Training.TrainingConfig.MaxSeed} (2^62 - 1), got {Seed}.");
        if (!(SaveSpikes >= 0 && double.IsFinite(SaveSpikes))) throw new UsageError($"--save-spikes must be a gradient norm >= 0 (0: off), got {SaveSpikes}.");
        if (Classes && NoClasses) throw new UsageError("give --classes or --no-classes, not both.");
        if (!(ClassDropout >= 0 && ClassDropout <= 1)) throw new UsageError($"--class-dropout must be in [0, 1], got {ClassDropout}.");
        if (Classes && LabmlExact) throw new UsageError("--labml-exact trains labml's unconditional model; drop --classes.");
        if (AttnNorm == 1 && LabmlExact) throw new UsageError("--labml-exact trains labml's model, whose attention does not apply its norm; drop --attn-norm 1.");
        if (LabmlExact && Prediction == Ddpm.Diffusion.Diffusion.Prediction.V)
            throw new UsageError("--labml-exact trains labml's eps prediction; drop --prediction v.");
        if (!(MinSnrGamma > 0 && double.IsFinite(MinSnrGamma))) throw new UsageError($"--min-snr-gamma must be a positive number, got {MinSnrGamma}.");
        if (LabmlExact && LossWeighting != LossWeighting.Uniform)
            throw new UsageError("--labml-exact trains labml's uniformly weighted L_simple; drop --loss-weighting min-snr.");
    }
}
