using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CommandLine;
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
    /// <summary>Sampling steps: DDPM reverse steps (the model without grad and the update) as the sampler runs them.</summary>
    Sample,
    /// <summary>One SGEMM of --size cubed.</summary>
    Gemm,
    /// <summary>One all-reduce (average) of the model's gradient buffer over the ranks of an MPI job.</summary>
    AllReduce,
}

[Verb("bench", HelpText = "Median seconds per training step or sampling step (images/s), or SGEMM GFLOP/s.")]
public sealed class BenchOptions : ModelOptions
{
    /// <summary>Timed as training and sampling run: in the backend's default precision (tf32 on cuda).</summary>
    protected override bool UsesBackendDefaultPrecision => true;

    [Option("mode", Default = BenchMode.Train, HelpText = "train (forward + backward + Adam; data-parallel with its all-reduce's share when " +
        "started by an MPI launcher), sample (DDPM reverse steps as the sampler runs them, no grad), gemm, or allreduce (the model's gradient buffer averaged over " +
        "the ranks of an MPI job: time and bandwidth).")]
    public BenchMode Mode { get; set; } = BenchMode.Train;

    [Option("batch", HelpText = "Batch size (default: the preset's).")]
    public int? Batch { get; set; }

    [Option("steps", Default = 5, HelpText = "Timed repetitions (the median is reported).")]
    public int Steps { get; set; }

    [Option("warmup", Default = 1, HelpText = "Untimed repetitions first (JIT, memory pools); a training step recorded as a CUDA graph " +
        "has at least 2, its eager step and its recording, so that the timed steps are replays.")]
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
    /// <summary>What every mode of a bench run shares: the options, the model, the backend (behind the FLOP counter or profiler) and the ranks.</summary>
    private sealed record Bench(BenchOptions O, ToolConsole Con, Presets.Preset Preset, UNetConfig Model, int Batch, IBackend Backend, IBackend Raw,
        ProfilingBackend? Profiler, ProfilingBackend? Counter, TimedCollective? Collective, int Ranks)
    {
        /// <summary>Device work of the timed steps, as the backend counts it (a GPU backend: launches, library calls, waits, memory).</summary>
        public DeviceWork Device { get; } = new(Raw as IDeviceCounters, O.Steps);

        private bool _counting;

        /// <summary>Starts counting FLOPs and device work, at the first timed step.</summary>
        public void StartCounting()
        {
            Counter?.Start();
            Device.Start();
            _counting = true;
        }

        /// <summary>
        /// Stops counting (once: later calls keep the first count); the device's counters are read before the
        /// profiler's closing wait, which is no part of a step.
        /// </summary>
        public void StopCounting()
        {
            if (!_counting) return;
            _counting = false;
            Device.Stop();
            Counter?.Stop();
        }

        public string Mode => O.Mode.ToString().ToLowerInvariant(); // as the report and its JSON name it
        public string PresetName => O.Preset ?? Preset.Name;

        /// <summary>The JSON object of the report (one per mode; its keys may grow, never change).</summary>
        public JsonObject Json(params (string Key, object? Value)[] values)
        {
            var json = new JsonObject { ["mode"] = Mode };
            foreach (var (key, value) in values) json[key] = JsonSerializer.SerializeToNode(value);
            return json;
        }
    }

    public static int Run(BenchOptions o, ToolConsole con)
    {
        if (o.Steps <= 0 || o.Warmup < 0) throw new UsageError("--steps must be positive and --warmup >= 0.");
        var preset = ModelOptions.PresetNamed(o.Preset ?? Presets.Default);
        var cfg = o.ResolveModel(preset.Model);
        int batch = o.Batch ?? preset.Batch;
        if (batch is <= 0 or > TrainOptions.MaxBatch) throw new UsageError($"--batch must be between 1 and {TrainOptions.MaxBatch:N0}, got {batch}.");
        if (o.Mode == BenchMode.Train && ToolBackends.IsHostMemory(o.Backend))
            MemoryEstimate.Require(MemoryEstimate.TrainingBytes(cfg, batch), $"training a {cfg.ParameterCount():N0}-parameter model with --batch {batch}");
        TrainOptions.CheckBucketMb(o.BucketMb);
        if (o.ProfileTop <= 0) throw new UsageError($"--profile-top must be positive, got {o.ProfileTop}.");
        bool parallel = o.Mode is BenchMode.Train or BenchMode.AllReduce;
        if (!parallel && o.Distributed is DistributedMode.Mpi or DistributedMode.Nccl)
            throw new UsageError($"--distributed {o.Distributed.ToString()!.ToLowerInvariant()} applies to --mode train and allreduce, not {o.Mode.ToString().ToLowerInvariant()}.");
        var job = parallel ? ToolCollective.Create(o.Distributed, o.Backend) : null;
        using var hostCollective = job?.Host;
        int ranks = hostCollective?.Size ?? 1;
        if (o.Mode == BenchMode.AllReduce && ranks < 2)
            throw new UsageError("--mode allreduce times an all-reduce between ranks: start it with an MPI launcher, e.g. mpiexec -n 2 ddpm-tool bench --mode allreduce.");
        if (o.Mode == BenchMode.Train && batch % ranks != 0)
            throw new UsageError($"--batch {batch} does not divide into {ranks} ranks (it is the global batch).");
        if (hostCollective is { Rank: > 0 }) con = ToolCollective.Quiet(con);
        if (job?.Warning is not null) con.Err.WriteLine($"ddpm-tool: warning: {job.Warning}");
        var raw = ToolBackends.Create(o, job?.LocalRank ?? 0);
        var profiler = o.Profile ? new ProfilingBackend(raw) : null;
        // The step's FLOPs (convolutions and GEMMs) are counted by a profiler that does not wait for each op.
        var counter = profiler ?? (o.Mode is BenchMode.Train or BenchMode.Sample ? new ProfilingBackend(raw, synchronize: false) : null);
        using IBackend be = counter ?? raw;
        using var collective = job is null ? null : new TimedCollective(job.ForBackend(raw));
        var b = new Bench(o, con, preset, cfg, batch, be, raw, profiler, counter, collective, ranks);
        var json = o.Mode switch
        {
            BenchMode.Train => Train(b),
            BenchMode.Sample => Sample(b),
            BenchMode.Gemm => Gemm(b),
            BenchMode.AllReduce => AllReduce(b),
            _ => throw new UsageError($"--mode {o.Mode} is not a bench mode."),
        };
        if (o.Json) con.Out.WriteLine(json.ToJsonString());
        return 0;
    }

    /// <summary>--mode train: forward + backward + Adam (data-parallel with its all-reduce's share when ranks > 1).</summary>
    private static JsonObject Train(Bench b)
    {
        using var model = new UNet(b.Backend, b.Model, new PhiloxGenerator(0));
        var diffusion = new DenoiseDiffusion(model, new DiffusionConfig());
        using var trainer = new Trainer(diffusion, new SyntheticBatches(b.Model.ImageChannels, b.Model.ImageSize, 1),
            // As the peers measure it: forward + backward + Adam, no EMA copy and no gradient clipping.
            new TrainingConfig { BatchSize = b.Batch, EmaDecay = 0f, GradClip = 0f },
            new DataParallel(b.Collective!, ChecksumEvery: 0, BucketMegabytes: b.O.BucketMb));
        int buckets = trainer.GradientBuckets?.Buckets.Count ?? 0;
        var times = new List<double>();
        var allReduceTimes = new List<double>();
        // A recorded step is replayed from the third run on (one eager run, one recording): those two are never timed or counted.
        int warmup = trainer.UsesStepGraph ? Math.Max(b.O.Warmup, 2) : b.O.Warmup;
        for (int i = 0; i < warmup + b.O.Steps; i++)
        {
            if (i == warmup) b.StartCounting();
            b.Collective!.Reset();
            var s = trainer.Step();
            if (i >= warmup)
            {
                times.Add(s.Seconds);
                allReduceTimes.Add(b.Collective.BufferSeconds);
            }
        }
        var json = StepReport(b, times, model.ParameterCount());
        double? allReduce = b.Ranks > 1 ? Median(allReduceTimes) : null;
        double median = Median(times);
        if (allReduce is { } ar)
            b.Con.Out.WriteLine(string.Format(Inv, "  data-parallel: {0} ranks over {1}, {2} images per rank, {3}; the gradient all-reduce takes a median {4:F1} ms of the step ({5:F1} %)",
                b.Ranks, CollectiveChoice.Describe(b.Collective!.Inner), b.Batch / b.Ranks,
                buckets > 0 ? string.Format(Inv, "{0} bucket{1} (--bucket-mb {2:G}) started during the backward pass", buckets, buckets == 1 ? "" : "s", b.O.BucketMb)
                    : "one all-reduce after the backward pass",
                ar * 1e3, 100 * ar / median));
        json["ranks"] = b.Ranks;
        json["allreduce_median_s"] = allReduce;
        json["buckets"] = buckets;
        return Arithmetic(b, json, median);
    }

    /// <summary>
    /// --mode sample: DDPM reverse steps without grad, run by the sampler's own loop (so replayed from their recording
    /// where the backend records steps, unless --no-cuda-graphs), each timed up to a wait for the device. The run
    /// goes from position warm-up + steps down to the data; its last step (t = 0, no noise) and the finite check
    /// read at the end are not timed.
    /// </summary>
    private static JsonObject Sample(Bench b)
    {
        using var model = new UNet(b.Backend, b.Model, new PhiloxGenerator(0));
        var diffusion = new DenoiseDiffusion(model, new DiffusionConfig());
        model.Eval();
        int timed = b.O.Warmup + b.O.Steps;
        if (timed >= diffusion.Steps)
            throw new UsageError($"--mode sample runs --warmup + --steps reverse steps of the {diffusion.Steps}; {timed} is too many.");
        var gen = new PhiloxGenerator(2);
        using var noGrad = GradMode.NoGrad();
        using var run = new ReverseSteps(new Sampler(diffusion), SamplerKind.Ddpm, diffusion.Steps, 0f) { FiniteCheckEvery = timed + 1 };
        var x = Tensor.RandN(b.Backend, new Shape(b.Batch, b.Model.ImageChannels, b.Model.ImageSize, b.Model.ImageSize), gen);
        var times = new List<double>();
        var sw = Stopwatch.StartNew();
        if (b.O.Warmup == 0) b.StartCounting();
        using var images = run.Run(x, timed, gen, p =>
        {
            if (p.Step > timed) return;
            b.Backend.Synchronize();
            if (p.Step > b.O.Warmup) times.Add(sw.Elapsed.TotalSeconds);
            if (p.Step == b.O.Warmup) b.StartCounting();
            if (p.Step == timed) b.StopCounting();
            sw.Restart();
        }, null);
        var json = StepReport(b, times, model.ParameterCount());
        b.Con.Out.WriteLine($"  sampling steps {(run.UsesStepGraphs ? "replayed from their recording (--no-cuda-graphs: eager)" : "run eagerly")}");
        json["step_graphs"] = run.UsesStepGraphs;
        return Arithmetic(b, json, Median(times));
    }

    /// <summary>--mode gemm: one SGEMM of --size cubed.</summary>
    private static JsonObject Gemm(Bench b)
    {
        int n = b.O.Size;
        if (n <= 0) throw new UsageError($"--size must be positive, got {n}.");
        var be = b.Backend;
        var host = new float[n * n];
        Philox.FillNormal(host, 1, 0);
        var a = be.Allocate(n * n); var m = be.Allocate(n * n); var c = be.Allocate(n * n);
        be.Upload(host, a, 0); be.Upload(host, m, 0);
        var times = Timed(b, () => be.Gemm(false, false, a, 0, m, 0, 1, n, n, n, 1f, 0f, c, 0));
        a.Release(); m.Release(); c.Release();
        double median = Median(times), gflops = 2.0 * n * n * n / median / 1e9;
        b.StopCounting();
        b.Con.Out.WriteLine($"bench {b.Mode} on {(b.Profiler ?? b.Raw).Description}");
        b.Con.Out.WriteLine(string.Format(Inv, "  SGEMM {0}^3: median {1:F4} s over {2} runs = {3:F1} GFLOP/s (min {4:F4} s, max {5:F4} s)",
            n, median, times.Count, gflops, times.Min(), times.Max()));
        b.Device.Print(b.Con);
        PrintProfile(b);
        return b.Json(("backend", be.Name), ("size", n), ("threads", b.O.Threads), ("median_s", median), ("gflops", gflops),
            ("device_work_per_step", b.Device.Json()));
    }

    /// <summary>--mode allreduce: the model's gradient buffer averaged over the ranks: time and bandwidth.</summary>
    private static JsonObject AllReduce(Bench b)
    {
        var be = b.Backend;
        var collective = b.Collective!;
        int count = checked((int)b.Model.ParameterCount());
        var grad = be.Allocate(count);
        var host = new float[count];
        Philox.FillNormal(host, (ulong)collective.Rank + 1, 0);
        be.Upload(host, grad, 0);
        var times = new List<double>();
        for (int i = 0; i < b.O.Warmup + b.O.Steps; i++)
        {
            collective.Barrier();
            var sw = Stopwatch.StartNew();
            collective.AllReduce(grad, 0, count, Tensors.Distributed.ReduceOp.Average);
            be.Synchronize();
            if (i >= b.O.Warmup) times.Add(sw.Elapsed.TotalSeconds);
        }
        grad.Release();
        double median = Median(times);
        // Algorithm bandwidth: bytes / time; bus bandwidth: what each link carries in a ring, 2 (N - 1) / N of it.
        double bytes = 4.0 * count, algbw = bytes / median / 1e9, busbw = algbw * 2.0 * (b.Ranks - 1) / b.Ranks;
        string over = CollectiveChoice.Describe(collective.Inner);
        b.Con.Out.WriteLine($"bench {b.Mode} on {(b.Profiler ?? b.Raw).Description}");
        b.Con.Out.WriteLine($"  preset {b.PresetName}: {count:N0} gradient floats ({bytes / 1e6:F1} MB), {b.Ranks} rank{(b.Ranks == 1 ? "" : "s")} over {over}");
        b.Con.Out.WriteLine(string.Format(Inv, "  all-reduce (average): median {0:F2} ms over {1} runs (min {2:F2} ms, max {3:F2} ms); algorithm bandwidth {4:F2} GB/s, bus bandwidth {5:F2} GB/s",
            median * 1e3, times.Count, times.Min() * 1e3, times.Max() * 1e3, algbw, busbw));
        return b.Json(("preset", b.PresetName), ("backend", be.Name), ("ranks", b.Ranks), ("collective", over), ("floats", count),
            ("median_s", median), ("algbw_gb_per_s", algbw), ("busbw_gb_per_s", busbw));
    }

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Times <paramref name="step"/> (waiting for the device after each), after the untimed warm-up repetitions.</summary>
    private static List<double> Timed(Bench b, Action step)
    {
        var times = new List<double>();
        for (int i = 0; i < b.O.Warmup + b.O.Steps; i++)
        {
            if (i == b.O.Warmup) b.StartCounting();
            var sw = Stopwatch.StartNew();
            step();
            b.Backend.Synchronize();
            if (i >= b.O.Warmup) times.Add(sw.Elapsed.TotalSeconds);
        }
        return times;
    }

    /// <summary>The report of a training or sampling step: time, images/s, peak memory.</summary>
    private static JsonObject StepReport(Bench b, List<double> times, long parameters)
    {
        b.StopCounting();
        double median = Median(times), ips = b.Batch / median;
        long peak = Process.GetCurrentProcess().PeakWorkingSet64;
        b.Con.Out.WriteLine($"bench {b.Mode} on {(b.Profiler ?? b.Raw).Description}");
        b.Con.Out.WriteLine($"  preset {b.PresetName}: {b.Model}, {parameters:N0} parameters");
        b.Con.Out.WriteLine(string.Format(Inv, "  {0} step, batch {1}: median {2:F4} s over {3} runs = {4:F2} images/s (min {5:F4} s, max {6:F4} s); peak memory {7:F2} GB",
            b.O.Mode == BenchMode.Train ? "training" : "sampling", b.Batch, median, times.Count, ips, times.Min(), times.Max(), peak / 1e9));
        return b.Json(("preset", b.PresetName), ("backend", b.Backend.Name), ("batch", b.Batch), ("threads", b.O.Threads), ("median_s", median),
            ("images_per_s", ips), ("peak_memory_bytes", peak));
    }

    /// <summary>The step's arithmetic (FLOPs counted by the profiler, their rate and its share of the backend's peak), printed and added to <paramref name="json"/>.</summary>
    private static JsonObject Arithmetic(Bench b, JsonObject json, double median)
    {
        double flopsPerStep = b.Counter!.Entries.Sum(e => e.Flops) / b.O.Steps;
        var arithmetic = new StepArithmetic(flopsPerStep, flopsPerStep / median / 1e9, ToolBackends.Traits(b.O.Backend).PeakGflops?.Invoke(b.Raw));
        b.Con.Out.WriteLine(arithmetic.Describe());
        b.Device.Print(b.Con);
        PrintProfile(b);
        json["flops_per_step"] = arithmetic.FlopsPerStep;
        json["gflops_per_s"] = arithmetic.Gflops;
        json["fma_peak_gflops"] = arithmetic.PeakGflops;
        json["efficiency_percent"] = arithmetic.EfficiencyPercent;
        json["device_work_per_step"] = b.Device.Json();
        return json;
    }

    private static double Median(List<double> v)
    {
        var sorted = v.Order().ToList();
        int h = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[h] : 0.5 * (sorted[h - 1] + sorted[h]);
    }

    private static void PrintProfile(Bench b)
    {
        if (b.Profiler is null) return;
        b.Con.Out.WriteLine($"  profile of the {b.O.Steps} timed steps, per step (ops waited for one by one):");
        foreach (var line in b.Profiler.Report(b.O.ProfileTop, b.O.Steps).TrimEnd().Split('\n')) b.Con.Out.WriteLine("    " + line.TrimEnd());
    }
}

/// <summary>The device work between <see cref="Start"/> and <see cref="Stop"/>, per timed step, where the backend counts it.</summary>
internal sealed class DeviceWork(IDeviceCounters? device, int steps)
{
    private DeviceCounters _before;
    private DeviceCounters? _work;

    public void Start()
    {
        if (device is null) return;
        device.ResetPeak();
        _before = device.ReadCounters();
    }

    public void Stop()
    {
        if (device is not null) _work = DeviceCounters.Between(_before, device.ReadCounters());
    }

    public void Print(ToolConsole con)
    {
        if (_work is not { } w) return;
        con.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, "  device work per step (counted by the backend): {0:G4} kernel launches, {1:G4} BLAS calls, " +
            "{2:G4} DNN-library calls, {3:G4} host waits, {4:G4} graph launches; peak device memory {5:F3} GB",
            (double)w.KernelLaunches / steps, (double)w.BlasCalls / steps, (double)w.DnnCalls / steps,
            (double)w.HostSynchronizations / steps, (double)w.GraphLaunches / steps, w.PeakDeviceBytes / 1e9));
        if (w.CastKernels > 0)
            con.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, "  of the kernels, {0:G4} cast operands to a narrower type ({1:G4} elements)",
                (double)w.CastKernels / steps, (double)w.CastElements / steps));
    }

    /// <summary>The JSON report's <c>device_work_per_step</c>: null where the backend counts no device work.</summary>
    public JsonObject? Json() => _work is not { } w ? null : new JsonObject
    {
        ["kernel_launches"] = (double)w.KernelLaunches / steps, ["blas_calls"] = (double)w.BlasCalls / steps,
        ["dnn_calls"] = (double)w.DnnCalls / steps, ["host_syncs"] = (double)w.HostSynchronizations / steps,
        ["graph_launches"] = (double)w.GraphLaunches / steps, ["cast_kernels"] = (double)w.CastKernels / steps,
        ["cast_elements"] = (double)w.CastElements / steps, ["peak_device_bytes"] = w.PeakDeviceBytes,
    };
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
