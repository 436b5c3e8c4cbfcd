using Ddpm.Tensors.IO;

namespace Ddpm.Tool;

/// <summary>
/// Checks that an output can be written before the work that produces it starts (sampling can take minutes):
/// the folder is created and a temporary file is written and removed in it.
/// </summary>
public static class OutputFiles
{
    /// <summary>An output file: not empty, not a folder, its folder creatable and writable.</summary>
    public static void CheckFile(string path, string option)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new UsageError($"{option} is empty; give a file name.");
        if (Directory.Exists(path)) throw new UsageError($"{option} {path} is a folder; give a file name.");
        string full;
        try { full = Path.GetFullPath(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new UsageError($"{option} '{path}' is not a valid path ({e.Message}).");
        }
        CheckFolder(Path.GetDirectoryName(full) ?? ".", option);
    }

    /// <summary>An output folder: created if needed, and a file can be written in it.</summary>
    public static void CheckFolder(string folder, string option)
    {
        if (string.IsNullOrWhiteSpace(folder)) throw new UsageError($"{option} is empty; give a folder.");
        string probe = "";
        try
        {
            Directory.CreateDirectory(folder);
            probe = AtomicFile.TemporaryPath(Path.Combine(folder, "write-test"));
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new UserError($"{option}: cannot write in {folder} ({e.Message})", e);
        }
    }
}
