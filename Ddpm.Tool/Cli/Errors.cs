namespace Ddpm.Tool;

/// <summary>A problem the user can fix (a bad file, an incompatible checkpoint): one line, exit code 1.</summary>
public sealed class UserError(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A bad option value found after parsing: one line, exit code 2.</summary>
public sealed class UsageError(string message) : Exception(message);

/// <summary>The tool's exit codes (docs/exit-codes.md).</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>A problem with a file, the data, the machine's resources or another run (<see cref="UserError"/>).</summary>
    public const int Failed = 1;
    /// <summary>A bad command line or option value (<see cref="UsageError"/>).</summary>
    public const int Usage = 2;
    /// <summary>An unexpected exception: a bug in the tool (sysexits' EX_SOFTWARE).</summary>
    public const int Internal = 70;
    /// <summary>Stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention).</summary>
    public const int Interrupted = 130;

    /// <summary>The exit code an exception ends the tool with (as <see cref="Program.Run"/> reports it).</summary>
    public static int Of(Exception e) => e switch
    {
        UsageError => Usage,
        UserError or IOException or UnauthorizedAccessException or InvalidDataException => Failed,
        _ => Internal,
    };
}
