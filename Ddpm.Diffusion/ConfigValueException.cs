using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion;

/// <summary>
/// One setting of a model, diffusion or training config that cannot work. The same check serves the command
/// line and a checkpoint's header, so each reports the setting in its own terms: <see cref="Key"/> is the
/// JSON name the header uses (<c>n_groups</c>) and <see cref="Problem"/> starts with the offending value
/// (<c>0 is not a positive divisor of n_channels 32</c>); the message is the two joined. The value may come from a
/// file, so the problem is made one printable line (<see cref="DataFormatException.OneLine"/>).
/// </summary>
public sealed class ConfigValueException(string key, string problem) : ArgumentException(DataFormatException.OneLine($"{key} {problem}"))
{
    /// <summary>The setting's JSON name, as the config records serialise it.</summary>
    public string Key { get; } = key;

    /// <summary>What is wrong, beginning with the value.</summary>
    public string Problem { get; } = DataFormatException.OneLine(problem);
}
