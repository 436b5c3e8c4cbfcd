using Ddpm.Diffusion.Data;
using Ddpm.Tensors;

namespace Ddpm.Diffusion.Quality;

/// <summary>What the classifier makes of a set of images: features [N, F] and class probabilities [N, K].</summary>
public sealed record ClassifierOutputs(float[] Features, float[] Probabilities, int Count, int FeatureDim, int Classes)
{
    public GaussianStatistics Statistics() => GaussianStatistics.FromFeatures(Features, Count, FeatureDim);
}

/// <summary>
/// Sample-quality measures on a <see cref="FeatureClassifier"/>: the Frechet distance of its features (FID
/// with this classifier in Inception's place), the Inception Score analogue, and the histogram of predicted
/// classes, where mode collapse shows as empty or crowded classes. Images enter as [N, C, S, S] in [-1, 1].
/// </summary>
public static class SampleQuality
{
    /// <summary>Throws when images of this geometry cannot go through a classifier of <paramref name="config"/>.</summary>
    public static void CheckFits(ClassifierConfig config, int channels, int height, int width, string what)
    {
        if (channels != config.ImageChannels || height > config.ImageSize || width > config.ImageSize)
            throw new ArgumentException(
                $"{what} holds {channels}-channel {height}x{width} images; the classifier takes {config.ImageChannels}-channel images " +
                $"of at most {config.ImageSize}x{config.ImageSize} (padded): these need a feature model trained on such images.");
    }

    /// <summary>The first <paramref name="n"/> images of a dataset, padded with black to the classifier's size: [n, C, S, S] in [-1, 1].</summary>
    public static float[] PrepareReal(IImageDataset images, int n, ClassifierConfig config)
    {
        if (n <= 0 || n > images.Count) throw new ArgumentOutOfRangeException(nameof(n), $"{n} images of a set of {images.Count}.");
        var loader = ClassifierTraining.Loader(config, images, new DataLoaderOptions { BatchSize = n, Shuffle = false, DropLast = false });
        var r = new float[n * loader.SampleSize];
        loader.GetBatch(0, 0, r);
        return r;
    }

    /// <summary>
    /// Model samples in the model's data range [n, C, H, W] -> classifier input [n, C, S, S] in [-1, 1]:
    /// clamped to the pixel range a PNG would show and padded with black when H, W are smaller than S.
    /// </summary>
    public static float[] PrepareSamples(ReadOnlySpan<float> samples, int n, int channels, int size, DataRange range, ClassifierConfig config)
    {
        CheckFits(config, channels, size, size, "the model");
        int s = config.ImageSize, off = (s - size) / 2;
        var r = new float[n * channels * s * s];
        Array.Fill(r, -1f);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < size; y++)
                    for (int x = 0; x < size; x++)
                    {
                        float unit = Math.Clamp(range.ToUnit(samples[((i * channels + c) * size + y) * size + x]), 0f, 1f);
                        r[((i * channels + c) * s + y + off) * s + x + off] = 2f * unit - 1f;
                    }
        return r;
    }

    /// <summary>
    /// A known-bad image set: each image's pixel positions permuted at random (one Philox permutation per image,
    /// shared by its channels), keeping every image's histogram of values and destroying all shapes.
    /// images: [n, C, H, W].
    /// </summary>
    public static float[] ScramblePixels(ReadOnlySpan<float> images, int n, int channels, int height, int width, ulong seed)
    {
        int hw = height * width;
        if (images.Length != n * channels * hw) throw new ArgumentException($"{images.Length} values are not {n} images of {channels}x{height}x{width}.");
        var r = new float[images.Length];
        var gen = new PhiloxGenerator(seed);
        for (int i = 0; i < n; i++)
        {
            var perm = gen.Permutation(hw);
            for (int c = 0; c < channels; c++)
            {
                int b = (i * channels + c) * hw;
                for (int p = 0; p < hw; p++) r[b + p] = images[b + perm[p]];
            }
        }
        return r;
    }

    /// <summary>Runs the classifier over images [n, C, S, S] in batches: features and softmax probabilities.</summary>
    public static ClassifierOutputs Classify(FeatureClassifier model, ReadOnlySpan<float> images, int n, int batchSize = 250,
        Action<int>? progress = null)
    {
        var cfg = model.Config;
        int size = cfg.ImageChannels * cfg.ImageSize * cfg.ImageSize;
        if (images.Length != (long)n * size) throw new ArgumentException($"{images.Length} values are not {n} images of {cfg.Describe()}.");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), $"Batch size must be positive, not {batchSize}.");
        var features = new float[n * cfg.FeatureDim];
        var probs = new float[n * cfg.Classes];
        using var _ = GradMode.NoGrad();
        for (int start = 0; start < n; start += batchSize)
        {
            int b = Math.Min(batchSize, n - start);
            using var scope = new TensorScope();
            var x = Tensor.FromArray(model.Backend, images.Slice(start * size, b * size), b, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize);
            var (f, logits) = model.Forward(x);
            var p = Ops.Softmax(logits, 1);
            f.ToArray().CopyTo(features, start * cfg.FeatureDim);
            p.ToArray().CopyTo(probs, start * cfg.Classes);
            progress?.Invoke(start + b);
        }
        return new ClassifierOutputs(features, probs, n, cfg.FeatureDim, cfg.Classes);
    }

    /// <summary>The most likely class of each row of probabilities [n, K] (the first on ties).</summary>
    public static int[] Predictions(ReadOnlySpan<float> probabilities, int n, int classes)
    {
        var r = new int[n];
        for (int i = 0; i < n; i++)
        {
            var row = probabilities.Slice(i * classes, classes);
            int best = 0;
            for (int k = 1; k < classes; k++) if (row[k] > row[best]) best = k;
            r[i] = best;
        }
        return r;
    }

    /// <summary>
    /// For each class c of <paramref name="classes"/>: the share of the samples drawn for c (<paramref name="labels"/>)
    /// that the classifier's <paramref name="predictions"/> put in c; NaN for a class with no samples.
    /// </summary>
    public static double[] ClassAccuracy(ReadOnlySpan<int> predictions, ReadOnlySpan<int> labels, int classes)
    {
        if (predictions.Length != labels.Length) throw new ArgumentException($"{predictions.Length} predictions for {labels.Length} labels.");
        var hits = new int[classes];
        var totals = new int[classes];
        for (int i = 0; i < labels.Length; i++)
        {
            if ((uint)labels[i] >= (uint)classes) throw new ArgumentOutOfRangeException(nameof(labels), $"Label {labels[i]} is outside 0..{classes - 1}.");
            totals[labels[i]]++;
            if (predictions[i] == labels[i]) hits[labels[i]]++;
        }
        var r = new double[classes];
        for (int c = 0; c < classes; c++) r[c] = totals[c] == 0 ? double.NaN : (double)hits[c] / totals[c];
        return r;
    }

    /// <summary>How many rows of probabilities [n, K] each class is the most likely class of.</summary>
    public static int[] ClassHistogram(ReadOnlySpan<float> probabilities, int n, int classes)
    {
        var counts = new int[classes];
        foreach (int k in Predictions(probabilities, n, classes)) counts[k]++;
        return counts;
    }

    /// <summary>
    /// The Inception Score analogue exp(E_x KL(p(y|x) || p(y))), p(y) the mean of the rows of probabilities
    /// [n, K], over the whole set (one split). 1 when every image gets the same prediction; K when each is
    /// classified with certainty and the classes are equally frequent. Terms with p = 0 contribute 0.
    /// </summary>
    public static double InceptionScore(ReadOnlySpan<float> probabilities, int n, int classes)
    {
        if (n <= 0 || probabilities.Length != n * classes) throw new ArgumentException($"{probabilities.Length} values are not {n} rows of {classes}.");
        var marginal = new double[classes];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < classes; k++) marginal[k] += probabilities[i * classes + k];
        for (int k = 0; k < classes; k++) marginal[k] /= n;
        double kl = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < classes; k++)
            {
                double p = probabilities[i * classes + k];
                if (p > 0) kl += p * (Math.Log(p) - Math.Log(marginal[k]));
            }
        return Math.Exp(kl / n);
    }
}
