using Ddpm.Diffusion.Imaging;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Data;

/// <summary>
/// All PNG, JPEG and BMP files of a folder (and its subfolders), each center-cropped and resized to the model's
/// size, as grey or RGB. Files are decoded once at load, in ordinal order of their relative paths, so the
/// dataset's indices (and hence a seeded training run) do not depend on the file system's listing order.
/// </summary>
public sealed class ImageFolderDataset : ByteImageDataset
{
    private ImageFolderDataset(string folder, byte[] pixels, string[] files, int channels, int height, int width)
        : base(folder, pixels, files.Length, channels, height, width)
    {
        Files = files;
    }

    /// <summary>The image files, in index order.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>
    /// One class per sub-folder: when every image lies in a sub-folder and there are at least two, image i's
    /// label is the index of its top sub-folder among their names in ordinal order, and the names are the
    /// folders'. Null when some image lies in the folder itself or all are in one sub-folder.
    /// </summary>
    public LabelledDataset? ByFolder()
    {
        var top = new string[Files.Count];
        for (int i = 0; i < top.Length; i++)
        {
            var rel = Path.GetRelativePath(Source, Files[i]);
            int cut = rel.IndexOfAny([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar]);
            if (cut <= 0) return null;
            top[i] = rel[..cut];
        }
        var names = top.Distinct(StringComparer.Ordinal).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        if (names.Length < 2 || names.Distinct(StringComparer.OrdinalIgnoreCase).Count() != names.Length) return null;
        var index = names.Select((n, i) => (n, i)).ToDictionary(p => p.n, p => p.i, StringComparer.Ordinal);
        return new LabelledDataset(this, top.Select(t => index[t]).ToArray(), names.Length, names);
    }

    public static ImageFolderDataset Load(string folder, int height, int width, int channels,
        ResizeFilter filter = ResizeFilter.Auto, bool recursive = true)
    {
        if (channels is not (1 or 3))
            throw new ArgumentOutOfRangeException(nameof(channels), $"Images are read as 1 (grey) or 3 (RGB) channels, not {channels}.");
        if (height <= 0 || width <= 0)
            throw new ArgumentOutOfRangeException(nameof(height), "The target size must be positive.");
        if (!Directory.Exists(folder))
            throw new DataFormatException(folder, "the image folder does not exist");

        var files = ImageFiles(folder, recursive).OrderBy(f => Path.GetRelativePath(folder, f), StringComparer.Ordinal).ToArray();
        if (files.Length == 0)
            throw new DataFormatException(folder, $"the folder has no images ({string.Join(", ", ImageFile.Extensions)})");

        int size = channels * height * width;
        var pixels = new byte[(long)files.Length * size];
        // Decoding dominates loading; each file fills its own slot, so the result does not depend on the
        // schedule, and the error reported is the one of the first bad file in index order.
        var errors = new Exception?[files.Length];
        Parallel.For(0, files.Length, i =>
        {
            try
            {
                var img = ImageFile.Load(files[i], channels);
                var chw = Resampler.CenterCropResize(img, height, width, filter);
                var dst = pixels.AsSpan(i * size, size);
                for (int k = 0; k < size; k++) dst[k] = (byte)(chw[k] * 255f + 0.5f);
            }
            catch (Exception ex)
            {
                errors[i] = ex;
            }
        });
        if (errors.FirstOrDefault(e => e is not null) is { } first)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        return new ImageFolderDataset(folder, pixels, files, channels, height, width);
    }

    /// <summary>
    /// The files with an image's name in <paramref name="folder"/> and, when <paramref name="recursive"/>, its
    /// sub-folders. Links are followed (a class folder may be a link to another disk), but a folder already seen, by
    /// its identity rather than its path, is not entered again: a link back up the tree would otherwise list the
    /// same images without end (two such links double the walk at every level).
    /// </summary>
    private static List<string> ImageFiles(string folder, bool recursive)
    {
        var files = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(folder);
        while (pending.Count > 0)
        {
            string dir = pending.Pop();
            if (!seen.Add(InputFile.Identity(dir))) continue;
            files.AddRange(Directory.EnumerateFiles(dir).Where(ImageFile.HasImageExtension));
            if (!recursive) break;
            foreach (var sub in Directory.EnumerateDirectories(dir).OrderDescending(StringComparer.Ordinal)) pending.Push(sub);
        }
        return files;
    }
}
