using Ddpm.Diffusion.Model;

namespace Ddpm.Diffusion.Training;

/// <summary>Named model configurations, with the batch a benchmark of each uses.</summary>
public static class Presets
{
    /// <summary>A named model and its benchmark batch.</summary>
    public sealed record Preset(string Name, UNetConfig Model, int Batch, string Summary);

    /// <summary>The preset a recipe uses when it names none.</summary>
    public const string Default = "compact";

    public static readonly Preset[] All =
    [
        new("tiny", new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 16, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8 },
            8, "tests and smoke runs: 16/32 channels, attention at 16x16, 1 block"),
        new("small", new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 2, Dropout = 0f },
            64, "32x32 grey, widths 32/64/128, attention at 8x8, 2 blocks per level, no dropout (3.43 M parameters)"),
        new("compact", new UNetConfig { ImageChannels = 1, ImageSize = 32, NChannels = 32, ChMults = [1, 2, 2], IsAttn = [false, false, true], NBlocks = 1, Dropout = 0f },
            64, "the default: small with 1 block per level (2.23 M parameters)"),
        new("labml", new UNetConfig { ImageChannels = 3, ImageSize = 32, NChannels = 64, ChMults = [1, 2, 2, 4], IsAttn = [false, false, false, true], NBlocks = 2 },
            16, "labml experiment.py: widths 64/128/256/1024, attention at 4x4 (167,777,987 parameters)"),
        new("ddpm-cifar10", new UNetConfig { ImageChannels = 3, ImageSize = 32, NChannels = 128, ChMults = [1, 2, 1, 1], IsAttn = [false, true, false, false], NBlocks = 2, Dropout = 0.1f },
            128, "the paper's CIFAR-10 layout in labml's UNet: widths 128/256/256/256, attention at 16x16, dropout 0.1"),
    ];

    /// <summary>The preset called <paramref name="name"/> (any case); an unknown name is a <see cref="ConfigValueException"/> for key <c>preset</c>.</summary>
    public static Preset Get(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ConfigValueException("preset", $"'{name}' is not a preset; known: {string.Join(", ", All.Select(p => p.Name))}.");
}
