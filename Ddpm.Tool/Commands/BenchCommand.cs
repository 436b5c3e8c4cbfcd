using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using CommandLine;
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

namespace Ddpm.Tool.Commands;

/// <summary>What <c>bench</c> times.</summary>
public enum BenchMode
{
    /// <summary>A training step: forward, backward and Adam.</summary>
    Train,
    /// <summary>A sampling step: the model without grad and one reverse step.</summary>
    Sample,
    /// <summary>One SGEMM of --size cubed.</summary>
    Gemm,
    /// <summary>One all-reduce (average) of the model's gradient buffer over the ranks of an MPI job.</summary>
    AllReduce,
}

[Verb("bench", HelpText = "Median seconds per training step or sampling step (images/s), or SGEMM GFLOP/s.")]
public sealed class BenchOptions : ModelOptions
{
    [Option("mode", Default = BenchMode.Train, HelpText = "train (forward + backward + Adam; data-parallel with its all-reduce's share when " +
        "started by an MPI launcher), sample (one reverse step, no grad), gemm, or allreduce (the model's gradient buffer averaged over " +
        "the ranks of an MPI job: time and bandwidth).")]
    public BenchMode Mode { get; set; } = BenchMode.Train;

    [Option("batch", HelpText = "Batch size (default: the preset's).")]
    public int? Batch { get; set; }

    [Option("steps", Default = 5, HelpText = "Timed repetitions (the median is reported).")]
    public int Steps { get; set; }

    [Option("warmup", Default = 1, HelpText = "Untimed repetitions first (JIT, memory pools).")]
    public int Warmup { get; set; }

    [Option("size", Default = 1024, HelpText = "Matrix size for --mode gemm (N x N x N).")]
    public int Size { get; set; }

    [Option("json", Default = false, HelpText = "Also print one JSON object on the last line.")]
    public bool Json { get; set; }

    [Option("profile", Default = false, HelpText = "Also print where the timed steps spend their time: an op table (each conv and GEMM " +
        "shape apart) with calls, ms and GFLOP/s per step. Waits for the device after every op, so steps run a little slower.")]
    public bool Profile { get; set; }

    [Option("profile-top", Default = 25, HelpText = "Rows of the --profile table (the rest are summed in one line).")]
    public int ProfileTop { get; set; }

    [Option("distributed", HelpText = "train and allreduce: mpi (one rank of an MPI job; --batch is the global batch), nccl (CUDA ranks) or none. " +
        "Default as for train: the launcher's word, NCCL for --backend cuda when it is found.")]
    public DistributedMode? Distributed { get; set; }

    [Option("bucket-mb", Default = DataParallel.DefaultBucketMegabytes, HelpText = "train on several ranks: average the gradients in buckets of at least this " +
        "many MB started during the backward pass (0: one all-reduce after it). Default 4, range 0 to 1024.")]
    public double BucketMb { get; set; } = DataParallel.DefaultBucketMegabytes;
}

public static class BenchCommand
{
    public static int Run(BenchOptions o, ToolConsole con)
    {
        if (o.Steps <= 0 || o.Warmup < 0) throw new UsageError("--steps must be positive and --warmup >= 0.");
        string mode = o.Mode.ToString().ToLowerInvariant(); // as the report and its JSON name it
        var preset = ModelOptions.PresetNamed(o.Preset ?? "small");
        var cfg = o.ResolveModel(preset.Model);
        int batch = o.Batch ?? preset.Batch;
        if (batch is <= 0 or > TrainOptions.MaxBatch) throw new UsageError($"--batch must be between 1 and {TrainOptions.MaxBatch:N0}, got {batch}.");
        if (mode == "train" && ToolBackends.IsHostMemory(o.Backend))
            MemoryEstimate.Require(MemoryEstimate.TrainingBytes(cfg, batch), $"training a {cfg.ParameterCount():N0}-parameter model with --batch {batch}");
        TrainOptions.CheckBucketMb(o.BucketMb);
        if (o.ProfileTop <= 0) throw new UsageError($"--profile-top must be positive, got {o.ProfileTop}.");
        if (mode is "sample" or "gemm" && o.Distributed is DistributedMode.Mpi or DistributedMode.Nccl)
            throw new UsageError($"--distributed {o.Distributed.ToString()!.ToLowerInvariant()} applies to --mode train and allreduce, not {mode}.");
        var job = mode is "train" or "allreduce" ? ToolCollective.Create(o.Distributed, o.Backend) : null;
        using var hostCollective = job?.Host;
        int ranks = hostCollective?.Size ?? 1;
        if (mode == "allreduce" && ranks < 2)
            throw new UsageError("--mode allreduce times an all-reduce between ranks: start it with an MPI launcher, e.g. mpiexec -n 2 ddpm-tool bench --mode allreduce.");
        if (mode == "train" && batch % ranks != 0)
            throw new UsageError($"--batch {batch} does not divide into {ranks} ranks (it is the global batch).");
        if (hostCollective is { Rank: > 0 }) con = ToolCollective.Quiet(con);
        if (job?.Warning is not null) con.Err.WriteLine($"ddpm-tool: warning: {job.Warning}");
        var raw = ToolBackends.Create(o, job?.LocalRank ?? 0);
        var profiler = o.Profile ? new ProfilingBackend(raw) : null;
        // The step's FLOPs (convolutions and GEMMs) are counted by a profiler that does not wait for each op.
        var counter = profiler ?? (mode is "train" or "sample" ? new ProfilingBackend(raw, synchronize: false) : null);
        using IBackend be = counter ?? raw;
        using var collective = job is null ? null : new TimedCollective(job.ForBackend(raw));
        var times = new List<double>();
        var allReduceTimes = new List<double>();
        double flops = 0;
        long parameters = 0;
        int buckets = 0;

        if (mode == "allreduce")
        {
            int count = checked((int)cfg.ParameterCount());
            var grad = be.Allocate(count);
            var host = new float[count];
            Philox.FillNormal(host, (ulong)collective!.Rank + 1, 0);
            be.Upload(host, grad, 0);
            for (int i = 0; i < o.Warmup + o.Steps; i++)
            {
                collective.Barrier();
                var sw = Stopwatch.StartNew();
                collective.AllReduce(grad, 0, count, Tensors.Distributed.ReduceOp.Average);
                be.Synchronize();
                if (i >= o.Warmup) times.Add(sw.Elapsed.TotalSeconds);
            }
            grad.Release();
            parameters = count;
        }
        else if (mode == "gemm")
        {
            int n = o.Size;
            if (n <= 0) throw new UsageError($"--size must be positive, got {n}.");
            var host = new float[n * n];
            Philox.FillNormal(host, 1, 0);
            var a = be.Allocate(n * n); var b = be.Allocate(n * n); var c = be.Allocate(n * n);
            be.Upload(host, a, 0); be.Upload(host, b, 0);
            for (int i = 0; i < o.Warmup + o.Steps; i++)
            {
                if (i == o.Warmup) counter?.Start();
                var sw = Stopwatch.StartNew();
                be.Gemm(false, false, a, 0, b, 0, 1, n, n, n, 1f, 0f, c, 0);
                be.Synchronize();
                if (i >= o.Warmup) times.Add(sw.Elapsed.TotalSeconds);
            }
            a.Release(); b.Release(); c.Release();
            flops = 2.0 * n * n * n;
        }
        else
        {
            using var model = new UNet(be, cfg, new PhiloxGenerator(0));
            parameters = model.ParameterCount();
            var diffusion = new DenoiseDiffusion(model, new DiffusionConfig());
            if (mode == "train")
            {
                using var trainer = new Trainer(diffusion, new SyntheticBatches(cfg.ImageChannels, cfg.ImageSize, 1),
                    // As the peers measure it: forward + backward + Adam, no EMA copy and no gradient clipping.
                    new TrainingConfig { BatchSize = batch, EmaDecay = 0f, GradClip = 0f },
                    new DataParallel(collective!, ChecksumEvery: 0, BucketMegabytes: o.BucketMb));
                buckets = trainer.GradientBuckets?.Buckets.Count ?? 0;
                for (int i = 0; i < o.Warmup + o.Steps; i++)
                {
                    if (i == o.Warmup) counter?.Start();
                    collective!.Reset();
                    var s = trainer.Step();
                    if (i >= o.Warmup)
                    {
                        times.Add(s.Seconds);
                        allReduceTimes.Add(collective.BufferSeconds);
                    }
                }
            }
            else
            {
                model.Eval();
                var gen = new PhiloxGenerator(2);
                using var x = Tensor.RandN(be, new Shape(batch, cfg.ImageChannels, cfg.ImageSize, cfg.ImageSize), gen);
                var t = Enumerable.Repeat(500, batch).ToArray();
                for (int i = 0; i < o.Warmup + o.Steps; i++)
                {
                    if (i == o.Warmup) counter?.Start();
                    var sw = Stopwatch.StartNew();
                    using (var scope = new TensorScope())
                    {
                        var z = Tensor.RandN(be, x.Shape, gen);
                        diffusion.PSample(x, t, z);
                        be.Synchronize();
                    }
                    if (i >= o.Warmup) times.Add(sw.Elapsed.TotalSeconds);
                }
            }
        }

        counter?.Stop();
        double median = Median(times);
        long peak = Process.GetCurrentProcess().PeakWorkingSet64;
        var inv = CultureInfo.InvariantCulture;
        con.Out.WriteLine($"bench {mode} on {(profiler ?? raw).Description}");
        if (mode == "gemm")
        {
            double gflops = flops / median / 1e9;
            con.Out.WriteLine(string.Format(inv, "  SGEMM {0}^3: median {1:F4} s over {2} runs = {3:F1} GFLOP/s (min {4:F4} s, max {5:F4} s)",
                o.Size, median, times.Count, gflops, times.Min(), times.Max()));
            PrintProfile();
            if (o.Json)
                con.Out.WriteLine(JsonSerializer.Serialize(new { mode, backend = be.Name, size = o.Size, threads = o.Threads, median_s = median, gflops }));
        }
        else if (mode == "allreduce")
        {
            // Algorithm bandwidth: bytes / time; bus bandwidth: what each link carries in a ring, 2 (N - 1) / N of it.
            double bytes = 4.0 * parameters, algbw = bytes / median / 1e9, busbw = algbw * 2.0 * (ranks - 1) / ranks;
            con.Out.WriteLine($"  preset {o.Preset ?? preset.Name}: {parameters:N0} gradient floats ({bytes / 1e6:F1} MB), {ranks} rank{(ranks == 1 ? "" : "s")} over {CollectiveChoice.Describe(collective!.Inner)}");
            con.Out.WriteLine(string.Format(inv, "  all-reduce (average): median {0:F2} ms over {1} runs (min {2:F2} ms, max {3:F2} ms); algorithm bandwidth {4:F2} GB/s, bus bandwidth {5:F2} GB/s",
                median * 1e3, times.Count, times.Min() * 1e3, times.Max() * 1e3, algbw, busbw));
            if (o.Json)
                con.Out.WriteLine(JsonSerializer.Serialize(new
                {
                    mode, preset = o.Preset ?? preset.Name, backend = be.Name, ranks, collective = CollectiveChoice.Describe(collective.Inner), floats = parameters,
                    median_s = median, algbw_gb_per_s = algbw, busbw_gb_per_s = busbw,
                }));
        }
        else
        {
            double ips = batch / median;
            con.Out.WriteLine($"  preset {o.Preset ?? preset.Name}: {cfg}, {parameters:N0} parameters");
            con.Out.WriteLine(string.Format(inv, "  {0} step, batch {1}: median {2:F4} s over {3} runs = {4:F2} images/s (min {5:F4} s, max {6:F4} s); peak memory {7:F2} GB",
                mode == "train" ? "training" : "sampling", batch, median, times.Count, ips, times.Min(), times.Max(), peak / 1e9));
            double? allReduce = ranks > 1 ? Median(allReduceTimes) : null;
            if (allReduce is { } ar)
                con.Out.WriteLine(string.Format(inv, "  data-parallel: {0} ranks over {1}, {2} images per rank, {3}; the gradient all-reduce takes a median {4:F1} ms of the step ({5:F1} %)",
                    ranks, CollectiveChoice.Describe(collective!.Inner), batch / ranks,
                    buckets > 0 ? string.Format(inv, "{0} bucket{1} (--bucket-mb {2:G}) started during the backward pass", buckets, buckets == 1 ? "" : "s", o.BucketMb)
                        : "one all-reduce after the backward pass",
                    ar * 1e3, 100 * ar / median));
            var arithmetic = Arithmetic(counter!.Entries.Sum(e => e.Flops) / o.Steps, median, raw);
            con.Out.WriteLine(arithmetic.Describe());
            PrintProfile();
            if (o.Json)
                con.Out.WriteLine(JsonSerializer.Serialize(new
                {
                    mode, preset = o.Preset ?? preset.Name, backend = be.Name, batch, threads = o.Threads, median_s = median, images_per_s = ips,
                    peak_memory_bytes = peak, ranks, allreduce_median_s = allReduce, buckets,
                    flops_per_step = arithmetic.FlopsPerStep, gflops_per_s = arithmetic.Gflops, fma_peak_gflops = arithmetic.PeakGflops,
                    efficiency_percent = arithmetic.EfficiencyPercent,
                }));
        }
        return 0;

        static StepArithmetic Arithmetic(double flopsPerStep, double seconds, IBackend backend)
        {
            // The CPU's FMA peak on the backend's threads, measured now (median of 3): the machine's speed drifts.
            double? peak = backend is CpuBackend cpu
                ? Median(Enumerable.Range(0, 3).Select(_ => FmaPeak.Measure(cpu.Threads, 0.2)).ToList())
                : null;
            return new StepArithmetic(flopsPerStep, flopsPerStep / seconds / 1e9, peak);
        }

        static double Median(List<double> v)
        {
            var sorted = v.Order().ToList();
            int h = sorted.Count / 2;
            return sorted.Count % 2 == 1 ? sorted[h] : 0.5 * (sorted[h - 1] + sorted[h]);
        }

        void PrintProfile()
        {
            if (profiler is null) return;
            con.Out.WriteLine($"  profile of the {o.Steps} timed steps, per step (ops waited for one by one):");
            foreach (var line in profiler.Report(o.ProfileTop, o.Steps).TrimEnd().Split('\n')) con.Out.WriteLine("    " + line.TrimEnd());
        }
    }
}

/// <summary>
/// A step's arithmetic: the FLOPs of its convolutions and GEMMs (counted as direct convolutions: 2 C KH KW per
/// output, whatever algorithm runs them), their rate, and that rate as a share of the FMA peak of the backend's
/// threads (CPU backends only).
/// </summary>
internal readonly record struct StepArithmetic(double FlopsPerStep, double Gflops, double? PeakGflops)
{
    public double? EfficiencyPercent => PeakGflops is { } p ? 100 * Gflops / p : null;

    public string Describe()
    {
        var inv = CultureInfo.InvariantCulture;
        string line = string.Format(inv, "  arithmetic: {0:F1} GFLOP per step (convolutions as direct, GEMMs) = {1:F1} GFLOP/s", FlopsPerStep / 1e9, Gflops);
        return PeakGflops is { } p
            ? line + string.Format(inv, ", {0:F1} % of the FMA peak of these threads ({1:F0} GFLOP/s, measured now)", EfficiencyPercent, p)
            : line;
    }
}
