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

    /// <summary>
    /// Normalise each attention block's input with the block's GroupNorm before the query, key and value
    /// projection, as the original DDPM's attention does. labml's UNet declares that norm and never applies it
    /// (false, the default, keeps labml's model): its attention logits then grow with the square of the residual
    /// stream during training (to 1e5 and beyond), the softmax saturates, and near-ties between keys give the
    /// gradient spikes described in docs/sample-quality.md. The norm's weights exist either way.
    /// </summary>
    [JsonPropertyName("attn_norm"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool AttnNorm { get; init; }

    /// <summary>
    /// Classes of a class-conditional model (0: unconditional, labml's UNet). A conditional model learns an
    /// embedding of K + 1 classes (index K is the null class, "no label") added to the time embedding.
    /// </summary>
    [JsonPropertyName("num_classes"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int NumClasses { get; init; }

    /// <summary>The names of the classes when the data has them (null: unknown; classes are then named by index).</summary>
    [JsonPropertyName("class_names"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string[]? ClassNames { get; init; }

    /// <summary>Most classes of a conditional model.</summary>
    public const int MaxClasses = 4096;

    /// <summary>Whether the model takes a class label (<see cref="NumClasses"/> &gt; 0).</summary>
    [JsonIgnore] public bool IsConditional => NumClasses > 0;

    /// <summary>The index of the null class (the unconditional branch): <see cref="NumClasses"/>.</summary>
    [JsonIgnore] public int NullClass => NumClasses;

    /// <summary>The name of class <paramref name="c"/>: its name when known, else its index.</summary>
    public string ClassName(int c) => ClassNames is { } n && (uint)c < (uint)n.Length ? n[c] : c.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Most resolution levels (entries of ch_mults); each level halves the image.</summary>
    public const int MaxLevels = 12;

    /// <summary>Most residual blocks per level; labml uses 2, the DDPM paper 2.</summary>
    public const int MaxBlocks = 64;

    /// <summary>Most attention heads; labml's head width is the block's whole width, so each head adds its weights.</summary>
    public const int MaxHeads = 256;

    /// <summary>Most channels at any level; every layer's weights grow with its square.</summary>
    public const long MaxLevelChannels = 1 << 16;

    /// <summary>Largest image side.</summary>
    public const int MaxImageSize = 1 << 13;

    /// <summary>
    /// Most parameters a model may have (2^31, 8 GiB of float32 weights; training holds five such copies). The
    /// count is computed from the config alone, so an absurd header is refused before anything is allocated.
    /// </summary>
    public const long MaxParameters = 1L << 31;

    /// <summary>
    /// Most elements of any one tensor, weight or per-image activation: the attention scores of one image at
    /// the finest attention level, [heads, HW, HW], are the largest.
    /// </summary>
    public const long MaxTensorElements = 1L << 31;

    /// <summary>Channels of each resolution level (compounded multipliers).</summary>
    public int[] LevelChannels()
    {
        var r = new int[ChMults.Length];
        int c = NChannels;
        for (int i = 0; i < ChMults.Length; i++) { c *= ChMults[i]; r[i] = c; }
        return r;
    }

    /// <summary>
    /// Checks every option and throws <see cref="ConfigValueException"/> naming the first that cannot work,
    /// including resource bounds (<see cref="MaxParameters"/>, <see cref="MaxTensorElements"/>) computed
    /// arithmetically, so neither the command line nor a file's header can make the model allocate absurdly.
    /// </summary>
    public void Validate()
    {
        if (ImageChannels is not (1 or 3))
            throw new ConfigValueException("image_channels", $"{ImageChannels} is not 1 (grey) or 3 (RGB).");
        if (NChannels <= 0 || NChannels % 8 != 0)
            throw new ConfigValueException("n_channels", $"{NChannels} is not a positive multiple of 8 (final GroupNorm(8) and the time embedding).");
        if (ChMults is null || ChMults.Length == 0 || ChMults.Length > MaxLevels || ChMults.Any(m => m <= 0))
            throw new ConfigValueException("ch_mults", $"{List(ChMults)} is not a list of 1 to {MaxLevels} positive integers.");
        if (IsAttn is null || IsAttn.Length != ChMults.Length)
            throw new ConfigValueException("is_attn", $"{(IsAttn is null ? "null" : $"has {IsAttn.Length} entries but ch_mults has {ChMults.Length}")}; it needs one flag per level.");
        if (NBlocks <= 0 || NBlocks > MaxBlocks)
            throw new ConfigValueException("n_blocks", $"{NBlocks} is not between 1 and {MaxBlocks}.");
        if (NHeads <= 0 || NHeads > MaxHeads)
            throw new ConfigValueException("n_heads", $"{NHeads} is not between 1 and {MaxHeads}.");
        if (!(Dropout >= 0 && Dropout < 1))
            throw new ConfigValueException("dropout", $"{Dropout} is not in [0, 1).");
        if (NumClasses < 0 || NumClasses > MaxClasses)
            throw new ConfigValueException("num_classes", $"{NumClasses} is not between 0 (unconditional) and {MaxClasses}.");
        if (ClassNames is not null)
        {
            if (ClassNames.Length != NumClasses)
                throw new ConfigValueException("class_names", $"has {ClassNames.Length} names but num_classes is {NumClasses}.");
            if (ClassNames.Any(string.IsNullOrWhiteSpace))
                throw new ConfigValueException("class_names", "has an empty name.");
            if (ClassNames.Distinct(StringComparer.OrdinalIgnoreCase).Count() != ClassNames.Length)
                throw new ConfigValueException("class_names", "names a class twice (names are matched case-insensitively).");
        }
        int down = 1 << (ChMults.Length - 1);
        if (ImageSize <= 0 || ImageSize > MaxImageSize || ImageSize % down != 0)
            throw new ConfigValueException("image_size", ImageSize <= 0 || ImageSize > MaxImageSize
                ? $"{ImageSize} is not between 1 and {MaxImageSize}."
                : $"{ImageSize} must be divisible by {down} ({ChMults.Length - 1} downsamplings).");
        var lc = new long[ChMults.Length];
        long c = NChannels;
        for (int i = 0; i < lc.Length; i++)
        {
            // Bounded at each level, so the product cannot overflow.
            c *= ChMults[i];
            if (c > MaxLevelChannels)
                throw new ConfigValueException("ch_mults", $"{List(ChMults)} gives level {i} {c} channels (n_channels {NChannels}); at most {MaxLevelChannels} are allowed.");
            lc[i] = c;
        }
        if (NGroups <= 0 || NChannels % NGroups != 0)
            throw new ConfigValueException("n_groups", $"{NGroups} is not a positive divisor of n_channels {NChannels}.");
        for (int i = 0; i < lc.Length; i++)
        {
            long prev = i == 0 ? NChannels : lc[i - 1];
            foreach (long ch in (long[])[lc[i], lc[i] + prev, 2 * lc[i]])
                if (ch % NGroups != 0)
                    throw new ConfigValueException("n_groups", $"{NGroups} does not divide the {ch} channels of a level-{i} block's GroupNorm.");
        }

        var (total, largest, largestName) = Size();
        if (largest > MaxTensorElements)
            throw new ConfigValueException(largestName.Key, $"{largestName.Value} makes {largestName.What} of {largest:N0} elements; at most {MaxTensorElements:N0} are allowed.");
        if (total > MaxParameters)
            throw new ConfigValueException("n_blocks", $"{NBlocks} with n_channels {NChannels}, ch_mults {List(ChMults)} and n_heads {NHeads} gives {total:N0} parameters; at most {MaxParameters:N0} are allowed.");
    }

    /// <summary>
    /// The parameter count of <see cref="UNet"/> for this config, computed from the layer sizes without
    /// building anything (call <see cref="Validate"/> first: the sizes are then bounded and cannot overflow).
    /// </summary>
    public long ParameterCount() => Size().Total;

    private (long Total, long Largest, (string Key, string Value, string What) LargestName) Size()
    {
        long nc = NChannels, tc = 4 * nc, total = 0, largest = 0;
        (string, string, string) largestName = ("n_channels", NChannels.ToString(System.Globalization.CultureInfo.InvariantCulture), "a weight");
        void Note(long elements, string key, string value, string what)
        {
            if (elements > largest) { largest = elements; largestName = (key, value, what); }
        }
        long Conv(long inCh, long outCh, long k)
        {
            Note(outCh * inCh * k * k, "ch_mults", List(ChMults), "a convolution weight");
            return outCh * inCh * k * k + outCh;
        }
        long Lin(long inF, long outF)
        {
            Note(inF * outF, "n_heads", NHeads.ToString(System.Globalization.CultureInfo.InvariantCulture), "a linear weight");
            return inF * outF + outF;
        }
        long Res(long inCh, long outCh) =>
            2 * inCh + Conv(inCh, outCh, 3) + 2 * outCh + Conv(outCh, outCh, 3) + (inCh != outCh ? Conv(inCh, outCh, 1) : 0) + Lin(tc, outCh);
        long Attn(long ch, int side)
        {
            long hw = (long)side * side;
            // Scores [heads, HW, HW] per image; bounded as a double first so the product cannot overflow.
            double scores = (double)NHeads * hw * hw;
            Note(scores > long.MaxValue / 2 ? long.MaxValue / 2 : NHeads * hw * hw, "image_size",
                $"{ImageSize} with attention at {side}x{side} and {NHeads} head(s)", "an attention score tensor");
            return 2 * ch + Lin(ch, NHeads * ch * 3) + Lin(NHeads * ch, ch);
        }

        total += Conv(ImageChannels, nc, 3) + Lin(tc / 4, tc) + Lin(tc, tc);
        int levels = ChMults.Length;
        long inCh = nc, outCh = nc;
        int side = ImageSize;
        for (int i = 0; i < levels; i++)
        {
            outCh = inCh * ChMults[i];
            Note(outCh * side * side, "image_size", $"{ImageSize} with {outCh} channels at {side}x{side}", "an activation");
            for (int j = 0; j < NBlocks; j++)
            {
                total += Res(inCh, outCh) + (IsAttn[i] ? Attn(outCh, side) : 0);
                inCh = outCh;
            }
            if (i < levels - 1) { total += Conv(inCh, inCh, 3); side /= 2; }
        }
        total += Res(outCh, outCh) + Attn(outCh, side) + Res(outCh, outCh);
        inCh = outCh;
        for (int i = levels - 1; i >= 0; i--)
        {
            outCh = inCh;
            for (int j = 0; j < NBlocks; j++) total += Res(inCh + outCh, outCh) + (IsAttn[i] ? Attn(outCh, side) : 0);
            outCh = inCh / ChMults[i];
            total += Res(inCh + outCh, outCh) + (IsAttn[i] ? Attn(outCh, side) : 0);
            inCh = outCh;
            if (i > 0) { total += inCh * inCh * 16 + inCh; side *= 2; }
        }
        total += 2 * nc + Conv(inCh, ImageChannels, 3);
        if (NumClasses > 0) total += tc * (NumClasses + 1);
        return (total, largest, largestName);
    }

    private static string List<T>(T[]? values) => values is null ? "null" : "[" + string.Join(",", values) + "]";

    public override string ToString() =>
        $"UNet(image_channels={ImageChannels}, image_size={ImageSize}, n_channels={NChannels}, ch_mults=[{string.Join(",", ChMults)}], " +
        $"is_attn=[{string.Join(",", IsAttn.Select(a => a ? 1 : 0))}], n_blocks={NBlocks}, dropout={Dropout}, n_heads={NHeads}" +
        (AttnNorm ? ", attn_norm=1" : "") + (NumClasses > 0 ? $", num_classes={NumClasses})" : ")");
}
