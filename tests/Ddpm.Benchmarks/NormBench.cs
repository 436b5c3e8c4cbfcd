using System.Globalization;
using Ddpm.Backends.Cpu;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>groupnorm [--reps 9] [--threads 1]</c>: group norm + SiLU forward and backward (with and without the
/// time-embedding shift) on the <c>small</c> UNet's activation shapes at batch 64, milliseconds per call (the fastest
/// of the repetitions: on a shared machine interference only adds time; thread CPU time on one thread, wall time
/// otherwise), with the elements per nanosecond.
/// </summary>
public static class NormBench
{
    public static int Run(string[] args)
    {
        int reps = 9, threads = 1, batch = 64;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--reps": reps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--batch": batch = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        Func<double> clock = BenchClock.For(threads);
        using var be = new CpuBackend(threads);
        Console.WriteLine($"group norm + silu, batch {batch}, {be.Description}, ms per call, fastest of {reps}");
        foreach (var (c, hw) in new[] { (32, 1024), (64, 1024), (64, 256), (128, 64), (256, 64) })
        {
            int n = batch, groups = 32, size = n * c * hw;
            var x = BenchClock.Filled(be, size, 1); var dy = BenchClock.Filled(be, size, 2); var y = be.Allocate(size); var dx = be.Allocate(size);
            var gamma = BenchClock.Filled(be, c, 3); var beta = BenchClock.Filled(be, c, 4); var shift = BenchClock.Filled(be, n * c, 5);
            var mean = be.Allocate(n * groups); var rstd = be.Allocate(n * groups); var dg = be.Allocate(c); var db = be.Allocate(c);
            double T(Action a) => BenchClock.BestMs(clock, reps, a);
            double f = T(() => be.GroupNormForward(x, null, gamma, beta, n, c, hw, groups, 1e-5f, true, y, mean, rstd));
            double b = T(() => be.GroupNormBackward(dy, x, null, gamma, beta, mean, rstd, n, c, hw, groups, true, dx, dg, db));
            double fs = T(() => be.GroupNormForward(x, shift, gamma, beta, n, c, hw, groups, 1e-5f, true, y, mean, rstd));
            double bs = T(() => be.GroupNormBackward(dy, x, shift, gamma, beta, mean, rstd, n, c, hw, groups, true, dx, dg, db));
            double fp = T(() => be.GroupNormForward(x, null, gamma, beta, n, c, hw, groups, 1e-5f, false, y, mean, rstd));
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture,
                "[{0},{1},{2}] g32: +silu fwd {3:F3} ({4:F2}/ns), bwd {5:F3} ({6:F2}/ns); shift+silu fwd {7:F3}, bwd {8:F3}; plain fwd {9:F3}",
                n, c, hw, f, size / f / 1e6, b, size / b / 1e6, fs, bs, fp));
            foreach (var buf in new[] { x, dy, y, dx, gamma, beta, shift, mean, rstd, dg, db }) buf.Release();
        }
        return 0;
    }

}
