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

    /// <summary>An opaque position (epoch, index) for checkpoints.</summary>
    (long Epoch, long Index) Position { get; set; }
}
