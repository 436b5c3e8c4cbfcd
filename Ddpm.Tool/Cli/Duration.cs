namespace Ddpm.Tool;

/// <summary>Durations as people read them in progress lines: 12.3s, 4m05s, 1h07m.</summary>
public static class Duration
{
    public static string Format(double seconds) =>
        seconds < 60 ? $"{seconds:F1}s"
        : seconds < 3600 ? $"{(int)(seconds / 60)}m{(int)(seconds % 60):D2}s"
        : $"{(int)(seconds / 3600)}h{(int)(seconds % 3600 / 60):D2}m";
}
