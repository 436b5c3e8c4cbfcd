using System.Globalization;
using Ddpm.Diffusion.Training;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Ddpm.Tool;
using Xunit;
using Xunit.Abstractions;

namespace Ddpm.Tests.Tool;

/// <summary>
/// A full disk or an I/O error at any write of a run (the way SQLite's I/O-error tests fail each write in turn):
/// a short run that writes every kind of file is run again with its k-th file operation failing, for every k (EIO
/// once, at each create, open, write, truncate, sync and rename; ENOSPC from each write on, a disk that stays
/// full). Each time the run ends with one line naming the file and the cause and exit code 1, leaves no temporary
/// file, keeps every checkpoint loadable with loss.csv covering the latest, and names that checkpoint; then the same
/// command with the disk working again (--resume, or --overwrite when no checkpoint was written) ends in the
/// uninterrupted run's folder, bit for bit (<see cref="RunFolderCheck"/>). CI tries one operation of each kind and
/// one write into each kind of file (checkpoint, log, grid, other), seeded; <c>DDPM_IO_FAULTS=all</c> tries every one
/// (docs/reliability.md gives the figures).
/// </summary>
public sealed class IoFaultTests(ITestOutputHelper log)
{
    /// <summary>
    /// A short run that writes every kind of file a run writes: config.json, loss.csv, checkpoints (every 2 steps, 2
    /// kept, so one is removed), sample grids, a measurement (metrics.csv, best.safetensors), the event file,
    /// samples.png, model.safetensors and the plots.
    /// </summary>
    internal static string[] ShortRun(string outDir) =>
    [
        "train", "--preset", "tiny", "--batch", "2", "--max-images", "16", "--diffusion-steps", "10", "--steps", "6",
        "--checkpoint-every", "2", "--keep", "2", "--sample-every", "4", "--samples", "1", "--sample-steps", "1",
        "--eval-every", "4", "--eval-samples", "2", .. ResumeOptions(outDir),
    ];

    /// <summary>The options a rerun repeats: those a checkpoint does not keep.</summary>
    internal static string[] ResumeOptions(string outDir) => ["--scale", "1", "--log-every", "1", "--threads", "1", "--out", outDir];

    internal static (int Code, string Out, string Err) Run(string[] args, TestOutputFiles files)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, new ToolConsole(o, e, interactive: false) { Files = files });
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>What a user does next: resume the run, or start it again when it wrote no checkpoint.</summary>
    internal static string[] Rerun(string dir, string[] original) =>
        RunFolder.Latest(dir) is not null ? ["train", "--resume", .. ResumeOptions(dir)]
        : RunFolder.EarlierRun(dir) is not null ? [.. original, "--overwrite"]
        : original;

    [Fact]
    public void AFaultAtAnyWriteKeepsTheCheckpointSaysWhatFailedAndARerunFinishesTheRun()
    {
        using var reference = new TempDir();
        var clean = new TestOutputFiles();
        var (code, _, err) = Run(ShortRun(reference.Path), clean);
        Assert.True(code == 0, err);
        Assert.True(clean.Violations.Count == 0, string.Join("\n", clean.Violations));
        // Every kind of file went through the faultable layer.
        foreach (var phase in new[] { "checkpoint", "log", "grid", "other file" })
            Assert.Contains(clean.Ops, op => op.Kind == "write" && op.Phase == phase);
        Assert.Contains(clean.Ops, op => op.Kind == "delete" && op.Phase == "checkpoint");

        bool all = Environment.GetEnvironmentVariable("DDPM_IO_FAULTS") == "all";
        var cases = Chosen(clean.Ops, all);
        var byPhase = new Dictionary<string, int>();
        int failed = 0, harmless = 0;
        foreach (var (kind, k) in cases)
        {
            using var dir = new TempDir();
            var files = kind == "EIO" ? new TestOutputFiles { EioAt = k } : new TestOutputFiles { EnospcFromWrite = k };
            string[] args = ShortRun(dir.Path);
            (code, var output, err) = Run(args, files);
            string what = $"{kind} at {(kind == "EIO" ? "operation" : "write")} {k} ({(files.Failed.Count > 0 ? files.Failed[0] : "none")})";
            Assert.True(files.Failed.Count > 0, $"{what}: no operation failed");
            var first = files.Failed[0];
            byPhase[$"{first.Kind} {first.Phase}"] = byPhase.GetValueOrDefault($"{first.Kind} {first.Phase}") + 1;
            if (code == 0)
            {
                // A failure the run could do without (removing a temporary file): the folder is whole as it is.
                harmless++;
                RunFolderCheck.AssertSameRun(reference.Path, dir.Path);
                continue;
            }
            failed++;
            Assert.True(code == ExitCodes.Failed, $"{what}: exit {code}: {err}");
            Assert.Single(err.Trim().Split('\n'));
            Assert.StartsWith("ddpm-tool: error: could not write ", err);
            Assert.Contains(first.TargetPath + ":", err);
            Assert.Contains(kind == "EIO" ? "Input/output error" : "No space left on device", err);
            Assert.DoesNotContain(".tmp", err);
            CheckLeftFolder(dir.Path, err, what);

            var rerun = Rerun(dir.Path, args);
            (code, output, err) = Run(rerun, new TestOutputFiles());
            Assert.True(code == 0, $"{what}, then {string.Join(" ", rerun)}: {err}{output}");
            RunFolderCheck.AssertSameRun(reference.Path, dir.Path);
        }
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{clean.Faultable} faultable operations ({clean.Writes} writes) in the run; {cases.Count} faults injected ({failed} ended the run with exit 1, " +
            $"{harmless} did no harm), 0 losses; first failed operation by kind and file: {string.Join(", ", byPhase.OrderBy(p => p.Key).Select(p => $"{p.Key} {p.Value}"))}"));
    }

    /// <summary>What a failed run must leave: no temporary file; every checkpoint loadable; loss.csv covering the latest, which the message names.</summary>
    internal static void CheckLeftFolder(string dir, string err, string what)
    {
        var temporaries = Directory.EnumerateFiles(dir, "*.tmp", SearchOption.AllDirectories).ToList();
        Assert.True(temporaries.Count == 0, $"{what}: left {string.Join(", ", temporaries)}");
        foreach (var (step, path) in RunFolder.Checkpoints(dir)) Assert.Equal(step, Checkpoint.Load(path).Step);
        if (RunFolder.Latest(dir) is { } latest)
        {
            Assert.Contains($"the latest checkpoint, {latest}, is intact", err);
            long step = Checkpoint.Load(latest).Step;
            var rows = File.ReadAllLines(Path.Combine(dir, RunFolder.LossName)).Skip(1).Take((int)step)
                .Select(r => long.Parse(r.Split(',')[0], CultureInfo.InvariantCulture));
            Assert.Equal(Enumerable.Range(1, (int)step).Select(i => (long)i), rows);
        }
        else
        {
            Assert.Contains("no checkpoint of this run was written", err);
        }
    }

    /// <summary>
    /// The faults to inject: every faultable operation (EIO) and every write (ENOSPC) with DDPM_IO_FAULTS=all; else,
    /// seeded, EIO at one operation of each kind other than a write, at one write into each kind of file and at the
    /// last rows appended to loss.csv, and ENOSPC from one write into each kind of file.
    /// </summary>
    private static List<(string Kind, int K)> Chosen(List<FileOp> ops, bool all)
    {
        var faultable = ops.Where(op => op.Kind is not ("close" or "delete")).ToList();
        var writes = faultable.Where(op => op.Kind == "write").ToList();
        if (all)
            return [.. Enumerable.Range(1, faultable.Count).Select(k => ("EIO", k)), .. Enumerable.Range(1, writes.Count).Select(k => ("ENOSPC", k))];
        var rng = new Random(2718);
        int Pick(List<FileOp> among, IEnumerable<FileOp> group)
        {
            var g = group.ToList();
            return among.IndexOf(g[rng.Next(g.Count)]) + 1;
        }
        // And the last append to loss.csv: the rows before the final checkpoint, which the run saves again after the failure.
        int lastRows = faultable.FindLastIndex(op => op.Kind == "write" && op.Target == RunFolder.LossName) + 1;
        List<(string, int)> chosen = [.. faultable.Where(op => op.Kind != "write").GroupBy(op => op.Kind).Select(g => ("EIO", Pick(faultable, g))),
            .. writes.GroupBy(op => op.Phase).Select(g => ("EIO", Pick(faultable, g))), ("EIO", lastRows),
            .. writes.GroupBy(op => op.Phase).Select(g => ("ENOSPC", Pick(writes, g)))];
        return chosen.Distinct().ToList();
    }
}
