using System.Globalization;
using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cpu.Fast;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>winograd [--batch 64] [--reps 5]</c>: where a Winograd convolution's time goes on one thread, timed by the
/// thread's CPU time (<see cref="BenchClock.ThreadCpuSeconds"/>), F(2x2, 3x3) and F(4x4, 3x3) one after the other:
/// the filter transform and packing, the input transform, the products and the output transform of the forward pass
/// over all chunks, and the whole forward, input-gradient and weight-gradient ops, for the 3x3 layers of the
/// <c>small</c> UNet. The fastest of the repetitions (on a shared machine interference only adds time), milliseconds
/// per call. <c>--layer i --tile t --part p</c> run one layer
/// (0 .. 5), tile (2 or 4) and part (filters, in, products, out, forward, bwd-data, bwd-weight) alone: under <c>valgrind --tool=callgrind</c>, the instruction counts of two runs with
/// different <c>--reps</c> give each op's instructions exactly.
/// </summary>
public static unsafe class WinogradParts
{
    public static int Run(string[] args)
    {
        int batch = 64, reps = 5, onlyLayer = -1, onlyTile = 0;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--batch": batch = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--reps": reps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--layer": onlyLayer = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--tile": onlyTile = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--part": _part = args[i + 1]; break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        Console.WriteLine($"winograd parts, batch {batch}, 1 thread, {new CpuBackend(1).Description}, thread CPU time, fastest of {reps}, ms per call");
        Console.WriteLine($"{"layer",-24} {"tile",4} {"filters",8} {"in-xform",9} {"products",9} {"out-xform",9} {"forward",9} {"bwd-data",9} {"bwd-weight",10} {"fwd GFLOP/s",11}");
        var layers = new[] { (32, 32, 32), (64, 32, 32), (64, 16, 64), (128, 16, 64), (128, 8, 128), (256, 8, 128) };
        for (int li = 0; li < layers.Length; li++)
        {
            if (onlyLayer >= 0 && li != onlyLayer) continue;
            var (c, hw, o) = layers[li];
            var g = new ConvGeometry(batch, c, hw, hw, o, 3, 3, 1, 1, 1, 1);
            foreach (int tile in new[] { 2, 4 })
            {
                if (onlyTile != 0 && tile != onlyTile) continue;
                var options = new CpuBackendOptions { Threads = 1, WinogradTile = tile, WinogradMinTiles = 1, WinogradMinWork = 0 };
                using var be = new CpuBackend(options);
                using var pool = new WorkerPool(options);
                var x = BenchClock.Filled(be, g.InputSize, 1); var w = BenchClock.Filled(be, g.WeightSize, 2); var bias = BenchClock.Filled(be, g.O, 3);
                var y = be.Allocate(g.OutputSize); var dx = be.Allocate(g.InputSize); var dw = be.Allocate(g.WeightSize);
                var parts = tile == 4 ? Parts<WinogradF4>(pool, g, reps) : Parts<WinogradF2>(pool, g, reps);
                double fwd = Time("forward", reps, () => be.Conv2dForward(x, w, bias, g, y));
                double bwd = Time("bwd-data", reps, () => be.Conv2dBackwardData(y, w, g, dx));
                double bww = Time("bwd-weight", reps, () => be.Conv2dBackwardWeight(x, y, g, dw, null));
                double flops = 2.0 * g.N * g.O * g.OH * g.OW * g.C * 9;
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0,-24} {1,4} {2,8:F2} {3,9:F2} {4,9:F2} {5,9:F2} {6,9:F2} {7,9:F2} {8,10:F2} {9,11:F1}",
                    $"[{batch},{c},{hw},{hw}]->{o}", $"F{tile}", parts.Filter, parts.In, parts.Products, parts.Out, fwd, bwd, bww, flops / fwd / 1e6));
                foreach (var b in new[] { x, w, bias, y, dx, dw }) b.Release();
            }
        }
        return 0;
    }


    /// <summary>With --part, only that part runs (the others report 0).</summary>
    private static string? _part;

    private static double Time(string part, int reps, Action op)
    {
        if (_part is not null && _part != part) return 0;
        return BenchClock.BestMs(BenchClock.ThreadCpuSeconds, reps, op);
    }

    /// <summary>The forward pass's stages over all chunks, each timed alone (as <see cref="Winograd.Forward{T}"/> runs them).</summary>
    private static (double Filter, double In, double Products, double Out) Parts<T>(WorkerPool pool, ConvGeometry g, int reps) where T : IWinogradTile
    {
        int m = T.M, planes = T.Planes;
        int th = (g.OH + m - 1) / m, tw = (g.OW + m - 1) / m, totalRows = g.N * th;
        int rowsPer = Winograd.RowsPerChunk(g, tw, totalRows, pool.Options.WinogradChunk, planes, pool.Threads);
        int chunks = (totalRows + rowsPer - 1) / rowsPer, ld = Winograd.ChunkLd(rowsPer, tw);
        var (mr, nr) = Sgemm.RegisterTile(g.O, pool.Options);
        long aSize = Sgemm.PackedASize(g.O, g.C, mr), bPlane = Winograd.PlaneStride(Sgemm.PackedBSize(g.C, ld, nr));
        long mPlane = Winograd.PlaneStride((long)g.O * ld), uPlane = (long)g.O * g.C;
        var xa = GC.AllocateArray<float>(g.InputSize, pinned: true);
        var ya = GC.AllocateArray<float>(g.OutputSize, pinned: true);
        var wa = GC.AllocateArray<float>(g.WeightSize, pinned: true);
        var uu = GC.AllocateArray<float>((int)(planes * uPlane), pinned: true);
        var ua = GC.AllocateArray<float>((int)(planes * aSize), pinned: true);
        var va = GC.AllocateArray<float>((int)(planes * bPlane), pinned: true);
        var ma = GC.AllocateArray<float>((int)(planes * mPlane), pinned: true);
        var sa = GC.AllocateArray<float>((int)T.StageFloats(tw, ld), pinned: true);
        for (int i = 0; i < xa.Length; i++) xa[i] = (i % 17) * 0.1f - 0.8f;
        for (int i = 0; i < wa.Length; i++) wa[i] = (i % 13) * 0.1f - 0.6f;
        fixed (float* x = xa, y = ya, w = wa, u0 = uu, u = ua, v = va, mm = ma, stage = sa)
        {
            float* xp = x, yp = y, wp = w, u0p = u0, up = u, vp = v, mp = mm, sp = stage;
            double tf = Time("filters", reps, () =>
            {
                T.FilterTransform(wp, u0p, uPlane, 0, g.O * g.C);
                for (int xi = 0; xi < planes; xi++) Sgemm.PackAPanel(u0p + xi * uPlane, g.C, g.O, g.C, mr, up + xi * aSize);
            });
            double tin = Time("in", reps, () =>
            {
                for (int ch = 0; ch < chunks; ch++)
                {
                    int r0 = ch * rowsPer, rows = Math.Min(rowsPer, totalRows - r0);
                    T.InputTransform(xp, g, th, tw, r0, rows, vp, bPlane, nr, ld, sp);
                }
            });
            double tprod = Time("products", reps, () =>
            {
                for (int ch = 0; ch < chunks; ch++)
                {
                    int r0 = ch * rowsPer, rows = Math.Min(rowsPer, totalRows - r0), width = (rows * tw + nr - 1) / nr * nr;
                    for (int xi = 0; xi < planes; xi++)
                        Sgemm.RunPacked(mr, nr, g.O, width, g.C, up + xi * aSize, vp + xi * bPlane, mp + xi * mPlane, ld);
                }
            });
            double tout = Time("out", reps, () =>
            {
                for (int ch = 0; ch < chunks; ch++)
                {
                    int r0 = ch * rowsPer, rows = Math.Min(rowsPer, totalRows - r0);
                    T.OutputTransform(mp, mPlane, null, yp, g, th, tw, r0, rows, ld, sp);
                }
            });
            return (tf, tin, tprod, tout);
        }
    }
}

/// <summary>
/// <c>winograd-sweep [--reps 5] [--threads 1]</c>: forward + input gradient + weight gradient of 3x3 convolutions
/// as implicit GEMMs, Winograd F(2x2, 3x3) and F(4x4, 3x3) (every threshold off), milliseconds per call (the fastest of
/// the repetitions, <see cref="BenchClock"/>): where Winograd starts to pay, for
/// <see cref="CpuBackendOptions.WinogradMinTiles"/> and <see cref="CpuBackendOptions.WinogradMinWork"/>.
/// </summary>
public static class WinogradSweep
{
    public static int Run(string[] args)
    {
        int reps = 5, threads = 1;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--reps": reps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        Func<double> clock = BenchClock.For(threads);
        Console.WriteLine($"winograd sweep, {threads} thread(s), {new CpuBackend(threads).Description}, ms per forward + bwd-data + bwd-weight, fastest of {reps}");
        Console.WriteLine($"{"geometry",-26} {"F2 tiles",9} {"O C tiles",10} {"gemm",8} {"F2",8} {"F4",8} {"gemm/F2",8} {"gemm/F4",8}");
        int[][] shapes =
        [
            [1, 32, 32, 32], [2, 32, 32, 32], [8, 32, 32, 32], [1, 64, 16, 64], [2, 64, 16, 64], [8, 64, 16, 64], [16, 64, 16, 64],
            [1, 128, 8, 128], [2, 128, 8, 128], [8, 128, 8, 128], [16, 128, 8, 128], [32, 128, 8, 128], [8, 256, 8, 128],
            [16, 1024, 4, 1024], [64, 256, 4, 256], [16, 256, 8, 256], [2, 64, 32, 64], [16, 64, 32, 64],
        ];
        foreach (var sh in shapes)
        {
            var g = new ConvGeometry(sh[0], sh[1], sh[2], sh[2], sh[3], 3, 3, 1, 1, 1, 1);
            var t = new double[3];
            for (int v = 0; v < 3; v++)
            {
                var o = new CpuBackendOptions { Threads = threads, Winograd = v > 0, WinogradTile = v == 2 ? 4 : 2, WinogradMinTiles = 1, WinogradMinWork = 0 };
                using var be = new CpuBackend(o);
                var x = BenchClock.Filled(be, g.InputSize, 1); var w = BenchClock.Filled(be, g.WeightSize, 2); var y = be.Allocate(g.OutputSize);
                var dx = be.Allocate(g.InputSize); var dw = be.Allocate(g.WeightSize);
                t[v] = BenchClock.BestMs(clock, reps, () =>
                {
                    be.Conv2dForward(x, w, null, g, y);
                    be.Conv2dBackwardData(y, w, g, dx);
                    be.Conv2dBackwardWeight(x, y, g, dw, null);
                });
                foreach (var b in new[] { x, w, y, dx, dw }) b.Release();
            }
            long tiles = Winograd.Tiles(g, 2);
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0,-26} {1,9} {2,10:F1}M {3,8:F2} {4,8:F2} {5,8:F2} {6,8:F2} {7,8:F2}",
                $"[{sh[0]},{sh[1]},{sh[2]},{sh[2]}]->{sh[3]}", tiles, g.O * (double)g.C * tiles / 1e6, t[0], t[1], t[2], t[0] / t[1], t[0] / t[2]));
        }
        return 0;
    }

}
