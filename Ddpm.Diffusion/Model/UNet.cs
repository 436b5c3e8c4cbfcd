using Ddpm.Tensors;
using Ddpm.Tensors.Nn;

namespace Ddpm.Diffusion.Model;

/// <summary>A block of the UNet: takes the features and the time embedding.</summary>
public abstract class UNetBlock : Module
{
    /// <summary>x: [N, C, H, W], t: [N, time_channels].</summary>
    public abstract Tensor Forward(Tensor x, Tensor t);
}

/// <summary>
/// labml's TimeEmbedding(n_channels): sinusoidal embedding of t with n_channels/8 frequencies
/// f_i = exp(-i ln(10000) / (half - 1)), [sin, cos] concatenated (sin first), then lin2(swish(lin1(.))).
/// </summary>
public sealed class TimeEmbedding : Module
{
    private readonly float[] _freqs;
    private readonly Linear _lin1, _lin2;

    public TimeEmbedding(IBackend be, int nChannels, PhiloxGenerator init)
    {
        NChannels = nChannels;
        _lin1 = Register("lin1", new Linear(be, nChannels / 4, nChannels, init));
        _lin2 = Register("lin2", new Linear(be, nChannels, nChannels, init));
        _freqs = Frequencies(nChannels);
    }

    /// <summary>
    /// The n_channels / 8 frequencies f_i = exp(-i ln(10000) / (half - 1)) as PyTorch computes them: the scalar in
    /// double, rounded to float32, then i * s and exp in float32.
    /// </summary>
    public static float[] Frequencies(int nChannels)
    {
        int half = nChannels / 8;
        float s = (float)(Math.Log(10_000) / (half - 1));
        var freqs = new float[half];
        for (int i = 0; i < half; i++) freqs[i] = MathF.Exp(i * -s);
        return freqs;
    }

    public int NChannels { get; }

    /// <summary>t: N timesteps -> [N, n_channels].</summary>
    public Tensor Forward(IBackend be, ReadOnlySpan<int> t)
    {
        var tf = new float[t.Length];
        for (int i = 0; i < t.Length; i++) tf[i] = t[i];
        using var tt = Tensor.FromArray(be, tf, t.Length, 1);
        using var ff = Tensor.FromArray(be, _freqs, 1, _freqs.Length);
        using var arg = tt * ff;                      // [N, half]
        using var s = Ops.Sin(arg);
        using var c = Ops.Cos(arg);
        using var emb = Ops.Concat([s, c], 1);        // [N, n_channels / 4]
        using var h = _lin1.Forward(emb);
        using var a = Ops.Silu(h);
        return _lin2.Forward(a);
    }
}

/// <summary>
/// labml's ResidualBlock: h = conv1(swish(norm1(x))) + time_emb(swish(t))[:, :, None, None];
/// h = conv2(dropout(swish(norm2(h)))); return h + shortcut(x) (1x1 conv when the widths differ).
/// </summary>
public sealed class ResidualBlock : UNetBlock
{
    private readonly GroupNorm _norm1, _norm2;
    private readonly Conv2d _conv1, _conv2;
    private readonly Conv2d? _shortcut;
    private readonly Linear _timeEmb;
    private readonly Dropout _dropout;

    public ResidualBlock(IBackend be, int inCh, int outCh, int timeCh, int nGroups, float dropout, PhiloxGenerator init)
    {
        _norm1 = Register("norm1", new GroupNorm(be, nGroups, inCh));
        _conv1 = Register("conv1", new Conv2d(be, inCh, outCh, 3, init, padding: 1));
        _norm2 = Register("norm2", new GroupNorm(be, nGroups, outCh));
        _conv2 = Register("conv2", new Conv2d(be, outCh, outCh, 3, init, padding: 1));
        if (inCh != outCh) _shortcut = Register("shortcut", new Conv2d(be, inCh, outCh, 1, init));
        _timeEmb = Register("time_emb", new Linear(be, timeCh, outCh, init));
        _dropout = Register("dropout", new Dropout(dropout));
    }

    public Dropout DropoutLayer => _dropout;

    public override Tensor Forward(Tensor x, Tensor t)
    {
        int n = x.Shape[0];
        using var a1 = _norm1.Forward(x, silu: true);          // act(norm1(x)) as one op
        using var h1 = _conv1.Forward(a1);
        using var ta = Ops.Silu(t);
        using var te = _timeEmb.Forward(ta);                    // [N, out]
        using var te4 = Ops.Reshape(te, n, te.Shape[1], 1, 1);
        using var a2 = _norm2.Forward(h1, silu: true, shift: te4); // act(norm2(h1 + te4)) as one op
        using var d2 = _dropout.Forward(a2);
        using var h3 = _conv2.Forward(d2);
        if (_shortcut is null) return h3 + x;
        using var sc = _shortcut.Forward(x);
        return h3 + sc;
    }
}

/// <summary>
/// labml's AttentionBlock: multi-head self-attention over the H*W positions with a residual connection.
/// Its GroupNorm <c>norm</c> is registered (so names and counts match PyTorch) but, as in labml, never applied,
/// unless <see cref="UNetConfig.AttnNorm"/>: then the queries, keys and values are projected from the normalised
/// input (the original DDPM's attention) and the residual adds the input as it came.
/// </summary>
public sealed class AttentionBlock : UNetBlock
{
    private readonly Linear _projection, _output;
    private readonly GroupNorm? _norm;
    private readonly int _heads, _dk;
    private readonly float _scale;

    public AttentionBlock(IBackend be, int channels, int nHeads, int nGroups, PhiloxGenerator init, bool applyNorm = false)
    {
        _heads = nHeads;
        _dk = channels;
        var norm = Register("norm", new GroupNorm(be, nGroups, channels));
        if (applyNorm) _norm = norm;
        else foreach (var p in norm.Parameters()) p.RequiresGrad = false;
        _projection = Register("projection", new Linear(be, channels, nHeads * _dk * 3, init));
        _output = Register("output", new Linear(be, nHeads * _dk, channels, init));
        _scale = (float)Math.Pow(_dk, -0.5);
    }

    public override Tensor Forward(Tensor x, Tensor t)
    {
        int b = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3], hw = h * w;
        using var x3 = Ops.Reshape(x, b, c, hw);
        using var xs = Ops.Permute(x3, 0, 2, 1);                 // [B, HW, C]
        using var normed = _norm?.Forward(x);
        using var n3 = normed is null ? null : Ops.Reshape(normed, b, c, hw);
        using var ns = n3 is null ? null : Ops.Permute(n3, 0, 2, 1);
        using var qkv = _projection.Forward(ns ?? xs);           // [B, HW, heads * 3 dk]
        using var qkv4 = Ops.Reshape(qkv, b, hw, _heads, 3 * _dk);
        using var q = HeadsFirst(Ops.Narrow(qkv4, 3, 0, _dk));  // [B*heads, HW, dk]
        using var k = HeadsFirst(Ops.Narrow(qkv4, 3, _dk, _dk));
        using var v = HeadsFirst(Ops.Narrow(qkv4, 3, 2 * _dk, _dk));
        using var scores = Ops.MatMul(q, k, false, true);        // [B*heads, HW_i, HW_j]
        using var scaled = scores * _scale;
        using var attn = Ops.Softmax(scaled, 2);                 // over the keys j
        using var res = Ops.MatMul(attn, v);                     // [B*heads, HW, dk]
        using var merged = HeadsLast(res, b, hw);                // [B, HW, heads * dk]
        using var o = _output.Forward(merged);                   // [B, HW, C]
        using var r = o + xs;
        using var rp = Ops.Permute(r, 0, 2, 1);                  // [B, C, HW]
        return Ops.Reshape(rp, b, c, h, w);
    }

    // [B, HW, heads, dk] -> [B*heads, HW, dk]; consumes its argument.
    private Tensor HeadsFirst(Tensor x)
    {
        using (x)
        {
            int b = x.Shape[0], hw = x.Shape[1];
            if (_heads == 1) return Ops.Reshape(x, b, hw, _dk);
            using var p = Ops.Permute(x, 0, 2, 1, 3);
            return Ops.Reshape(p, b * _heads, hw, _dk);
        }
    }

    // [B*heads, HW, dk] -> [B, HW, heads*dk]
    private Tensor HeadsLast(Tensor x, int b, int hw)
    {
        if (_heads == 1) return Ops.Reshape(x, b, hw, _dk);
        using var x4 = Ops.Reshape(x, b, _heads, hw, _dk);
        using var p = Ops.Permute(x4, 0, 2, 1, 3);
        return Ops.Reshape(p, b, hw, _heads * _dk);
    }
}

/// <summary>labml's DownBlock / UpBlock: a residual block, then attention where the level has it.</summary>
public sealed class ResAttnBlock : UNetBlock
{
    private readonly ResidualBlock _res;
    private readonly AttentionBlock? _attn;

    public ResAttnBlock(IBackend be, int inCh, int outCh, int timeCh, bool hasAttn, UNetConfig cfg, PhiloxGenerator init)
    {
        _res = Register("res", new ResidualBlock(be, inCh, outCh, timeCh, cfg.NGroups, cfg.Dropout, init));
        if (hasAttn) _attn = Register("attn", new AttentionBlock(be, outCh, cfg.NHeads, cfg.NGroups, init, cfg.AttnNorm));
    }

    public override Tensor Forward(Tensor x, Tensor t)
    {
        var h = _res.Forward(x, t);
        if (_attn is null) return h;
        using (h) return _attn.Forward(h, t);
    }
}

/// <summary>labml's MiddleBlock: res1, attention, res2 at the lowest resolution.</summary>
public sealed class MiddleBlock : UNetBlock
{
    private readonly ResidualBlock _res1, _res2;
    private readonly AttentionBlock _attn;

    public MiddleBlock(IBackend be, int channels, int timeCh, UNetConfig cfg, PhiloxGenerator init)
    {
        _res1 = Register("res1", new ResidualBlock(be, channels, channels, timeCh, cfg.NGroups, cfg.Dropout, init));
        _attn = Register("attn", new AttentionBlock(be, channels, cfg.NHeads, cfg.NGroups, init, cfg.AttnNorm));
        _res2 = Register("res2", new ResidualBlock(be, channels, channels, timeCh, cfg.NGroups, cfg.Dropout, init));
    }

    public override Tensor Forward(Tensor x, Tensor t)
    {
        using var a = _res1.Forward(x, t);
        using var b = _attn.Forward(a, t);
        return _res2.Forward(b, t);
    }
}

/// <summary>labml's Upsample: ConvTranspose2d(C, C, 4, stride 2, padding 1), H -> 2H.</summary>
public sealed class Upsample : UNetBlock
{
    private readonly ConvTranspose2d _conv;

    public Upsample(IBackend be, int channels, PhiloxGenerator init) =>
        _conv = Register("conv", new ConvTranspose2d(be, channels, channels, 4, init, stride: 2, padding: 1));

    public override Tensor Forward(Tensor x, Tensor t) => _conv.Forward(x);
}

/// <summary>labml's Downsample: Conv2d(C, C, 3, stride 2, padding 1), H -> H/2.</summary>
public sealed class Downsample : UNetBlock
{
    private readonly Conv2d _conv;

    public Downsample(IBackend be, int channels, PhiloxGenerator init) =>
        _conv = Register("conv", new Conv2d(be, channels, channels, 3, init, stride: 2, padding: 1));

    public override Tensor Forward(Tensor x, Tensor t) => _conv.Forward(x);
}

/// <summary>
/// labml's UNet eps_theta(x, t): image_proj, time embedding (4 n_channels), down levels (n_blocks blocks each,
/// Downsample between levels), middle, up levels (n_blocks + 1 blocks each on concat(x, skip), Upsample between
/// levels), GroupNorm(8) + Swish + final conv. Parameter names equal labml's PyTorch state_dict.
/// A class-conditional model (<see cref="UNetConfig.NumClasses"/> K &gt; 0) has one more parameter,
/// <c>class_emb.weight</c> [4 n_channels, K + 1]: a bias-free linear map of the one-hot label (column K is the
/// null class) added to the time embedding before it reaches the residual blocks. It is registered last, so
/// every other parameter, its name and its initial value are those of the unconditional model.
/// </summary>
public sealed class UNet : Module
{
    private readonly Conv2d _imageProj, _final;
    private readonly TimeEmbedding _timeEmb;
    private readonly ModuleList _down, _up;
    private readonly MiddleBlock _middle;
    private readonly GroupNorm _norm;
    private readonly Linear? _classEmb;

    public UNet(IBackend backend, UNetConfig config, PhiloxGenerator init)
    {
        config.Validate();
        Backend = backend;
        Config = config;
        var be = backend;
        int nc = config.NChannels, tc = nc * 4, levels = config.ChMults.Length;
        _imageProj = Register("image_proj", new Conv2d(be, config.ImageChannels, nc, 3, init, padding: 1));
        _timeEmb = Register("time_emb", new TimeEmbedding(be, tc, init));

        _down = new ModuleList();
        int inCh = nc, outCh = nc;
        for (int i = 0; i < levels; i++)
        {
            outCh = inCh * config.ChMults[i];
            for (int j = 0; j < config.NBlocks; j++)
            {
                _down.Add(new ResAttnBlock(be, inCh, outCh, tc, config.IsAttn[i], config, init));
                inCh = outCh;
            }
            if (i < levels - 1) _down.Add(new Downsample(be, inCh, init));
        }
        Register("down", _down);
        _middle = Register("middle", new MiddleBlock(be, outCh, tc, config, init));

        _up = new ModuleList();
        inCh = outCh;
        for (int i = levels - 1; i >= 0; i--)
        {
            outCh = inCh;
            for (int j = 0; j < config.NBlocks; j++)
                _up.Add(new ResAttnBlock(be, inCh + outCh, outCh, tc, config.IsAttn[i], config, init));
            outCh = inCh / config.ChMults[i];
            _up.Add(new ResAttnBlock(be, inCh + outCh, outCh, tc, config.IsAttn[i], config, init));
            inCh = outCh;
            if (i > 0) _up.Add(new Upsample(be, inCh, init));
        }
        Register("up", _up);
        _norm = Register("norm", new GroupNorm(be, 8, nc));
        _final = Register("final", new Conv2d(be, inCh, config.ImageChannels, 3, init, padding: 1));
        if (config.NumClasses > 0)
            _classEmb = Register("class_emb", new Linear(be, config.NumClasses + 1, tc, init, bias: false));
    }

    public IBackend Backend { get; }
    public UNetConfig Config { get; }

    /// <summary>Points every dropout layer at one random stream (owned and checkpointed by the trainer).</summary>
    public void SetDropoutGenerator(PhiloxGenerator gen)
    {
        foreach (var m in Modules())
            if (m is Dropout d) d.Generator = gen;
    }

    /// <summary>eps_theta(x, t). x: [N, C, H, W]; t: N integer timesteps -> [N, C, H, W]. A conditional model sees the null class.</summary>
    public Tensor Forward(Tensor x, ReadOnlySpan<int> t) => Forward(x, t, default);

    /// <summary>
    /// eps_theta(x, t, y): <paramref name="labels"/> holds one class per sample, 0..K-1 or K (the null class);
    /// empty means the null class for every sample. An unconditional model accepts only empty labels.
    /// </summary>
    public Tensor Forward(Tensor x, ReadOnlySpan<int> t, ReadOnlySpan<int> labels)
    {
        if (x.Rank != 4 || x.Shape[1] != Config.ImageChannels)
            throw new ArgumentException($"UNet expects [N, {Config.ImageChannels}, H, W]; got {x.Describe()}.");
        if (t.Length != x.Shape[0])
            throw new ArgumentException($"UNet got {t.Length} timesteps for a batch of {x.Shape[0]}.");
        int down = 1 << (Config.ChMults.Length - 1);
        if (x.Shape[2] % down != 0 || x.Shape[3] % down != 0)
            throw new ArgumentException($"UNet input {x.Describe()}: height and width must be divisible by {down}.");

        using var temb = Embedding(x.Backend, t, labels);
        var skips = new Stack<Tensor>();
        var h = _imageProj.Forward(x);
        var owned = new List<Tensor> { h };
        try
        {
            skips.Push(h);
            foreach (var m in _down.Items)
            {
                h = ((UNetBlock)m).Forward(h, temb);
                owned.Add(h);
                skips.Push(h);
            }
            h = _middle.Forward(h, temb);
            owned.Add(h);
            foreach (var m in _up.Items)
            {
                if (m is Upsample up)
                {
                    h = up.Forward(h, temb);
                }
                else
                {
                    var cat = Ops.Concat([h, skips.Pop()], 1);
                    owned.Add(cat);
                    h = ((UNetBlock)m).Forward(cat, temb);
                }
                owned.Add(h);
            }
            using var a = _norm.Forward(h, silu: true);
            return _final.Forward(a);
        }
        finally
        {
            foreach (var o in owned) o.Dispose();
        }
    }

    /// <summary>The embedding the residual blocks see: the time embedding, plus the class embedding of a conditional model.</summary>
    private Tensor Embedding(IBackend be, ReadOnlySpan<int> t, ReadOnlySpan<int> labels)
    {
        if (_classEmb is null)
        {
            if (!labels.IsEmpty) throw new ArgumentException("This UNet is unconditional; it takes no class labels.");
            return _timeEmb.Forward(be, t);
        }
        int k = Config.NumClasses + 1, n = t.Length;
        if (!labels.IsEmpty && labels.Length != n)
            throw new ArgumentException($"UNet got {labels.Length} class labels for a batch of {n}.");
        var oneHot = new float[n * k];
        for (int i = 0; i < n; i++)
        {
            int c = labels.IsEmpty ? Config.NullClass : labels[i];
            if ((uint)c >= (uint)k) throw new ArgumentOutOfRangeException(nameof(labels), $"Class {c} is outside 0..{Config.NumClasses} ({Config.NumClasses} is the null class).");
            oneHot[i * k + c] = 1f;
        }
        using var te = _timeEmb.Forward(be, t);
        using var y = Tensor.FromArray(be, oneHot, n, k);
        using var ce = _classEmb.Forward(y);
        return te + ce;
    }
}
