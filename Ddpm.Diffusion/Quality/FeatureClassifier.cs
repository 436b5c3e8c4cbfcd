using System.Text.Json;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Quality;

/// <summary>The shape of a <see cref="FeatureClassifier"/>; stored as JSON in its weights file.</summary>
public sealed record ClassifierConfig
{
    /// <summary>Channels of the images it takes (1 grey).</summary>
    public int ImageChannels { get; init; } = 1;

    /// <summary>Height and width of the images it takes; smaller images are padded with black to this size.</summary>
    public int ImageSize { get; init; } = 32;

    /// <summary>Channels of the three 3x3 convolutions (the second and third halve the resolution).</summary>
    public int[] Widths { get; init; } = [32, 64, 128];

    /// <summary>Width of the feature layer that the Frechet distance is computed on.</summary>
    public int FeatureDim { get; init; } = 128;

    public int Classes { get; init; } = 10;

    public void Validate()
    {
        if (ImageChannels <= 0 || ImageSize < 4 || Widths.Length != 3 || Widths.Any(w => w <= 0) || FeatureDim <= 0 || Classes < 2)
            throw new ArgumentException($"Bad classifier config: {Describe()}.");
    }

    public string Describe() =>
        $"{ImageChannels}-channel {ImageSize}x{ImageSize} images, convolutions {string.Join("/", Widths)}, {FeatureDim} features, {Classes} classes";
}

/// <summary>
/// The feature model of the sample-quality measures: a small CNN in the role Inception-v3 has for FID on
/// natural images. x [N, C, S, S] in [-1, 1] -> conv 3x3 (w0) -> SiLU -> conv 3x3 stride 2 (w1) -> SiLU ->
/// conv 3x3 stride 2 (w2) -> SiLU -> global average pool [N, w2] -> Linear (F) -> SiLU = the features
/// [N, F] -> Linear -> logits [N, K]. Global pooling keeps it small (about 110 k parameters for the default
/// widths) and, like Inception's pool3, makes the features describe what is in the image rather than where.
/// </summary>
public sealed class FeatureClassifier : Module
{
    public const string Format = "ddpm-classifier/1";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    private readonly Conv2d _conv0, _conv1, _conv2;
    private readonly Linear _feature, _head;

    public FeatureClassifier(IBackend backend, ClassifierConfig config, PhiloxGenerator init)
    {
        config.Validate();
        Config = config;
        Backend = backend;
        var w = config.Widths;
        _conv0 = Register("conv0", new Conv2d(backend, config.ImageChannels, w[0], 3, init, padding: 1));
        _conv1 = Register("conv1", new Conv2d(backend, w[0], w[1], 3, init, stride: 2, padding: 1));
        _conv2 = Register("conv2", new Conv2d(backend, w[1], w[2], 3, init, stride: 2, padding: 1));
        _feature = Register("feature", new Linear(backend, w[2], config.FeatureDim, init));
        _head = Register("head", new Linear(backend, config.FeatureDim, config.Classes, init));
    }

    public ClassifierConfig Config { get; }
    public IBackend Backend { get; }

    /// <summary>x: [N, C, S, S] in [-1, 1] -> features [N, F], logits [N, K].</summary>
    public (Tensor Features, Tensor Logits) Forward(Tensor x)
    {
        if (x.Rank != 4 || x.Shape[1] != Config.ImageChannels || x.Shape[2] != Config.ImageSize || x.Shape[3] != Config.ImageSize)
            throw new ArgumentException($"The classifier takes [N, {Config.ImageChannels}, {Config.ImageSize}, {Config.ImageSize}]; got {x.Describe()}.");
        using var h0 = _conv0.Forward(x);
        using var a0 = Ops.Silu(h0);
        using var h1 = _conv1.Forward(a0);
        using var a1 = Ops.Silu(h1);
        using var h2 = _conv2.Forward(a1);
        using var a2 = Ops.Silu(h2);
        int n = x.Shape[0], c = a2.Shape[1], hw = a2.Shape[2] * a2.Shape[3];
        // Global average pool: [N, C, H, W] -> [N, C, 1, 1] -> [N, C].
        using var summed = Ops.SumTo(a2, new Shape(n, c, 1, 1));
        using var pooled4 = Ops.Affine(summed, 1f / hw, 0f);
        using var pooled = Ops.Reshape(pooled4, n, c);
        using var f = _feature.Forward(pooled);
        var features = Ops.Silu(f);
        return (features, _head.Forward(features));
    }

    /// <summary>Writes the weights with the config (and any <paramref name="metadata"/>) in the header; non-finite weights are refused.</summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var entries = NamedParameters().Select(p => SafeTensorEntry.F32(p.Name, p.Param.Shape.ToArray(), p.Param.ToArray())).ToList();
        var meta = new Dictionary<string, string>();
        if (metadata is not null) foreach (var kv in metadata) meta[kv.Key] = kv.Value;
        Ddpm.Diffusion.Training.Checkpoint.AddFormat(meta, Format);
        meta["config"] = JsonSerializer.Serialize(Config, Json);
        NonFiniteOutputException.ThrowIfAny(entries, path);
        SafeTensorsFile.Write(path, entries, meta);
    }

    /// <summary>
    /// Loads a classifier written by <see cref="Save"/>. Throws <see cref="InvalidDataException"/> naming the
    /// file when it is not one, or when its tensors do not fit its config.
    /// </summary>
    public static (FeatureClassifier Model, IReadOnlyDictionary<string, string> Metadata) Load(string path, IBackend backend)
    {
        var file = SafeTensorsFile.Read(path);
        if (!Ddpm.Diffusion.Training.Checkpoint.IsFormat(file.Metadata, Format) || !file.Metadata.TryGetValue("config", out var json))
            throw new InvalidDataException($"{path} is not a classifier weights file (its header has no format '{Format}' and config).");
        ClassifierConfig config;
        try
        {
            config = JsonSerializer.Deserialize<ClassifierConfig>(json, Json) ?? throw new JsonException("null config");
            config.Validate();
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: unreadable classifier config: {e.Message}", e);
        }
        var model = new FeatureClassifier(backend, config, new PhiloxGenerator(0));
        try
        {
            foreach (var (name, p) in model.NamedParameters())
            {
                if (!file.TryGet(name, out var e)) throw new InvalidDataException($"{path} lacks tensor '{name}' {p.Shape}.");
                if (!e.Shape.AsSpan().SequenceEqual(p.Shape.Dims)) throw new InvalidDataException($"{path}: '{name}' is {e.ShapeText}, the config needs {p.Shape}.");
                if (!e.IsFloat) throw new InvalidDataException($"{path}: '{name}' holds {e.DType} integers; a classifier's weights are floats.");
                long bad = e.FirstNonFinite();
                if (bad >= 0) throw new InvalidDataException($"{path}: '{name}' element {bad} is {e.Floats![bad]}; a classifier's weights must be finite.");
                p.CopyFrom(e.AsFloats());
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.Eval();
        return (model, file.Metadata);
    }
}
