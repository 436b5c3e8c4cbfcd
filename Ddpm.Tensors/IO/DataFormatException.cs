namespace Ddpm.Tensors.IO;

/// <summary>
/// A file (or stream) whose content is malformed: a bad safetensors header, a truncated IDX file, an image
/// that does not decode. <see cref="System.IO.InvalidDataException"/> is sealed, so this is the common base the
/// engine's readers throw; the message always names the source, and the offset where one is known.
/// </summary>
public class DataFormatException : IOException
{
    public DataFormatException(string sourceName, string problem, long? offset = null, Exception? inner = null)
        : this(sourceName, problem, offset, Compose(sourceName, problem, offset), inner)
    {
    }

    protected DataFormatException(string sourceName, string problem, long? offset, string message, Exception? inner)
        : base(message, inner)
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

    private static string Compose(string source, string problem, long? offset) =>
        offset is { } o ? $"'{source}' at byte {o}: {problem}" : $"'{source}': {problem}";
}
