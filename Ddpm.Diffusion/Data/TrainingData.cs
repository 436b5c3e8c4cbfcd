using Ddpm.Diffusion.Imaging;

namespace Ddpm.Diffusion.Data;

/// <summary>Training and test images by what the path is.</summary>
public static class TrainingData
{
    /// <summary>
    /// An IDX file (.gz or raw), a CIFAR-10 batch folder or file, or an image folder (resized to
    /// <paramref name="imageSize"/>). A path that is none of these, or a file that cannot be read, is an
    /// <see cref="InvalidDataException"/> (or the I/O error) naming it.
    /// </summary>
    public static IImageDataset Open(string path, int imageSize, int channels)
    {
        if (File.Exists(path))
        {
            string name = Path.GetFileName(path).ToLowerInvariant();
            if (name.EndsWith(".bin", StringComparison.Ordinal)) return Cifar10Dataset.Load(path, includeTest: false);
            return IdxDataset.Load(path);
        }
        if (Directory.Exists(path))
        {
            if (Directory.EnumerateFiles(path, "data_batch_*.bin").Any()) return Cifar10Dataset.Load(path, includeTest: false);
            return ImageFolderDataset.Load(path, imageSize, imageSize, channels, ResizeFilter.Auto, recursive: true);
        }
        throw new FileNotFoundException($"{path}: no such file or folder.", path);
    }

    /// <summary>
    /// The images with their labels when the format carries them: CIFAR-10's, an image folder's sub-folders (one
    /// per class), or a set that is labelled already; null otherwise (an IDX image file's labels are a file of their own).
    /// </summary>
    public static ILabelledDataset? WithLabels(IImageDataset data) => data switch
    {
        ILabelledDataset l => l,
        Cifar10Dataset c => new LabelledDataset(c, c.Labels.ToArray().Select(b => (int)b).ToArray(), KnownClassNames.Cifar10.Count, KnownClassNames.Cifar10),
        ImageFolderDataset f => f.ByFolder(),
        _ => null,
    };
}

/// <summary>The first <c>count</c> images of a dataset.</summary>
public sealed class SubsetDataset(IImageDataset inner, int count) : IImageDataset
{
    public int Count => count;
    public int Channels => inner.Channels;
    public int Height => inner.Height;
    public int Width => inner.Width;
    public void Get(int index, Span<float> dst)
    {
        if ((uint)index >= (uint)count) throw new ArgumentOutOfRangeException(nameof(index));
        inner.Get(index, dst);
    }
}
