using System.Diagnostics;
using Ddpm.Backends.Cpu;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// Side-by-side figures in one process: FMA peak (1 thread and all), SGEMM GFLOP/s at 256, 1024, 2048 squared
/// as % of the peak of the same thread count, conv2d 3x3 forward + backward on [16,64,32,32] and on a deep
/// level's [16,256,4,4]. Each figure is
/// the median of several timed repetitions after warm-up. Options: --threads N (default all cores),
/// --reps N (default 7), --sizes 256,1024,2048, --cpu-time (time the single-thread figures by process CPU
/// time instead of wall time: steadier on a shared machine, where other processes take time slices).
/// </summary>
public static class QuickReport
{
    private static bool _cpuTime;

    /// <summary>Seconds on the clock in use: wall time, or the process's CPU time with --cpu-time.</summary>
    internal static double Now() =>
        _cpuTime ? Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds : Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency;

    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount, reps = 7;
        int[] sizes = [256, 1024, 2048];
        for (int i = 0; i < args.Length; i += 2)
        {
            if (args[i] == "--cpu-time") { _cpuTime = true; i--; continue; }
            if (i + 1 >= args.Length) { Console.Error.WriteLine($"Option {args[i]} needs a value"); return 2; }
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[i + 1]); break;
                case "--reps": reps = int.Parse(args[i + 1]); break;
                case "--sizes": sizes = args[i + 1].Split(',').Select(int.Parse).ToArray(); break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        if (_cpuTime) threads = 1;
        Console.WriteLine($"# Ddpm CPU benchmarks: {Environment.ProcessorCount} logical CPUs, .NET {Environment.Version}, threads {threads}, median of {reps}{(_cpuTime ? ", CPU-time clock" : "")}");
        double peak1 = Median(Enumerable.Range(0, 5).Select(_ => FmaPeak.Measure(1, clock: Now)).ToArray());
        double peakN = Median(Enumerable.Range(0, 5).Select(_ => FmaPeak.Measure(threads)).ToArray());
        Console.WriteLine($"fma-peak 1 thread: {peak1:F1} GFLOP/s; {threads} threads: {peakN:F1} GFLOP/s");
        double kernel = Median(Enumerable.Range(0, 5).Select(_ => Ddpm.Backends.Cpu.Fast.Sgemm.MicroKernelGflops(256, 200_000, Now)).ToArray());
        Console.WriteLine($"sgemm micro-kernel alone (kc 256, packed panels in cache) 1 thread: {kernel:F1} GFLOP/s = {100 * kernel / peak1:F1}% of FMA peak");

        if (threads > 1)
        {
            var (region, fill) = PoolLatency(threads, reps);
            Console.WriteLine($"worker pool {threads} threads: empty region {region:F1} us, SiLU of 64K floats {fill:F1} us (1 thread: {PoolLatency(1, reps).Fill:F1} us)");
        }
        foreach (int t in threads == 1 ? new[] { 1 } : new[] { 1, threads })
        {
            using var be = new CpuBackend(t);
            double peak = t == 1 ? peak1 : peakN;
            foreach (int s in sizes)
            {
                double g = Sgemm(be, s, reps);
                Console.WriteLine($"sgemm {s}^3 threads {t}: {g:F1} GFLOP/s = {100 * g / peak:F1}% of FMA peak");
            }
        }
        using (var be = new CpuBackend(threads))
        foreach (var (c, hw) in new[] { (64, 32), (256, 4) })
        {
            var (fwd, bwdData, bwdWeight) = Conv(be, reps, c, hw);
            double flops = 2.0 * 16 * c * hw * hw * c * 9 / 1e9;
            Console.WriteLine($"conv2d 3x3 [16,{c},{hw},{hw}]->{c} threads {threads}: forward {fwd:F2} ms ({flops / fwd * 1e3:F1} GFLOP/s), " +
                $"backward-data {bwdData:F2} ms ({flops / bwdData * 1e3:F1}), backward-weight {bwdWeight:F2} ms ({flops / bwdWeight * 1e3:F1}), " +
                $"total {fwd + bwdData + bwdWeight:F2} ms ({3 * flops / (fwd + bwdData + bwdWeight) * 1e3:F1} GFLOP/s)");
        }
        return 0;
    }

    private static double Median(double[] v)
    {
        Array.Sort(v);
        return v.Length % 2 == 1 ? v[v.Length / 2] : 0.5 * (v[v.Length / 2 - 1] + v[v.Length / 2]);
    }


    /// <summary>
    /// Microseconds per worker-pool region: one item per worker doing nothing (the hand-off and join alone),
    /// and SiLU over 64K floats (a typical small elementwise op of the UNet, split in 4 chunks), each the median of
    /// <paramref name="reps"/> batches of 2,000 calls.
    /// </summary>
    public static (double Region, double Fill) PoolLatency(int threads, int reps)
    {
        using var be = new CpuBackend(threads);
        using var pool = new Ddpm.Backends.Cpu.Fast.WorkerPool(threads);
        var src = BenchClock.Filled(be, 65536, 1); var dst = be.Allocate(65536);
        const int calls = 2000;
        double Time(Action op)
        {
            for (int i = 0; i < 200; i++) op();
            var t = new double[reps];
            for (int r = 0; r < reps; r++)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < calls; i++) op();
                t[r] = (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency / calls * 1e6;
            }
            return Median(t);
        }
        double region = Time(() => pool.For(threads, (_, _) => { }));
        double fill = Time(() => be.Unary(UnaryOp.Silu, src, 65536, dst));
        src.Release(); dst.Release();
        return (region, fill);
    }

    /// <summary>Median GFLOP/s of C = A B at s x s x s.</summary>
    public static double Sgemm(CpuBackend be, int s, int reps)
    {
        var a = BenchClock.Filled(be, s * s, 1); var b = BenchClock.Filled(be, s * s, 2); var c = be.Allocate(s * s);
        double flops = 2.0 * s * s * s;
        int inner = Math.Max(1, (int)(2e9 / flops / 4));
        var times = new double[reps];
        for (int w = 0; w < 2; w++) be.Gemm(false, false, a, 0, b, 0, 1, s, s, s, 1f, 0f, c, 0);
        for (int r = 0; r < reps; r++)
        {
            double t0 = Now();
            for (int i = 0; i < inner; i++) be.Gemm(false, false, a, 0, b, 0, 1, s, s, s, 1f, 0f, c, 0);
            times[r] = (Now() - t0) / inner;
        }
        a.Release(); b.Release(); c.Release();
        return flops / Median(times) / 1e9;
    }

    /// <summary>Median milliseconds of forward, backward-data and backward-weight of a 3x3 s1 p1 conv, [16, c, hw, hw] -> c.</summary>
    public static (double, double, double) Conv(CpuBackend be, int reps, int c, int hw)
    {
        var g = new ConvGeometry(16, c, hw, hw, c, 3, 3, 1, 1, 1, 1);
        var x = BenchClock.Filled(be, g.InputSize, 1); var w = BenchClock.Filled(be, g.WeightSize, 2); var bias = BenchClock.Filled(be, g.O, 3);
        var y = be.Allocate(g.OutputSize); var dx = be.Allocate(g.InputSize); var dw = be.Allocate(g.WeightSize); var db = be.Allocate(g.O);
        var tf = new double[reps]; var td = new double[reps]; var tw = new double[reps];
        for (int r = -2; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            be.Conv2dForward(x, w, bias, g, y);
            double f = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            be.Conv2dBackwardData(y, w, g, dx);
            double d = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            be.Conv2dBackwardWeight(x, y, g, dw, db);
            double wt = sw.Elapsed.TotalMilliseconds;
            if (r >= 0) { tf[r] = f; td[r] = d; tw[r] = wt; }
        }
        foreach (var b in new[] { x, w, bias, y, dx, dw, db }) b.Release();
        return (Median(tf), Median(td), Median(tw));
    }
}
