using System.Text.Json.Serialization;

namespace Ddpm.Diffusion.Model;

/// <summary>
/// The options of labml's <c>UNet</c> (annotated_deep_learning_paper_implementations, diffusion/ddpm/unet.py).
/// Channel multipliers compound as in labml: level i has n_channels * prod(ch_mults[0..i]) channels.
/// </summary>
public sealed record UNetConfig
{
    [JsonPropertyName("image_channels")] public int ImageChannels { get; init; } = 3;
    [JsonPropertyName("image_size")] public int ImageSize { get; init; } = 32;
    [JsonPropertyName("n_channels")] public int NChannels { get; init; } = 64;
    [JsonPropertyName("ch_mults")] public int[] ChMults { get; init; } = [1, 2, 2, 4];
    [JsonPropertyName("is_attn")] public bool[] IsAttn { get; init; } = [false, false, true, true];
    [JsonPropertyName("n_blocks")] public int NBlocks { get; init; } = 2;
    [JsonPropertyName("n_groups")] public int NGroups { get; init; } = 32;
    [JsonPropertyName("dropout")] public float Dropout { get; init; } = 0.1f;
    [JsonPropertyName("n_heads")] public int NHeads { get; init; } = 1;

    /// <summary>Channels of each resolution level (compounded multipliers).</summary>
    public int[] LevelChannels()
    {
        var r = new int[ChMults.Length];
        int c = NChannels;
        for (int i = 0; i < ChMults.Length; i++) { c *= ChMults[i]; r[i] = c; }
        return r;
    }

    /// <summary>Checks the options and names the first that cannot work.</summary>
    public void Validate()
    {
        if (ImageChannels <= 0) throw new ArgumentException($"image_channels must be positive, got {ImageChannels}.");
        if (NChannels <= 0 || NChannels % 8 != 0) throw new ArgumentException($"n_channels must be a positive multiple of 8 (final GroupNorm(8) and the time embedding), got {NChannels}.");
        if (ChMults.Length == 0 || ChMults.Any(m => m <= 0)) throw new ArgumentException("ch_mults must be a non-empty list of positive integers.");
        if (IsAttn.Length != ChMults.Length) throw new ArgumentException($"is_attn has {IsAttn.Length} entries but ch_mults has {ChMults.Length}.");
        if (NBlocks <= 0) throw new ArgumentException($"n_blocks must be positive, got {NBlocks}.");
        if (NHeads <= 0) throw new ArgumentException($"n_heads must be positive, got {NHeads}.");
        if (Dropout < 0 || Dropout >= 1) throw new ArgumentException($"dropout must be in [0, 1), got {Dropout}.");
        int down = 1 << (ChMults.Length - 1);
        if (ImageSize <= 0 || ImageSize % down != 0)
            throw new ArgumentException($"image_size {ImageSize} must be divisible by {down} ({ChMults.Length - 1} downsamplings).");
        foreach (int c in LevelChannels().Prepend(NChannels))
            if (c % NGroups != 0)
                throw new ArgumentException($"{c} channels do not split into {NGroups} groups for GroupNorm.");
        var lc = LevelChannels();
        for (int i = 0; i < lc.Length; i++)
        {
            int prev = i == 0 ? NChannels : lc[i - 1];
            if ((lc[i] + prev) % NGroups != 0 || (2 * lc[i]) % NGroups != 0)
                throw new ArgumentException($"Up-block input channels at level {i} do not split into {NGroups} groups.");
        }
    }

    public override string ToString() =>
        $"UNet(image_channels={ImageChannels}, image_size={ImageSize}, n_channels={NChannels}, ch_mults=[{string.Join(",", ChMults)}], " +
        $"is_attn=[{string.Join(",", IsAttn.Select(a => a ? 1 : 0))}], n_blocks={NBlocks}, dropout={Dropout}, n_heads={NHeads})";
}
