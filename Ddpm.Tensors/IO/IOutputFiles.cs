namespace Ddpm.Tensors.IO;

/// <summary>
/// The file operations a program's outputs go through: creating and appending to files, forcing them to disk,
/// renaming and removing them. Streams are unbuffered (each <see cref="Stream.Write(byte[], int, int)"/> is a
/// write to the system), so a writer buffers above them and every write, sync and rename it makes is one call here.
/// <see cref="DiskOutputFiles"/> is the real file system and the default everywhere; a test passes its own
/// implementation to fail or pause a chosen operation (a full disk, an I/O error, a kill inside a write).
/// </summary>
public interface IOutputFiles
{
    /// <summary>A new file for writing (an existing file is an error); others may read it while it is written.</summary>
    Stream CreateNew(string path);

    /// <summary>A file for writing at its end, created when missing; <see cref="Stream.SetLength"/> may cut it back.</summary>
    Stream OpenAppend(string path);

    /// <summary>Forces what was written to <paramref name="stream"/> (one of this object's streams) to the storage device (fsync).</summary>
    void Sync(Stream stream);

    /// <summary>Renames <paramref name="source"/> to <paramref name="destination"/>, replacing it (atomic within one file system).</summary>
    void Replace(string source, string destination);

    /// <summary>Removes a file (a missing file is not an error).</summary>
    void Delete(string path);
}

/// <summary>The real file system: <see cref="FileStream"/>s without buffering, fsync, rename and unlink.</summary>
public sealed class DiskOutputFiles : IOutputFiles
{
    /// <summary>The one instance (it holds no state).</summary>
    public static DiskOutputFiles Instance { get; } = new();

    private DiskOutputFiles() { }

    public Stream CreateNew(string path) => new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.Read, bufferSize: 0);

    public Stream OpenAppend(string path)
    {
        var fs = new FileStream(path, FileMode.OpenOrCreate, FileAccess.Write, FileShare.Read, bufferSize: 0);
        fs.Seek(0, SeekOrigin.End);
        return fs;
    }

    public void Sync(Stream stream)
    {
        if (stream is not FileStream fs) throw new ArgumentException("Not a stream of DiskOutputFiles.", nameof(stream));
        fs.Flush(flushToDisk: true);
    }

    public void Replace(string source, string destination) => File.Move(source, destination, overwrite: true);

    public void Delete(string path) => File.Delete(path);
}
