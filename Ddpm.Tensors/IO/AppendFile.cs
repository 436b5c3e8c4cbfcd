using System.Text;

namespace Ddpm.Tensors.IO;

/// <summary>
/// A log file that grows by whole records (CSV rows, TFRecords): records wait in memory until <see cref="Flush"/>
/// appends them with one write. A flush that failed partway (a full disk, an I/O error) keeps them waiting, and
/// the next flush first cuts the file back to its last whole record, so the file never holds a torn record with
/// others after it. Failures are <see cref="OutputFileException"/>s naming the file.
/// </summary>
public sealed class AppendFile
{
    private readonly IOutputFiles _files;
    private readonly MemoryStream _pending = new();
    private long _length;

    /// <summary>
    /// Appends to <paramref name="path"/> through <paramref name="files"/> (null: the disk): a new file when
    /// <paramref name="createNew"/> (an existing one is an error), else the file as it is (created at the first flush).
    /// </summary>
    public AppendFile(string path, IOutputFiles? files = null, bool createNew = false)
    {
        Path = path;
        _files = files ?? DiskOutputFiles.Instance;
        if (createNew) OutputFileException.Around(path, () => _files.CreateNew(path).Dispose());
        else _length = File.Exists(path) ? new FileInfo(path).Length : 0;
    }

    public string Path { get; }

    /// <summary>Bytes waiting for the next flush.</summary>
    public long PendingBytes => _pending.Length;

    public void Append(ReadOnlySpan<byte> record) => _pending.Write(record);

    public void Append(string text) => Append(Encoding.UTF8.GetBytes(text));

    /// <summary>Appends the waiting records; <paramref name="durable"/> also forces the file to disk.</summary>
    public void Flush(bool durable)
    {
        if (_pending.Length == 0 && !durable) return;
        OutputFileException.Around(Path, () =>
        {
            using var s = _files.OpenAppend(Path);
            if (s.Length != _length)
            {
                // What a failed flush left of its records.
                s.SetLength(_length);
                s.Seek(_length, SeekOrigin.Begin);
            }
            if (_pending.Length > 0) s.Write(_pending.GetBuffer(), 0, (int)_pending.Length);
            if (durable) _files.Sync(s);
            _length += _pending.Length;
            _pending.SetLength(0);
        });
    }
}
