namespace Ddpm.Tool;

/// <summary>
/// The files that travel with the tool: the Fashion-MNIST subset and the feature classifier of <c>eval</c>. An
/// installed tool finds them beside its binary; a run from source finds them in the repository above the working folder.
/// </summary>
public static class BundledFiles
{
    public const string TrainImages = "train-images-idx3-ubyte.gz";
    public const string TrainLabels = "train-labels-idx1-ubyte.gz";
    public const string TestImages = "t10k-images-idx3-ubyte.gz";
    public const string TestLabels = "t10k-labels-idx1-ubyte.gz";
    public const string Classifier = "fashion-classifier.safetensors";

    /// <summary>The bundled diffusion model: the EMA weights of <c>train --preset small</c> (the main job's recipe with 2 blocks per level) in fp16, as <c>train --bundle</c> writes them.</summary>
    public const string DdpmModelFile = "fashion-ddpm.safetensors";

    /// <summary>The bundled diffusion model, for the sampling verbs without --checkpoint.</summary>
    public static string DdpmModel() => TryModel(DdpmModelFile)
        ?? throw new UserError($"no --checkpoint given, and this ddpm-tool carries no bundled model (models/{DdpmModelFile}; made by 'ddpm-tool train --out runs/main --bundle Ddpm.Tool/models/{DdpmModelFile}'); pass --checkpoint FILE or a run folder.");

    /// <summary>A bundled model file, or null when this build has none.</summary>
    public static string? TryModel(string file) => Find(Path.Combine("models", file), Path.Combine("Ddpm.Tool", "models", file));

    /// <summary>A file of the bundled Fashion-MNIST subset.</summary>
    public static string Data(string file = TrainImages) =>
        Find(Path.Combine("data", "fashion-mnist", file), Path.Combine("data", "fashion-mnist", file))
        ?? throw new UserError($"the bundled Fashion-MNIST subset ({file}) was not found beside the tool or under data/fashion-mnist; pass --data PATH.");

    /// <summary>A bundled model file (models/ beside the tool, Ddpm.Tool/models in the repository).</summary>
    public static string Model(string file) =>
        Find(Path.Combine("models", file), Path.Combine("Ddpm.Tool", "models", file))
        ?? throw new UserError($"the bundled model {file} was not found beside the tool (models/) or under Ddpm.Tool/models; pass --classifier PATH.");

    private static string? Find(string besideTool, string inRepository)
    {
        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, besideTool) };
        for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d is not null; d = d.Parent)
            candidates.Add(Path.Combine(d.FullName, inRepository));
        return candidates.FirstOrDefault(File.Exists);
    }
}
