using Ddpm.Diffusion.Data;

namespace Ddpm.Tool;

/// <summary>Images by path (<see cref="TrainingData"/>), a file or format problem being one <see cref="UserError"/> line.</summary>
public static class Datasets
{
    /// <summary>An IDX file (.gz or raw), a CIFAR-10 batch folder or file, or an image folder (resized to <paramref name="imageSize"/>).</summary>
    public static IImageDataset Open(string path, int imageSize, int channels)
    {
        try
        {
            return TrainingData.Open(path, imageSize, channels);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException)
        {
            throw new UserError(e.Message, e);
        }
    }

    /// <summary>
    /// The training images at <paramref name="path"/> (null: the bundled Fashion-MNIST subset, with its labels),
    /// labelled when the format carries labels.
    /// </summary>
    public static (IImageDataset Data, string Path) OpenForTraining(string? path, int imageSize, int channels)
    {
        string p = path ?? BundledFiles.Data();
        var data = Open(p, imageSize, channels);
        if (path is null && data is IdxDataset) return (BundledLabels(data), p);
        return (TrainingData.WithLabels(data) ?? data, p);
    }

    /// <summary>The bundled images with the bundled IDX labels (Fashion-MNIST's names).</summary>
    private static LabelledDataset BundledLabels(IImageDataset data)
    {
        string path = BundledFiles.Data(BundledFiles.TrainLabels);
        IdxLabels labels;
        try { labels = IdxLabels.Load(path, KnownClassNames.FashionMnist.Count); }
        catch (Exception e) when (e is IOException or InvalidDataException) { throw new UserError(e.Message, e); }
        if (labels.Count != data.Count)
            throw new UserError($"{path} has {labels.Count} labels for the {data.Count} bundled images.");
        return new LabelledDataset(data, labels.Values.ToArray().Select(b => (int)b).ToArray(), KnownClassNames.FashionMnist.Count, KnownClassNames.FashionMnist);
    }
}
