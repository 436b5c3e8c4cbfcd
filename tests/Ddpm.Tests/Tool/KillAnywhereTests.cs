using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Ddpm.Tests.Tool;

/// <summary>
/// kill -9 at any moment loses nothing (the way Jepsen kills at random points, then checks): a run that writes every
/// kind of file is killed with SIGKILL again and again, each time continued with <c>train --resume</c> (or started
/// again with --overwrite when it had written no checkpoint), and must end in the uninterrupted run's folder, bit
/// for bit (<see cref="RunFolderCheck"/>: checkpoints, weights, EMA, Adam moments, loss.csv, metrics.csv, grids,
/// TensorBoard's view of the event files). The run is the tool in a child process (<see cref="KillHarness"/>)
/// whose file operations are numbered: a kill lands either just before a chosen operation (inside a checkpoint
/// write between its fsync and its rename, inside a log append, inside a grid) or after a random delay (mid-step).
/// CI kills the short run of <see cref="IoFaultTests"/> once in each phase; <c>DDPM_KILLS=N</c> kills a 40-step run
/// at N seeded random moments (<c>DDPM_KILL_SEED</c>), and docs/reliability.md gives the figures.
/// </summary>
public sealed class KillAnywhereTests(ITestOutputHelper log)
{
    private static readonly string Harness = Path.Combine(AppContext.BaseDirectory, "Ddpm.Tests.dll");

    /// <summary>The long mode's run: 40 steps, a checkpoint every 5 (3 kept), a grid every 10, a measurement every 20.</summary>
    private static string[] LongRun(string outDir) =>
    [
        "train", "--preset", "tiny", "--batch", "2", "--max-images", "16", "--diffusion-steps", "10", "--steps", "40",
        "--checkpoint-every", "5", "--keep", "3", "--sample-every", "10", "--samples", "1", "--sample-steps", "1",
        "--eval-every", "20", "--eval-samples", "2", .. IoFaultTests.ResumeOptions(outDir),
    ];

    [Fact]
    public void AKilledRunResumesToTheUninterruptedRunBitForBit()
    {
        int target = int.TryParse(Environment.GetEnvironmentVariable("DDPM_KILLS"), out int n) && n > 0 ? n : 0;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("DDPM_KILL_SEED"), out int s) ? s : 1;
        Func<string, string[]> command = target > 0 ? LongRun : IoFaultTests.ShortRun;

        using var reference = new TempDir();
        var clean = new TestOutputFiles();
        var sw = Stopwatch.StartNew();
        var (code, _, err) = IoFaultTests.Run(command(reference.Path), clean);
        double seconds = sw.Elapsed.TotalSeconds;
        Assert.True(code == 0, err);
        Assert.True(clean.Violations.Count == 0, string.Join("\n", clean.Violations));

        // The short mode: a checkpoint killed before its rename and in its middle, loss.csv's append before a
        // checkpoint, a grid, the event file, a step; then a process that finishes. The long mode: seeded random moments.
        var fixedRules = new Queue<string>(["replace:checkpoint-:2", "write:checkpoint-:2", "write:loss.csv:2", "write:samples-:1",
            "write:events.out.tfevents.:2", "after:0.15"]);
        var rng = new Random(seed);
        var phases = new SortedDictionary<string, int>(StringComparer.Ordinal);
        int kills = 0, lives = 0, runs = 0, paused = 0;
        // The short mode goes on until every fixed rule was tried (a rule that finds no operation to pause at lets
        // its process end, and the next run takes the next rule).
        while (runs == 0 || kills < target || (target == 0 && fixedRules.Count > 0))
        {
            using var dir = new TempDir();
            string[] original = command(dir.Path);
            string[] args = original;
            while (true)
            {
                string rule = target == 0 ? (fixedRules.TryDequeue(out var r) ? r : "none")
                    : kills >= target ? "none"
                    : rng.NextDouble() < 0.7 ? (1 + rng.Next(EstimateOps(clean.Ops.Count, dir.Path, target > 0 ? 40 : 6))).ToString(CultureInfo.InvariantCulture)
                    : string.Create(CultureInfo.InvariantCulture, $"after:{rng.NextDouble() * seconds:F3}");
                var life = Live(rule, args);
                lives++;
                if (life.Phase is { } phase)
                {
                    kills++;
                    if (!rule.StartsWith("after:", StringComparison.Ordinal)) paused++;
                    phases[phase] = phases.GetValueOrDefault(phase) + 1;
                    args = IoFaultTests.Rerun(dir.Path, original);
                    continue;
                }
                Assert.True(life.Code == 0, $"{string.Join(" ", args)} (rule {rule}): exit {life.Code}: {life.Err}");
                break;
            }
            RunFolderCheck.AssertSameRun(reference.Path, dir.Path);
            runs++;
        }
        log.WriteLine($"{kills} kills ({paused} before a chosen file operation, {kills - paused} after a random delay) in {lives} processes, " +
            $"{runs} run(s) each equal to the uninterrupted run bit for bit (0 losses); kills by phase: {string.Join(", ", phases.Select(p => $"{p.Key} {p.Value}"))}");
        if (target == 0)
            foreach (var phase in new[] { "checkpoint", "log", "grid" })
                Assert.True(phases.ContainsKey(phase), $"no kill landed in a {phase} write: {string.Join(", ", phases.Keys)}");
    }

    /// <summary>About how many file operations a process started on <paramref name="dir"/> makes before the run ends.</summary>
    private static int EstimateOps(int whole, string dir, int steps)
    {
        long done = RunFolder.Latest(dir) is { } c ? Checkpoint.Load(c).Step : 0;
        return Math.Max(10, (int)(whole * (steps - done) / steps) + 10);
    }

    private sealed record Life(int Code, string? Phase, string Err);

    /// <summary>
    /// One process of the run: killed with SIGKILL just before the operation <paramref name="rule"/> names (it pauses
    /// there), or "after:S" seconds after its first trained step; returns the phase it was killed in (null: it was
    /// not killed: it ended by itself).
    /// </summary>
    private static Life Live(string rule, string[] args)
    {
        string? delay = rule.StartsWith("after:", StringComparison.Ordinal) ? rule[6..] : null;
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        foreach (var a in (string[])["exec", Harness, delay is null ? rule : "none", .. args]) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var lines = new BlockingCollection<string>();
        var err = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) lines.CompleteAdding();
            else lines.Add(e.Data);
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null) lock (err) err.AppendLine(e.Data);
        };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var state = new Phases();
        double after = delay is null ? double.PositiveInfinity : double.Parse(delay, CultureInfo.InvariantCulture);
        Stopwatch? since = null;
        string? phase = null;
        try
        {
            while (true)
            {
                int wait = since is null ? 200 : (int)Math.Clamp((after - since.Elapsed.TotalSeconds) * 1000, 0, 200);
                if (lines.TryTake(out var line, wait))
                {
                    if (line.StartsWith("pause ", StringComparison.Ordinal))
                    {
                        phase = FileOp.Parse(line[6..]).Phase;
                        p.Kill();
                        break;
                    }
                    state.Add(line);
                    if (delay is not null && since is null && state.Stepped) since = Stopwatch.StartNew();
                }
                else if (lines.IsCompleted)
                {
                    break;
                }
                if (since is not null && since.Elapsed.TotalSeconds >= after)
                {
                    p.Kill();
                    // Every operation line the process wrote came before the operation: the last of them says where it was.
                    foreach (var rest in lines.GetConsumingEnumerable()) state.Add(rest);
                    phase = state.Now;
                    break;
                }
            }
            if (!p.WaitForExit(TimeSpan.FromMinutes(5))) throw new XunitException($"{string.Join(" ", args)} (rule {rule}) still runs 5 minutes later");
            p.WaitForExit();
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
        // A timed kill that came after the process ended by itself did not happen.
        if (phase is not null && delay is not null && p.ExitCode == 0) phase = null;
        lock (err) return new Life(p.ExitCode, phase, err.ToString());
    }

    /// <summary>Which file a process is inside, from its operation lines: one opened and not closed, or an atomic write not yet renamed.</summary>
    private sealed class Phases
    {
        private readonly List<string> _inside = new();

        public bool Stepped { get; private set; }

        public string Now => _inside.Count > 0 ? FileOp.PhaseOf(_inside[^1]) : Stepped ? "mid-step" : "start-up";

        public void Add(string line)
        {
            if (line.StartsWith("out step ", StringComparison.Ordinal)) Stepped = true;
            if (!line.StartsWith("op ", StringComparison.Ordinal)) return;
            var op = FileOp.Parse(line[3..]);
            bool temporary = op.Target != Path.GetFileName(op.Path);
            switch (op.Kind)
            {
                case "create" or "append": _inside.Add(op.Target); break;
                // An atomic write stays inside its file until its rename.
                case "close" when !temporary: _inside.Remove(op.Target); break;
                case "replace": _inside.Remove(op.Target); break;
            }
        }
    }
}
