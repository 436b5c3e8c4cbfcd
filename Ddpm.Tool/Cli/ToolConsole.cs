using Ddpm.Tensors.IO;

namespace Ddpm.Tool;

/// <summary>
/// Where a command writes and whether a person watches; tests pass string writers to run verbs in-process, and
/// their own <see cref="Files"/> to fail or pause a run's writes.
/// </summary>
public sealed class ToolConsole(TextWriter output, TextWriter error, bool interactive)
{
    public TextWriter Out { get; } = output;
    public TextWriter Err { get; } = error;
    /// <summary>True when a person watches a terminal: progress is a live line rather than a line per N steps.</summary>
    public bool Interactive { get; } = interactive;
    /// <summary>Set by Ctrl-C or SIGTERM; long commands check it between steps.</summary>
    public CancellationToken Cancel { get; init; }
    /// <summary>
    /// The process's Ctrl-C and SIGTERM (null when a verb runs in-process): a command that checks <see cref="Cancel"/>
    /// between steps tells them how long its steps take and when it stops cleanly, so that it is not ended as blocked.
    /// </summary>
    public StopSignals? Signals { get; init; }
    /// <summary>What <c>train</c> writes its run folder through: the disk unless a test passes its own.</summary>
    public IOutputFiles Files { get; init; } = DiskOutputFiles.Instance;
}
