using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Ddpm.Backends.Cpu;

/// <summary>
/// The FMA roofline of this CPU as a program can reach it: 12 independent register-only FMA chains (enough to
/// cover 4-cycle latency on two FMA pipes), widest vectors available, no memory traffic. The denominator of the
/// arithmetic efficiency `ddpm-tool bench` reports.
/// </summary>
public static class FmaPeak
{
    private const int Chains = 12;

    public static int Lanes => Avx512F.IsSupported ? 16 : 8;

    /// <summary>
    /// GFLOP/s of <paramref name="threads"/> threads running chains at once for about the given time. One thread
    /// runs on the calling thread, timed by <paramref name="clock"/> (seconds; wall time when null).
    /// </summary>
    public static double Measure(int threads, double seconds = 0.25, Func<double>? clock = null)
    {
        long iterations = 4_000_000;
        // Calibrate on one thread so each measured run lasts about the requested time.
        var sw = Stopwatch.StartNew();
        Run(iterations);
        double t = sw.Elapsed.TotalSeconds;
        if (threads == 1)
        {
            // On the calling thread, timed by the report's clock (wall or CPU time).
            clock ??= () => Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency;
            double t0 = clock();
            Run(iterations);
            return (double)iterations * Chains * Lanes * 2 / (clock() - t0) / 1e9;
        }
        iterations = Math.Max(iterations, (long)(iterations * seconds / Math.Max(t, 1e-4)));

        using var start = new Barrier(threads + 1);
        var workers = new Thread[threads];
        var sink = new float[threads];
        for (int i = 0; i < threads; i++)
        {
            int id = i;
            workers[i] = new Thread(() =>
            {
                start.SignalAndWait();
                sink[id] = Run(iterations);
            }) { IsBackground = true };
            workers[i].Start();
        }
        start.SignalAndWait();
        sw.Restart();
        foreach (var w in workers) w.Join();
        double elapsed = sw.Elapsed.TotalSeconds;
        return threads * (double)iterations * Chains * Lanes * 2 / elapsed / 1e9;
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Run(long iterations)
    {
        if (Avx512F.IsSupported)
        {
            var m = Vector512.Create(0.9999999f); var a = Vector512.Create(1e-7f);
            Vector512<float> c0 = Vector512.Create(1f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
                c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
            for (long i = 0; i < iterations; i++)
            {
                c0 = Vector512.FusedMultiplyAdd(c0, m, a); c1 = Vector512.FusedMultiplyAdd(c1, m, a);
                c2 = Vector512.FusedMultiplyAdd(c2, m, a); c3 = Vector512.FusedMultiplyAdd(c3, m, a);
                c4 = Vector512.FusedMultiplyAdd(c4, m, a); c5 = Vector512.FusedMultiplyAdd(c5, m, a);
                c6 = Vector512.FusedMultiplyAdd(c6, m, a); c7 = Vector512.FusedMultiplyAdd(c7, m, a);
                c8 = Vector512.FusedMultiplyAdd(c8, m, a); c9 = Vector512.FusedMultiplyAdd(c9, m, a);
                c10 = Vector512.FusedMultiplyAdd(c10, m, a); c11 = Vector512.FusedMultiplyAdd(c11, m, a);
            }
            return Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
        }
        else
        {
            var m = Vector256.Create(0.9999999f); var a = Vector256.Create(1e-7f);
            Vector256<float> c0 = Vector256.Create(1f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
                c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
            for (long i = 0; i < iterations; i++)
            {
                c0 = Vector256.FusedMultiplyAdd(c0, m, a); c1 = Vector256.FusedMultiplyAdd(c1, m, a);
                c2 = Vector256.FusedMultiplyAdd(c2, m, a); c3 = Vector256.FusedMultiplyAdd(c3, m, a);
                c4 = Vector256.FusedMultiplyAdd(c4, m, a); c5 = Vector256.FusedMultiplyAdd(c5, m, a);
                c6 = Vector256.FusedMultiplyAdd(c6, m, a); c7 = Vector256.FusedMultiplyAdd(c7, m, a);
                c8 = Vector256.FusedMultiplyAdd(c8, m, a); c9 = Vector256.FusedMultiplyAdd(c9, m, a);
                c10 = Vector256.FusedMultiplyAdd(c10, m, a); c11 = Vector256.FusedMultiplyAdd(c11, m, a);
            }
            return Vector256.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
        }
    }
}
