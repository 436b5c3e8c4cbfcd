using System.Globalization;
using Ddpm.Backends.Cpu;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>conv [--reps 15] [--threads 1] [--avx2 1] [--shapes "N,C,H,O,K,S,P;..."]</c>: forward (with bias), backward-data and
/// backward-weight (with the bias gradient) of square convolutions, milliseconds per call and GFLOP/s (the fastest of
/// the repetitions: on a shared machine interference only adds time; thread CPU time on one thread, wall time
/// otherwise). The default shapes are the <c>small</c> UNet's convolutions that do not run as Winograd at batch 64:
/// its 1x1 shortcuts, the 3x3 stride-2 downsampling, the 4x4 stride-2 upsampling (a transposed convolution: its
/// forward is this backward-data) and the 1-channel image projection and output layer.
/// </summary>
public static class ConvBench
{
    public static int Run(string[] args)
    {
        int reps = 15, threads = 1;
        bool avx2 = false;
        string shapes = "64,64,32,32,1,1,0;64,256,8,128,1,1,0;64,128,16,64,1,1,0;64,32,32,32,3,2,1;64,64,16,64,3,2,1;64,32,32,32,4,2,1;64,64,16,64,4,2,1;64,1,32,32,3,1,1;64,32,32,1,3,1,1";
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--reps": reps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--shapes": shapes = args[i + 1]; break;
                case "--avx2": avx2 = args[i + 1] == "1"; break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        Func<double> clock = BenchClock.For(threads);
        using var be = new CpuBackend(new CpuBackendOptions { Threads = threads, Avx512 = !avx2 });
        Console.WriteLine($"convolutions, {be.Description}, ms per call (GFLOP/s), fastest of {reps}");
        foreach (var spec in shapes.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var v = spec.Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
            var g = new ConvGeometry(v[0], v[1], v[2], v[2], v[3], v[4], v[4], v[5], v[5], v[6], v[6]);
            var x = BenchClock.Filled(be, g.InputSize, 1); var w = BenchClock.Filled(be, g.WeightSize, 2); var bias = BenchClock.Filled(be, g.O, 3); var dy = BenchClock.Filled(be, g.OutputSize, 4);
            var y = be.Allocate(g.OutputSize); var dx = be.Allocate(g.InputSize); var dw = be.Allocate(g.WeightSize); var db = be.Allocate(g.O);
            double T(Action a) => BenchClock.BestMs(clock, reps, a);
            double f = T(() => be.Conv2dForward(x, w, bias, g, y));
            double d = T(() => be.Conv2dBackwardData(dy, w, g, dx));
            double wt = T(() => be.Conv2dBackwardWeight(x, dy, g, dw, db));
            double gf = 2.0 * g.N * g.O * g.OH * g.OW * g.C * g.KH * g.KW / 1e6;
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0,-34} fwd {1,7:F3} ({2,5:F1})  bwd-data {3,7:F3} ({4,5:F1})  bwd-weight {5,7:F3} ({6,5:F1})",
                $"[{g.N},{g.C},{g.H},{g.W}]->{g.O} {g.KH}x{g.KW} s{g.StrideH} p{g.PadH}", f, gf / f, d, gf / d, wt, gf / wt));
            foreach (var b in new[] { x, w, bias, dy, y, dx, dw, db }) b.Release();
        }
        return 0;
    }

}
