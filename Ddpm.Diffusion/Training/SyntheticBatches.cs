using Ddpm.Tensors;

namespace Ddpm.Diffusion.Training;

/// <summary>Deterministic stand-in data for benchmarks, parity runs and tests: uniform pixels in [-1, 1] from Philox.</summary>
public sealed class SyntheticBatches(int channels, int size, ulong seed) : IBatchSource
{
    private long _next;

    public int Channels => channels;
    public int Height => size;
    public int Width => size;
    public int Count => int.MaxValue;

    public void NextBatch(int batchSize, Span<float> dst)
    {
        Philox.FillUniform(dst, seed, (ulong)(_next++ * dst.Length + 3) & ~3UL);
        for (int i = 0; i < dst.Length; i++) dst[i] = 2f * dst[i] - 1f;
    }

    public (long Epoch, long Index) Position
    {
        get => (0, _next);
        set => _next = value.Index;
    }
}
