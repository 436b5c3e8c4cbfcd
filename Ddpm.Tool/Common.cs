using System.Globalization;
using CommandLine;
using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;

namespace Ddpm.Tool;

/// <summary>A problem the user can fix (a bad file, an incompatible checkpoint): one line, exit code 1.</summary>
public sealed class UserError(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A bad option value found after parsing: one line, exit code 2.</summary>
public sealed class UsageError(string message) : Exception(message);

/// <summary>Where a command writes, so tests can run verbs in-process.</summary>
public sealed class Console2(TextWriter output, TextWriter error, bool interactive)
{
    public TextWriter Out { get; } = output;
    public TextWriter Err { get; } = error;
    /// <summary>True when a person watches a terminal: progress is a live line rather than a line per N steps.</summary>
    public bool Interactive { get; } = interactive;
    /// <summary>Set by Ctrl-C; long commands check it between steps.</summary>
    public CancellationToken Cancel { get; init; }
}

/// <summary>Options every verb has.</summary>
public abstract class CommonOptions
{
    [Option("backend", Default = "cpu", HelpText = "Compute backend: cpu (SIMD, multi-threaded), cpu-reference (scalar oracle) or cuda.")]
    public string Backend { get; set; } = "cpu";

    [Option("threads", Default = 0, HelpText = "CPU worker threads (0: all cores).")]
    public int Threads { get; set; }

    [Option("tf32", Default = false, HelpText = "Allow TF32 tensor-core math on CUDA (faster, less exact).")]
    public bool Tf32 { get; set; }

    [Option("verbose", Default = false, HelpText = "Print stack traces with errors.")]
    public bool Verbose { get; set; }
}

/// <summary>Model options that override a preset or describe a plain weights file.</summary>
public abstract class ModelOptions : CommonOptions
{
    [Option("preset", HelpText = "Model preset: tiny, small, labml, ddpm-cifar10 (see 'ddpm-tool info --presets').")]
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

    /// <summary>The preset (or <paramref name="fallback"/>) with the options given on the command line applied.</summary>
    public UNetConfig ResolveModel(UNetConfig fallback)
    {
        var c = Preset is null ? fallback : Presets.Get(Preset).Model;
        if (ImageChannels is { } ic) c = c with { ImageChannels = ic };
        if (ImageSize is { } isz) c = c with { ImageSize = isz };
        if (NChannels is { } nc) c = c with { NChannels = nc };
        if (ChMults is not null) c = c with { ChMults = Cli.Ints(ChMults, "--ch-mults") };
        if (Attn is not null) c = c with { IsAttn = Cli.Ints(Attn, "--attn").Select(v => v != 0).ToArray() };
        if (NBlocks is { } nb) c = c with { NBlocks = nb };
        if (NGroups is { } ng) c = c with { NGroups = ng };
        if (Dropout is { } d) c = c with { Dropout = d };
        if (NHeads is { } nh) c = c with { NHeads = nh };
        try { c.Validate(); }
        catch (ArgumentException e) { throw new UsageError("model options: " + e.Message); }
        return c;
    }

    public bool HasModelOverrides =>
        ImageChannels is not null || ImageSize is not null || NChannels is not null || ChMults is not null || Attn is not null
        || NBlocks is not null || NGroups is not null || Dropout is not null || NHeads is not null;
}

/// <summary>Diffusion options shared by train and the sampling verbs.</summary>
public interface IDiffusionOptions
{
    string? Schedule { get; }
    string? Variance { get; }
    bool LabmlExact { get; }
    bool NoClip { get; }
    int? DiffusionSteps { get; }
}

/// <summary>Named model configurations.</summary>
public static class Presets
{
    public sealed record Preset(string Name, UNetConfig Model, int Batch, string Summary);

    public static readonly Preset[] All =
    [
        new("tiny", new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8 },
            8, "tests and smoke runs: 16/32 channels, attention at 16x16, 1 block"),
        new("small", new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 2, Dropout = 0f },
            64, "CPU default: 32x32 grey, widths 32/64/128, attention at 8x8, 2 blocks, no dropout"),
        new("labml", new UNetConfig { ImageChannels = 3, ImageSize = 32, NChannels = 64, ChMults = [1, 2, 2, 4], IsAttn = [false, false, false, true], NBlocks = 2 },
            16, "labml experiment.py: widths 64/128/256/1024, attention at 4x4 (167,777,987 parameters)"),
        new("ddpm-cifar10", new UNetConfig { ImageChannels = 3, ImageSize = 32, NChannels = 128, ChMults = [1, 2, 1, 1], IsAttn = [false, true, false, false], NBlocks = 2, Dropout = 0.1f },
            128, "the paper's CIFAR-10 layout in labml's UNet: widths 128/256/256/256, attention at 16x16, dropout 0.1"),
    ];

    public static Preset Get(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new UsageError($"unknown preset '{name}'; known: {string.Join(", ", All.Select(p => p.Name))}.");
}

public static class Cli
{
    public static int[] Ints(string text, string option)
    {
        try
        {
            return text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(s => int.Parse(s, NumberStyles.Integer, CultureInfo.InvariantCulture)).ToArray();
        }
        catch (FormatException)
        {
            throw new UsageError($"{option} takes comma-separated integers, e.g. 1,2,2,4; got '{text}'.");
        }
    }

    public static BackendRegistry Registry() => new BackendRegistry().RegisterCpu().RegisterCpuReference().RegisterCuda();

    public static IBackend CreateBackend(CommonOptions o) => CreateBackend(o.Backend, o);

    public static IBackend CreateBackend(string name, CommonOptions o)
    {
        var reg = Registry();
        if (!reg.Contains(name))
            throw new UsageError($"unknown backend '{name}'; known: {string.Join(", ", reg.Available.Select(a => a.Name))}.");
        if (o.Threads < 0) throw new UsageError($"--threads must be >= 0, got {o.Threads}.");
        try
        {
            return reg.Create(name, new BackendOptions { Threads = o.Threads, AllowTf32 = o.Tf32 });
        }
        catch (Exception e) when (e is not UsageError)
        {
            throw new UserError($"backend '{name}' is not available: {e.Message}", e);
        }
    }

    public static DiffusionConfig Diffusion(IDiffusionOptions o, DiffusionConfig? fallback = null)
    {
        var c = o.LabmlExact ? DiffusionConfig.LabmlExact : fallback ?? new DiffusionConfig();
        if (o.Schedule is not null)
            c = c with
            {
                Schedule = o.Schedule.ToLowerInvariant() switch
                {
                    "linear" => BetaSchedule.Linear,
                    "cosine" => BetaSchedule.Cosine,
                    _ => throw new UsageError($"--schedule is linear or cosine, not '{o.Schedule}'."),
                },
            };
        if (o.Variance is not null)
            c = c with
            {
                Variance = o.Variance.ToLowerInvariant() switch
                {
                    "large" or "fixed-large" or "beta" => VarianceType.FixedLarge,
                    "small" or "fixed-small" or "posterior" => VarianceType.FixedSmall,
                    _ => throw new UsageError($"--variance is large (beta) or small (posterior), not '{o.Variance}'."),
                },
            };
        if (o.DiffusionSteps is { } t) c = c with { NSteps = t };
        if (o.NoClip) c = c with { ClipX0 = false };
        try { c.Validate(); }
        catch (ArgumentException e) { throw new UsageError("diffusion options: " + e.Message); }
        return c;
    }

    /// <summary>The bundled Fashion-MNIST subset: beside the tool binary, or under data/ above the working folder.</summary>
    public static string BundledData(string file = "train-images-idx3-ubyte.gz")
    {
        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, "data", "fashion-mnist", file) };
        for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d is not null; d = d.Parent)
            candidates.Add(Path.Combine(d.FullName, "data", "fashion-mnist", file));
        return candidates.FirstOrDefault(File.Exists)
            ?? throw new UserError($"the bundled Fashion-MNIST subset ({file}) was not found beside the tool or under data/fashion-mnist; pass --data PATH.");
    }

    /// <summary>A bundled model file: beside the tool under models/, or under Ddpm.Tool/models above the working folder.</summary>
    public static string BundledModel(string file)
    {
        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, "models", file) };
        for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d is not null; d = d.Parent)
            candidates.Add(Path.Combine(d.FullName, "Ddpm.Tool", "models", file));
        return candidates.FirstOrDefault(File.Exists)
            ?? throw new UserError($"the bundled model {file} was not found beside the tool (models/) or under Ddpm.Tool/models; pass --classifier PATH.");
    }

    /// <summary>Opens a dataset by what the path is: an IDX file (.gz or raw), a CIFAR-10 batch folder or file, or an image folder.</summary>
    public static IImageDataset OpenDataset(string path, int imageSize, int channels)
    {
        try
        {
            if (File.Exists(path))
            {
                string name = Path.GetFileName(path).ToLowerInvariant();
                if (name.EndsWith(".bin", StringComparison.Ordinal)) return Cifar10Dataset.Load(path, includeTest: false);
                return IdxDataset.Load(path);
            }
            if (Directory.Exists(path))
            {
                if (Directory.EnumerateFiles(path, "data_batch_*.bin").Any()) return Cifar10Dataset.Load(path, includeTest: false);
                return ImageFolderDataset.Load(path, imageSize, imageSize, channels, ResizeFilter.Auto, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException)
        {
            throw new UserError(e.Message, e);
        }
        throw new UserError($"{path}: no such file or folder.");
    }

    public static string Seconds(double s) =>
        s < 60 ? $"{s:F1}s" : s < 3600 ? $"{(int)(s / 60)}m{(int)(s % 60):D2}s" : $"{(int)(s / 3600)}h{(int)(s % 3600 / 60):D2}m";
}
