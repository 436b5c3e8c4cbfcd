namespace Ddpm.Tensors.IO;

/// <summary>
/// An output refused because it holds NaN or an infinity: sampled images whose values stopped being finite (a weight
/// too large for float arithmetic, a diverged model), a tensor file of such values. Nothing of it was written; the
/// message is one line that names where the values stopped being finite (the step, the image, the tensor).
/// </summary>
public sealed class NonFiniteOutputException(string message) : ArithmeticException(DataFormatException.OneLine(message))
{
    /// <summary>
    /// Throws when an entry holds a non-finite value: the first such value names its tensor and, for tensors of
    /// [N, ...] images, its image. <paramref name="what"/> says what the entries are for ("the outputs of ...").
    /// </summary>
    public static void ThrowIfAny(IEnumerable<SafeTensorEntry> entries, string what)
    {
        if (SafeTensorEntry.FirstNonFinite(entries) is not (var e, var index)) return;
        throw new NonFiniteOutputException($"{what}: value {index} of tensor '{DataFormatException.Quote(e.Name)}' {e.ShapeText} is {e.Floats![index]}; nothing was written.");
    }
}
