using System.Diagnostics;
using Ddpm.Backends.Cuda;
using Ddpm.Tensors;
using Ddpm.Backends.Cpu;
using Ddpm.Tests.Golden;
using Ddpm.Tests.Parity;
using Xunit.Abstractions;

namespace Ddpm.Cuda.Check;

/// <summary>
/// Ddpm.Cuda.Check: probes CUDA, runs every per-op parity case of the test suite on the cuda backend against
/// cpu-reference (TF32 off), or with --golden the PyTorch golden tests on cuda, then times GEMM and convolution
/// on the device; with --nccl it joins a one-rank NCCL communicator, times its all-reduce of gradient-sized
/// buffers and checks the results. Exit code 0 when every check passed, 1 on a failure, 2 when CUDA (or, for
/// --nccl, libnccl.so.2) cannot be used here (nothing was checked; the reason is printed).
/// Usage: Ddpm.Cuda.Check [--golden | --nccl [--quick] | --tf32] [--no-bench] [--filter SUBSTRING]
/// (--tf32: the convolution cases on a TF32 backend against float32 cpu-reference, within the TF32 tolerance;
/// --quick: NCCL without the labml-sized buffer, for a rehearsal on the simulated device)
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var probe = CudaProbe.Run();
        Console.WriteLine(probe);
        if (probe.Device is null)
        {
            Console.WriteLine("SKIPPED: no CUDA device, nothing was checked.");
            return 2;
        }

        CudaBackend? be;
        string reason;
        try
        {
            be = CudaBackend.TryCreate(out reason, new BackendOptions { Precision = Precision.Fp32 });
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            (be, reason) = (null, e.Message);
        }
        if (be is null)
        {
            Console.WriteLine($"SKIPPED: the cuda backend cannot be created: {reason}");
            return 2;
        }
        using (be)
        {
            Console.WriteLine(be.Description);
            if (args.Contains("--golden")) return Golden();
            if (args.Contains("--nccl")) return Nccl(be, args.Contains("--quick"));
            int filterAt = Array.IndexOf(args, "--filter");
            string? filter = filterAt >= 0 && filterAt + 1 < args.Length ? args[filterAt + 1] : null;
            bool tf32Cases = args.Contains("--tf32");
            var names = (tf32Cases ? ParityCases.Tf32Names : ParityCases.Names).Select(n => (string)n[0])
                .Where(n => filter is null || n.Contains(filter, StringComparison.Ordinal)).ToList();
            int failed = 0;
            using var reference = new CpuReferenceBackend();
            using var tf32Backend = tf32Cases ? new CudaBackend(new BackendOptions { Precision = Precision.Tf32 }) : null;
            if (tf32Backend is not null) Console.WriteLine(tf32Backend.Description);
            foreach (var name in names)
            {
                var sw = Stopwatch.StartNew();
                try
                {
                    ParityCases.Run(name, tf32Backend ?? be, reference);
                    Console.WriteLine($"PASS {name} ({sw.ElapsedMilliseconds} ms)");
                }
                catch (Exception e)
                {
                    failed++;
                    Console.WriteLine($"FAIL {name}: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
                }
            }
            Console.WriteLine(failed == 0 ? $"all {names.Count} parity cases passed" : $"{failed} of {names.Count} parity cases failed");

            if (!args.Contains("--no-bench"))
            {
                Bench(be, "TF32 off");
                using var tf32 = new CudaBackend(new BackendOptions { Precision = Precision.Tf32 });
                Bench(tf32, "TF32 on");
            }
            return failed == 0 ? 0 : 1;
        }
    }

    /// <summary>
    /// NCCL on one rank: the communicator's set-up time, then for buffers the size of a 4 MB gradient bucket, of
    /// `small`'s gradient (13.7 MB) and of `labml`'s (671 MB) the median time of 5 in-place averages on the
    /// backend's stream and of 5 started on NCCL's own stream and joined by an event, each after one untimed
    /// call. One rank's average is the identity, which is what is checked; the set-up's and the calls' costs
    /// are what one rank can measure (a ring's transfers need two GPUs). <paramref name="quick"/> leaves out labml's.
    /// </summary>
    private static int Nccl(CudaBackend be, bool quick)
    {
        if (Ddpm.Backends.Cuda.Nccl.NcclCollective.Probe(out string reason) is null)
        {
            Console.WriteLine($"SKIPPED: {reason}");
            return 2;
        }
        var sw = Stopwatch.StartNew();
        using var nccl = Ddpm.Backends.Cuda.Nccl.NcclCollective.Create(Ddpm.Tensors.Distributed.SingleProcess.Instance, be);
        Console.WriteLine($"{nccl.Version}: a communicator of 1 rank in {sw.Elapsed.TotalMilliseconds:F1} ms");
        int failed = 0;
        foreach (var (name, floats) in new[] { ("4 MB bucket", 1_000_000), ("small gradient", 3_430_000), ("labml gradient", 167_777_987) })
        {
            if (quick && name == "labml gradient") continue;
            var host = new float[floats];
            for (int i = 0; i < floats; i++) host[i] = (i % 1000) * 0.125f - 60f;
            var buf = be.Allocate(floats);
            try
            {
                be.Upload(host, buf, 0);
                var one = new float[1];
                double Median(Action reduce)
                {
                    reduce();
                    be.Download(buf, 0, one);
                    var ms = new List<double>();
                    for (int r = 0; r < 5; r++)
                    {
                        var t = Stopwatch.StartNew();
                        reduce();
                        be.Download(buf, 0, one);
                        ms.Add(t.Elapsed.TotalMilliseconds);
                    }
                    ms.Sort();
                    return ms[2];
                }
                double inStream = Median(() => nccl.AllReduce(buf, 0, floats, Ddpm.Tensors.Distributed.ReduceOp.Average));
                double ownStream = Median(() => nccl.StartAllReduce(buf, 0, floats, Ddpm.Tensors.Distributed.ReduceOp.Average).Wait());
                var back = new float[floats];
                be.Download(buf, 0, back);
                int wrong = 0;
                for (int i = 0; i < floats; i++) if (back[i] != host[i]) wrong++;
                if (wrong > 0) failed++;
                Console.WriteLine(FormattableString.Invariant(
                    $"{(wrong == 0 ? "PASS" : "FAIL")} nccl all-reduce, {name} ({4.0 * floats / 1e6:F1} MB): {inStream:F3} ms on the backend's stream, {ownStream:F3} ms on its own stream (median of 5, with one download of 4 bytes){(wrong > 0 ? $"; {wrong} elements changed" : "")}"));
            }
            finally
            {
                buf.Release();
            }
        }
        sw.Restart();
        nccl.Dispose();
        Console.WriteLine($"communicator destroyed in {sw.Elapsed.TotalMilliseconds:F1} ms");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>The golden tests of the suite (labml's UNet in PyTorch: forward, gradients, diffusion steps) on cuda.</summary>
    private static int Golden()
    {
        var output = new ConsoleOutput();
        var golden = new GoldenOnCuda(output);
        var checks = new (string Name, Action Run)[]
        {
            ("golden: parameter names and count", golden.ParameterNamesAndCountMatchLabml),
            ("golden: forward and gradients", golden.ForwardAndGradientsMatchPyTorch),
            ("golden: schedule, loss and p_sample", golden.ScheduleLossAndPSampleMatchPyTorch),
        };
        int failed = 0;
        foreach (var (name, run) in checks)
        {
            var sw = Stopwatch.StartNew();
            try
            {
                run();
                Console.WriteLine($"PASS {name} ({sw.ElapsedMilliseconds} ms)");
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine($"FAIL {name}: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
            }
        }
        Console.WriteLine(failed == 0 ? $"all {checks.Length} golden checks passed" : $"{failed} of {checks.Length} golden checks failed");
        return failed == 0 ? 0 : 1;
    }

    private sealed class GoldenOnCuda(ITestOutputHelper output) : GoldenTestsBase(output)
    {
        protected override IBackend CreateBackend() => new CudaBackend(new BackendOptions { Precision = Precision.Fp32 });
    }

    private sealed class ConsoleOutput : ITestOutputHelper
    {
        public void WriteLine(string message) => Console.WriteLine("  " + message);

        public void WriteLine(string format, params object[] args) => Console.WriteLine("  " + string.Format(System.Globalization.CultureInfo.InvariantCulture, format, args));
    }

    /// <summary>Device time of a 4096^3 GEMM and of a labml-sized 3x3 convolution (batch 64, 128 channels, 32x32).</summary>
    private static void Bench(CudaBackend be, string label)
    {
        const int s = 4096;
        var a = be.Allocate(s * s);
        var b = be.Allocate(s * s);
        var c = be.Allocate(s * s);
        try
        {
            be.FillNormal(1, 0, a, s * s);
            be.FillNormal(2, 0, b, s * s);
            be.Gemm(false, false, a, 0, b, 0, 1, s, s, s, 1f, 0f, c, 0);
            float ms = be.MeasureMilliseconds(() =>
            {
                for (int i = 0; i < 10; i++) be.Gemm(false, false, a, 0, b, 0, 1, s, s, s, 1f, 0f, c, 0);
            }) / 10;
            Console.WriteLine($"bench {label}: sgemm {s}^3: {ms:F3} ms, {2.0 * s * s * s / (ms * 1e9):F1} TFLOP/s");
        }
        finally
        {
            a.Release();
            b.Release();
            c.Release();
        }

        var g = new ConvGeometry(64, 128, 32, 32, 128, 3, 3, 1, 1, 1, 1);
        var x = be.Allocate(g.InputSize);
        var w = be.Allocate(g.WeightSize);
        var y = be.Allocate(g.OutputSize);
        var dx = be.Allocate(g.InputSize);
        var dw = be.Allocate(g.WeightSize);
        try
        {
            be.FillNormal(3, 0, x, g.InputSize);
            be.FillNormal(4, 0, w, g.WeightSize);
            be.Conv2dForward(x, w, null, g, y);
            float fwd = be.MeasureMilliseconds(() => { for (int i = 0; i < 10; i++) be.Conv2dForward(x, w, null, g, y); }) / 10;
            float bwdData = be.MeasureMilliseconds(() => { for (int i = 0; i < 10; i++) be.Conv2dBackwardData(y, w, g, dx); }) / 10;
            float bwdWeight = be.MeasureMilliseconds(() => { for (int i = 0; i < 10; i++) be.Conv2dBackwardWeight(x, y, g, dw, null); }) / 10;
            double flops = 2.0 * g.N * g.O * g.OH * g.OW * g.C * g.KH * g.KW;
            Console.WriteLine($"bench {label}: conv3x3 {g}: forward {fwd:F3} ms ({flops / (fwd * 1e9):F1} TFLOP/s), " +
                $"backward-data {bwdData:F3} ms, backward-weight {bwdWeight:F3} ms");
        }
        finally
        {
            x.Release();
            w.Release();
            y.Release();
            dx.Release();
            dw.Release();
        }
    }
}
