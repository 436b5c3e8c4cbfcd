using System.Runtime.InteropServices;

namespace Ddpm.Tensors.IO;

/// <summary>
/// Opens the files the engine reads, and only regular files: a folder, a named pipe, a device or a socket is
/// refused by its type before it is opened. Opening a named pipe waits for a writer without end, and a device such
/// as <c>/dev/zero</c> streams without end; neither is a file a checkpoint, a dataset or an image can be read from.
/// The type is read with statx(2), following symbolic links (a link to a regular file is read); where that call is
/// missing (not Linux, an old kernel) the open itself decides.
/// </summary>
public static partial class InputFile
{
    /// <summary>
    /// Opens <paramref name="path"/> for reading. A path that is not a regular file, or that cannot be opened,
    /// throws what <paramref name="error"/> makes of the problem (a sentence without the path) and the cause; by
    /// default a <see cref="DataFormatException"/> naming the file.
    /// </summary>
    public static FileStream OpenRead(string path, int bufferSize = 1 << 16, Func<string, Exception?, Exception>? error = null)
    {
        error ??= (problem, inner) => new DataFormatException(path, problem, null, inner);
        if (NotRegular(path) is { } kind) throw error($"not a regular file but {kind}", null);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw error($"cannot open the file: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// What <paramref name="path"/> is when it is there and not a regular file ("a folder", "a named pipe (FIFO)",
    /// "a character device", ...); null for a regular file, for nothing there (the open reports it) and where the
    /// type cannot be read.
    /// </summary>
    public static string? NotRegular(string path)
    {
        if (Stat(path) is not (var mode, _, _)) return Directory.Exists(path) ? "a folder" : null;
        return (mode & TypeMask) switch
        {
            Regular => null,
            Folder => "a folder",
            Fifo => "a named pipe (FIFO)",
            CharacterDevice => "a character device",
            BlockDevice => "a block device",
            Socket => "a socket",
            _ => $"a file of type 0{Convert.ToString(mode & TypeMask, 8)}",
        };
    }

    /// <summary>
    /// What identifies the file or folder <paramref name="path"/> leads to, links followed: its device and inode on
    /// Linux (two paths to one folder, through links, give the same value); elsewhere, or when the call fails, its
    /// full path with a final link resolved.
    /// </summary>
    public static string Identity(string path)
    {
        if (Stat(path) is (_, var device, var inode)) return $"{device}:{inode}";
        var info = new DirectoryInfo(path);
        return (info.ResolveLinkTarget(returnFinalTarget: true) ?? info).FullName;
    }

    // The file-type bits of st_mode (Linux, every architecture).
    private const int TypeMask = 0xF000, Fifo = 0x1000, CharacterDevice = 0x2000, Folder = 0x4000, BlockDevice = 0x6000,
        Regular = 0x8000, Socket = 0xC000;

    private const int AtFdCwd = -100;
    private const uint StatxType = 0x1, StatxInode = 0x100;
    // struct statx is the same on every Linux architecture: 256 bytes; stx_mode a u16 at byte 28, stx_ino a u64 at
    // byte 32, stx_dev_major and stx_dev_minor u32s at bytes 136 and 140.
    private const int StatxSize = 256, StatxModeOffset = 28, StatxInodeOffset = 32, StatxDeviceOffset = 136;

    /// <summary>
    /// st_mode, the device (major and minor) and the inode of <paramref name="path"/>, links followed; null where
    /// statx fails (no such file, no permission) or is missing.
    /// </summary>
    private static unsafe (int Mode, ulong Device, ulong Inode)? Stat(string path)
    {
        if (!OperatingSystem.IsLinux()) return null;
        byte* buf = stackalloc byte[StatxSize];
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxType | StatxInode, buf) != 0) return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
        return (*(ushort*)(buf + StatxModeOffset), *(ulong*)(buf + StatxDeviceOffset), *(ulong*)(buf + StatxInodeOffset));
    }

    [LibraryImport("libc.so.6", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int dirfd, string path, int flags, uint mask, byte* statxbuf);
}
