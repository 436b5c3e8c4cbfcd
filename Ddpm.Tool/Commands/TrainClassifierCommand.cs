using System.Diagnostics;
using System.Globalization;
using CommandLine;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

[Verb("train-classifier", HelpText = "Train the small CNN whose features 'eval' measures samples with (labelled IDX images).")]
public sealed class TrainClassifierOptions : CommonOptions
{
    [Option("data", HelpText = "Training images (IDX, .gz or raw). Default: the bundled Fashion-MNIST subset.")]
    public string? Data { get; set; }

    [Option("labels", HelpText = "Training labels (IDX1). Default: the bundled ones; required with --data.")]
    public string? Labels { get; set; }

    [Option("test-data", HelpText = "Held-out images for the accuracy. Default: the bundled test set.")]
    public string? TestData { get; set; }

    [Option("test-labels", HelpText = "Held-out labels. Default: the bundled ones; required with --test-data.")]
    public string? TestLabels { get; set; }

    [Option("class-names", HelpText = "Comma-separated class names for eval's histogram. Default: Fashion-MNIST's for the bundled data, else 0..K-1.")]
    public string? ClassNames { get; set; }

    [Option("epochs", Default = 4, HelpText = "Passes over the training images.")]
    public int Epochs { get; set; }

    [Option("batch", Default = 64, HelpText = "Images per step.")]
    public int Batch { get; set; }

    [Option("lr", Default = 3e-3f, HelpText = "Adam's peak learning rate (half-cosine decay to 0).")]
    public float Lr { get; set; }

    [Option("seed", Default = 0UL, HelpText = "Seed of the initial weights and of the batch order and flips.")]
    public ulong Seed { get; set; }

    [Option("no-flip", Default = false, HelpText = "Do not mirror training images (use it for digits and letters).")]
    public bool NoFlip { get; set; }

    [Option("image-size", Default = 32, HelpText = "Input size; smaller images are padded with black (28x28 Fashion-MNIST -> 32, like 'train').")]
    public int ImageSize { get; set; }

    [Option("widths", Default = "32,64,128", HelpText = "Channels of the three convolutions.")]
    public string Widths { get; set; } = "32,64,128";

    [Option("features", Default = 128, HelpText = "Width of the feature layer FID is computed on.")]
    public int Features { get; set; }

    [Option("out", Default = "classifier.safetensors", HelpText = "The weights file to write (config and test accuracy in its header).")]
    public string Out { get; set; } = "classifier.safetensors";
}

public static class TrainClassifierCommand
{
    private static readonly string[] FashionClasses =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    public static int Run(TrainClassifierOptions o, ToolConsole con)
    {
        if (o.Epochs <= 0) throw new UsageError($"--epochs must be positive, got {o.Epochs}.");
        if (o.Batch is <= 0 or > TrainOptions.MaxBatch) throw new UsageError($"--batch must be between 1 and {TrainOptions.MaxBatch:N0}, got {o.Batch}.");
        if (!(o.Lr > 0 && float.IsFinite(o.Lr))) throw new UsageError($"--lr must be a positive number, got {o.Lr}.");
        if ((o.Data is null) != (o.Labels is null)) throw new UsageError("give --data and --labels together (or neither, for the bundled set).");
        if ((o.TestData is null) != (o.TestLabels is null)) throw new UsageError("give --test-data and --test-labels together (or neither, for the bundled set).");
        var config = new ClassifierConfig
        {
            ImageSize = o.ImageSize, Widths = OptionText.Ints(o.Widths, "--widths"), FeatureDim = o.Features,
        };
        try { config.Validate(); }
        catch (ArgumentException e) { throw new UsageError(e.Message + " (--image-size >= 4, three --widths, --features > 0)"); }

        string trainPath = o.Data ?? BundledFiles.Data(BundledFiles.TrainImages);
        string trainLabelsPath = o.Labels ?? BundledFiles.Data(BundledFiles.TrainLabels);
        string testPath = o.TestData ?? BundledFiles.Data(BundledFiles.TestImages);
        string testLabelsPath = o.TestLabels ?? BundledFiles.Data(BundledFiles.TestLabels);
        var train = LoadImages(trainPath);
        var trainLabels = LoadLabels(trainLabelsPath, train);
        var test = LoadImages(testPath);
        var testLabels = LoadLabels(testLabelsPath, test);
        int classes = Math.Max(trainLabels.Values.ToArray().Max(), testLabels.Values.ToArray().Max()) + 1;
        string[] names = o.ClassNames is not null ? o.ClassNames.Split(',', StringSplitOptions.TrimEntries)
            : o.Data is null && classes <= FashionClasses.Length ? FashionClasses[..classes]
            : Enumerable.Range(0, classes).Select(k => k.ToString(CultureInfo.InvariantCulture)).ToArray();
        if (names.Length != classes) throw new UsageError($"--class-names has {names.Length} names; the labels have {classes} classes.");
        config = config with { ImageChannels = train.Channels, Classes = classes };
        Fit(config, train, trainPath);
        Fit(config, test, testPath);

        using var be = ToolBackends.Create(o);
        using var model = new FeatureClassifier(be, config, new PhiloxGenerator(o.Seed));
        var options = new ClassifierTrainingOptions
        {
            Epochs = o.Epochs, BatchSize = o.Batch, LearningRate = o.Lr, Seed = o.Seed, RandomHorizontalFlip = !o.NoFlip,
        };
        con.Out.WriteLine($"training a classifier ({config.Describe()}, {model.ParameterCount():N0} parameters) on {train.Count} images of {trainPath} "
            + $"for {o.Epochs} epochs, batch {o.Batch}, lr {o.Lr}, seed {o.Seed}, on {be.Name}");
        var sw = Stopwatch.StartNew();
        double lossSum = 0;
        int lossCount = 0;
        ClassifierTraining.Train(model, train, trainLabels, options, s =>
        {
            lossSum += s.Loss;
            lossCount++;
            int perEpoch = s.Steps / o.Epochs;
            if (s.Step % perEpoch == 0 || s.Step == s.Steps)
            {
                con.Out.WriteLine($"  epoch {s.Epoch + 1}/{o.Epochs}  mean loss {lossSum / lossCount:F4}  {Duration.Format(sw.Elapsed.TotalSeconds)}");
                lossSum = 0;
                lossCount = 0;
            }
        }, con.Cancel);
        double accuracy = ClassifierTraining.Accuracy(model, test, testLabels);
        con.Out.WriteLine($"test accuracy {accuracy:P2} on the {test.Count} images of {testPath}");
        string? dir = Path.GetDirectoryName(Path.GetFullPath(o.Out));
        if (dir is not null) Directory.CreateDirectory(dir);
        model.Save(o.Out, new Dictionary<string, string>
        {
            ["test_accuracy"] = accuracy.ToString("F4", CultureInfo.InvariantCulture),
            ["test_set"] = $"{Path.GetFileName(testPath)} ({test.Count} images)",
            ["train_set"] = $"{Path.GetFileName(trainPath)} ({train.Count} images)",
            ["class_names"] = string.Join(",", names),
            // No timings: the same options and seed give the same file, byte for byte.
            ["training"] = $"ddpm-tool train-classifier --epochs {o.Epochs} --batch {o.Batch} --lr {o.Lr.ToString(CultureInfo.InvariantCulture)} --seed {o.Seed}{(o.NoFlip ? " --no-flip" : "")}",
        });
        con.Out.WriteLine($"wrote {o.Out} ({new FileInfo(o.Out).Length / 1024} KiB) in {Duration.Format(sw.Elapsed.TotalSeconds)}");
        return 0;
    }

    private static IdxDataset LoadImages(string path)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such IDX image file.");
        try { return IdxDataset.Load(path); }
        catch (Exception e) when (e is InvalidDataException or IOException) { throw new UserError(e.Message, e); }
    }

    private static IdxLabels LoadLabels(string path, IdxDataset images)
    {
        if (!Path.Exists(path)) throw new UserError($"{path}: no such IDX label file.");
        IdxLabels labels;
        try { labels = IdxLabels.Load(path, 256); }
        catch (Exception e) when (e is InvalidDataException or IOException) { throw new UserError(e.Message, e); }
        if (labels.Count != images.Count) throw new UserError($"{path} has {labels.Count} labels for the {images.Count} images of {images.Source}.");
        return labels;
    }

    private static void Fit(ClassifierConfig config, IdxDataset images, string path)
    {
        try { SampleQuality.CheckFits(config, images.Channels, images.Height, images.Width, path); }
        catch (ArgumentException e) { throw new UsageError(e.Message + " (raise --image-size)"); }
    }
}
