using Ddpm.Diffusion.Data;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// Feeds the trainer from a <see cref="DataLoader"/>: batch k of the run is batch k mod B of epoch k div B
/// (B batches per epoch), so the position is the pair (epoch, batch) and a resumed run reads the same batches.
/// </summary>
public sealed class LoaderBatchSource : IBatchSource
{
    private readonly DataLoader _loader;
    private long _next;

    public LoaderBatchSource(DataLoader loader) => _loader = loader;

    public int Channels => _loader.Channels;
    public int Height => _loader.Height;
    public int Width => _loader.Width;
    public int Count => _loader.BatchesPerEpoch * _loader.Options.BatchSize;
    public int BatchesPerEpoch => _loader.BatchesPerEpoch;

    public int NumClasses => _loader.NumClasses;
    public IReadOnlyList<string>? ClassNames => _loader.ClassNames;

    public void NextBatch(int batchSize, Span<float> dst) => NextBatch(batchSize, dst, default);

    public void NextBatch(int batchSize, Span<float> dst, Span<int> labels)
    {
        if (batchSize != _loader.Options.BatchSize)
            throw new ArgumentException($"The loader makes batches of {_loader.Options.BatchSize}, not {batchSize}.");
        int epoch = checked((int)(_next / _loader.BatchesPerEpoch));
        int batch = (int)(_next % _loader.BatchesPerEpoch);
        _loader.GetBatch(epoch, batch, dst, labels);
        _next++;
    }

    public (long Epoch, long Index) Position
    {
        get => (_next / _loader.BatchesPerEpoch, _next % _loader.BatchesPerEpoch);
        set
        {
            if (value.Epoch < 0 || value.Index < 0 || value.Index >= _loader.BatchesPerEpoch)
                throw new ArgumentOutOfRangeException(nameof(value), $"Data position {value} is outside an epoch of {_loader.BatchesPerEpoch} batches.");
            _next = value.Epoch * _loader.BatchesPerEpoch + value.Index;
        }
    }
}
