using System.Diagnostics;
using Ddpm.Tests.Data;
using Ddpm.Tests.TestUtil;
using Ddpm.Tool;
using Xunit;
using Xunit.Sdk;
using static Ddpm.Tests.Tool.ReliabilityToolTests;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// Inputs that are not regular files (named pipes, folders, devices) are refused at once, naming the file; Ctrl-C and
/// SIGTERM end a verb within seconds wherever it is, blocked included (the real tool, as a child process).
/// </summary>
public sealed class StopAndSpecialFileTests : IClassFixture<TrainedRun>
{
    private static readonly string Tool = Path.Combine(AppContext.BaseDirectory, "ddpm-tool");

    private readonly TrainedRun _run;

    public StopAndSpecialFileTests(TrainedRun run) => _run = run;

    // ---- inputs that are not regular files ------------------------------------------------------------------------

    [Fact]
    public void InputsThatAreNotRegularFilesAreRefusedAtOnceNamingTheFile()
    {
        Assert.True(_run.Code == 0, _run.Err);
        using var dir = new TempDir();
        string fifo = dir.File("pipe.safetensors");
        Posix.MakeFifo(fifo);
        string folder = dir.File("folder.safetensors");
        Directory.CreateDirectory(folder);
        string zero = dir.File("zero.safetensors");
        File.CreateSymbolicLink(zero, "/dev/zero");
        // An image folder whose one bad entry is a named pipe with an image's name.
        string images = dir.File("images");
        Directory.CreateDirectory(Path.Combine(images, "a"));
        Posix.MakeFifo(Path.Combine(images, "a", "x.png"));
        // A run folder whose loss.csv, read back when the run resumes its checkpoint, is a named pipe.
        string resumeOut = dir.File("resumed");
        Directory.CreateDirectory(resumeOut);
        File.Copy(_run.Checkpoint, Path.Combine(resumeOut, Path.GetFileName(_run.Checkpoint)));
        Posix.MakeFifo(Path.Combine(resumeOut, "loss.csv"));

        const string Pipe = "not a regular file but a named pipe (FIFO)";
        var cases = new (string[] Args, string File, string Kind)[]
        {
            (["info", "--checkpoint", fifo], fifo, Pipe),
            // A folder is a run folder (its latest checkpoint): one without a checkpoint is named as such.
            (["info", "--checkpoint", folder], folder, "is a folder without a checkpoint"),
            (["info", "--checkpoint", zero], zero, "not a regular file but a character device"),
            (["sample", "--checkpoint", fifo, "--n", "1", "--out", dir.File("s.png")], fifo, Pipe),
            (TinyRun(dir.File("r1"), "--steps", "3", "--resume", fifo), fifo, Pipe),
            (TinyRun(dir.File("r2"), "--steps", "3", "--data", fifo), fifo, Pipe),
            (TinyRun(dir.File("r4"), "--steps", "3", "--config", fifo), fifo, Pipe),
            (TinyRun(dir.File("r5"), "--steps", "3", "--config", zero), zero, "not a regular file but a character device"),
            (TinyRun(dir.File("r3"), "--steps", "3", "--data", images), Path.Combine(images, "a", "x.png"), Pipe),
            (TinyRun(resumeOut, "--steps", "3", "--resume"), Path.Combine(resumeOut, "loss.csv"), Pipe),
            (["forward", "--weights", Path.Combine(ReliabilityToolTests.Golden, "model.safetensors"), "--inputs", fifo, "--out", dir.File("o.safetensors")], fifo, Pipe),
            (["interpolate", "--checkpoint", _run.Checkpoint, "--a", fifo, "--b", "data:1", "--t", "5", "--out", dir.File("i.png")], fifo, Pipe),
            (["eval", "--images", fifo, "--n", "2"], fifo, Pipe),
            (["eval", "--checkpoint", _run.Checkpoint, "--classifier", fifo, "--n", "2"], fifo, Pipe),
        };
        foreach (var (args, file, kind) in cases)
        {
            var sw = Stopwatch.StartNew();
            var (code, output, err) = RunWithin(TimeSpan.FromSeconds(30), args, fifo, Path.Combine(images, "a", "x.png"), Path.Combine(resumeOut, "loss.csv"));
            string what = string.Join(" ", args.Take(3));
            Assert.True(code == 1, $"{what}: exit {code}: {err}{output}");
            Assert.Single(err.Trim().Split('\n'));
            Assert.Contains(file, err);
            Assert.Contains(kind, err);
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"{what}: took {sw.Elapsed.TotalSeconds:F1} s");
        }
        Assert.False(File.Exists(dir.File("s.png")));
        Assert.False(File.Exists(dir.File("o.safetensors")));
        Assert.False(File.Exists(dir.File("i.png")));
    }

    /// <summary>
    /// Runs the verb in-process on a thread of its own; one still running after <paramref name="limit"/> (blocked
    /// opening a pipe) fails the test, once its pipes are opened for writing so that the blocked open returns.
    /// </summary>
    private static (int Code, string Out, string Err) RunWithin(TimeSpan limit, string[] args, params string[] fifos)
    {
        var run = Task.Factory.StartNew(() => Run(args), TaskCreationOptions.LongRunning);
        if (run.Wait(limit)) return run.Result;
        var release = Task.Run(() =>
        {
            foreach (var f in fifos)
                if (File.Exists(f))
                    using (File.OpenHandle(f, FileMode.Open, FileAccess.Write)) { }
        });
        release.Wait(TimeSpan.FromSeconds(5));
        run.Wait(TimeSpan.FromSeconds(5));
        throw new XunitException($"{string.Join(" ", args)} was still running {limit.TotalSeconds} s later");
    }

    // ---- Ctrl-C and SIGTERM in the real process -------------------------------------------------------------------

    /// <summary>The tool as a child process, its stderr collected; stdout goes where <paramref name="stdout"/> says (a shell redirection target).</summary>
    private static (Process Process, Func<string> Err) Start(string stdout, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        // SIGINT back to its default: a test run started in the background by a shell without job control inherits
        // it ignored, and a process that starts with SIGINT ignored keeps ignoring it (as nohup'd jobs should).
        psi.ArgumentList.Add("exec env --default-signal=INT \"$0\" \"$@\" > \"$DDPM_TEST_STDOUT\"");
        psi.ArgumentList.Add(Tool);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DDPM_TEST_STDOUT"] = stdout;
        var p = Process.Start(psi)!;
        var err = new System.Text.StringBuilder();
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null) lock (err) err.AppendLine(e.Data);
        };
        p.BeginErrorReadLine();
        return (p, () =>
        {
            lock (err) return err.ToString();
        });
    }

    private static bool WaitUntil(Func<bool> condition, TimeSpan limit)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > limit) return false;
            Thread.Sleep(50);
        }
        return true;
    }

    [Fact]
    public void SigtermEndsATrainingRunBlockedWritingToAPipeNobodyReads()
    {
        using var dir = new TempDir();
        string fifo = dir.File("stdout");
        Posix.MakeFifo(fifo);
        // The reader holds the pipe open and never reads: once a page of progress lines is written, the run blocks in write(2).
        using var reader = Posix.OpenReaderThatNeverReads(fifo, 4096);
        var (p, err) = Start(fifo, TinyRun(dir.File("run"), "--steps", "100000"));
        using var _ = p;
        try
        {
            // Full: nearly a page waits and no more arrives for a second (a line that does not fit whole waits whole).
            int last = -1;
            var still = Stopwatch.StartNew();
            Assert.True(WaitUntil(() =>
            {
                int now = Posix.Pending(reader);
                if (now != last)
                {
                    last = now;
                    still.Restart();
                }
                return now >= 2048 && still.Elapsed > TimeSpan.FromSeconds(1) || p.HasExited;
            }, TimeSpan.FromSeconds(60)), $"the run never filled its stdout pipe ({last} bytes wait)");
            Assert.False(p.HasExited, err());
            var sw = Stopwatch.StartNew();
            Posix.Signal(p.Id, Posix.SIGTERM);
            bool ended = p.WaitForExit(TimeSpan.FromSeconds(30));
            Assert.True(ended, "still running 30 s after SIGTERM: " + err());
            p.WaitForExit();
            // The grace of 5 s plus the longest step (the first, with its compilation): well under 20 s here.
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"ended {sw.Elapsed.TotalSeconds:F1} s after SIGTERM");
            Assert.Equal(ExitCodes.Interrupted, p.ExitCode);
            Assert.Contains("SIGTERM: stopping after the current step", err());
            Assert.Matches(@"ddpm-tool: interrupted; the command had not stopped [0-9.]+ s after SIGTERM \(blocked\)", err());
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }

    [Theory]
    [InlineData(Posix.SIGINT, "Ctrl-C")]
    [InlineData(Posix.SIGTERM, "SIGTERM")]
    public void ASignalStopsATrainingRunAfterItsStepWithACheckpoint(int signal, string name)
    {
        using var dir = new TempDir();
        string run = dir.File("run");
        var (p, err) = Start(dir.File("out.txt"), TinyRun(run, "--steps", "100000"));
        using var _ = p;
        try
        {
            Assert.True(WaitUntil(() => File.Exists(dir.File("out.txt")) && File.ReadAllText(dir.File("out.txt")).Contains("step       3/") || p.HasExited,
                TimeSpan.FromSeconds(60)), "the run never reached step 3");
            Assert.False(p.HasExited, err());
            Posix.Signal(p.Id, signal);
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(30)), $"still running 30 s after {name}: " + err());
            p.WaitForExit();
            Assert.Equal(ExitCodes.Interrupted, p.ExitCode);
            Assert.Contains($"{name}: stopping after the current step", err());
            string output = File.ReadAllText(dir.File("out.txt"));
            var m = System.Text.RegularExpressions.Regex.Match(output, @"interrupted at step (\d+); checkpoint saved");
            Assert.True(m.Success, output + err());
            Assert.Equal(long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture),
                Ddpm.Diffusion.Training.Checkpoint.Load(Ddpm.Diffusion.Training.RunFolder.Latest(run)!).Step);
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }

    // ---- the deadline itself, in-process ---------------------------------------------------------------------------

    [Fact]
    public void TheDeadlineWaitsForTheLongestStepAndNotForACleanStop()
    {
        var grace = TimeSpan.FromMilliseconds(200);
        // A command whose steps take up to 1.5 s has grace + 1.5 s to reach its next check.
        var exits = new System.Collections.Concurrent.ConcurrentQueue<(int Code, TimeSpan At)>();
        var sw = Stopwatch.StartNew();
        using (var slow = new StopSignals(TextWriter.Null, grace, code => exits.Enqueue((code, sw.Elapsed))))
        {
            slow.StepTook(TimeSpan.FromMilliseconds(300));
            slow.StepTook(TimeSpan.FromSeconds(1.5));
            slow.StepTook(TimeSpan.FromMilliseconds(100));
            sw.Restart();
            Assert.True(slow.Signal("SIGTERM"));
            Assert.True(slow.Token.IsCancellationRequested);
            Assert.False(slow.Signal("SIGTERM"), "a second signal keeps its default action");
            Assert.True(WaitUntil(() => !exits.IsEmpty, TimeSpan.FromSeconds(10)), "the deadline never ended the command");
            Assert.True(exits.TryPeek(out var exit));
            Assert.Equal(ExitCodes.Interrupted, exit.Code);
            Assert.InRange(exit.At.TotalSeconds, 1.6, 6);
        }
        // A command that says it stops cleanly (train writing its checkpoint) is never ended by the deadline.
        exits.Clear();
        using (var clean = new StopSignals(TextWriter.Null, grace, code => exits.Enqueue((code, sw.Elapsed))))
        {
            Assert.True(clean.Signal("Ctrl-C"));
            clean.StoppingCleanly();
            Thread.Sleep(grace * 5);
            Assert.Empty(exits);
        }
    }
}
