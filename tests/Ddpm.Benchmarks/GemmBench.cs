using System.Globalization;
using Ddpm.Backends.Cpu;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>gemm [--reps 15] [--threads 1] [--kc 768] [--shapes "TA,TB,batch,m,n,k;..."]</c>: batched SGEMMs, milliseconds per
/// call and GFLOP/s (the fastest of the repetitions; thread CPU time on one thread, wall time otherwise). The default
/// shapes are the <c>small</c> UNet's attention products at batch 64 (projections, scores, their gradients).
/// </summary>
public static class GemmBench
{
    public static int Run(string[] args)
    {
        int reps = 15, threads = 1, kc = new CpuBackendOptions().GemmKC;
        string shapes = "N,T,1,4096,384,128;N,N,1,4096,128,384;T,N,1,384,128,4096;N,T,64,64,64,128;N,N,64,64,128,64;T,N,64,64,128,64;N,T,64,64,64,128;N,N,1,4096,128,128;T,N,1,128,128,4096";
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--reps": reps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--kc": kc = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--shapes": shapes = args[i + 1]; break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        Func<double> clock = BenchClock.For(threads);
        using var be = new CpuBackend(new CpuBackendOptions { Threads = threads, GemmKC = kc });
        Console.WriteLine($"gemm, {be.Description}, KC {kc}, ms per call (GFLOP/s), fastest of {reps}");
        foreach (var spec in shapes.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var v = spec.Split(',');
            bool ta = v[0] == "T", tb = v[1] == "T";
            int batch = int.Parse(v[2], CultureInfo.InvariantCulture), m = int.Parse(v[3], CultureInfo.InvariantCulture);
            int n = int.Parse(v[4], CultureInfo.InvariantCulture), k = int.Parse(v[5], CultureInfo.InvariantCulture);
            var a = BenchClock.Filled(be, batch * m * k, 1); var b = BenchClock.Filled(be, batch * k * n, 2); var c = be.Allocate(batch * m * n);
            double best = BenchClock.BestMs(clock, reps, () => be.Gemm(ta, tb, a, (long)m * k, b, (long)k * n, batch, m, n, k, 1f, 0f, c, (long)m * n));
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0}{1} {2}x{3}x{4}x{5}: {6:F3} ms ({7:F1} GFLOP/s)",
                v[0], v[1], batch, m, n, k, best, 2.0 * batch * m * n * k / best / 1e6));
            a.Release(); b.Release(); c.Release();
        }
        return 0;
    }

}
