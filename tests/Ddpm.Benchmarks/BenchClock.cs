using System.Diagnostics;
using System.Runtime.InteropServices;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// The clocks and helpers of the kernel benchmarks: one thread is timed by its own CPU time, which stops while the
/// thread is switched out (steadier on a machine shared with other work); several threads by wall time (the helpers'
/// time is not on the caller's clock). A kernel's figure is the fastest of its repetitions: interference only adds.
/// </summary>
public static class BenchClock
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGettime(int clock, out Timespec ts);

    private const int ClockThreadCpuTime = 3;

    /// <summary>Seconds of CPU time of the calling thread (Linux).</summary>
    public static double ThreadCpuSeconds()
    {
        if (ClockGettime(ClockThreadCpuTime, out var ts) != 0) throw new InvalidOperationException("clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed.");
        return ts.Seconds + ts.Nanoseconds * 1e-9;
    }

    /// <summary>Wall seconds.</summary>
    public static double WallSeconds() => Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency;

    /// <summary>The clock for a backend of <paramref name="threads"/> threads: thread CPU time for one, wall time otherwise.</summary>
    public static Func<double> For(int threads) => threads == 1 ? ThreadCpuSeconds : WallSeconds;

    /// <summary>Milliseconds of the fastest of <paramref name="reps"/> runs of <paramref name="op"/> after one untimed run.</summary>
    public static double BestMs(Func<double> clock, int reps, Action op)
    {
        op();
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            double t0 = clock();
            op();
            best = Math.Min(best, (clock() - t0) * 1e3);
        }
        return best;
    }

    /// <summary>A buffer of n uniform floats in [0, 1) from Philox stream <paramref name="seed"/>.</summary>
    public static DeviceBuffer Filled(IBackend be, int n, ulong seed)
    {
        var b = be.Allocate(n);
        be.FillUniform(seed, 0, b, n);
        return b;
    }
}
