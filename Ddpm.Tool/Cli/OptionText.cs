using System.Globalization;
using Ddpm.Diffusion.Data;

namespace Ddpm.Tool;

/// <summary>Option values that are not a single number or name: lists and ranges.</summary>
public static class OptionText
{
    /// <summary>"1,2,2,4" as integers.</summary>
    public static int[] Ints(string text, string option)
    {
        try
        {
            return text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(s => int.Parse(s, NumberStyles.Integer, CultureInfo.InvariantCulture)).ToArray();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new UsageError($"{option} takes comma-separated integers, e.g. 1,2,2,4; got '{text}'.");
        }
    }

    /// <summary>"-1,1" or "0,1".</summary>
    public static DataRange Range(string text, string option) => text.Replace(" ", "") switch
    {
        "-1,1" => DataRange.MinusOneToOne,
        "0,1" => DataRange.ZeroToOne,
        _ => throw new UsageError($"{option} is -1,1 or 0,1, not '{text}'."),
    };
}
