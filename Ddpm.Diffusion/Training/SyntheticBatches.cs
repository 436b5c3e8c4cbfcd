using Ddpm.Tensors;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// Deterministic stand-in data for benchmarks, parity runs and tests: uniform pixels in [-1, 1] from Philox, and
/// with <paramref name="numClasses"/> &gt; 0 uniform labels from the stream of seed + 1.
/// </summary>
public sealed class SyntheticBatches(int channels, int size, ulong seed, int numClasses = 0) : IBatchSource
{
    private long _next;

    public int Channels => channels;
    public int Height => size;
    public int Width => size;
    public int Count => int.MaxValue;
    public int NumClasses => numClasses;

    public void NextBatch(int batchSize, Span<float> dst) => NextBatch(batchSize, dst, default);

    public void NextBatch(int batchSize, Span<float> dst, Span<int> labels)
    {
        if (!labels.IsEmpty)
        {
            if (numClasses == 0) throw new InvalidOperationException("The synthetic data has no class labels.");
            for (int i = 0; i < batchSize; i++)
                labels[i] = (int)(((ulong)Philox.Word(seed + 1, (ulong)(_next * batchSize + i)) * (ulong)numClasses) >> 32);
        }
        Philox.FillUniform(dst, seed, (ulong)(_next++ * dst.Length + 3) & ~3UL);
        for (int i = 0; i < dst.Length; i++) dst[i] = 2f * dst[i] - 1f;
    }

    public (long Epoch, long Index) Position
    {
        get => (0, _next);
        set => _next = value.Index;
    }
}
