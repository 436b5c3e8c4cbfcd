namespace Ddpm.Diffusion.Training;

/// <summary>
/// Training images as batches for upload: [B, C, H, W] floats already mapped to the model's data range, in a
/// deterministic order given the source's seed and position; the position is checkpointed.
/// </summary>
public interface IBatchSource
{
    int Channels { get; }
    int Height { get; }
    int Width { get; }
    int Count { get; }

    /// <summary>Fills <paramref name="dst"/> (B*C*H*W floats) with the next batch.</summary>
    void NextBatch(int batchSize, Span<float> dst);

    /// <summary>Classes of the images' labels (0: the images have none).</summary>
    int NumClasses => 0;

    /// <summary>The class names when known.</summary>
    IReadOnlyList<string>? ClassNames => null;

    /// <summary>
    /// Fills <paramref name="dst"/> with the next batch and <paramref name="labels"/> (B entries) with each
    /// image's class, 0..<see cref="NumClasses"/>-1; only a source with labels can.
    /// </summary>
    void NextBatch(int batchSize, Span<float> dst, Span<int> labels)
    {
        if (NumClasses == 0) throw new InvalidOperationException("The training data has no class labels.");
        throw new NotSupportedException($"{GetType().Name} does not deliver its labels.");
    }

    /// <summary>An opaque position (epoch, index) for checkpoints.</summary>
    (long Epoch, long Index) Position { get; set; }
}
