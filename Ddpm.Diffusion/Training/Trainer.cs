using System.Diagnostics;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Training;

/// <summary>What one training step did.</summary>
public readonly record struct TrainStep(long Step, float Loss, double GradNorm, float LearningRate, double Seconds, int Batch);

/// <summary>
/// The training loop: L_simple, Adam, optional warm-up, grad-norm clipping and an EMA of the weights. All
/// randomness (timesteps, noise, dropout, data order) comes from Philox streams whose offsets, like every other
/// piece of state, are in the checkpoint, so N steps + resume + M steps equals N + M steps exactly.
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly IBatchSource _data;
    private readonly List<(string Name, Parameter Param, Tensor? Ema)> _params;
    private float[] _batch = [];

    public Trainer(DenoiseDiffusion diffusion, IBatchSource data, TrainingConfig config)
    {
        config.Validate();
        Diffusion = diffusion;
        Model = diffusion.EpsModel;
        Config = config;
        _data = data;
        var mc = Model.Config;
        if (data.Channels != mc.ImageChannels || data.Height != mc.ImageSize || data.Width != mc.ImageSize)
            throw new ArgumentException(
                $"The data has {data.Channels}x{data.Height}x{data.Width} images but the model expects {mc.ImageChannels}x{mc.ImageSize}x{mc.ImageSize}.");
        var trainable = Model.NamedParameters().Where(p => p.Param.RequiresGrad).ToList();
        Optimizer = new Adam(trainable.Select(p => (p.Name, p.Param)), config.LearningRate, config.Beta1, config.Beta2,
            config.AdamEps, config.WeightDecay);
        NoiseGenerator = new PhiloxGenerator(config.Seed * 4 + 1);
        DropoutGenerator = new PhiloxGenerator(config.Seed * 4 + 2);
        Model.SetDropoutGenerator(DropoutGenerator);
        _params = Model.NamedParameters().Select(p =>
        {
            Tensor? ema = null;
            if (config.EmaDecay > 0)
            {
                ema = Tensor.EmptyUntracked(p.Param.Backend, p.Param.Shape);
                ema.CopyFrom(p.Param);
            }
            return (p.Name, p.Param, ema);
        }).ToList();
    }

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

    /// <summary>One optimisation step on the next batch.</summary>
    public TrainStep Step()
    {
        var sw = Stopwatch.StartNew();
        Model.Train();
        var mc = Model.Config;
        int b = Config.BatchSize, per = mc.ImageChannels * mc.ImageSize * mc.ImageSize;
        if (_batch.Length != b * per) _batch = new float[b * per];
        _data.NextBatch(b, _batch);
        float lossValue;
        double norm;
        float lr = Config.LearningRateAt(Optimizer.StepCount + 1);
        using (var scope = new TensorScope())
        {
            var x0 = Tensor.FromArray(Model.Backend, _batch, b, mc.ImageChannels, mc.ImageSize, mc.ImageSize);
            var loss = Diffusion.Loss(x0, NoiseGenerator);
            Model.ZeroGrad();
            loss.Backward();
            lossValue = loss.Item();
            norm = Config.GradClip > 0
                ? GradClip.ClipGradNorm(Model.Parameters(), Config.GradClip)
                : GradClip.GlobalNorm(Model.Parameters());
            Optimizer.LearningRate = lr;
            Optimizer.Step();
        }
        UpdateEma();
        return new TrainStep(Optimizer.StepCount, lossValue, norm, lr, sw.Elapsed.TotalSeconds, b);
    }

    /// <summary>ema = d * ema + (1 - d) * param, d = min(decay, (1 + n) / (10 + n)) with warm-up.</summary>
    private void UpdateEma()
    {
        if (!HasEma) return;
        long n = Optimizer.StepCount;
        double d = Config.EmaDecay;
        if (Config.EmaWarmup) d = Math.Min(d, (1.0 + n) / (10.0 + n));
        foreach (var (_, p, ema) in _params)
            p.Backend.Axpby(p.Buffer, ema!.Buffer, p.Size, (float)(1 - d), (float)d);
    }

    /// <summary>Swaps the EMA weights into the model for the duration of the returned handle (sampling).</summary>
    public IDisposable UseEmaWeights()
    {
        if (!HasEma) return new NoOp();
        var saved = new List<Tensor>();
        foreach (var (_, p, ema) in _params)
        {
            var s = Tensor.EmptyUntracked(p.Backend, p.Shape);
            s.CopyFrom(p);
            saved.Add(s);
            p.CopyFrom(ema!);
        }
        return new Restore(this, saved);
    }

    /// <summary>Restores generator positions (from a checkpoint).</summary>
    public void SetRandomState(ulong noiseOffset, ulong dropoutOffset)
    {
        NoiseGenerator.Offset = noiseOffset;
        DropoutGenerator.Offset = dropoutOffset;
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        foreach (var (_, _, ema) in _params) ema?.Dispose();
    }

    private sealed class NoOp : IDisposable { public void Dispose() { } }

    private sealed class Restore(Trainer trainer, List<Tensor> saved) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            int i = 0;
            foreach (var (_, p, _) in trainer._params)
            {
                p.CopyFrom(saved[i]);
                saved[i++].Dispose();
            }
        }
    }
}
