using CommandLine;
using CommandLine.Text;
using Ddpm.Tensors.IO;
using Ddpm.Tool.Commands;
using Ddpm.Tool.Serve;

namespace Ddpm.Tool;

public static class Program
{
    private static readonly Type[] Verbs =
    [
        typeof(TrainOptions), typeof(SampleOptions), typeof(AnimateOptions), typeof(InterpolateOptions),
        typeof(ForwardOptions), typeof(ParityOptions), typeof(BenchOptions), typeof(InfoOptions),
        typeof(EvalOptions), typeof(TrainClassifierOptions), typeof(InpaintOptions), typeof(ExportOptions), typeof(ServeOptions),
    ];

    public static int Main(string[] args)
    {
        // A launcher passes Ctrl-C and SIGTERM to every rank; rank 0 alone says so, as it alone speaks for the job.
        using var signals = new StopSignals(ToolCollective.LaunchedAsOtherRank() ? TextWriter.Null : StopSignals.StandardError());
        var con = new ToolConsole(Console.Out, Console.Error, !Console.IsOutputRedirected) { Cancel = signals.Token, Signals = signals };
        return Run(args, con);
    }

    /// <summary>Parses and runs one verb; returns the exit code (<see cref="ExitCodes"/>).</summary>
    public static int Run(string[] args, ToolConsole con)
    {
        using var parser = new Parser(s =>
        {
            s.HelpWriter = null;
            s.CaseInsensitiveEnumValues = true;
            s.AutoVersion = true;
        });
        // The one-letter options read naturally as --n, --t, --a, --b; the parser wants -n, -t, -a, -b.
        args = args.Select(a => a is "--n" or "--t" or "--a" or "--b" ? a[1..] : a).ToArray();
        args = BareResume(args);
        var result = parser.ParseArguments(args, Verbs);
        if (result is NotParsed<object> notParsed)
        {
            var errors = notParsed.Errors.ToList();
            if (errors.Any(e => e.Tag is ErrorType.VersionRequestedError))
            {
                con.Out.WriteLine($"ddpm-tool {Version}");
                return ExitCodes.Ok;
            }
            if (errors.Any(e => e.Tag is ErrorType.HelpRequestedError or ErrorType.HelpVerbRequestedError))
            {
                var help = HelpText.AutoBuild(result, h =>
                {
                    h.Heading = "ddpm-tool: train and sample DDPM image models (C#, CPU or CUDA)";
                    h.AddPreOptionsLine(InfoCommand.BundledModelLine());
                    h.Copyright = "";
                    h.AddDashesToOption = true;
                    h.AdditionalNewLineAfterOption = false;
                    h.MaximumDisplayWidth = 110;
                    h.AddEnumValuesToHelpText = true;
                    return h;
                }, e => e, verbsIndex: true);
                con.Out.WriteLine(help);
                return ExitCodes.Ok;
            }
            // Every rank of a launched job meets the same bad arguments: rank 0 alone says so.
            if (ToolCollective.LaunchedAsOtherRank()) return ExitCodes.Usage;
            string verb = args.FirstOrDefault(a => !a.StartsWith('-')) ?? "";
            con.Err.WriteLine($"ddpm-tool: {Describe(errors.First())}. See 'ddpm-tool {(verb.Length > 0 && Verbs.Any(v => v.GetCustomAttributes(typeof(VerbAttribute), false).Cast<VerbAttribute>().Any(a => a.Name == verb)) ? verb + " " : "")}--help'.");
            return ExitCodes.Usage;
        }
        var options = ((Parsed<object>)result).Value;
        // Only train and bench take part in a data-parallel job; any other verb started by a launcher would run N
        // times over the same files, so rank 0 runs it alone.
        if (options is not (TrainOptions or BenchOptions) && ToolCollective.LaunchedJob() is { } job)
        {
            if (job.Rank > 0) return ExitCodes.Ok;
            string name = options.GetType().GetCustomAttributes(typeof(VerbAttribute), false).Cast<VerbAttribute>().First().Name;
            con.Err.WriteLine($"ddpm-tool: warning: {name} is not data-parallel; of the {job.Size} ranks the launcher ({job.Launcher}) started, rank 0 runs it alone.");
        }
        bool verbose = options is CommonOptions co && co.Verbose;
        try
        {
            if (options is CommonOptions common) common.CheckCommon();
            return options switch
            {
                TrainOptions o => TrainCommand.Run(o, con),
                SampleOptions o => SampleCommand.Run(o, con),
                AnimateOptions o => AnimateCommand.Run(o, con),
                InterpolateOptions o => InterpolateCommand.Run(o, con),
                ForwardOptions o => ForwardCommand.Run(o, con),
                ParityOptions o => ParityCommand.Run(o, con),
                BenchOptions o => BenchCommand.Run(o, con),
                InfoOptions o => InfoCommand.Run(o, con),
                EvalOptions o => EvalCommand.Run(o, con),
                TrainClassifierOptions o => TrainClassifierCommand.Run(o, con),
                InpaintOptions o => InpaintCommand.Run(o, con),
                ExportOptions o => ExportCommand.Run(o, con),
                ServeOptions o => ServeCommand.Run(o, con),
                _ => throw new InvalidOperationException($"verb {options.GetType().Name} has no handler"),
            };
        }
        catch (UsageError e)
        {
            return Fail(con, e.Message, e, verbose, ExitCodes.Usage);
        }
        catch (OperationCanceledException e) when (con.Cancel.IsCancellationRequested)
        {
            return Fail(con, "interrupted; nothing was written.", e, verbose, ExitCodes.Interrupted);
        }
        catch (Exception e) when (e is UserError or IOException or UnauthorizedAccessException or InvalidDataException or NonFiniteOutputException)
        {
            return Fail(con, "error: " + e.Message, e, verbose, ExitCodes.Failed);
        }
        catch (Exception e)
        {
            return Fail(con, $"internal error: {e.GetType().Name}: {e.Message}{(verbose ? "" : " (run with --verbose for the stack trace)")}",
                e, verbose, ExitCodes.Internal);
        }
    }

    /// <summary>
    /// <c>train --resume</c> with no value (last, or before another option) continues the run in --out: the parser
    /// wants a value, so the bare option is given the value "latest".
    /// </summary>
    private static string[] BareResume(string[] args)
    {
        if (args.FirstOrDefault() != "train") return args;
        var r = new List<string>(args.Length + 1);
        for (int i = 0; i < args.Length; i++)
        {
            r.Add(args[i]);
            if (args[i] == "--resume" && (i + 1 == args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal))) r.Add("latest");
        }
        return [.. r];
    }

    /// <summary>One line on stderr; with --verbose the exception and its stack trace follow it. The exit code is the same either way.</summary>
    private static int Fail(ToolConsole con, string message, Exception e, bool verbose, int code)
    {
        con.Err.WriteLine($"ddpm-tool: {message}");
        if (verbose) con.Err.WriteLine(e);
        return code;
    }

    /// <summary>The package version (without the source revision the SDK appends to the informational version).</summary>
    public static string Version
    {
        get
        {
            var asm = typeof(Program).Assembly;
            string? v = asm.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
                .Cast<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion;
            return (v ?? asm.GetName().Version?.ToString() ?? "unknown").Split('+')[0];
        }
    }

    private static string Describe(Error e) => e switch
    {
        UnknownOptionError u => $"unknown option '{u.Token}'",
        BadFormatConversionError b => $"bad value for --{b.NameInfo.LongName}",
        MissingRequiredOptionError m => $"missing required option --{m.NameInfo.LongName}",
        MissingValueOptionError m => $"option --{m.NameInfo.LongName} needs a value",
        BadVerbSelectedError v => $"unknown verb '{v.Token}' (verbs: train, sample, animate, interpolate, forward, parity, bench, info, eval, train-classifier, inpaint, export, serve)",
        NoVerbSelectedError => "no verb given (verbs: train, sample, animate, interpolate, forward, parity, bench, info, eval, train-classifier, inpaint, export, serve)",
        RepeatedOptionError r => $"option --{r.NameInfo.LongName} given twice",
        _ => $"bad arguments ({e.Tag})",
    };
}
