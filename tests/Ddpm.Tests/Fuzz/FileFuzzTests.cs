using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Ddpm.Tool.Serve;
using StbImageWriteSharp;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Ddpm.Tests.Fuzz;

/// <summary>
/// Mutates valid files of every format the tool reads and loads each mutant through the same library calls
/// the tool makes. Every mutant must either be refused with a clean error (an <see cref="IOException"/> or
/// <see cref="InvalidDataException"/>, the types the tool prints as one line with exit 1, whose message names
/// the file and holds no line break or NUL) or load correctly (finite weights of the shapes the model has,
/// image sets of the declared size), within a time bound. Deterministic from a seed: DDPM_FUZZ_SEED (default
/// below), DDPM_FUZZ_MUTANTS (mutants per format, default 200) reproduce or lengthen a run; DDPM_FUZZ_VERBOSE=1 lists
/// every mutant's outcome, DDPM_FUZZ_KEEP=folder keeps a failing mutant's bytes.
/// </summary>
public sealed class FileFuzzTests(ITestOutputHelper output) : IDisposable
{
    private const int DefaultSeed = 20_261_201;
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    private readonly TempDir _dir = new();

    private static int Mutants =>
        int.TryParse(Environment.GetEnvironmentVariable("DDPM_FUZZ_MUTANTS"), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : 200;

    private static int Seed =>
        int.TryParse(Environment.GetEnvironmentVariable("DDPM_FUZZ_SEED"), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int s) ? s : DefaultSeed;

    /// <summary>DDPM_FUZZ_VERBOSE=1 lists every mutant with its outcome.</summary>
    private static bool Verbose => Environment.GetEnvironmentVariable("DDPM_FUZZ_VERBOSE") == "1";

    public void Dispose() => _dir.Dispose();

    // A model small enough that hundreds of loads take a second: 8x8 grey, widths 8/16, attention at 4x4.
    private static readonly UNetConfig Tiny = new()
    {
        ImageChannels = 1, ImageSize = 8, NChannels = 8, ChMults = [1, 2], IsAttn = [false, true], NBlocks = 1, NGroups = 8, Dropout = 0.1f,
    };

    // ---- the formats ----------------------------------------------------------------------------------------

    [Fact]
    public void TrainingCheckpoints()
    {
        using var be = new CpuReferenceBackend();
        var images = TinyImages();
        string seedFile = _dir.File("seed.safetensors");
        using (var trainer = NewTrainer(be, images, Tiny, new DiffusionConfig { NSteps = 50 }, new TrainingConfig { BatchSize = 2, EmaDecay = 0.9f, Seed = 3 }))
        {
            trainer.Step();
            Checkpoint.Save(seedFile, trainer);
        }
        var valid = File.ReadAllBytes(seedFile);
        LoadCheckpoint(seedFile, be, images, resume: true);
        Fuzz("checkpoint", 1, "checkpoint.safetensors", m => m.SafeTensors(valid), path => LoadCheckpoint(path, be, images, resume: true));
    }

    [Fact]
    public void WeightsFiles()
    {
        using var be = new CpuReferenceBackend();
        string seedFile = _dir.File("seed.safetensors");
        using (var model = new UNet(be, Tiny, new PhiloxGenerator(5))) Checkpoint.SaveWeights(seedFile, model, Tiny);
        var valid = File.ReadAllBytes(seedFile);
        LoadCheckpoint(seedFile, be, TinyImages(), resume: false);
        Fuzz("weights", 2, "weights.safetensors", m => m.SafeTensors(valid), path => LoadCheckpoint(path, be, TinyImages(), resume: false));
    }

    [Fact]
    public void ForwardInputsFiles()
    {
        string seedFile = _dir.File("seed.safetensors");
        var x = Enumerable.Range(0, 2 * 64).Select(i => MathF.Sin(i)).ToArray();
        SafeTensorsFile.Write(seedFile, [SafeTensorEntry.F32("x", [2, 1, 8, 8], x), SafeTensorEntry.I64("t", [2], [3, 40])]);
        var valid = File.ReadAllBytes(seedFile);
        Fuzz("inputs", 3, "inputs.safetensors", m => m.SafeTensors(valid), path =>
        {
            var f = SafeTensorsFile.Read(path);
            foreach (var e in f.Entries)
                Check(e.Count == e.Shape.Aggregate(1L, (a, d) => a * d), $"tensor '{e.Name}' holds {e.Count} values for shape {e.ShapeText}");
            // What the forward command then requires of x and t, checked as it checks them.
            if (f.TryGet("x", out var xe) && xe.IsFloat && xe.Shape.Length == 4)
                Check(xe.AsFloats().Length == xe.Shape[0] * xe.Shape[1] * xe.Shape[2] * xe.Shape[3], "x does not fill its shape");
        });
    }

    [Fact]
    public void IdxFiles()
    {
        var images = TestFiles.Idx([4, 6, 5], Enumerable.Range(0, 120).Select(i => (byte)(i * 7)).ToArray());
        var labels = TestFiles.Idx([4], [0, 3, 9, 1]);
        Fuzz("idx", 4, "images-idx3-ubyte", m => m.Next(4) == 0 ? Labelled(m.Idx(labels)) : m.Idx(images), LoadIdx);
    }

    [Fact]
    public void GzipIdxFiles()
    {
        var images = TestFiles.Idx([4, 6, 5], Enumerable.Range(0, 120).Select(i => (byte)(i * 7)).ToArray());
        var gz = TestFiles.Gzip(images);
        Fuzz("idx.gz", 5, "images-idx3-ubyte.gz", m =>
        {
            if (m.Next(2) == 0) return m.Bytes(gz);
            var (raw, what) = m.Idx(images);
            return (TestFiles.Gzip(raw), what + ", gzipped");
        }, LoadIdx);
    }

    [Fact]
    public void PngFiles()
    {
        var grey = EncodePng(Gradient(7, 5, 1), 7, 5, 1);
        var rgb = EncodePng(Gradient(6, 9, 3), 6, 9, 3);
        Fuzz("png", 6, Path.Combine("images", "a.png"), m => m.Png(m.Next(2) == 0 ? grey : rgb), LoadImageFolder);
    }

    [Fact]
    public void JpegFiles()
    {
        var jpg = EncodeJpeg(Gradient(16, 12, 3), 16, 12, 3);
        Fuzz("jpeg", 7, Path.Combine("images", "a.jpg"), m => m.Jpeg(jpg), LoadImageFolder);
    }

    [Fact]
    public void BmpFiles()
    {
        // The layouts stb_image reads: 24-bit (what StbImageWriteSharp writes), top-down 24-bit, 8-, 4- and 1-bit
        // palettes with padded rows, and 32-bit with channel masks (BI_BITFIELDS).
        var seeds = new[]
        {
            EncodeBmp(Gradient(7, 5, 3), 7, 5, 3), EncodeBmp(Gradient(6, 4, 1), 6, 4, 1), TopDown(EncodeBmp(Gradient(5, 3, 3), 5, 3, 3)),
            PalettedBmp(5, 3, 8), PalettedBmp(7, 4, 4), PalettedBmp(9, 2, 1), BitfieldsBmp(4, 3),
        };
        foreach (var seed in seeds)
        {
            string path = _dir.File(Path.Combine("seeds", "a.bmp"));
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, seed);
            LoadImageFolder(path);
        }
        Fuzz("bmp", 9, Path.Combine("images", "a.bmp"), m => m.Bmp(seeds[m.Next(seeds.Length)]), LoadImageFolder);
    }

    /// <summary>
    /// The image-folder reader over folder trees as users and accidents make them: classes in sub-folders, nested
    /// folders, damaged images of every format, empty files, folders and named pipes with an image's name, links to
    /// devices, to nowhere, to images elsewhere and back up the tree, odd and long names, upper-case extensions,
    /// hidden files. Each tree must load with exactly its images or be refused with one line naming the file.
    /// </summary>
    [Fact]
    public void ImageFolders()
    {
        var seeds = new[]
        {
            (".png", EncodePng(Gradient(7, 5, 1), 7, 5, 1)), (".jpg", EncodeJpeg(Gradient(16, 12, 3), 16, 12, 3)),
            (".bmp", EncodeBmp(Gradient(6, 9, 3), 6, 9, 3)),
        };
        string outside = _dir.File("outside.png");
        File.WriteAllBytes(outside, seeds[0].Item2);
        int expected = 0;
        FuzzInputs("image folder", 10, _dir.File("image-tree"), (m, root) =>
        {
            (string what, expected) = MakeTree(m, root, seeds, outside);
            return (what, null);
        }, root => LoadImageTree(root, expected));
    }

    [Fact]
    public void CifarFiles()
    {
        var batch = new byte[3 * Cifar10Dataset.RecordSize];
        new Random(11).NextBytes(batch);
        for (int i = 0; i < 3; i++) batch[i * Cifar10Dataset.RecordSize] = (byte)(i * 4);
        Fuzz("cifar", 8, "data_batch_1.bin", m => m.Cifar(batch, Cifar10Dataset.RecordSize), path =>
        {
            var d = Cifar10Dataset.Load(path);
            Check(d.Count * (long)Cifar10Dataset.RecordSize == new FileInfo(path).Length, $"{d.Count} records from {new FileInfo(path).Length} bytes");
            foreach (byte l in d.Labels) Check(l <= 9, $"label {l}");
            var img = new float[d.Channels * d.Height * d.Width];
            for (int i = 0; i < d.Count; i++) d.Get(i, img);
        });
    }

    /// <summary>
    /// train --config FILE: a run's config.json (a class-conditional tiny model), mutated. Each mutant is refused
    /// with a line naming the file (a value that cannot work: under its key, and only a key the file sets) or gives
    /// a plan whose every setting is valid.
    /// </summary>
    [Fact]
    public void ConfigFiles()
    {
        var recipe = new TrainingRecipe().Set("run", "preset", "tiny").Set("run", "steps", 20L).Set("training", "batch_size", 4);
        string seedFile = _dir.File("seed.json");
        File.WriteAllText(seedFile, Recipes.Plan(recipe, ConfigData(1, 8)).ConfigJson());
        var valid = File.ReadAllBytes(seedFile);
        LoadConfig(seedFile);
        Fuzz("config", 11, "config.json", m => m.Config(valid), LoadConfig);
    }

    /// <summary>
    /// A run folder's files that are read back, mutated: loss.csv and metrics.csv as train --resume reads them (the
    /// whole rows up to its checkpoint's step kept, the file rewritten) and as serve's Run view reads them, and
    /// config.json as the Run view reads it. The Run view never fails on a file: what it cannot read is a note that
    /// names the file (counted here as a refusal).
    /// </summary>
    [Theory]
    [InlineData(RunFolder.LossName, 12)]
    [InlineData(RunFolder.MetricsName, 13)]
    [InlineData(RunFolder.ConfigName, 14)]
    public void RunFolderFiles(string name, int formatSeed)
    {
        string valid = name switch
        {
            RunFolder.LossName => LossLog.Header + "\n" + string.Concat(Enumerable.Range(1, 6).Select(i =>
                string.Create(CultureInfo.InvariantCulture, $"{i},{1.0 / i:R},{2.5 / i:G6},{1e-4 * i:G6},{0.04 + i / 1000.0:F4}\n"))),
            RunFolder.MetricsName => MetricsLog.Header + "\n2,310.5,1.02,0.5,8,1.20\n4,290.25,1.05,,8,1.31\n6,280.125,1.07,0.625,8,1.27\n",
            _ => Recipes.Plan(new TrainingRecipe().Set("run", "preset", "tiny").Set("run", "steps", 20L), ConfigData(1, 8)).ConfigJson(),
        };
        string seedFile = _dir.File(Path.Combine("seed", name));
        Directory.CreateDirectory(Path.GetDirectoryName(seedFile)!);
        File.WriteAllText(seedFile, valid);
        ReadRunFile(seedFile);
        var bytes = Encoding.UTF8.GetBytes(valid);
        Fuzz(name, formatSeed, Path.Combine("run", name), m => name == RunFolder.ConfigName ? m.Config(bytes) : m.Csv(bytes), ReadRunFile);
    }

    // ---- the loaders, as the tool calls them ----------------------------------------------------------------

    /// <summary>
    /// sample/info/forward: open, build the model the header describes (or the options' model), load the
    /// weights (EMA when present); train --resume: build a trainer from the header's configs and restore it.
    /// </summary>
    private static void LoadCheckpoint(string path, IBackend be, IdxDataset images, bool resume)
    {
        var ckpt = Checkpoint.Load(path);
        var config = ckpt.Model ?? Tiny;
        using (var model = new UNet(be, config, new PhiloxGenerator(0)))
        {
            ckpt.LoadWeightsInto(model, ckpt.HasEma);
            _ = new DenoiseDiffusion(model, ckpt.Diffusion ?? new DiffusionConfig());
            foreach (var (name, p) in model.NamedParameters()) CheckFinite(p, name);
        }
        if (!resume || !ckpt.IsTrainingCheckpoint) return;
        // The tool refuses data that does not fit the model before it builds a trainer; the seed data is 1x8x8.
        if (ckpt.Model is { } mc && (mc.ImageChannels != 1 || mc.ImageSize is < 8 or > 32)) return;
        using var trainer = NewTrainer(be, images, ckpt.Model ?? Tiny, ckpt.Diffusion ?? new DiffusionConfig(), ckpt.Training ?? new TrainingConfig());
        ckpt.RestoreInto(trainer);
        foreach (var (name, p, ema) in trainer.Parameters)
        {
            CheckFinite(p, name);
            if (ema is not null) CheckFinite(ema, "ema." + name);
        }
        foreach (var (name, m, v) in trainer.Optimizer.State)
        {
            CheckFinite(m, "adam.m." + name);
            CheckFinite(v, "adam.v." + name);
        }
    }

    /// <summary>
    /// What train does with --config FILE: the recipe resolved and fitted to the data (here two classes of images
    /// of the model's channels, at most 8x8, padded to the model's size). A value that cannot work is reported
    /// under the file that set it, as train reports it.
    /// </summary>
    private static void LoadConfig(string path)
    {
        var recipe = TrainingRecipe.Load(path);
        RunPlan plan;
        try
        {
            var configs = Recipes.Resolve(recipe);
            plan = Recipes.Fit(configs, ConfigData(configs.Model.ImageChannels, Math.Min(configs.Model.ImageSize, 8)), ConfigDataName);
        }
        catch (ConfigValueException e)
        {
            // A value the file does not set would be blamed on an option the user never gave.
            Check(recipe.OriginOf(e.Key) == path, $"refused \"{e.Key}\" {e.Problem}, a value {Path.GetFileName(path)} does not set");
            throw new InvalidDataException($"{path}: \"{e.Key}\" {e.Problem}", e);
        }
        catch (InvalidDataException e) when (e.Message.StartsWith(ConfigDataName, StringComparison.Ordinal))
        {
            // The data does not suit the run the file asks for (fewer images than a batch): train names the data.
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
        try
        {
            plan.Model.Validate();
            plan.Diffusion.Validate();
            plan.Training.Validate();
            plan.Run.Validate();
        }
        catch (ConfigValueException e)
        {
            throw new XunitException($"the plan holds \"{e.Key}\" {e.Problem}");
        }
        Check(plan.TotalSteps > 0 && plan.Loader.BatchesPerEpoch > 0, $"{plan.TotalSteps} steps of {plan.Loader.BatchesPerEpoch} batches per epoch");
    }

    private const string ConfigDataName = "the data";

    /// <summary>The step of the checkpoint train --resume continues in <see cref="ReadRunFile"/>.</summary>
    private const int ResumedStep = 4;

    /// <summary>serve's Run view of the file's folder, then (for a CSV log) train --resume's restart of the file.</summary>
    private static void ReadRunFile(string path)
    {
        string name = Path.GetFileName(path);
        var snapshot = new RunWatcher(Path.GetDirectoryName(path)!).Snapshot();
        // What the API sends the page: JSON has no NaN or infinity.
        _ = System.Text.Json.JsonSerializer.Serialize(snapshot);
        var loss = snapshot.Loss;
        Check(loss.Loss.Concat(loss.GradNorm).Concat(loss.Lr).All(double.IsFinite), "the Run view's loss curve holds a value that is not finite");
        if (name != RunFolder.ConfigName)
        {
            string header = name == RunFolder.LossName ? LossLog.Header : MetricsLog.Header;
            var before = File.ReadAllText(path).Split('\n').ToHashSet(StringComparer.Ordinal);
            if (name == RunFolder.LossName) _ = new LossLog(path, ResumedStep);
            else _ = new MetricsLog(path, ResumedStep);
            string after = File.ReadAllText(path);
            Check(after.StartsWith(header + "\n", StringComparison.Ordinal) && after.EndsWith('\n'), "the restarted log does not begin with its header or end with a newline");
            long last = 0;
            foreach (var row in after[(header.Length + 1)..].Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var f = row.Split(',');
                Check(before.Contains(row), $"the restarted log holds the row '{row}', which the file did not");
                Check(f.Length == header.Split(',').Length && long.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out long step)
                    && step > last && step <= ResumedStep, $"the restarted log keeps the row '{row}' (after step {last}; the checkpoint is at step {ResumedStep})");
                last = long.Parse(f[0], CultureInfo.InvariantCulture);
            }
        }
        if (snapshot.Notes.Length > 0) throw new InvalidDataException(string.Join("; ", snapshot.Notes));
    }


    /// <summary>Sixteen <paramref name="size"/>-square images of <paramref name="channels"/> channels in two classes.</summary>
    private static LabelledDataset ConfigData(int channels, int size) =>
        new(new FilledImages(16, channels, size), Enumerable.Range(0, 16).Select(i => i % 2).ToArray(), 2, ["a", "b"]);

    private sealed class FilledImages(int count, int channels, int size) : IImageDataset
    {
        public int Count => count;
        public int Channels => channels;
        public int Height => size;
        public int Width => size;
        public void Get(int index, Span<float> dst) => dst.Fill((index % 5) / 4f);
    }

    private static Trainer NewTrainer(IBackend be, IdxDataset images, UNetConfig mc, DiffusionConfig dc, TrainingConfig tc)
    {
        var loader = new DataLoader(images, new DataLoaderOptions { BatchSize = 2, Seed = tc.Seed, PadTo = mc.ImageSize == images.Height ? 0 : mc.ImageSize });
        var unet = new UNet(be, mc, new PhiloxGenerator(tc.Seed));
        return new Trainer(new DenoiseDiffusion(unet, dc), new LoaderBatchSource(loader), tc);
    }

    private IdxDataset TinyImages()
    {
        string path = _dir.File("tiny-images-idx3-ubyte");
        if (!File.Exists(path)) File.WriteAllBytes(path, TestFiles.Idx([4, 8, 8], Enumerable.Range(0, 256).Select(i => (byte)i).ToArray()));
        return IdxDataset.Load(path);
    }

    private static void LoadIdx(string path)
    {
        // The mutant may be an image file or a label file (the first IDX bytes say which); load it as what it claims.
        var head = File.ReadAllBytes(path);
        bool labels = head.Length > 3 && head[0] == 0 && head[1] == 0 && head[3] == 1 && !path.EndsWith(".gz", StringComparison.Ordinal);
        if (labels)
        {
            var l = IdxLabels.Load(path, 10);
            foreach (byte v in l.Values) Check(v < 10, $"label {v}");
            return;
        }
        var d = IdxDataset.Load(path);
        Check(d.Count > 0 && d.Height > 0 && d.Width > 0 && d.Channels == 1, $"geometry {d.Count}x{d.Height}x{d.Width}");
        var img = new float[d.Height * d.Width];
        for (int i = 0; i < d.Count; i++) d.Get(i, img);
    }

    private static void LoadImageFolder(string path)
    {
        string folder = Path.GetDirectoryName(path)!;
        foreach (int channels in new[] { 1, 3 })
        {
            var d = ImageFolderDataset.Load(folder, 8, 8, channels);
            Check(d.Count == Directory.GetFiles(folder).Length && d.Height == 8 && d.Width == 8 && d.Channels == channels, "image set geometry");
        }
    }

    /// <summary>train --data FOLDER: the tree's images, grey and RGB, and its classes when it has class folders.</summary>
    private static void LoadImageTree(string root, int expected)
    {
        foreach (int channels in new[] { 1, 3 })
        {
            var d = ImageFolderDataset.Load(root, 8, 8, channels);
            Check(d.Count == expected, $"{d.Count} images loaded from a tree of {expected}");
            var img = new float[d.Channels * d.Height * d.Width];
            for (int i = 0; i < d.Count; i++) d.Get(i, img);
            if (d.ByFolder() is { } labelled)
                for (int i = 0; i < d.Count; i++) Check(labelled.LabelOf(i) < labelled.NumClasses, $"label {labelled.LabelOf(i)}");
        }
    }

    /// <summary>
    /// A fresh tree at <paramref name="root"/>: one to six entries, flat or in class folders; returns what it holds
    /// and how many images a reader must find in it (links that lead back up the tree add none).
    /// </summary>
    private static (string What, int Images) MakeTree(Mutator m, string root, (string Ext, byte[] Bytes)[] seeds, string outside)
    {
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        Directory.CreateDirectory(root);
        string[] folders = m.Next(2) == 0 ? [""] : ["a", "b", Path.Combine("b", "deep")];
        var what = new List<string>();
        int images = 0;
        for (int i = 0, n = 1 + m.Next(6); i < n; i++)
        {
            string folder = Path.Combine(root, folders[m.Next(folders.Length)]);
            Directory.CreateDirectory(folder);
            var (ext, bytes) = seeds[m.Next(seeds.Length)];
            string name = $"f{i}{ext}", path = Path.Combine(folder, name);
            string rel = Path.GetRelativePath(root, path);
            switch (m.Next(16))
            {
                case 0 or 1 or 2:
                    File.WriteAllBytes(path, bytes);
                    what.Add($"{rel}");
                    images++;
                    break;
                case 3:
                {
                    var (mutant, how) = ext switch { ".png" => m.Png(bytes), ".jpg" => m.Jpeg(bytes), _ => m.Bmp(bytes) };
                    File.WriteAllBytes(path, mutant);
                    what.Add($"{rel} ({how})");
                    images++;
                    break;
                }
                case 4:
                    File.WriteAllBytes(path, []);
                    what.Add($"{rel} (empty)");
                    images++;
                    break;
                case 5:
                    Directory.CreateDirectory(path);
                    File.WriteAllBytes(Path.Combine(path, "inner" + ext), bytes);
                    what.Add($"{rel}/ (a folder, an image inside)");
                    images++;
                    break;
                case 6:
                    Posix.MakeFifo(path);
                    what.Add($"{rel} (a named pipe)");
                    images++;
                    break;
                case 7:
                    File.CreateSymbolicLink(path, "/dev/zero");
                    what.Add($"{rel} -> /dev/zero");
                    images++;
                    break;
                case 8:
                    File.CreateSymbolicLink(path, Path.Combine(root, "nowhere" + ext));
                    what.Add($"{rel} -> nowhere");
                    images++;
                    break;
                case 9:
                    File.CreateSymbolicLink(path, outside);
                    what.Add($"{rel} -> an image outside");
                    images++;
                    break;
                case 10:
                {
                    string link = Path.Combine(folder, $"up{i}");
                    string target = m.Next(2) == 0 ? root : folder;
                    Directory.CreateSymbolicLink(link, target);
                    what.Add($"{Path.GetRelativePath(root, link)} -> {(target == root ? "the root" : "its own folder")}");
                    break;
                }
                case 11:
                    File.WriteAllBytes(Path.ChangeExtension(path, ".txt"), bytes);
                    what.Add($"{Path.ChangeExtension(rel, ".txt")} (not an image name)");
                    break;
                case 12:
                    File.WriteAllBytes(Path.Combine(folder, $"odd\n{i}\u0007\u00e9 \u2028{ext}"), bytes);
                    what.Add("a name with a newline, a bell, an accent and a line separator");
                    images++;
                    break;
                case 13:
                    File.WriteAllBytes(Path.Combine(folder, new string('l', 200) + i + ext), bytes);
                    what.Add("a 200-character name");
                    images++;
                    break;
                case 14:
                    File.WriteAllBytes(Path.Combine(folder, $"F{i}{ext.ToUpperInvariant()}"), bytes);
                    what.Add($"an upper-case {ext.ToUpperInvariant()}");
                    images++;
                    break;
                default:
                    File.WriteAllBytes(Path.Combine(folder, $".hidden{i}{ext}"), bytes);
                    what.Add($"a hidden {ext}");
                    images++;
                    break;
            }
        }
        return (string.Join("; ", what), images);
    }

    // ---- the harness -----------------------------------------------------------------------------------------

    private void Fuzz(string format, int formatSeed, string fileName, Func<Mutator, (byte[] Bytes, string What)> mutate, Action<string> load) =>
        FuzzInputs(format, formatSeed, _dir.File(fileName), (m, path) =>
        {
            var (bytes, what) = mutate(m);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, bytes);
            return (what, bytes);
        }, load);

    /// <summary>
    /// The harness: <paramref name="make"/> creates mutant after mutant at <paramref name="path"/> (a file or a
    /// folder) and says what it is (with a file's bytes, kept on failure); <paramref name="load"/> must load it or
    /// refuse it cleanly, naming it, within the time bound.
    /// </summary>
    private void FuzzInputs(string format, int formatSeed, string path, Func<Mutator, string, (string What, byte[]? Bytes)> make, Action<string> load)
    {
        int seed = Seed * 31 + formatSeed;
        var mutator = new Mutator(seed);
        int loaded = 0, refused = 0;
        var slowest = TimeSpan.Zero;
        string slowestWhat = "";
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < Mutants; i++)
        {
            var (what, bytes) = make(mutator, path);
            string where = $"{format} mutant {i} of seed {seed} ({DataFormatException.OneLine(what)})";
            var run = Task.Run(() =>
            {
                try
                {
                    load(path);
                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            });
            var started = sw.Elapsed;
            if (!run.Wait(Limit))
            {
                Keep(bytes, format, i);
                throw new XunitException($"{where}: no answer within {Limit.TotalSeconds} s");
            }
            var took = sw.Elapsed - started;
            if (took > slowest) (slowest, slowestWhat) = (took, where);
            switch (run.Result)
            {
                case null:
                    loaded++;
                    if (Verbose) output.WriteLine($"{where}: loaded");
                    break;
                case XunitException bad:
                    Keep(bytes, format, i);
                    throw new XunitException($"{where}: loaded, but {bad.Message}");
                case Exception e when e is IOException or InvalidDataException:
                    refused++;
                    if (Verbose) output.WriteLine($"{where}: {e.Message}");
                    if (!e.Message.Contains(Path.GetFileName(path), StringComparison.Ordinal))
                        throw new XunitException($"{where}: the message does not name the file: {e.Message}");
                    if (e.Message.IndexOfAny(['\n', '\r', '\0']) >= 0)
                        throw new XunitException($"{where}: the message is not one printable line: {e.Message.Replace("\0", "\\0")}");
                    break;
                case var e:
                    Keep(bytes, format, i);
                    throw new XunitException($"{where}: {e.GetType().Name} is not a clean error: {e}");
            }
        }
        output.WriteLine($"{format}: {Mutants} mutants of seed {seed}, {loaded} loaded, {refused} refused cleanly, {sw.Elapsed.TotalSeconds:F1} s; slowest {slowest.TotalMilliseconds:F0} ms: {slowestWhat}");
        Assert.True(refused > 0, "no mutant was refused: the mutations do not reach the checks");
    }

    /// <summary>With DDPM_FUZZ_KEEP=folder, a failing mutant is written there to reproduce it outside the suite.</summary>
    private static void Keep(byte[]? bytes, string format, int index)
    {
        if (bytes is not null && Environment.GetEnvironmentVariable("DDPM_FUZZ_KEEP") is { Length: > 0 } keep)
        {
            Directory.CreateDirectory(keep);
            File.WriteAllBytes(Path.Combine(keep, $"{format}-{index}.bin"), bytes);
        }
    }

    private static (byte[] Bytes, string What) Labelled((byte[] Bytes, string What) m) => (m.Bytes, m.What + " (label file)");

    private static void Check(bool ok, string problem)
    {
        if (!ok) throw new XunitException(problem);
    }

    private static void CheckFinite(Tensor t, string name)
    {
        var v = t.ToArray();
        for (int i = 0; i < v.Length; i++)
            if (!float.IsFinite(v[i])) throw new XunitException($"'{name}' holds {v[i]} at {i}");
    }

    private static byte[] Gradient(int w, int h, int c)
    {
        var b = new byte[w * h * c];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(i * 37 % 256);
        return b;
    }

    private static byte[] EncodePng(byte[] hwc, int w, int h, int c)
    {
        var ms = new MemoryStream();
        new ImageWriter().WritePng(hwc, w, h, c == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue, ms);
        return ms.ToArray();
    }

    private static byte[] EncodeBmp(byte[] hwc, int w, int h, int c)
    {
        var ms = new MemoryStream();
        new ImageWriter().WriteBmp(hwc, w, h, c == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue, ms);
        return ms.ToArray();
    }

    /// <summary>A 24-bit bottom-up BMP rewritten top-down: its height negated and its rows in the other order.</summary>
    private static byte[] TopDown(byte[] bmp)
    {
        var r = (byte[])bmp.Clone();
        int w = BinaryPrimitives.ReadInt32LittleEndian(r.AsSpan(18)), h = BinaryPrimitives.ReadInt32LittleEndian(r.AsSpan(22));
        int offset = BinaryPrimitives.ReadInt32LittleEndian(r.AsSpan(10)), stride = (w * 3 + 3) & ~3;
        for (int y = 0; y < h; y++) bmp.AsSpan(offset + y * stride, stride).CopyTo(r.AsSpan(offset + (h - 1 - y) * stride));
        BinaryPrimitives.WriteInt32LittleEndian(r.AsSpan(22), -h);
        return r;
    }

    /// <summary>The BMP file and info headers (BITMAPINFOHEADER) for the given layout.</summary>
    private static byte[] BmpHeaders(int fileSize, int dataOffset, int w, int h, int bpp, int compression, int colours)
    {
        var b = new byte[54];
        b[0] = (byte)'B';
        b[1] = (byte)'M';
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(2), fileSize);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(10), dataOffset);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(14), 40);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(18), w);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(22), h);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(26), 1);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(28), (short)bpp);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(30), compression);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(34), fileSize - dataOffset);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(46), colours);
        return b;
    }

    /// <summary>A bottom-up BMP of 1, 4 or 8 bits per pixel: a grey palette of 2^bpp colours, rows padded to 4 bytes.</summary>
    private static byte[] PalettedBmp(int w, int h, int bpp)
    {
        int colours = 1 << bpp, stride = (w * bpp + 31) / 32 * 4, offset = 54 + 4 * colours;
        var palette = new byte[4 * colours];
        for (int i = 0; i < colours; i++) palette[4 * i] = palette[4 * i + 1] = palette[4 * i + 2] = (byte)(255 * i / (colours - 1));
        var pixels = new byte[stride * h];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int index = (x + 3 * y) % colours, bit = x * bpp;
                pixels[y * stride + bit / 8] |= (byte)(index << (8 - bpp - bit % 8));
            }
        return [.. BmpHeaders(offset + pixels.Length, offset, w, h, bpp, 0, colours), .. palette, .. pixels];
    }

    /// <summary>A 32-bit BMP with explicit channel masks (BI_BITFIELDS, the masks after the info header).</summary>
    private static byte[] BitfieldsBmp(int w, int h)
    {
        var masks = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(masks, 0x00FF_0000);
        BinaryPrimitives.WriteUInt32LittleEndian(masks.AsSpan(4), 0x0000_FF00);
        BinaryPrimitives.WriteUInt32LittleEndian(masks.AsSpan(8), 0x0000_00FF);
        var pixels = new byte[4 * w * h];
        for (int i = 0; i < w * h; i++) BinaryPrimitives.WriteUInt32LittleEndian(pixels.AsSpan(4 * i), (uint)(i * 0x0102_0304));
        int offset = 54 + masks.Length;
        return [.. BmpHeaders(offset + pixels.Length, offset, w, h, 32, 3, 0), .. masks, .. pixels];
    }

    private static byte[] EncodeJpeg(byte[] hwc, int w, int h, int c)
    {
        var ms = new MemoryStream();
        new ImageWriter().WriteJpg(hwc, w, h, c == 1 ? ColorComponents.Grey : ColorComponents.RedGreenBlue, ms, 90);
        return ms.ToArray();
    }
}
