using System.Diagnostics;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Training;

/// <summary>What one training step did.</summary>
public readonly record struct TrainStep(long Step, float Loss, double GradNorm, float LearningRate, double Seconds, int Batch);

/// <summary>
/// The training loop: L_simple, Adam, optional warm-up, grad-norm clipping and an EMA of the weights. All
/// randomness (timesteps, noise, dropout, data order) comes from Philox streams whose offsets, like every other
/// piece of state, are in the checkpoint, so N steps + resume + M steps equals N + M steps exactly.
/// The model's parameters live in one <see cref="ParameterStore"/> (adopted here unless the model already has
/// one), with the Adam moments and the EMA weights in flat buffers of the same layout, so clipping, Adam and
/// the EMA are a few whole-model launches, and a step waits for the device once: to read the loss and the
/// gradient norm, left side by side in one small device buffer.
/// Data-parallel (<see cref="DataParallel"/>): every rank holds the whole model, reads the same global batch
/// and trains on its shard; its noise, timesteps and dropout masks are drawn at the positions its samples have
/// in the global batch, so the ranks together draw what one process with the whole batch draws. The
/// gradients (of the shard's mean loss) are averaged over the ranks in the store's one flat buffer before
/// clipping, so the norm is the global one and every rank takes the same Adam step; by default in buckets that
/// start during the backward pass (<see cref="DataParallel.BucketMegabytes"/>), so communication overlaps it.
/// A class-conditional model trains on the data's labels, each replaced by the null class with probability
/// <see cref="TrainingConfig.ClassDropout"/>; that draw comes from the noise stream, per sample, like the timesteps.
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly IBatchSource _data;
    private readonly List<(string Name, Parameter Param, Tensor? Ema)> _params;
    private readonly bool _ownsStore;
    private readonly FlatState? _ema;
    private readonly DeviceBuffer _stats;
    private readonly float[] _statsHost = new float[StatsLength];
    private readonly ReplicaCheck _replicaCheck = new();
    private readonly GradientBuckets? _buckets;
    private float[] _batch = [];
    private int[] _labels = [];
    private bool _checkedOnce;
    // Step recording (RecordSteps): the weights a step starts from, its gradient before clipping, its streams' offsets.
    private DeviceBuffer? _recordWeights, _recordGradients;
    private ulong _recordNoiseOffset, _recordDropoutOffset;
    private long _recordedStep = -1;

    // _stats: [loss, sum of squared gradients (hi, lo)].
    private const int StatsLength = 3;

    public Trainer(DenoiseDiffusion diffusion, IBatchSource data, TrainingConfig config)
        : this(diffusion, data, config, DataParallel.None)
    {
    }

    /// <summary>A trainer that is one rank of a data-parallel job; <see cref="TrainingConfig.BatchSize"/> is the global batch.</summary>
    public Trainer(DenoiseDiffusion diffusion, IBatchSource data, TrainingConfig config, DataParallel parallel)
    {
        config.Validate();
        Parallel = parallel;
        parallel.ShardOf(config.BatchSize);
        Diffusion = diffusion;
        Model = diffusion.EpsModel;
        Config = config;
        _data = data;
        var mc = Model.Config;
        if (data.Channels != mc.ImageChannels || data.Height != mc.ImageSize || data.Width != mc.ImageSize)
            throw new ArgumentException(
                $"The data has {data.Channels}x{data.Height}x{data.Width} images but the model expects {mc.ImageChannels}x{mc.ImageSize}x{mc.ImageSize}.");
        if (mc.IsConditional && data.NumClasses != mc.NumClasses)
            throw new ArgumentException(data.NumClasses == 0
                ? $"The model is conditional on {mc.NumClasses} classes but the data has no labels."
                : $"The data has {data.NumClasses} classes but the model is conditional on {mc.NumClasses}.");
        var named = Model.NamedParameters().ToList();
        var existing = named[0].Param.Store;
        if (existing is not null && existing.Holds(named.Select(p => p.Param).ToList())) Store = existing;
        else
        {
            Store = ParameterStore.Adopt(named);
            _ownsStore = true;
        }
        // Parameters kept for name compatibility without gradients (labml's unused attention norm) are stored
        // and averaged like the others but not optimised, and have no Adam moments in checkpoints.
        var trainable = named.Where(p => p.Param.RequiresGrad).ToList();
        Optimizer = new Adam(trainable, config.LearningRate, config.Beta1, config.Beta2, config.AdamEps, config.WeightDecay);
        NoiseGenerator = new PhiloxGenerator(config.NoiseKey);
        DropoutGenerator = new PhiloxGenerator(config.DropoutKey);
        Model.SetDropoutGenerator(DropoutGenerator);
        if (config.EmaDecay > 0) _ema = Store.CreateState(copyParameters: true);
        _params = named.Select((p, i) => (p.Name, p.Param, _ema?.Views[i])).ToList();
        _stats = Store.Backend.Allocate(StatsLength);
        if (!(parallel.BucketMegabytes >= 0 && parallel.BucketMegabytes <= DataParallel.MaxBucketMegabytes))
            throw new ArgumentOutOfRangeException(nameof(parallel), $"A gradient bucket of {parallel.BucketMegabytes} MB is outside 0 .. {DataParallel.MaxBucketMegabytes} MB.");
        if (parallel.Size > 1 && parallel.BucketMegabytes > 0)
            _buckets = new GradientBuckets(Store, parallel.Collective, (long)Math.Ceiling(parallel.BucketMegabytes * 1e6));
    }

    /// <summary>The data-parallel job this trainer is a rank of (<see cref="DataParallel.None"/> alone).</summary>
    public DataParallel Parallel { get; }

    /// <summary>The buckets the gradients are averaged in during the backward pass (null alone or with buckets off).</summary>
    public GradientBuckets? GradientBuckets => _buckets;

    /// <summary>The flat parameter and gradient buffers of the model (the gradients are what a data-parallel step all-reduces).</summary>
    public ParameterStore Store { get; }

    /// <summary>The EMA weights as one flat buffer in <see cref="Store"/>'s layout (null when EMA is off).</summary>
    public DeviceBuffer? EmaWeights => _ema?.Buffer;

    public DenoiseDiffusion Diffusion { get; }
    public UNet Model { get; }
    public TrainingConfig Config { get; }
    public Adam Optimizer { get; }
    public PhiloxGenerator NoiseGenerator { get; private set; }
    public PhiloxGenerator DropoutGenerator { get; private set; }
    public IBatchSource Data => _data;
    public long StepCount => Optimizer.StepCount;
    public bool HasEma => Config.EmaDecay > 0;

    /// <summary>Parameters and their EMA copies by name (EMA null when off).</summary>
    public IEnumerable<(string Name, Parameter Param, Tensor? Ema)> Parameters => _params;

    /// <summary>One optimisation step on the next batch (on every rank of a data-parallel job at once).</summary>
    public TrainStep Step()
    {
        var sw = Stopwatch.StartNew();
        var coll = Parallel.Collective;
        if (_recordWeights is not null)
        {
            Store.Backend.Copy(Store.Parameters, 0, Store.Count, _recordWeights, 0);
            (_recordNoiseOffset, _recordDropoutOffset) = (NoiseGenerator.Offset, DropoutGenerator.Offset);
            _recordedStep = -1;
        }
        if (Parallel.ChecksumEvery > 0 && (!_checkedOnce || Optimizer.StepCount % Parallel.ChecksumEvery == 0))
        {
            _replicaCheck.Verify(coll, Store, Optimizer.StepCount);
            _checkedOnce = true;
        }
        Model.Train();
        var mc = Model.Config;
        int b = Config.BatchSize, per = mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        var (shardStart, shard) = Parallel.ShardOf(b);
        if (_batch.Length != b * per) _batch = new float[b * per];
        // Every rank reads the whole global batch (same source, same seed) and keeps its shard.
        if (!mc.IsConditional) _data.NextBatch(b, _batch);
        else
        {
            if (_labels.Length != b) _labels = new int[b];
            _data.NextBatch(b, _batch, _labels);
        }
        float lr = Config.LearningRateAt(Optimizer.StepCount + 1);
        var be = Store.Backend;
        int k = MicroBatches, micro = shard / k;
        if (micro * k != shard)
            throw new InvalidOperationException($"The shard of {shard} images does not split into {k} micro-batches of equal size.");
        ulong noiseStart = NoiseGenerator.Offset, dropoutStart = DropoutGenerator.Offset;
        Model.ZeroGrad();
        using (var scope = new TensorScope())
        {
            // Shards and micro-batches are parts of the global batch: the backend picks its algorithms for the
            // whole of it, so each sample is computed as the one-process, one-batch step computes it.
            using var whole = be.PartOfBatch(b);
            for (int j = 0; j < k; j++)
            {
                // A micro-batch's activations are freed before the next one runs.
                using var microScope = new TensorScope();
                int start = shardStart + j * micro;
                var x0 = Tensor.FromArray(Model.Backend, _batch.AsSpan(start * per, micro * per), micro, mc.ImageChannels, mc.ImageSize, mc.ImageSize);
                Tensor loss;
                if (coll.Size == 1 && k == 1) loss = Diffusion.Loss(x0, NoiseGenerator, ShardLabels(start, micro));
                else
                {
                    // Each micro-batch draws what its samples draw in the whole global batch: from the step's first
                    // offset, at their positions; every micro-batch leaves the streams where the whole batch would.
                    NoiseGenerator.Offset = noiseStart;
                    DropoutGenerator.Offset = dropoutStart;
                    using var noiseShard = NoiseGenerator.ShardBatch(start, micro, b);
                    using var dropoutShard = DropoutGenerator.ShardBatch(start, micro, b);
                    loss = Diffusion.Loss(x0, NoiseGenerator, ShardLabels(start, micro));
                }
                // The shard's mean loss is the mean of its equal micro-batches' means: each adds 1/k of its gradient.
                if (k > 1) loss = Ops.Affine(loss, 1f / k, 0f);
                bool last = j == k - 1;
                if (_buckets is not null && last)
                {
                    // The mean of the shards' mean-loss gradients is the gradient of the global batch's mean loss,
                    // averaged bucket by bucket while the (last micro-batch's) backward pass runs.
                    _buckets.Begin();
                    loss.Backward(null, _buckets.LeafReady);
                    _buckets.Finish();
                }
                else loss.Backward();
                if (j == 0) be.Copy(loss.Buffer, 0, 1, _stats, 0);
                else be.Axpby(loss.Buffer, 1, 1f, 1f, _stats);
            }
            if (coll.Size > 1 && _buckets is null)
            {
                // The mean of the shards' mean-loss gradients is the gradient of the global batch's mean loss.
                Store.CompleteGradients();
                coll.AllReduce(Store.Gradients, 0, Store.Count, ReduceOp.Average);
            }
            if (_recordGradients is not null)
            {
                Store.CompleteGradients();
                be.Copy(Store.Gradients, 0, Store.Count, _recordGradients, 0);
            }
            // A clip of 0 means none: the norm is still measured (and logged).
            GradClip.ClipGradNorm(Store, Config.GradClip > 0 ? Config.GradClip : 0.0, _stats, 1);
            Optimizer.LearningRate = lr;
            Optimizer.Step();
        }
        UpdateEma();
        // The step's one wait for the device.
        be.Download(_stats, 0, _statsHost);
        // The logged loss is the global batch's mean: the mean of the equal shards' means.
        if (coll.Size > 1) coll.AllReduce(_statsHost.AsSpan(0, 1), ReduceOp.Average);
        double norm = Math.Sqrt(NormMath.Join(_statsHost[1], _statsHost[2]));
        if (_recordWeights is not null) _recordedStep = Optimizer.StepCount;
        return new TrainStep(Optimizer.StepCount, _statsHost[0], norm, lr, sw.Elapsed.TotalSeconds, b);
    }

    /// <summary>
    /// The micro-batches each step runs its (shard of the) batch as, accumulating their gradients before the one
    /// Adam step: the same step as one batch up to float rounding, with the activations of a micro-batch only.
    /// Every sample draws its timestep, noise, label drop and dropout masks at its position in the global batch,
    /// whatever the split. The shard must divide into this many equal parts.
    /// </summary>
    public int MicroBatches
    {
        get => _microBatches;
        set
        {
            int shard = Parallel.ShardOf(Config.BatchSize).Count;
            if (value <= 0 || shard % value != 0)
                throw new ArgumentOutOfRangeException(nameof(value), $"{value} micro-batches do not split this {(Parallel.Size > 1 ? "rank's shard" : "batch")} of {shard} images into equal parts.");
            _microBatches = value;
        }
    }

    private int _microBatches = 1;

    /// <summary>
    /// Keep what <see cref="RecordLastStep"/> needs: each step copies the weights it starts from and its gradient
    /// before clipping (two model-sized device buffers, two device copies a step). One process only.
    /// </summary>
    public bool RecordSteps
    {
        get => _recordWeights is not null;
        set
        {
            if (value == RecordSteps) return;
            if (value && Parallel.Size > 1) throw new InvalidOperationException("Steps are recorded by a single-process trainer only.");
            if (value)
            {
                _recordWeights = Store.Backend.Allocate(Store.Count);
                _recordGradients = Store.Backend.Allocate(Store.Count);
                return;
            }
            _recordWeights!.Release();
            _recordGradients!.Release();
            _recordWeights = _recordGradients = null;
            _recordedStep = -1;
        }
    }

    /// <summary>
    /// The last step as a <see cref="StepRecord"/> (with <see cref="RecordSteps"/> on, before the next step): its
    /// starting weights, batch, timesteps, noise and labels drawn again from the recorded stream offsets, the
    /// gradient before clipping, and the loss and norm of <paramref name="result"/>.
    /// </summary>
    public StepRecord RecordLastStep(TrainStep result)
    {
        if (_recordWeights is null || _recordedStep != result.Step || _recordedStep != Optimizer.StepCount)
            throw new InvalidOperationException($"Step {result.Step} was not recorded (RecordSteps must be on before the step, and the record taken before the next one).");
        var be = Store.Backend;
        var mc = Model.Config;
        int b = Config.BatchSize;
        // The draws of the step in its order: the label drop, the timesteps, the noise (Step and Diffusion.Loss).
        var gen = new PhiloxGenerator(NoiseGenerator.Seed, _recordNoiseOffset);
        int[]? labels = mc.IsConditional ? DropLabels(_labels.AsSpan(0, b), Config.ClassDropout, mc.NullClass, gen) : null;
        var t = gen.NextInts(b, Diffusion.Steps);
        float[] noise;
        using (var n = Tensor.RandN(be, new Shape(b, mc.ImageChannels, mc.ImageSize, mc.ImageSize), gen)) noise = n.ToArray();
        if (gen.Offset != NoiseGenerator.Offset)
            throw new InvalidOperationException("The recorded step's noise stream does not end where the step's did; the record would not replay the step.");
        var weights = new float[Store.Count];
        var grads = new float[Store.Count];
        be.Download(_recordWeights, 0, weights);
        be.Download(_recordGradients!, 0, grads);
        var w = new List<(string, int[], float[])>();
        var g = new Dictionary<string, float[]>();
        foreach (var (name, p, _) in _params)
        {
            int at = Store.Slots[Store.IndexOf(p)].Offset;
            w.Add((name, p.Shape.ToArray(), weights.AsSpan(at, p.Size).ToArray()));
            if (p.RequiresGrad) g[name] = grads.AsSpan(at, p.Size).ToArray();
        }
        return new StepRecord
        {
            Model = mc, Diffusion = Diffusion.Config, Step = result.Step, Loss = result.Loss, GradNorm = result.GradNorm, LearningRate = result.LearningRate,
            DropoutSeed = DropoutGenerator.Seed, DropoutOffset = _recordDropoutOffset, Weights = w, Gradients = g,
            Batch = b, X0 = _batch.AsSpan(0, _batch.Length).ToArray(), Timesteps = t, Noise = noise, Labels = labels,
        };
    }

    /// <summary>The labels of the shard's samples with the label drop applied (null for an unconditional model).</summary>
    private int[]? ShardLabels(int start, int count) => Model.Config.IsConditional
        ? DropLabels(_labels.AsSpan(start, count), Config.ClassDropout, Model.Config.NullClass, NoiseGenerator)
        : null;

    /// <summary>
    /// Replaces each label by <paramref name="nullClass"/> with probability <paramref name="p"/>: sample i is
    /// dropped when the uniform at its position of one per-sample draw from <paramref name="gen"/> is below p
    /// (inside a <see cref="PhiloxGenerator.ShardBatch"/> scope, the positions of the shard's samples).
    /// </summary>
    public static int[] DropLabels(ReadOnlySpan<int> labels, float p, int nullClass, PhiloxGenerator gen)
    {
        ulong at = gen.Take(labels.Length);
        var r = new int[labels.Length];
        for (int i = 0; i < r.Length; i++)
            r[i] = Philox.ToUniform(Philox.Word(gen.Seed, at + (ulong)i)) < p ? nullClass : labels[i];
        return r;
    }

    /// <summary>ema = d * ema + (1 - d) * param, d = min(decay, (1 + n) / (10 + n)) with warm-up.</summary>
    private void UpdateEma()
    {
        if (!HasEma) return;
        long n = Optimizer.StepCount;
        double d = Config.EmaDecay;
        if (Config.EmaWarmup) d = Math.Min(d, (1.0 + n) / (10.0 + n));
        Store.Backend.Axpby(Store.Parameters, Store.Count, (float)(1 - d), (float)d, _ema!.Buffer);
    }

    /// <summary>Swaps the EMA weights into the model for the duration of the returned handle (sampling).</summary>
    public IDisposable UseEmaWeights()
    {
        if (!HasEma) return new NoOp();
        var be = Store.Backend;
        var saved = be.Allocate(Store.Count);
        be.Copy(Store.Parameters, 0, Store.Count, saved, 0);
        be.Copy(_ema!.Buffer, 0, Store.Count, Store.Parameters, 0);
        return new Restore(Store, saved);
    }

    /// <summary>Restores generator positions (from a checkpoint).</summary>
    public void SetRandomState(ulong noiseOffset, ulong dropoutOffset)
    {
        NoiseGenerator.Offset = noiseOffset;
        DropoutGenerator.Offset = dropoutOffset;
    }

    public void Dispose()
    {
        RecordSteps = false;
        Optimizer.Dispose();
        _ema?.Dispose();
        _stats.Release();
        if (_ownsStore) Store.Dispose();
    }

    private sealed class NoOp : IDisposable { public void Dispose() { } }

    private sealed class Restore(ParameterStore store, DeviceBuffer saved) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            store.Backend.Copy(saved, 0, store.Count, store.Parameters, 0);
            saved.Release();
        }
    }
}
