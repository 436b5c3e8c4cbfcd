using Ddpm.Tensors.IO;

namespace Ddpm.Tool;

/// <summary>
/// A run's hold on its output folder: an exclusive OS lock on <c>.lock</c> in it, so that a second run into the
/// same folder is refused instead of interleaving checkpoints and log rows. The lock is the open file handle, not
/// the file's existence: a run that is killed releases it with its process, and the file left behind locks nothing.
/// </summary>
public sealed class OutputFolder : IDisposable
{
    public const string LockName = ".lock";
    private readonly FileStream _lock;

    private OutputFolder(string path, FileStream lockFile)
    {
        Path = path;
        _lock = lockFile;
    }

    public string Path { get; }

    /// <summary>Creates the folder if needed and locks it; another run holding it is a <see cref="UserError"/> naming the option.</summary>
    public static OutputFolder Lock(string path, string option = "--out")
    {
        if (string.IsNullOrWhiteSpace(path)) throw new UsageError($"{option} is empty; give a folder.");
        try
        {
            Directory.CreateDirectory(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UserError($"{option} {path}: cannot create the folder ({e.Message})", e);
        }
        string lockPath = System.IO.Path.Combine(path, LockName);
        try
        {
            // FileShare.None takes an exclusive advisory lock (flock on Unix, a share lock on Windows).
            return new OutputFolder(path, new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
        }
        catch (UnauthorizedAccessException e)
        {
            throw new UserError($"{option} {path}: the folder is not writable ({e.Message})", e);
        }
        catch (IOException e)
        {
            throw new UserError($"{option} {path} is in use by another run (it holds {lockPath}); give another --out or wait for it to end.", e);
        }
    }

    /// <summary>
    /// Removes the temporary files a killed run left (<see cref="AtomicFile"/>'s naming only); safe because this
    /// run holds the lock, so no other run of ours is writing them. Returns how many were removed.
    /// </summary>
    public int RemoveStaleTemporaries()
    {
        int removed = 0;
        foreach (var file in Directory.EnumerateFiles(Path))
        {
            if (!AtomicFile.IsTemporaryName(System.IO.Path.GetFileName(file))) continue;
            File.Delete(file);
            removed++;
        }
        return removed;
    }

    public void Dispose() => _lock.Dispose();
}
