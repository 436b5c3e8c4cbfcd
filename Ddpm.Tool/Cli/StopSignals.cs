using System.Runtime.InteropServices;

namespace Ddpm.Tool;

/// <summary>
/// Ctrl-C and SIGTERM. The first asks the running command to stop (<see cref="Token"/>): train saves its checkpoint,
/// the sampling verbs stop after the current step and write nothing. A command that has neither stopped nor said it is
/// stopping cleanly (<see cref="StoppingCleanly"/>) <see cref="Grace"/> plus its longest step (<see cref="StepTook"/>)
/// after the signal is blocked where no step ends (writing to a pipe nobody reads, opening a named pipe no one
/// writes): the process then ends with exit code 130, whatever it was doing. A second signal ends it at once.
/// </summary>
public sealed partial class StopSignals : IDisposable
{
    /// <summary>How long a command has, after the first signal and beyond its longest step, to stop or say it stops cleanly.</summary>
    public static readonly TimeSpan Grace = TimeSpan.FromSeconds(5);

    private readonly CancellationTokenSource _cts = new();
    private readonly TextWriter _notices;
    private readonly TimeSpan _grace;
    private readonly Action<int> _exit;
    private readonly List<PosixSignalRegistration> _registrations = new();
    private int _signalled, _stoppingCleanly;
    private long _longestStepTicks;

    /// <summary>Listens for SIGINT and SIGTERM; <paramref name="notices"/> receives the lines that say what happens.</summary>
    public StopSignals(TextWriter notices) : this(notices, Grace, Environment.Exit)
    {
        foreach (var (signal, name) in new[] { (PosixSignal.SIGINT, "Ctrl-C"), (PosixSignal.SIGTERM, "SIGTERM") })
        {
            try
            {
                _registrations.Add(PosixSignalRegistration.Create(signal, ctx => ctx.Cancel = Signal(name)));
            }
            catch (PlatformNotSupportedException)
            {
            }
        }
    }

    /// <summary>Without listening to the process's signals: <see cref="Signal"/> stands for one; <paramref name="exit"/> for the process's end.</summary>
    internal StopSignals(TextWriter notices, TimeSpan grace, Action<int> exit)
    {
        _notices = notices;
        _grace = grace;
        _exit = exit;
    }

    /// <summary>Cancelled by the first signal; long commands check it between steps.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>
    /// Called by a command that has seen <see cref="Token"/> and now stops cleanly, however long that takes (train
    /// writing its checkpoint): the process then waits for it rather than ending at the deadline.
    /// </summary>
    public void StoppingCleanly() => Interlocked.Exchange(ref _stoppingCleanly, 1);

    /// <summary>
    /// Called by a command that checks <see cref="Token"/> between steps with the time a step took: after a signal it
    /// has <see cref="Grace"/> plus its longest step to reach the next check, so a slow step is not mistaken for a block.
    /// </summary>
    public void StepTook(TimeSpan step)
    {
        long ticks = step.Ticks, seen;
        while (ticks > (seen = Interlocked.Read(ref _longestStepTicks)) && Interlocked.CompareExchange(ref _longestStepTicks, ticks, seen) != seen)
        {
        }
    }

    /// <summary>
    /// A signal named <paramref name="name"/>: the first cancels <see cref="Token"/> and starts the deadline and
    /// returns true (the signal's default action is cancelled); a later one returns false, so the process ends.
    /// </summary>
    internal bool Signal(string name)
    {
        if (Interlocked.Exchange(ref _signalled, 1) == 1) return false;
        _cts.Cancel();
        // The notice and the deadline run on threads of their own: the signal handler returns even when stderr is a
        // pipe nobody reads, or no later signal would be handled.
        Say($"{name}: stopping after the current step ({name} again to end at once)...");
        var limit = _grace + TimeSpan.FromTicks(Interlocked.Read(ref _longestStepTicks));
        new Thread(() =>
        {
            Thread.Sleep(limit);
            if (Volatile.Read(ref _stoppingCleanly) == 1) return;
            Say($"ddpm-tool: interrupted; the command had not stopped {limit.TotalSeconds:0.#} s after {name} (blocked), so it was ended there; what it wrote before stays.");
            // Give the line a moment to reach stderr, but never wait on it.
            Thread.Sleep(100);
            _exit(ExitCodes.Interrupted);
        })
        { IsBackground = true, Name = "stop deadline" }.Start();
        return true;
    }

    /// <summary>
    /// Standard error for the notices, written with write(2) on Linux: .NET's console writers take one lock for stdout
    /// and stderr, which a command blocked writing to stdout holds (and a stream of its own over descriptor 2 would
    /// write at its own offset, over what the console wrote to a redirected file).
    /// </summary>
    public static TextWriter StandardError() => OperatingSystem.IsLinux() ? new DescriptorWriter(2) : Console.Error;

    /// <summary>Lines written whole to a file descriptor with write(2); a failed write drops the rest of its line.</summary>
    private sealed partial class DescriptorWriter(int fd) : TextWriter
    {
        public override System.Text.Encoding Encoding => System.Text.Encoding.UTF8;

        public override void Write(char value) => Write(value.ToString());

        public override unsafe void Write(string? value)
        {
            if (string.IsNullOrEmpty(value)) return;
            byte[] bytes = System.Text.Encoding.UTF8.GetBytes(value);
            fixed (byte* p = bytes)
            {
                for (int done = 0; done < bytes.Length;)
                {
                    nint n;
                    try
                    {
                        n = WriteBytes(fd, p + done, bytes.Length - done);
                    }
                    catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
                    {
                        Console.Error.Write(value);
                        return;
                    }
                    if (n <= 0) return;
                    done += (int)n;
                }
            }
        }

        public override void WriteLine(string? value) => Write(value + "\n");

        [LibraryImport("libc.so.6", EntryPoint = "write")]
        private static unsafe partial nint WriteBytes(int fd, byte* buffer, nint count);
    }

    private void Say(string line) =>
        new Thread(() =>
        {
            try
            {
                _notices.WriteLine(line);
            }
            catch (IOException)
            {
            }
        })
        { IsBackground = true, Name = "stop notice" }.Start();

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
