using Ddpm.Tests.TestUtil;
using Ddpm.Tool;

namespace Ddpm.Tests;

/// <summary>
/// The test assembly's entry point, for the kill-anywhere tests' child processes (xunit runs the tests without it):
/// <c>dotnet Ddpm.Tests.dll RULE ddpm-tool-arguments...</c> runs the tool's verb in this process, as its own
/// <c>Main</c> does, with the run folder's files written through <see cref="TestOutputFiles"/>. Every file operation
/// is a line "op N KIND PATH" on stdout and every console line of the tool a line "out TEXT"; before the operation
/// RULE names, it prints "pause N KIND PATH" instead and waits forever, for the test to kill it there. RULE is
/// "none", N (the N-th operation), or KIND:PREFIX:K (the K-th operation of KIND, or of any kind for "any", on a
/// file whose name, without an atomic write's temporary decoration, starts with PREFIX).
/// </summary>
public static class KillHarness
{
    public static int Main(string[] args)
    {
        if (args.Length < 2)
        {
            Console.Error.WriteLine("usage: Ddpm.Tests RULE ddpm-tool-arguments...");
            return 2;
        }
        var pause = Rule(args[0]);
        var stdout = Console.Out;
        var files = new TestOutputFiles
        {
            Before = op =>
            {
                lock (stdout)
                {
                    if (!pause(op))
                    {
                        stdout.WriteLine($"op {op}");
                        return;
                    }
                    stdout.WriteLine($"pause {op}");
                }
                Thread.Sleep(Timeout.Infinite);
            },
        };
        return Program.Run(args[1..], new ToolConsole(new Lines(stdout), Console.Error, interactive: false) { Files = files });
    }

    private static Func<FileOp, bool> Rule(string rule)
    {
        if (rule == "none") return _ => false;
        if (int.TryParse(rule, out int n)) return op => op.Index == n;
        var p = rule.Split(':');
        int k = int.Parse(p[2], System.Globalization.CultureInfo.InvariantCulture), seen = 0;
        return op => (p[0] == "any" || op.Kind == p[0]) && op.Target.StartsWith(p[1], StringComparison.Ordinal) && ++seen == k;
    }

    /// <summary>The tool's console lines, each as "out TEXT" among the operations.</summary>
    private sealed class Lines(TextWriter to) : StringWriter
    {
        public override void WriteLine(string? value)
        {
            lock (to)
                foreach (var line in (value ?? "").Split('\n'))
                    to.WriteLine("out " + line);
        }
    }
}
