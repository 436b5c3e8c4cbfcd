using System.Globalization;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Training;

namespace Ddpm.Tool.Commands;

/// <summary>
/// <c>train</c>'s options. Every option that sets part of the run's configuration is null (or off) unless given,
/// so that a value from <c>--config FILE</c> or the recipe's default (<see cref="Recipes"/>) stands where the
/// command line says nothing; the defaults in the help texts are the recipe's.
/// </summary>
[Verb("train", HelpText = "Train a UNet denoiser (default: the compact preset on the bundled Fashion-MNIST subset for 2,000 steps) into a run folder (--out).")]
public sealed class TrainOptions : ModelOptions, IDiffusionOptions
{
    /// <summary>Training runs in the backend's default precision (tf32 on cuda).</summary>
    protected override bool UsesBackendDefaultPrecision => true;

    [Option("config", HelpText = "Start from this configuration (a run's config.json, or a JSON file with some of its sections and keys); options given on the command line override it.")]
    public string? Config { get; set; }

    [Option("data", HelpText = "Training images: an IDX file (.gz or raw), a folder of PNG/JPEG/BMP, or a CIFAR-10 batch folder. Default: the bundled Fashion-MNIST subset.")]
    public string? Data { get; set; }

    [Option("max-images", HelpText = "Use only the first N images of the data.")]
    public int? MaxImages { get; set; }

    [Option("steps", HelpText = "Total optimisation steps (default 2000, or from --epochs; a resumed run keeps its own unless given).")]
    public long? Steps { get; set; }

    [Option("epochs", HelpText = "Train for this many passes over the data instead of --steps.")]
    public int? Epochs { get; set; }

    [Option("batch", HelpText = "Batch size, the global batch of all ranks (default 32; the preset's benchmark batch when smaller).")]
    public int? Batch { get; set; }

    [Option("grad-accum", HelpText = "Run each step's batch as K micro-batches and accumulate their gradients: the same step as one batch, with the memory of a micro-batch (default 1).")]
    public int? GradAccum { get; set; }

    [Option("lr", HelpText = "Adam learning rate after the warm-up (default 1e-3; gradients are clipped to norm 1).")]
    public float? Lr { get; set; }

    [Option("lr-schedule", HelpText = "After the warm-up: cosine (the default: decay to --lr-final x lr at the last step) or constant.")]
    public LrSchedule? LrSchedule { get; set; }

    [Option("lr-final", HelpText = "The learning rate at the end of the cosine decay, as a fraction of --lr (default 0).")]
    public float? LrFinal { get; set; }

    [Option("warmup", HelpText = "Linear learning-rate warm-up steps (default 100; a tenth of the run for runs under 1,000 steps).")]
    public int? Warmup { get; set; }

    [Option("grad-clip", HelpText = "Global gradient-norm clip (default 1; 0: off).")]
    public float? GradClip { get; set; }

    [Option("ema", HelpText = "EMA decay of the weights (default 0.995; 0: off); samples use the EMA weights.")]
    public float? Ema { get; set; }

    [Option("seed", HelpText = "Seed of every random stream (init, data order, noise, dropout); default 0.")]
    public ulong? Seed { get; set; }

    [Option("hflip", Default = false, HelpText = "Random horizontal flips of the training images.")]
    public bool HFlip { get; set; }

    [Option("data-range", HelpText = "Pixel range the model sees: -1,1 (paper; the default) or 0,1 (labml).")]
    public string? DataRangeText { get; set; }

    [Option("no-clip", Default = false, HelpText = "Do not clip the predicted x0 while sampling.")]
    public bool NoClip { get; set; }

    [Option("labml-exact", Default = false, HelpText = "labml's DDPM exactly: float32 linear schedule, eps prediction, sigma^2 = beta, no clipping, noise at t=0, data in [0,1].")]
    public bool LabmlExact { get; set; }

    [Option("prediction", HelpText = "What the network learns: v (sqrt(ab) eps - sqrt(1-ab) x0, the default: clean DDIM samples from short runs) or eps (the noise: labml's L_simple; the default with --labml-exact).")]
    public Prediction? Prediction { get; set; }

    [Option("loss-weighting", HelpText = "Per-timestep weight of the loss: uniform (the default; labml's L_simple) or min-snr (Min-SNR-gamma: min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR+1) for v).")]
    public string? LossWeightingText { get; set; }

    [Option("min-snr-gamma", HelpText = "gamma of --loss-weighting min-snr: a positive number (default 5).")]
    public double? MinSnrGamma { get; set; }

    /// <summary>The weighting --loss-weighting names ("uniform" or "min-snr", any case), or null when not given.</summary>
    public LossWeighting? LossWeighting => LossWeightingText?.Trim().ToLowerInvariant() switch
    {
        null => null,
        "uniform" => Ddpm.Diffusion.Diffusion.LossWeighting.Uniform,
        "min-snr" or "minsnr" => Ddpm.Diffusion.Diffusion.LossWeighting.MinSnr,
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

    [Option("class-dropout", HelpText = "Share of a conditional model's training labels replaced by the null class, in [0, 1] (default 0.1), so one network is conditional and unconditional (classifier-free guidance).")]
    public float? ClassDropout { get; set; }

    [Option("out", Default = "runs/train", HelpText = "The run folder: step-numbered checkpoints, config.json, loss.csv, metrics.csv, logs/ (TensorBoard), sample grids, model.safetensors. A folder that holds another run is refused (see --resume, --overwrite).")]
    public string Out { get; set; } = "runs/train";

    [Option("resume", HelpText = "Continue a run: the latest checkpoint in --out (--resume alone), in a run folder, or a checkpoint file. Its configuration is kept; --steps extends it.")]
    public string? Resume { get; set; }

    [Option("overwrite", Default = false, HelpText = "Start a new run in an --out that holds another: that run's checkpoints, logs, grids and weights are removed first.")]
    public bool Overwrite { get; set; }

    [Option("bundle", HelpText = "When the run finishes, also write its final EMA weights in fp16 with its configs and last FID to this file: how the tool's bundled model (models/" + BundledFiles.DdpmModelFile + ") is made by 'train --preset small'.")]
    public string? Bundle { get; set; }

    [Option("keep", HelpText = "Step-numbered checkpoints kept in the run folder, the oldest removed first (default 3).")]
    public int? Keep { get; set; }

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
            throw new UsageError($"--bucket-mb must be between 0 and {DataParallel.MaxBucketMegabytes:G}, got {mb.ToString(CultureInfo.InvariantCulture)}.");
    }

    [Option("sample-every", HelpText = "Write a sample grid every N steps (default 1000; 0: only at the end).")]
    public int? SampleEvery { get; set; }

    [Option("checkpoint-every", HelpText = "Write a step-numbered checkpoint every N steps (default 500; 0: only at the end).")]
    public int? CheckpointEvery { get; set; }

    [Option("save-spikes", Default = 0.0, HelpText = "Save every step whose gradient norm (before clipping) exceeds this as OUT/spikes/step-N.safetensors "
        + "(starting weights, batch, noise, gradient; the first 20 such steps) and name its largest gradients; replay one with 'parity --replay FILE'. 0: off.")]
    public double SaveSpikes { get; set; }

    [Option("log-every", Default = 50, HelpText = "Print a progress line every N steps when the output is not a terminal.")]
    public int LogEvery { get; set; }

    [Option("samples", HelpText = "Images in each sample grid: one row of N per class for a class-conditional model (default 8), N images otherwise (default 16).")]
    public int? Samples { get; set; }

    [Option("eval-every", HelpText = "Measure sample quality every N steps and at the last step with the bundled classifier (FID, IS, class accuracy on --eval-samples samples, DPM-Solver++ 10 steps, a fixed seed) into metrics.csv and the event file, and keep the EMA weights of the lowest FID as best.safetensors. Default: 2000 on the bundled data (the main job: one measurement, at its last step), else 0 (off).")]
    public int? EvalEvery { get; set; }

    [Option("eval-samples", HelpText = "Samples each --eval-every measurement draws (default 300; FIDs of so few samples compare with each other, not with eval --n 1000).")]
    public int? EvalSamples { get; set; }

    [Option("sample-sampler", HelpText = "Sampler of the sample grids: dpm++ (DPM-Solver++, the default), ddim (eta 0) or ddpm (all T steps).")]
    public string? SampleSamplerText { get; set; }

    /// <summary>The grid sampler asked for, or null; an unknown name is a usage error.</summary>
    public SamplerKind? SampleSampler => SampleSamplerText is null ? null : SamplerOptions.ParseSampler(SampleSamplerText, "--sample-sampler");

    [Option("sample-steps", HelpText = "Steps of the sample grids' sampler (default 10).")]
    public int? SampleSteps { get; set; }

    [Option("scale", HelpText = "Pixel scale of the sample grids (nearest neighbour). Default: at least 512 pixels wide; 1 writes the model's pixels.")]
    public int? Scale { get; set; }

    /// <summary>The most steps one run saves for --save-spikes (the help text says 20).</summary>
    public const int MaxSpikeFiles = 20;
    public const int MaxBatch = TrainingConfig.MaxBatchSize, MaxScale = 64;

    /// <summary>Checks the values that need no file; the rest is checked while the plan is resolved.</summary>
    public void Check()
    {
        CheckBucketMb(BucketMb);
        if (Steps is <= 0 or > RunSettings.MaxSteps) throw new UsageError($"--steps must be between 1 and {RunSettings.MaxSteps:N0}, got {Steps}.");
        if (Lr is { } lr && !(lr > 0 && float.IsFinite(lr))) throw new UsageError($"--lr must be a positive number, got {lr}.");
        if (Epochs is <= 0) throw new UsageError($"--epochs must be positive, got {Epochs}.");
        if (Steps is not null && Epochs is not null) throw new UsageError("give --steps or --epochs, not both.");
        if (Batch is <= 0 or > MaxBatch) throw new UsageError($"--batch must be between 1 and {MaxBatch:N0}, got {Batch}.");
        if (GradAccum is <= 0 or > MaxBatch) throw new UsageError($"--grad-accum must be between 1 and {MaxBatch:N0}, got {GradAccum}.");
        if (MaxImages is <= 0) throw new UsageError($"--max-images must be positive, got {MaxImages}.");
        if (Warmup is < 0) throw new UsageError($"--warmup must be >= 0, got {Warmup}.");
        if (Scale is <= 0 or > MaxScale) throw new UsageError($"--scale must be between 1 and {MaxScale}, got {Scale}.");
        if (Samples is <= 0 or > RunSettings.MaxSamples) throw new UsageError($"--samples must be between 1 and {RunSettings.MaxSamples}, got {Samples}.");
        if (SampleSteps is <= 0) throw new UsageError($"--sample-steps must be positive, got {SampleSteps}.");
        _ = SampleSampler; // an unknown --sample-sampler is refused here, before any file is read
        if (SampleEvery is < 0 || CheckpointEvery is < 0 || LogEvery <= 0) throw new UsageError("--sample-every and --checkpoint-every must be >= 0, --log-every positive.");
        if (EvalEvery is < 0) throw new UsageError($"--eval-every must be >= 0 (0: off), got {EvalEvery}.");
        if (EvalSamples is < 2 or > RunSettings.MaxEvalSamples) throw new UsageError($"--eval-samples must be between 2 and {RunSettings.MaxEvalSamples:N0}, got {EvalSamples}.");
        if (Keep is <= 0 or > RunSettings.MaxKeep) throw new UsageError($"--keep must be between 1 and {RunSettings.MaxKeep:N0}, got {Keep}.");
        if (Seed > TrainingConfig.MaxSeed) throw new UsageError($"--seed must be at most {TrainingConfig.MaxSeed} (2^62 - 1), got {Seed}.");
        if (!(SaveSpikes >= 0 && double.IsFinite(SaveSpikes))) throw new UsageError($"--save-spikes must be a gradient norm >= 0 (0: off), got {SaveSpikes}.");
        if (Classes && NoClasses) throw new UsageError("give --classes or --no-classes, not both.");
        if (ClassDropout is { } cd && !(cd >= 0 && cd <= 1)) throw new UsageError($"--class-dropout must be in [0, 1], got {cd}.");
        if (Classes && LabmlExact) throw new UsageError("--labml-exact trains labml's unconditional model; drop --classes.");
        if (AttnNorm == 1 && LabmlExact) throw new UsageError("--labml-exact trains labml's model, whose attention does not apply its norm; drop --attn-norm 1.");
        if (AttnNorm is { } an && an is not (0 or 1)) throw new UsageError($"--attn-norm must be 0 or 1, got {an}.");
        if (LabmlExact && Prediction == Ddpm.Diffusion.Diffusion.Prediction.V)
            throw new UsageError("--labml-exact trains labml's eps prediction; drop --prediction v.");
        if (MinSnrGamma is { } g && !(g > 0 && double.IsFinite(g))) throw new UsageError($"--min-snr-gamma must be a positive number, got {g}.");
        if (LabmlExact && LossWeighting is { } w && w != Ddpm.Diffusion.Diffusion.LossWeighting.Uniform)
            throw new UsageError("--labml-exact trains labml's uniformly weighted L_simple; drop --loss-weighting min-snr.");
        if (Overwrite && Resume is not null) throw new UsageError("--overwrite starts a new run and --resume continues one; give one of them.");
    }

    /// <summary>What the command line sets of the run's configuration, each value remembering its option.</summary>
    public TrainingRecipe ToRecipe()
    {
        var r = new TrainingRecipe();
        void Set<T>(string section, string key, T? value, string option) where T : struct
        {
            if (value is { } v) r.Set(section, key, v, option);
        }
        void SetText(string section, string key, string? value, string option)
        {
            if (value is not null) r.Set(section, key, value, option);
        }
        SetText("run", "preset", Preset, "--preset");
        if (LabmlExact) r.Set("run", "labml_exact", true, "--labml-exact");
        SetText("run", "data", Data, "--data");
        Set("run", "max_images", MaxImages, "--max-images");
        if (Classes) r.Set("run", "classes", true, "--classes");
        if (NoClasses) r.Set("run", "classes", false, "--no-classes");
        Set("run", "steps", Steps, "--steps");
        Set("run", "epochs", Epochs, "--epochs");
        Set("run", "grad_accum", GradAccum, "--grad-accum");
        Set("run", "checkpoint_every", CheckpointEvery, "--checkpoint-every");
        Set("run", "keep", Keep, "--keep");
        Set("run", "sample_every", SampleEvery, "--sample-every");
        Set("run", "samples", Samples, "--samples");
        Set("run", "sample_sampler", SampleSampler, "--sample-sampler");
        Set("run", "sample_steps", SampleSteps, "--sample-steps");
        Set("run", "eval_every", EvalEvery, "--eval-every");
        Set("run", "eval_samples", EvalSamples, "--eval-samples");

        Set("model", "image_channels", ImageChannels, "--image-channels");
        Set("model", "image_size", ImageSize, "--image-size");
        Set("model", "n_channels", NChannels, "--n-channels");
        if (ChMults is not null) r.Set("model", "ch_mults", OptionText.Ints(ChMults, "--ch-mults"), "--ch-mults");
        if (Attn is not null) r.Set("model", "is_attn", OptionText.Ints(Attn, "--attn").Select(v => v != 0).ToArray(), "--attn");
        Set("model", "n_blocks", NBlocks, "--n-blocks");
        Set("model", "n_groups", NGroups, "--n-groups");
        Set("model", "dropout", Dropout, "--dropout");
        Set("model", "n_heads", NHeads, "--n-heads");
        if (AttnNorm is { } an) r.Set("model", "attn_norm", an == 1, "--attn-norm");

        Set("diffusion", "n_steps", DiffusionSteps, "--diffusion-steps");
        Set("diffusion", "schedule", Schedule, "--schedule");
        if (Variance is { } v) r.Set("diffusion", "variance", v == ReverseVariance.Small ? VarianceType.FixedSmall : VarianceType.FixedLarge, "--variance");
        if (NoClip) r.Set("diffusion", "clip_x0", false, "--no-clip");
        if (DataRangeText is not null) r.Set("diffusion", "data_range", OptionText.Range(DataRangeText, "--data-range").ToString(), "--data-range");
        Set("diffusion", "prediction", Prediction, "--prediction");
        Set("diffusion", "loss_weighting", LossWeighting, "--loss-weighting");
        Set("diffusion", "min_snr_gamma", MinSnrGamma, "--min-snr-gamma");

        Set("training", "batch_size", Batch, "--batch");
        Set("training", "lr", Lr, "--lr");
        Set("training", "lr_schedule", LrSchedule, "--lr-schedule");
        Set("training", "lr_final", LrFinal, "--lr-final");
        Set("training", "warmup_steps", Warmup, "--warmup");
        Set("training", "grad_clip", GradClip, "--grad-clip");
        Set("training", "ema_decay", Ema, "--ema");
        Set("training", "seed", Seed, "--seed");
        if (HFlip) r.Set("training", "hflip", true, "--hflip");
        Set("training", "class_dropout", ClassDropout, "--class-dropout");
        return r;
    }
}
