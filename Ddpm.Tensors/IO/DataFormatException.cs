namespace Ddpm.Tensors.IO;

/// <summary>
/// A file (or stream) whose content is malformed: a bad safetensors header, a truncated IDX file, an image
/// that does not decode. <see cref="System.IO.InvalidDataException"/> is sealed, so this is the common base the
/// engine's readers throw; the message always names the source, and the offset where one is known. The message
/// is one printable line whatever the file held: names and values taken from the file are quoted through
/// <see cref="Quote"/>, and any control character that still reaches the message is escaped.
/// </summary>
public class DataFormatException : IOException
{
    public DataFormatException(string sourceName, string problem, long? offset = null, Exception? inner = null)
        : this(sourceName, problem, offset, Compose(sourceName, problem, offset), inner)
    {
    }

    protected DataFormatException(string sourceName, string problem, long? offset, string message, Exception? inner)
        : base(OneLine(message), inner)
    {
        SourceName = sourceName;
        Problem = problem;
        Offset = offset;
    }

    /// <summary>The file path or stream name that was being read.</summary>
    public string SourceName { get; }

    /// <summary>What is wrong, without the source name.</summary>
    public string Problem { get; }

    /// <summary>The byte offset of the problem in the (decompressed) content, where known.</summary>
    public long? Offset { get; }

    /// <summary>Longest text taken from a file that a message repeats; the rest is elided.</summary>
    public const int MaxQuotedLength = 120;

    /// <summary>
    /// Text read from a file, made fit for a one-line message: control characters (newline, NUL, escape...)
    /// written as \uXXXX and anything beyond <see cref="MaxQuotedLength"/> characters elided.
    /// </summary>
    public static string Quote(string? text)
    {
        if (text is null) return "null";
        string s = text.Length > MaxQuotedLength ? text[..MaxQuotedLength] + $"... ({text.Length} characters)" : text;
        return OneLine(s);
    }

    /// <summary>Escapes control characters and lone surrogates so the text prints as one line.</summary>
    public static string OneLine(string text)
    {
        int i = 0;
        while (i < text.Length && !NeedsEscape(text, i)) i++;
        if (i == text.Length) return text;
        var sb = new System.Text.StringBuilder(text.Length + 16);
        sb.Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            char c = text[i];
            if (NeedsEscape(text, i)) sb.Append($"\\u{(int)c:X4}");
            else sb.Append(c);
        }
        return sb.ToString();
    }

    private static bool NeedsEscape(string s, int i)
    {
        char c = s[i];
        if (char.IsControl(c) || c is '\u2028' or '\u2029' or '\u0085') return true;
        if (char.IsHighSurrogate(c)) return i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1]);
        if (char.IsLowSurrogate(c)) return i == 0 || !char.IsHighSurrogate(s[i - 1]);
        return false;
    }

    private static string Compose(string source, string problem, long? offset) =>
        offset is { } o ? $"'{source}' at byte {o}: {problem}" : $"'{source}': {problem}";
}
