using Ddpm.Tensors;

namespace Ddpm.Diffusion.Data;

/// <summary>How a <see cref="DataLoader"/> turns dataset images into model batches.</summary>
public sealed record DataLoaderOptions
{
    public int BatchSize { get; init; } = 64;

    /// <summary>Seed of the Philox stream that orders and flips samples.</summary>
    public ulong Seed { get; init; }

    /// <summary>Visit the samples in a fresh random order each epoch (otherwise in index order).</summary>
    public bool Shuffle { get; init; } = true;

    /// <summary>Mirror each sample left-right with probability 1/2.</summary>
    public bool RandomHorizontalFlip { get; init; }

    /// <summary>
    /// Pad images to this height and width (0 = no padding), centred, with the background value 0 of the
    /// [0, 1] pixel scale: Fashion-MNIST's 28x28 becomes 32x32, which a UNet with 2-3 halvings needs.
    /// </summary>
    public int PadTo { get; init; }

    public DataRange Range { get; init; } = DataRange.MinusOneToOne;

    /// <summary>Drop the last, short batch of an epoch so that every batch has <see cref="BatchSize"/> samples.</summary>
    public bool DropLast { get; init; } = true;
}

/// <summary>
/// Cuts a dataset into batches [B, C, H, W] of floats ready to upload. Every random choice is drawn from the
/// Philox stream of <see cref="DataLoaderOptions.Seed"/> at positions fixed by the epoch alone, so batch b of
/// epoch e is the same whatever was loaded before: a resumed run sees exactly the batches an uninterrupted run
/// would. Epoch e uses positions [e * S, (e + 1) * S) with S = 2 * ceil4(Count): the first half orders the
/// samples (Fisher-Yates), the second flips them (the top bit of the word for each batch position).
/// </summary>
public sealed class DataLoader
{
    private readonly IImageDataset _dataset;
    private readonly float[] _sample;
    private int _orderEpoch = -1;
    private int[] _order = [];

    public DataLoader(IImageDataset dataset, DataLoaderOptions options)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        ArgumentNullException.ThrowIfNull(options);
        if (options.BatchSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), $"Batch size must be positive, not {options.BatchSize}.");
        if (dataset.Count == 0)
            throw new ArgumentException("The dataset is empty.", nameof(dataset));
        if (options.DropLast && dataset.Count < options.BatchSize)
            throw new ArgumentException(
                $"The dataset has {dataset.Count} images, fewer than one batch of {options.BatchSize} (set DropLast = false to allow a short batch).",
                nameof(options));
        if (options.PadTo != 0 && (options.PadTo < dataset.Height || options.PadTo < dataset.Width))
            throw new ArgumentException(
                $"Cannot pad {dataset.Height}x{dataset.Width} images to {options.PadTo}x{options.PadTo}: padding only enlarges.", nameof(options));

        _dataset = dataset;
        Options = options;
        _sample = new float[dataset.Channels * dataset.Height * dataset.Width];
        Channels = dataset.Channels;
        Height = options.PadTo == 0 ? dataset.Height : options.PadTo;
        Width = options.PadTo == 0 ? dataset.Width : options.PadTo;
        BatchesPerEpoch = options.DropLast
            ? dataset.Count / options.BatchSize
            : (dataset.Count + options.BatchSize - 1) / options.BatchSize;
    }

    public DataLoaderOptions Options { get; }

    /// <summary>Output geometry of one sample, after padding.</summary>
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }

    public int SampleSize => Channels * Height * Width;
    public int BatchesPerEpoch { get; }

    /// <summary>Classes of a labelled dataset (<see cref="ILabelledDataset"/>); 0 when the images have no labels.</summary>
    public int NumClasses => (_dataset as ILabelledDataset)?.NumClasses ?? 0;

    /// <summary>The class names of a labelled dataset that has them.</summary>
    public IReadOnlyList<string>? ClassNames => (_dataset as ILabelledDataset)?.ClassNames;

    private ulong EpochStride => 2 * Align4((ulong)_dataset.Count);

    private static ulong Align4(ulong n) => (n + 3) & ~3UL;

    /// <summary>The dataset indices in the order epoch <paramref name="epoch"/> visits them.</summary>
    public int[] Order(int epoch)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        if (!Options.Shuffle) return Enumerable.Range(0, _dataset.Count).ToArray();
        var gen = new PhiloxGenerator(Options.Seed, (ulong)epoch * EpochStride);
        return gen.Permutation(_dataset.Count);
    }

    /// <summary>Whether the sample at position <paramref name="position"/> of epoch <paramref name="epoch"/> is mirrored.</summary>
    public bool IsFlipped(int epoch, int position)
    {
        if (!Options.RandomHorizontalFlip) return false;
        ulong at = (ulong)epoch * EpochStride + Align4((ulong)_dataset.Count) + (ulong)position;
        return Philox.Word(Options.Seed, at) >> 31 != 0;
    }

    /// <summary>Samples in batch <paramref name="batch"/> of an epoch (BatchSize, or fewer for a short last batch).</summary>
    public int BatchCount(int batch)
    {
        if ((uint)batch >= (uint)BatchesPerEpoch)
            throw new ArgumentOutOfRangeException(nameof(batch), $"Batch {batch} of an epoch of {BatchesPerEpoch}.");
        return Math.Min(Options.BatchSize, _dataset.Count - batch * Options.BatchSize);
    }

    /// <summary>
    /// Writes batch <paramref name="batch"/> of epoch <paramref name="epoch"/> into dst: [B, C, H, W] in the
    /// data range, B = <see cref="BatchCount"/>. Returns B.
    /// </summary>
    public int GetBatch(int epoch, int batch, Span<float> dst) => GetBatch(epoch, batch, dst, default);

    /// <summary>
    /// As <see cref="GetBatch(int, int, Span{float})"/>, and writes each sample's class into
    /// <paramref name="labels"/> (at least B entries; empty: no labels wanted). Labels need a labelled dataset.
    /// </summary>
    public int GetBatch(int epoch, int batch, Span<float> dst, Span<int> labels)
    {
        int count = BatchCount(batch);
        var labelled = _dataset as ILabelledDataset;
        if (!labels.IsEmpty && (labelled is null || labelled.NumClasses == 0))
            throw new InvalidOperationException("The dataset has no class labels.");
        if (!labels.IsEmpty && labels.Length < count)
            throw new ArgumentException($"The label buffer holds {labels.Length}; batch {batch} needs {count}.", nameof(labels));
        if (dst.Length < count * SampleSize)
            throw new ArgumentException($"Destination holds {dst.Length} floats; batch {batch} needs {count * SampleSize}.", nameof(dst));
        if (_orderEpoch != epoch)
        {
            _order = Order(epoch);
            _orderEpoch = epoch;
        }
        for (int i = 0; i < count; i++)
        {
            int position = batch * Options.BatchSize + i;
            _dataset.Get(_order[position], _sample);
            if (!labels.IsEmpty) labels[i] = labelled!.LabelOf(_order[position]);
            WriteSample(_sample, IsFlipped(epoch, position), dst.Slice(i * SampleSize, SampleSize));
        }
        return count;
    }

    /// <summary>The batch a training step uses: step s reads batch s mod BatchesPerEpoch of epoch s div BatchesPerEpoch.</summary>
    public float[] GetBatchForStep(long step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        int epoch = checked((int)(step / BatchesPerEpoch));
        int batch = (int)(step % BatchesPerEpoch);
        var r = new float[BatchCount(batch) * SampleSize];
        GetBatch(epoch, batch, r);
        return r;
    }

    /// <summary>All batches of one epoch, each a new array [B, C, H, W].</summary>
    public IEnumerable<float[]> Epoch(int epoch)
    {
        for (int b = 0; b < BatchesPerEpoch; b++)
        {
            var r = new float[BatchCount(b) * SampleSize];
            GetBatch(epoch, b, r);
            yield return r;
        }
    }

    /// <summary>src: [C, h, w] in [0, 1] -> dst: [C, H, W] in the data range, padded with 0 and optionally mirrored.</summary>
    private void WriteSample(ReadOnlySpan<float> src, bool flip, Span<float> dst)
    {
        int h = _dataset.Height, w = _dataset.Width;
        int top = (Height - h) / 2, left = (Width - w) / 2;
        var range = Options.Range;
        if (Height != h || Width != w) dst.Fill(range.FromUnit(0f));
        for (int c = 0; c < Channels; c++)
            for (int y = 0; y < h; y++)
            {
                var row = src.Slice((c * h + y) * w, w);
                var outRow = dst.Slice((c * Height + top + y) * Width + left, w);
                for (int x = 0; x < w; x++)
                    outRow[x] = range.FromUnit(row[flip ? w - 1 - x : x]);
            }
    }
}
