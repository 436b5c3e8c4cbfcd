namespace Ddpm.Tool;

/// <summary>A problem the user can fix (a bad file, an incompatible checkpoint): one line, exit code 1.</summary>
public sealed class UserError(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A bad option value found after parsing: one line, exit code 2.</summary>
public sealed class UsageError(string message) : Exception(message);
