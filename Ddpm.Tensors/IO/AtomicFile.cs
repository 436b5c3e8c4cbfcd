namespace Ddpm.Tensors.IO;

/// <summary>
/// Writes a file so that readers (and a crash) see either the old content or the complete new content:
/// the bytes go to a temporary file in the target's folder (same file system, so the rename is atomic),
/// are flushed to disk, and the temporary file is then renamed over the target.
/// </summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string tmp = TemporaryPath(full);
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>
    /// A fresh temporary name beside <paramref name="path"/>: <c>.NAME.GUID.tmp</c> (hidden, and recognisable by
    /// <see cref="IsTemporaryName"/> so that a run can remove what a killed run left).
    /// </summary>
    public static string TemporaryPath(string path)
    {
        string full = Path.GetFullPath(path);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
    }

    /// <summary>True for a file name that <see cref="TemporaryPath"/> makes (a leading dot, a 32-digit hex GUID, ".tmp").</summary>
    public static bool IsTemporaryName(string fileName)
    {
        if (!fileName.StartsWith('.') || !fileName.EndsWith(".tmp", StringComparison.Ordinal)) return false;
        string stem = fileName[..^4];
        int dot = stem.LastIndexOf('.');
        return dot > 1 && stem.Length - dot - 1 == 32 && stem.AsSpan(dot + 1).ContainsAnyExcept("0123456789abcdef") == false;
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
            // The original failure matters more than a leftover temporary file.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
