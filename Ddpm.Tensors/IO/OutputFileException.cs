namespace Ddpm.Tensors.IO;

/// <summary>
/// A file that could not be written (a full disk, an I/O error, no permission): the message is one line naming the
/// file a reader would look for (the target of an atomic write, not its temporary name) and the system's cause
/// ("No space left on device"); <see cref="Exception.HResult"/> is the cause's (its errno on Unix). What the file
/// held before stays: an atomic write leaves the old content, an appended log loses only the records being added.
/// </summary>
public sealed class OutputFileException : IOException
{
    public OutputFileException(string path, Exception cause)
        : base(DataFormatException.OneLine($"could not write {path}: {CauseOf(cause)}"), cause)
    {
        Path = path;
        HResult = cause.HResult;
    }

    /// <summary>The file that was being written.</summary>
    public string Path { get; }

    /// <summary>
    /// The system's reason without the path .NET appends to it ("No space left on device : '/x/.y.tmp'" gives
    /// "No space left on device"), so that a message names the file once, as its caller knows it.
    /// </summary>
    public static string CauseOf(Exception e)
    {
        string m = e is OutputFileException o ? CauseOf(o.InnerException!) : e.Message;
        int at = m.LastIndexOf(" : '", StringComparison.Ordinal);
        return at > 0 && m.EndsWith('\'') ? m[..at] : m;
    }

    /// <summary>Runs <paramref name="write"/>, reporting an I/O failure as an <see cref="OutputFileException"/> of <paramref name="path"/>.</summary>
    public static void Around(string path, Action write)
    {
        try
        {
            write();
        }
        catch (Exception e) when (e is (IOException or UnauthorizedAccessException) and not OutputFileException)
        {
            throw new OutputFileException(path, e);
        }
    }
}
