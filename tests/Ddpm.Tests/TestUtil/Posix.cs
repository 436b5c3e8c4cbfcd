using System.Runtime.InteropServices;

namespace Ddpm.Tests.TestUtil;

/// <summary>The few Linux calls the tests of special files and signals need (named pipes, pipe sizes, kill).</summary>
internal static partial class Posix
{
    public const int SIGINT = 2, SIGTERM = 15;
    private const int ORdOnly = 0, ONonBlock = 0x800, OCloExec = 0x80000;
    private const int FSetPipeSize = 1031, FionRead = 0x541B;

    /// <summary>Makes a named pipe at <paramref name="path"/>.</summary>
    public static void MakeFifo(string path)
    {
        if (MkFifo(path, Convert.ToUInt32("644", 8)) != 0)
            throw new IOException($"mkfifo {path} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>
    /// Opens the read end of a named pipe without waiting for a writer and shrinks its buffer to
    /// <paramref name="bytes"/>; the caller keeps it open and never reads, so a writer blocks once that much is written.
    /// </summary>
    public static SafePipeReader OpenReaderThatNeverReads(string fifo, int bytes)
    {
        int fd = Open(fifo, ORdOnly | ONonBlock | OCloExec);
        if (fd < 0) throw new IOException($"open {fifo} failed: errno {Marshal.GetLastPInvokeError()}");
        var reader = new SafePipeReader(fd);
        if (Fcntl(fd, FSetPipeSize, bytes) < 0) throw new IOException($"F_SETPIPE_SZ failed: errno {Marshal.GetLastPInvokeError()}");
        return reader;
    }

    /// <summary>Bytes waiting in the pipe.</summary>
    public static int Pending(SafePipeReader reader)
    {
        int n = 0;
        if (Ioctl(reader.Fd, FionRead, ref n) < 0) throw new IOException($"FIONREAD failed: errno {Marshal.GetLastPInvokeError()}");
        return n;
    }

    /// <summary>Sends <paramref name="signal"/> to process <paramref name="pid"/>.</summary>
    public static void Signal(int pid, int signal)
    {
        if (Kill(pid, signal) != 0) throw new IOException($"kill {pid} {signal} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    internal sealed class SafePipeReader(int fd) : IDisposable
    {
        public int Fd { get; } = fd;
        public void Dispose() => Close(Fd);
    }

    [LibraryImport("libc.so.6", EntryPoint = "mkfifo", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int MkFifo(string path, uint mode);

    [LibraryImport("libc.so.6", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc.so.6", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc.so.6", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, int request, ref int value);

    [LibraryImport("libc.so.6", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc.so.6", EntryPoint = "close")]
    private static partial int Close(int fd);
}
