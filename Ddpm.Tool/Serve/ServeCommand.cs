using System.Net;
using CommandLine;
using Ddpm.Tool.Commands;

namespace Ddpm.Tool.Serve;

[Verb("serve", HelpText = "A local web page: draw samples and watch them denoise (Sample), follow a run folder's loss, learning rate, FID and sample grids while train writes it (Run).")]
public sealed class ServeOptions : SamplingOptions
{
    [Option("run", HelpText = "A run folder for the Run view (loss, learning rate, metrics, sample grids, refreshed while train writes it). Without --checkpoint the Sample view draws from its latest checkpoint, or from another of its checkpoints picked in the page.")]
    public string? Run { get; set; }

    [Option("port", Default = ServeLimits.DefaultPort, HelpText = "TCP port to listen on (0: a free port, printed at the start).")]
    public int Port { get; set; }

    [Option("host", Default = "127.0.0.1", HelpText = "Address to listen on. 127.0.0.1 (and localhost, ::1) serve this machine only; any other address (0.0.0.0: every interface) lets anyone who can reach the machine draw samples and see the run: the page has no login.")]
    public string Host { get; set; } = "127.0.0.1";

    [Option("max-images", Default = ServeLimits.DefaultMaxImages, HelpText = "Images one drawing may ask for (class 'all': for all classes together), at most 128.")]
    public int MaxImages { get; set; }

    [Option("max-steps", Default = ServeLimits.DefaultMaxSteps, HelpText = "Sampler steps one drawing may ask for (ddpm takes all T steps, so it is offered only when T is within this).")]
    public int MaxSteps { get; set; }

    [Option("queue", Default = ServeLimits.DefaultQueue, HelpText = "Drawings that may wait while one runs (one runs at a time); more are refused with HTTP 429 until one is done.")]
    public int Queue { get; set; }
}

/// <summary>The bounds on what the page may ask of the server.</summary>
public sealed record ServeLimits(int MaxImages, int MaxSteps, int Queue)
{
    public const int DefaultPort = 5800, DefaultMaxImages = 64, DefaultMaxSteps = 1000, DefaultQueue = 4;

    /// <summary>One drawing is one chunk of <c>sample</c> even when guided (two model batches per step).</summary>
    public const int MaxImagesLimit = SampleCommand.MaxChunk / 2;

    public const int MaxStepsLimit = 100_000, MaxQueueLimit = 64;

    public static ServeLimits Default { get; } = new(DefaultMaxImages, DefaultMaxSteps, DefaultQueue);
}

/// <summary>
/// <c>ddpm-tool serve</c>: loads the model (the checkpoint, the run's latest, or the bundled model), starts the page's
/// server and runs until Ctrl-C or SIGTERM.
/// </summary>
public static class ServeCommand
{
    public static int Run(ServeOptions o, ToolConsole con)
    {
        var limits = CheckLimits(o);
        var address = ParseHost(o.Host);
        if (o.Port is < 0 or > 65535) throw new UsageError($"--port must be between 0 (a free port) and 65535, got {o.Port}.");
        if (o.Run is not null && !Directory.Exists(o.Run))
            throw new UserError(File.Exists(o.Run) ? $"--run {o.Run} is a file; give a run folder (train --out)." : $"--run {o.Run}: no such folder.");
        string? modelPath = o.CheckpointOption ?? o.Run ?? BundledFiles.TryModel(BundledFiles.DdpmModelFile);
        if (modelPath is null && o.Run is null) _ = BundledFiles.DdpmModel(); // the bundled-model message: pass --checkpoint or --run

        using var be = ToolBackends.Create(o);
        using var model = new ModelSource(modelPath!, o.CheckpointOption is not null ? ModelSource.Given : o.Run is not null ? ModelSource.OfRun : ModelSource.Bundled, o, be);
        model.Start();
        using var queue = new SampleQueue(model, limits, SampleDefaults.From(o, limits), con.Err);
        var run = o.Run is null ? null : new RunWatcher(o.Run);
        using var host = ServeHost.Start(address, o.Port, queue, run, con.Err);
        if (!IPAddress.IsLoopback(address))
            con.Err.WriteLine($"ddpm-tool: warning: serving on {o.Host}: anyone who can reach this machine can draw samples{(run is null ? "" : " and see the run")}; the page has no login. Leave out --host to serve this machine only.");
        con.Out.WriteLine($"serving {host.Url} (Ctrl-C to stop)");
        con.Out.WriteLine($"  Sample: {model.Describe()}");
        con.Out.WriteLine(run is null ? "  Run: no run folder (serve --run DIR shows one)" : $"  Run: {o.Run}");
        con.Out.Flush();
        con.Cancel.WaitHandle.WaitOne();
        con.Out.WriteLine("stopped");
        return ExitCodes.Interrupted;
    }

    private static ServeLimits CheckLimits(ServeOptions o)
    {
        if (o.MaxImages is < 1 or > ServeLimits.MaxImagesLimit)
            throw new UsageError($"--max-images must be between 1 and {ServeLimits.MaxImagesLimit}, got {o.MaxImages}.");
        if (o.MaxSteps is < 1 or > ServeLimits.MaxStepsLimit)
            throw new UsageError($"--max-steps must be between 1 and {ServeLimits.MaxStepsLimit:N0}, got {o.MaxSteps}.");
        if (o.Queue is < 0 or > ServeLimits.MaxQueueLimit)
            throw new UsageError($"--queue must be between 0 and {ServeLimits.MaxQueueLimit}, got {o.Queue}.");
        return new ServeLimits(o.MaxImages, o.MaxSteps, o.Queue);
    }

    /// <summary>An IP address, or localhost (the IPv4 loopback).</summary>
    public static IPAddress ParseHost(string host)
    {
        string h = host.Trim();
        if (string.Equals(h, "localhost", StringComparison.OrdinalIgnoreCase)) return IPAddress.Loopback;
        if (h.StartsWith('[') && h.EndsWith(']')) h = h[1..^1];
        return IPAddress.TryParse(h, out var a) ? a
            : throw new UsageError($"--host must be an IP address of this machine (127.0.0.1, ::1, 0.0.0.0 for every interface) or localhost, got '{host}'.");
    }
}
