using System.Globalization;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>unet --preset small --mode train|sample --batch 64 [--steps 3] [--threads 1] [--top 30] [--winograd-tile 2|4]
/// [--winograd-min-tiles T] [--winograd-min-work W] [--micro-batches K]</c>: the op table of
/// a UNet step (as <c>ddpm-tool bench --profile</c>), timed by the calling thread's CPU time when the backend runs
/// one thread. On a machine shared with other work a thread that is switched out stops its CPU clock, so the
/// table and the per-step total hold still where wall time moves by a factor of several; cache traffic of the
/// neighbours still shows. With more threads the clock is wall time (helpers' time is not on the caller's clock).
/// The ISA is the process's: <c>DOTNET_EnableAVX512=0</c> runs the AVX2 code of an AVX2-only host. The Winograd
/// thresholds are <see cref="CpuBackendOptions.WinogradMinTiles"/> and <see cref="CpuBackendOptions.WinogradMinWork"/>;
/// a training step runs its batch as K micro-batches (<see cref="Trainer.MicroBatches"/>, gradient accumulation).
/// </summary>
public static class UnetProfile
{
    public static int Run(string[] args)
    {
        string preset = "small", mode = "train";
        var defaults = new CpuBackendOptions();
        int batch = 64, steps = 3, threads = 1, top = 30, tile = defaults.WinogradTile, minTiles = defaults.WinogradMinTiles, micro = 1;
        long minWork = defaults.WinogradMinWork;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--preset": preset = args[i + 1]; break;
                case "--mode": mode = args[i + 1]; break;
                case "--batch": batch = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--steps": steps = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--top": top = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--winograd-tile": tile = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--winograd-min-tiles": minTiles = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--winograd-min-work": minWork = long.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--micro-batches": micro = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"Unknown option {args[i]}"); return 2;
            }
        }
        if (args.Length % 2 != 0) { Console.Error.WriteLine($"Option {args[^1]} needs a value"); return 2; }
        if (mode is not ("train" or "sample")) { Console.Error.WriteLine("--mode is train or sample"); return 2; }
        var cfg = Presets.Get(preset).Model;
        bool cpuClock = threads == 1;
        Func<double> clock = BenchClock.For(threads);
        var raw = new CpuBackend(defaults with { Threads = threads, WinogradTile = tile, WinogradMinTiles = minTiles, WinogradMinWork = minWork });
        using var be = new ProfilingBackend(raw, synchronize: true, clock);
        using var model = new UNet(be, cfg, new PhiloxGenerator(0));
        var diffusion = new DenoiseDiffusion(model, new DiffusionConfig());
        var stepTimes = new List<double>();
        if (mode == "train")
        {
            using var trainer = new Trainer(diffusion, new SyntheticBatches(cfg.ImageChannels, cfg.ImageSize, 1),
                new TrainingConfig { BatchSize = batch, EmaDecay = 0f, GradClip = 0f }) { MicroBatches = micro };
            for (int i = 0; i < 1 + steps; i++)
            {
                if (i == 1) be.Start();
                double t0 = clock();
                trainer.Step();
                if (i >= 1) stepTimes.Add(clock() - t0);
            }
        }
        else
        {
            model.Eval();
            var gen = new PhiloxGenerator(2);
            using var x = Tensor.RandN(be, new Shape(batch, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize), gen);
            var t = Enumerable.Repeat(500, batch).ToArray();
            for (int i = 0; i < 1 + steps; i++)
            {
                if (i == 1) be.Start();
                double t0 = clock();
                using (var scope = new TensorScope())
                {
                    var z = Tensor.RandN(be, x.Shape, gen);
                    diffusion.PSample(x, t, z);
                }
                if (i >= 1) stepTimes.Add(clock() - t0);
            }
        }
        be.Stop();
        stepTimes.Sort();
        double median = stepTimes[stepTimes.Count / 2];
        double flops = be.Entries.Sum(e => e.Flops) / steps;
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"unet {mode} {preset} batch {batch}{(micro > 1 ? $" as {micro} micro-batches" : "")}, {raw.Description}, winograd F({tile}x{tile}, 3x3) " +
            $"from {minTiles} tiles and {minWork} O C tiles, clock: {(cpuClock ? "thread CPU time" : "wall")}");
        Console.WriteLine(string.Format(inv, "step: median {0:F4} s over {1} (min {2:F4}, max {3:F4}) = {4:F2} images/s, {5:F1} GFLOP/s as direct",
            median, steps, stepTimes[0], stepTimes[^1], batch / median, flops / median / 1e9));
        Console.Write(be.Report(top, steps));
        return 0;
    }
}
