using System.Globalization;
using System.Text.RegularExpressions;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>A run folder another run holds (its lock is taken).</summary>
public sealed class RunFolderInUseException(string folder, string lockPath, Exception inner)
    : IOException($"{folder} is in use by another run (it holds {lockPath})", inner)
{
    public string Folder { get; } = folder;
}

/// <summary>A folder that holds an earlier run, which a new run will not write over unless told to.</summary>
public sealed class RunFolderOccupiedException(string folder, string what)
    : IOException($"{folder} holds a run ({what})")
{
    public string Folder { get; } = folder;

    /// <summary>What is there: "checkpoint-0002000.safetensors, loss.csv, ...".</summary>
    public string What { get; } = what;
}

/// <summary>
/// A training run's folder, the one place a run writes (docs/run-folder.md): step-numbered checkpoints
/// (<c>checkpoint-0002000.safetensors</c>, the last <see cref="RunSettings.Keep"/> kept; the highest step is the
/// latest), <c>config.json</c>, <c>loss.csv</c>, <c>metrics.csv</c>, sample grids, <c>model.safetensors</c> (the
/// final EMA weights), <c>best.safetensors</c> and TensorBoard event files under <c>logs/</c>. Every file is written
/// whole or not at all (<see cref="AtomicFile"/>). The run holds an exclusive OS lock on <c>.lock</c> while it
/// runs, so a second run into the folder is refused instead of interleaving files; a killed run's lock goes with
/// its process. A new run into a folder that holds an earlier run is refused (<see cref="RunFolderOccupiedException"/>)
/// unless it resumes that run or is told to replace it.
/// </summary>
public sealed class RunFolder : IDisposable
{
    public const string LockName = ".lock", ConfigName = "config.json", LossName = "loss.csv", MetricsName = "metrics.csv",
        ModelName = "model.safetensors", BestName = "best.safetensors", SamplesName = "samples.png", LogsName = "logs", SpikesName = "spikes";

    private static readonly Regex CheckpointPattern = new(@"^checkpoint-(\d{7,})\.safetensors$", RegexOptions.CultureInvariant);
    private static readonly Regex SamplesPattern = new(@"^samples(-(\d{7,}))?\.png$", RegexOptions.CultureInvariant);
    private readonly FileStream _lock;

    private RunFolder(string path, FileStream lockFile)
    {
        Path = path;
        _lock = lockFile;
    }

    public string Path { get; }

    /// <summary>The file name of the checkpoint of <paramref name="step"/>.</summary>
    public static string CheckpointName(long step) => string.Create(CultureInfo.InvariantCulture, $"checkpoint-{step:D7}.safetensors");

    /// <summary>The path of the checkpoint of <paramref name="step"/> in this folder.</summary>
    public string CheckpointPath(long step) => File(CheckpointName(step));

    /// <summary>A file of the run folder.</summary>
    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>
    /// Creates the folder if needed and locks it. Another run holding it is a <see cref="RunFolderInUseException"/>;
    /// a folder that cannot be made or written, an <see cref="IOException"/> or <see cref="UnauthorizedAccessException"/>.
    /// </summary>
    public static RunFolder Lock(string path)
    {
        Directory.CreateDirectory(path);
        string lockPath = System.IO.Path.Combine(path, LockName);
        try
        {
            // FileShare.None takes an exclusive advisory lock (flock on Unix, a share lock on Windows).
            return new RunFolder(path, new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
        }
        catch (IOException e)
        {
            throw new RunFolderInUseException(path, lockPath, e);
        }
    }

    /// <summary>
    /// Locks the folder for a run: a new run (<paramref name="resuming"/> false) refuses a folder that holds an
    /// earlier run unless <paramref name="overwrite"/>, which removes that run's files first (only the files this
    /// layout names; anything else in the folder is left).
    /// </summary>
    public static RunFolder Open(string path, bool resuming, bool overwrite)
    {
        var folder = Lock(path);
        try
        {
            if (!resuming && folder.EarlierRun() is { } what)
            {
                if (!overwrite) throw new RunFolderOccupiedException(path, what);
                folder.RemoveRunFiles();
            }
            return folder;
        }
        catch
        {
            folder.Dispose();
            throw;
        }
    }

    /// <summary>The step-numbered checkpoints of folder <paramref name="path"/>, oldest first.</summary>
    public static IReadOnlyList<(long Step, string Path)> Checkpoints(string path)
    {
        if (!Directory.Exists(path)) return [];
        var r = new List<(long, string)>();
        foreach (var file in Directory.EnumerateFiles(path, "checkpoint-*.safetensors"))
        {
            var m = CheckpointPattern.Match(System.IO.Path.GetFileName(file));
            if (m.Success && long.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out long step)) r.Add((step, file));
        }
        return r.OrderBy(c => c.Item1).ToList();
    }

    /// <summary>
    /// Whether <paramref name="name"/> is the file name of a sample grid: <c>samples-0002000.png</c> (the grid of a
    /// step, <paramref name="step"/>) or <c>samples.png</c> (the final grid, <paramref name="step"/> null).
    /// </summary>
    public static bool IsSampleGrid(string name, out long? step)
    {
        var m = SamplesPattern.Match(name);
        step = m.Groups[2].Success && long.TryParse(m.Groups[2].Value, NumberStyles.None, CultureInfo.InvariantCulture, out long s) ? s : null;
        return m.Success;
    }

    /// <summary>The latest checkpoint of folder <paramref name="path"/> (the highest step), or null when it has none.</summary>
    public static string? Latest(string path) => Checkpoints(path) is { Count: > 0 } all ? all[^1].Path : null;

    /// <summary>What of an earlier run the folder holds ("checkpoint-0002000.safetensors (step 2000), loss.csv"), or null when none.</summary>
    public string? EarlierRun()
    {
        var parts = new List<string>();
        var checkpoints = Checkpoints(Path);
        if (checkpoints.Count > 0) parts.Add($"{System.IO.Path.GetFileName(checkpoints[^1].Path)}{(checkpoints.Count > 1 ? $" and {checkpoints.Count - 1} older" : "")}");
        foreach (var name in new[] { ModelName, ConfigName, LossName, MetricsName })
            if (System.IO.File.Exists(File(name))) parts.Add(name);
        return parts.Count == 0 ? null : string.Join(", ", parts);
    }

    /// <summary>Removes the files of an earlier run (what this layout names), for a run told to replace it.</summary>
    private void RemoveRunFiles()
    {
        foreach (var (_, file) in Checkpoints(Path)) System.IO.File.Delete(file);
        foreach (var file in Directory.EnumerateFiles(Path))
        {
            string name = System.IO.Path.GetFileName(file);
            if (name is ModelName or BestName or ConfigName or LossName or MetricsName or "loss.png" or "fid.png" || IsSampleGrid(name, out _))
                System.IO.File.Delete(file);
        }
        foreach (var dir in new[] { LogsName, SpikesName })
            if (Directory.Exists(File(dir))) Directory.Delete(File(dir), recursive: true);
    }

    /// <summary>
    /// Removes the temporary files a killed run left (<see cref="AtomicFile"/>'s naming only); safe because this
    /// run holds the lock, so no other run of ours is writing them. Returns how many were removed.
    /// </summary>
    public int RemoveStaleTemporaries()
    {
        int removed = 0;
        foreach (var dir in new[] { Path, File(LogsName) })
        {
            if (!Directory.Exists(dir)) continue;
            foreach (var file in Directory.EnumerateFiles(dir))
            {
                if (!AtomicFile.IsTemporaryName(System.IO.Path.GetFileName(file))) continue;
                System.IO.File.Delete(file);
                removed++;
            }
        }
        return removed;
    }

    /// <summary>Removes the oldest step-numbered checkpoints until <paramref name="keep"/> remain.</summary>
    public void Prune(int keep)
    {
        var all = Checkpoints(Path);
        for (int i = 0; i < all.Count - keep; i++) System.IO.File.Delete(all[i].Path);
    }

    /// <summary>Writes <paramref name="name"/> whole or not at all.</summary>
    public void WriteText(string name, string text) =>
        AtomicFile.Write(File(name), s =>
        {
            using var w = new StreamWriter(s, leaveOpen: true);
            w.Write(text);
        });

    public void Dispose() => _lock.Dispose();
}
