using Ddpm.Diffusion.Data;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Quality;

/// <summary>How <see cref="ClassifierTraining.Train"/> trains a <see cref="FeatureClassifier"/>.</summary>
public sealed record ClassifierTrainingOptions
{
    public int Epochs { get; init; } = 4;
    public int BatchSize { get; init; } = 64;

    /// <summary>Adam's peak learning rate; it decays to 0 along a half cosine over the run.</summary>
    public float LearningRate { get; init; } = 3e-3f;

    /// <summary>Seeds the initial weights and the order and flips of the batches.</summary>
    public ulong Seed { get; init; }

    /// <summary>Mirror training images left-right at random: a mirrored garment is the same garment; turn it off for digits.</summary>
    public bool RandomHorizontalFlip { get; init; } = true;
}

/// <summary>One logged training step of the classifier.</summary>
public readonly record struct ClassifierStep(int Epoch, int Step, int Steps, float Loss, float LearningRate);

/// <summary>Trains and scores the feature classifier on labelled images, deterministically given the seed.</summary>
public static class ClassifierTraining
{
    /// <summary>
    /// Mean cross-entropy training with Adam over <see cref="ClassifierTrainingOptions.Epochs"/> epochs of
    /// <paramref name="images"/>; batches come from a <see cref="DataLoader"/> (padded to the classifier's
    /// size, in [-1, 1]) and their labels from the loader's order, so the same seed gives the same weights.
    /// </summary>
    public static void Train(FeatureClassifier model, IImageDataset images, IdxLabels labels, ClassifierTrainingOptions options,
        Action<ClassifierStep>? onStep = null, CancellationToken cancel = default)
    {
        if (labels.Count != images.Count)
            throw new ArgumentException($"{labels.Source} has {labels.Count} labels for the {images.Count} images.");
        if (options.Epochs <= 0) throw new ArgumentOutOfRangeException(nameof(options), $"Epochs must be positive, not {options.Epochs}.");
        var loader = Loader(model.Config, images, new DataLoaderOptions
        {
            BatchSize = options.BatchSize, Seed = options.Seed, Shuffle = true, DropLast = true,
            RandomHorizontalFlip = options.RandomHorizontalFlip,
        });
        var be = model.Backend;
        model.Train();
        using var adam = new Adam(model.NamedParameters(), options.LearningRate);
        int perEpoch = loader.BatchesPerEpoch, total = perEpoch * options.Epochs, b = options.BatchSize;
        var batch = new float[b * loader.SampleSize];
        var y = new int[b];
        int step = 0;
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            var order = loader.Order(epoch);
            for (int i = 0; i < perEpoch; i++, step++)
            {
                cancel.ThrowIfCancellationRequested();
                loader.GetBatch(epoch, i, batch);
                for (int j = 0; j < b; j++) y[j] = labels[order[i * b + j]];
                adam.LearningRate = (float)(options.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * step / total)));
                float loss;
                using (var scope = new TensorScope())
                {
                    var x = Tensor.FromArray(be, batch, b, loader.Channels, loader.Height, loader.Width);
                    var (_, logits) = model.Forward(x);
                    var l = Ops.CrossEntropy(logits, y);
                    model.ZeroGrad();
                    l.Backward();
                    adam.Step();
                    loss = l.Item();
                }
                onStep?.Invoke(new ClassifierStep(epoch, step + 1, total, loss, adam.LearningRate));
            }
        }
        model.Eval();
    }

    /// <summary>The fraction of <paramref name="images"/> whose most likely class is their label.</summary>
    public static double Accuracy(FeatureClassifier model, IImageDataset images, IdxLabels labels, int batchSize = 250)
    {
        if (labels.Count != images.Count)
            throw new ArgumentException($"{labels.Source} has {labels.Count} labels for the {images.Count} images.");
        var input = SampleQuality.PrepareReal(images, images.Count, model.Config);
        var outputs = SampleQuality.Classify(model, input, images.Count, batchSize);
        var predicted = SampleQuality.Predictions(outputs.Probabilities, outputs.Count, outputs.Classes);
        int right = 0;
        for (int i = 0; i < predicted.Length; i++) if (predicted[i] == labels[i]) right++;
        return (double)right / images.Count;
    }

    internal static DataLoader Loader(ClassifierConfig config, IImageDataset images, DataLoaderOptions options)
    {
        SampleQuality.CheckFits(config, images.Channels, images.Height, images.Width, images is ByteImageDataset bd ? bd.Source : "the images");
        return new DataLoader(images, options with
        {
            PadTo = images.Height == config.ImageSize && images.Width == config.ImageSize ? 0 : config.ImageSize,
            Range = DataRange.MinusOneToOne,
        });
    }
}
