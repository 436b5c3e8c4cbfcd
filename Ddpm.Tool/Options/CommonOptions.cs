using CommandLine;
using Ddpm.Diffusion.Training;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;

namespace Ddpm.Tool;

/// <summary>Options every verb has.</summary>
public abstract class CommonOptions
{
    [Option("backend", Default = "cpu", HelpText = "Compute backend: cpu (SIMD, multi-threaded), cpu-reference (scalar oracle) or cuda.")]
    public string Backend { get; set; } = "cpu";

    [Option("threads", Default = 0, HelpText = "CPU worker threads (0: all cores).")]
    public int Threads { get; set; }

    [Option("precision", HelpText = "Arithmetic of convolutions and matrix products: fp32; tf32 (CUDA: float32 data, products of "
        + "inputs rounded to a 10-bit mantissa on tensor cores, float32 sums; PyTorch's default for cuDNN convolutions); or bf16 (CUDA: "
        + "mixed precision as PyTorch's bfloat16 autocast: operands rounded to bfloat16, float32 sums, float32 weights, optimiser, "
        + "norms, softmax and loss). Default: tf32 on cuda for training and sampling, fp32 otherwise and on the CPU backends (which "
        + "compute in fp32 only).")]
    public string? Precision { get; set; }

    [Option("tf32", Default = false, Hidden = true, HelpText = "The same as --precision tf32.")]
    public bool Tf32 { get; set; }

    [Option("no-cuda-graphs", Default = false, HelpText = "CUDA: run every training and sampling step eagerly instead of recording each kind "
        + "of step once as a CUDA graph and replaying it (on by default where the driver supports stream capture).")]
    public bool NoCudaGraphs { get; set; }

    [Option("verbose", Default = false, HelpText = "Print stack traces with errors.")]
    public bool Verbose { get; set; }

    /// <summary>More workers than this only contend for the cores (and thousands exhaust the runtime).</summary>
    public static int MaxThreads => 4 * Environment.ProcessorCount;

    /// <summary>Whether this verb computes in the backend's default precision (tf32 on cuda) when --precision is not given, rather than fp32.</summary>
    protected virtual bool UsesBackendDefaultPrecision => false;

    /// <summary>The precision backend <paramref name="backend"/> runs this verb in; one usage line when it cannot.</summary>
    public Precision ResolvePrecision(BackendRegistry registry, string backend)
    {
        Precision? asked = null;
        if (Precision is not null)
            asked = BackendPrecisions.Parse(Precision)
                ?? throw new UsageError($"--precision must be {string.Join(", ", Enum.GetValues<Precision>().Select(BackendPrecisions.Name))}, got '{Precision}'.");
        if (Tf32)
        {
            if (asked is { } a && a != Tensors.Precision.Tf32) throw new UsageError($"--tf32 contradicts --precision {Precision}.");
            asked = Tensors.Precision.Tf32;
        }
        var precisions = registry.Precisions(backend);
        if (asked is { } p)
        {
            if (!precisions.Supported.Contains(p))
                throw new UsageError($"--precision {BackendPrecisions.Name(p)} is not available on --backend {backend}, which computes in " +
                    $"{string.Join(", ", precisions.Supported.Select(BackendPrecisions.Name))} only.");
            return p;
        }
        return UsesBackendDefaultPrecision ? precisions.Default : Tensors.Precision.Fp32;
    }

    /// <summary>Checks the options every verb has, before anything is allocated.</summary>
    public virtual void CheckCommon()
    {
        if (Threads < 0 || Threads > MaxThreads)
            throw new UsageError($"--threads must be between 0 (all {Environment.ProcessorCount} cores) and {MaxThreads} (4x the cores), got {Threads}.");
    }
}

/// <summary>Model options that override a preset or describe a plain weights file.</summary>
public abstract class ModelOptions : CommonOptions
{
    [Option("preset", HelpText = "Model preset: tiny, compact (the default of train and bench), small, labml, ddpm-cifar10 (their list: 'ddpm-tool info').")]
    public string? Preset { get; set; }

    [Option("image-channels", HelpText = "Image channels (1 grey, 3 RGB).")]
    public int? ImageChannels { get; set; }

    [Option("image-size", HelpText = "Image height and width in pixels.")]
    public int? ImageSize { get; set; }

    [Option("n-channels", HelpText = "Channels of the first level (labml n_channels).")]
    public int? NChannels { get; set; }

    [Option("ch-mults", HelpText = "Channel multipliers per level, compounding as in labml, e.g. 1,2,2,4.")]
    public string? ChMults { get; set; }

    [Option("attn", HelpText = "Attention per level as 0/1, e.g. 0,0,1,1.")]
    public string? Attn { get; set; }

    [Option("n-blocks", HelpText = "Residual blocks per level.")]
    public int? NBlocks { get; set; }

    [Option("n-groups", HelpText = "GroupNorm groups in residual blocks (labml: 32).")]
    public int? NGroups { get; set; }

    [Option("dropout", HelpText = "Dropout in residual blocks.")]
    public float? Dropout { get; set; }

    [Option("n-heads", HelpText = "Attention heads.")]
    public int? NHeads { get; set; }

    [Option("attn-norm", HelpText = "Normalise the attention blocks' input with their GroupNorm (the original DDPM's attention; "
        + "labml's UNet declares that norm but does not apply it): 1 on (train's default for new runs: no gradient spikes, "
        + "far better unconditional models), 0 off (labml's model; the default with --labml-exact or --preset labml, and for other verbs' presets).")]
    public int? AttnNorm { get; set; }

    /// <summary>The preset called <paramref name="name"/>; an unknown name is a usage error naming --preset and the known ones.</summary>
    public static Presets.Preset PresetNamed(string name)
    {
        try { return Presets.Get(name); }
        catch (ConfigValueException e) { throw OptionText.ConfigError(e); }
    }

    /// <summary>The preset (or <paramref name="fallback"/>) with the options given on the command line applied.</summary>
    public UNetConfig ResolveModel(UNetConfig fallback)
    {
        var c = Preset is null ? fallback : PresetNamed(Preset).Model;
        if (ImageChannels is { } ic) c = c with { ImageChannels = ic };
        if (ImageSize is { } isz) c = c with { ImageSize = isz };
        if (NChannels is { } nc) c = c with { NChannels = nc };
        if (ChMults is not null) c = c with { ChMults = OptionText.Ints(ChMults, "--ch-mults") };
        if (Attn is not null) c = c with { IsAttn = OptionText.Ints(Attn, "--attn").Select(v => v != 0).ToArray() };
        if (NBlocks is { } nb) c = c with { NBlocks = nb };
        if (NGroups is { } ng) c = c with { NGroups = ng };
        if (Dropout is { } d) c = c with { Dropout = d };
        if (NHeads is { } nh) c = c with { NHeads = nh };
        if (AttnNorm is { } an)
            c = an is 0 or 1 ? c with { AttnNorm = an == 1 } : throw new UsageError($"--attn-norm must be 0 or 1, got {an}.");
        try { c.Validate(); }
        catch (ConfigValueException e) { throw OptionText.ConfigError(e); }
        return c;
    }

    public bool HasModelOverrides =>
        ImageChannels is not null || ImageSize is not null || NChannels is not null || ChMults is not null || Attn is not null
        || NBlocks is not null || NGroups is not null || Dropout is not null || NHeads is not null || AttnNorm is not null;
}

/// <summary>The reverse-step variance as the command line names it.</summary>
public enum ReverseVariance
{
    /// <summary>sigma^2 = beta (labml's DDPM).</summary>
    Large,
    /// <summary>sigma^2 = the posterior variance beta~.</summary>
    Small,
}

/// <summary>Diffusion options shared by train and the sampling verbs.</summary>
public interface IDiffusionOptions
{
    BetaSchedule? Schedule { get; }
    ReverseVariance? Variance { get; }
    bool LabmlExact { get; }
    bool NoClip { get; }
    int? DiffusionSteps { get; }
}

public static class DiffusionOptions
{
    /// <summary>
    /// The diffusion configuration: labml's exact one with --labml-exact, else <paramref name="fallback"/> (a
    /// checkpoint's) or the defaults, with the options given on the command line applied.
    /// </summary>
    public static DiffusionConfig Resolve(this IDiffusionOptions o, DiffusionConfig? fallback = null)
    {
        var c = o.LabmlExact ? DiffusionConfig.LabmlExact : fallback ?? new DiffusionConfig();
        if (o.Schedule is { } schedule) c = c with { Schedule = schedule };
        if (o.Variance is { } variance)
            c = c with { Variance = variance == ReverseVariance.Small ? VarianceType.FixedSmall : VarianceType.FixedLarge };
        if (o.DiffusionSteps is { } t) c = c with { NSteps = t };
        if (o.NoClip) c = c with { ClipX0 = false };
        try { c.Validate(); }
        catch (ConfigValueException e) { throw OptionText.ConfigError(e); }
        return c;
    }
}
