using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Imaging;

namespace Ddpm.Tool;

/// <summary>Training and test images by what the path is.</summary>
public static class Datasets
{
    /// <summary>An IDX file (.gz or raw), a CIFAR-10 batch folder or file, or an image folder (resized to <paramref name="imageSize"/>).</summary>
    public static IImageDataset Open(string path, int imageSize, int channels)
    {
        try
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
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException)
        {
            throw new UserError(e.Message, e);
        }
        throw new UserError($"{path}: no such file or folder.");
    }
}

/// <summary>The first <c>count</c> images of a dataset (--max-images).</summary>
internal sealed class SubsetDataset(IImageDataset inner, int count) : IImageDataset
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
