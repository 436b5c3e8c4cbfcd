namespace Ddpm.Tensors.IO;

/// <summary>
/// Writes a file so that readers (and a crash) see either the old content or the complete new content:
/// the bytes go to a temporary file in the target's folder (same file system, so the rename is atomic),
/// are flushed to disk, and the temporary file is then renamed over the target. A failure removes the temporary
/// file and is an <see cref="OutputFileException"/> naming the target and the cause; the target is unchanged.
/// </summary>
public static class AtomicFile
{
    /// <summary>Bytes gathered before each write to the system.</summary>
    public const int BufferSize = 1 << 20;

    /// <summary>Writes <paramref name="path"/> through <paramref name="files"/> (null: the disk).</summary>
    public static void Write(string path, Action<Stream> write, IOutputFiles? files = null)
    {
        ArgumentNullException.ThrowIfNull(write);
        files ??= DiskOutputFiles.Instance;
        string full = Path.GetFullPath(path);
        string tmp = TemporaryPath(full);
        bool created = false;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            using (var file = files.CreateNew(tmp))
            {
                created = true;
                // Not disposed: after a failed write its dispose would write the same bytes again.
                var buffered = new BufferedStream(file, BufferSize);
                write(buffered);
                buffered.Flush();
                files.Sync(file);
            }
            files.Replace(tmp, full);
        }
        catch (Exception e)
        {
            if (created) TryDelete(files, tmp);
            if (e is (IOException or UnauthorizedAccessException) and not OutputFileException) throw new OutputFileException(full, e);
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

    private static void TryDelete(IOutputFiles files, string path)
    {
        try
        {
            files.Delete(path);
        }
        catch (IOException)
        {
            // The original failure matters more than a leftover temporary file (the next run removes it).
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
