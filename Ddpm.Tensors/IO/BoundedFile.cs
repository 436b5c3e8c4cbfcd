namespace Ddpm.Tensors.IO;

/// <summary>
/// Reads a whole file, but never more than a format allows. The length a file reports cannot be trusted for
/// this: a growing file reports a stale size and then streams on, and <see cref="File.ReadAllBytes(string)"/> would read
/// until memory runs out. (A device such as <c>/dev/zero</c>, or a pipe, is refused by <see cref="InputFile"/> before it is opened.)
/// </summary>
public static class BoundedFile
{
    /// <summary>
    /// The file's bytes; throws <see cref="DataFormatException"/> naming the file when it cannot be opened or
    /// holds more than <paramref name="maxBytes"/> bytes (<paramref name="what"/> says what the limit is for).
    /// </summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxBytes);
        if (maxBytes > Array.MaxLength) maxBytes = Array.MaxLength;
        using (var fs = InputFile.OpenRead(path))
        {
            long reported = fs.CanSeek ? fs.Length : 0;
            if (reported > maxBytes)
                throw new DataFormatException(path, $"the file is {reported} bytes, more than the {maxBytes} bytes {what}");
            // Start from the reported size and grow only as data actually arrives.
            var buf = new byte[Math.Max(reported, Math.Min(maxBytes, 1 << 16)) + (reported < maxBytes ? 1 : 0)];
            long filled = 0;
            while (true)
            {
                if (filled == buf.Length)
                {
                    if (filled > maxBytes)
                        throw new DataFormatException(path, $"the file holds more than the {maxBytes} bytes {what}", maxBytes);
                    Array.Resize(ref buf, (int)Math.Min(maxBytes + 1, Math.Min(Array.MaxLength, 2L * buf.Length)));
                }
                int n;
                try
                {
                    n = fs.Read(buf, (int)filled, (int)(buf.Length - filled));
                }
                catch (IOException ex)
                {
                    throw new DataFormatException(path, $"cannot read the file: {ex.Message}", filled, ex);
                }
                if (n == 0) break;
                filled += n;
            }
            if (filled > maxBytes)
                throw new DataFormatException(path, $"the file holds more than the {maxBytes} bytes {what}", maxBytes);
            if (filled != buf.Length) Array.Resize(ref buf, (int)filled);
            return buf;
        }
    }
}
