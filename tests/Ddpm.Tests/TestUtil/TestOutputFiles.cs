using Ddpm.Tensors.IO;

namespace Ddpm.Tests.TestUtil;

/// <summary>
/// One operation on a run's output files: its number (from 1), its kind (create, append, write, truncate, sync,
/// close, replace, delete) and its file (a rename's destination).
/// </summary>
internal sealed record FileOp(int Index, string Kind, string Path)
{
    /// <summary>The file a reader looks for: a temporary <c>.NAME.GUID.tmp</c> of an atomic write is NAME.</summary>
    public string Target
    {
        get
        {
            string name = System.IO.Path.GetFileName(Path);
            return AtomicFile.IsTemporaryName(name) ? name[1..name.LastIndexOf('.', name.Length - 5)] : name;
        }
    }

    /// <summary>The path of <see cref="Target"/>.</summary>
    public string TargetPath => System.IO.Path.Combine(System.IO.Path.GetDirectoryName(Path)!, Target);

    /// <summary>What the file is: checkpoint, log (loss.csv, metrics.csv, event files), grid, or other.</summary>
    public string Phase => PhaseOf(Target);

    public static string PhaseOf(string target) => target switch
    {
        _ when target.StartsWith("checkpoint-", StringComparison.Ordinal) => "checkpoint",
        "loss.csv" or "metrics.csv" => "log",
        _ when target.StartsWith("events.out.tfevents.", StringComparison.Ordinal) => "log",
        _ when target.StartsWith("samples", StringComparison.Ordinal) => "grid",
        _ => "other file",
    };

    public override string ToString() => $"{Index} {Kind} {Path}";

    public static FileOp Parse(string line)
    {
        var parts = line.Split(' ', 3);
        return new FileOp(int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), parts[1], parts[2]);
    }
}

/// <summary>
/// A run's output files on the disk, every operation numbered and recorded, with faults injected where a test asks
/// (the way SQLite's I/O-error tests fail each write in turn): <see cref="EioAt"/> fails one operation (create,
/// open, write, truncate, sync or rename) with EIO, <see cref="EnospcFromWrite"/> fails one write and every write
/// after it with ENOSPC (a disk that stays full). A failing write first writes half its bytes, as a short write
/// does. The exceptions are those .NET raises for the same errno ("No space left on device : 'PATH'", HResult
/// the errno). It also checks the order that makes a crash safe: a file renamed into place, and the logs when a
/// checkpoint is renamed into place, must have been forced to disk first (<see cref="Violations"/>).
/// </summary>
internal sealed class TestOutputFiles : IOutputFiles
{
    public const int Enospc = 28, Eio = 5;

    private readonly IOutputFiles _disk = DiskOutputFiles.Instance;
    private readonly object _gate = new();
    private readonly HashSet<string> _dirty = new(StringComparer.Ordinal);
    private int _faultable, _writes;

    /// <summary>The faultable operation (1-based) that fails with EIO, once.</summary>
    public int? EioAt { get; init; }

    /// <summary>The write (1-based) from which every write fails with ENOSPC.</summary>
    public int? EnospcFromWrite { get; init; }

    /// <summary>Called before each operation (the kill harness traces and pauses here).</summary>
    public Action<FileOp>? Before { get; init; }

    public List<FileOp> Ops { get; } = new();

    /// <summary>Order problems: what a power cut at that moment could lose.</summary>
    public List<string> Violations { get; } = new();

    /// <summary>The operations that failed, in order.</summary>
    public List<FileOp> Failed { get; } = new();

    /// <summary>Faultable operations so far (create, append, write, truncate, sync, replace).</summary>
    public int Faultable
    {
        get { lock (_gate) return _faultable; }
    }

    /// <summary>Writes so far.</summary>
    public int Writes
    {
        get { lock (_gate) return _writes; }
    }

    public Stream CreateNew(string path)
    {
        Operation("create", path, faultable: true);
        return new Tracked(this, _disk.CreateNew(path), path);
    }

    public Stream OpenAppend(string path)
    {
        Operation("append", path, faultable: true);
        return new Tracked(this, _disk.OpenAppend(path), path);
    }

    public void Sync(Stream stream)
    {
        var t = (Tracked)stream;
        Operation("sync", t.Path, faultable: true);
        _disk.Sync(t.Inner);
        lock (_gate) _dirty.Remove(t.Path);
    }

    public void Replace(string source, string destination)
    {
        Operation("replace", destination, faultable: true);
        lock (_gate)
        {
            if (_dirty.Contains(source)) Violations.Add($"{destination} was renamed into place before its data was forced to disk");
            if (FileOp.PhaseOf(Path.GetFileName(destination)) == "checkpoint")
                foreach (var d in _dirty.Where(d => FileOp.PhaseOf(Path.GetFileName(d)) == "log"))
                    Violations.Add($"{destination} was renamed into place while {d} had writes not forced to disk");
        }
        _disk.Replace(source, destination);
        lock (_gate) _dirty.Remove(source);
    }

    public void Delete(string path)
    {
        Operation("delete", path, faultable: false);
        _disk.Delete(path);
        lock (_gate) _dirty.Remove(path);
    }

    private FileOp Operation(string kind, string path, bool faultable)
    {
        FileOp op;
        lock (_gate)
        {
            op = new FileOp(Ops.Count + 1, kind, path);
            Ops.Add(op);
        }
        Before?.Invoke(op);
        lock (_gate)
        {
            if (!faultable) return op;
            _faultable++;
            if (kind != "write" && EioAt == _faultable) throw Fail(op, Eio);
        }
        return op;
    }

    private void Write(Tracked t, ReadOnlySpan<byte> data)
    {
        var op = Operation("write", t.Path, faultable: true);
        int? errno;
        lock (_gate)
        {
            _writes++;
            errno = EnospcFromWrite <= _writes ? Enospc : EioAt == _faultable ? Eio : null;
            _dirty.Add(t.Path);
        }
        if (errno is { } e)
        {
            t.Inner.Write(data[..(data.Length / 2)]);
            throw Fail(op, e);
        }
        t.Inner.Write(data);
    }

    private IOException Fail(FileOp op, int errno)
    {
        lock (_gate) Failed.Add(op);
        return new IOException($"{(errno == Enospc ? "No space left on device" : "Input/output error")} : '{op.Path}'", errno);
    }

    /// <summary>An unbuffered stream of the disk whose writes, truncations and closing are operations of the owner.</summary>
    private sealed class Tracked(TestOutputFiles owner, Stream inner, string path) : Stream
    {
        public Stream Inner => inner;
        public string Path => path;
        public override bool CanRead => false;
        public override bool CanSeek => true;
        public override bool CanWrite => true;
        public override long Length => inner.Length;

        public override long Position
        {
            get => inner.Position;
            set => inner.Position = value;
        }

        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);

        public override void SetLength(long value)
        {
            owner.Operation("truncate", path, faultable: true);
            inner.SetLength(value);
            lock (owner._gate) owner._dirty.Add(path);
        }

        public override void Write(byte[] buffer, int offset, int count) => owner.Write(this, buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer) => owner.Write(this, buffer);

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                owner.Operation("close", path, faultable: false);
                inner.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
