namespace Ddpm.Diffusion.Data;

/// <summary>Images with a class label each, 0..<see cref="NumClasses"/>-1.</summary>
public interface ILabelledDataset : IImageDataset
{
    int NumClasses { get; }

    /// <summary>The class names, when the data has them (null: classes are known by index).</summary>
    IReadOnlyList<string>? ClassNames { get; }

    int LabelOf(int index);
}

/// <summary>A dataset of images and a separate list of their labels (an IDX label file, CIFAR-10's, folder names).</summary>
public sealed class LabelledDataset : ILabelledDataset
{
    private readonly IImageDataset _images;
    private readonly int[] _labels;

    /// <summary>Pairs image i with <paramref name="labels"/>[i]; every label must be in 0..<paramref name="numClasses"/>-1.</summary>
    public LabelledDataset(IImageDataset images, IReadOnlyList<int> labels, int numClasses, IReadOnlyList<string>? names = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(labels);
        if (labels.Count != images.Count)
            throw new ArgumentException($"{labels.Count} labels for {images.Count} images.", nameof(labels));
        if (numClasses <= 0) throw new ArgumentOutOfRangeException(nameof(numClasses), $"{numClasses} classes; labelled data has at least one.");
        if (names is not null && names.Count != numClasses)
            throw new ArgumentException($"{names.Count} class names for {numClasses} classes.", nameof(names));
        _labels = labels.ToArray();
        for (int i = 0; i < _labels.Length; i++)
            if ((uint)_labels[i] >= (uint)numClasses)
                throw new ArgumentException($"Label {i} is {_labels[i]}, outside 0..{numClasses - 1}.", nameof(labels));
        _images = images;
        NumClasses = numClasses;
        ClassNames = names?.ToArray();
    }

    public int Count => _images.Count;
    public int Channels => _images.Channels;
    public int Height => _images.Height;
    public int Width => _images.Width;
    public int NumClasses { get; }
    public IReadOnlyList<string>? ClassNames { get; }

    public void Get(int index, Span<float> dst) => _images.Get(index, dst);

    public int LabelOf(int index) => _labels[index];
}

/// <summary>The class names of the labelled sets the tool knows.</summary>
public static class KnownClassNames
{
    /// <summary>Fashion-MNIST's ten classes, in label order.</summary>
    public static IReadOnlyList<string> FashionMnist { get; } =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>CIFAR-10's ten classes, in label order.</summary>
    public static IReadOnlyList<string> Cifar10 { get; } =
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
}
