namespace Ddpm.Tensors.Nn;

/// <summary>torch.nn.Linear: weight [out, in], bias [out].</summary>
public sealed class Linear : Module
{
    public Linear(IBackend backend, int inFeatures, int outFeatures, PhiloxGenerator init, bool bias = true)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Weight = Register("weight", new Parameter(backend, new Shape(outFeatures, inFeatures)));
        Init.KaimingUniformA5(Weight, inFeatures, init);
        if (bias)
        {
            Bias = Register("bias", new Parameter(backend, new Shape(outFeatures)));
            Init.Uniform(Bias, 1f / MathF.Sqrt(inFeatures), init);
        }
    }

    public int InFeatures { get; }
    public int OutFeatures { get; }
    public Parameter Weight { get; }
    public Parameter? Bias { get; }

    /// <summary>x: [..., in] -> [..., out].</summary>
    public Tensor Forward(Tensor x) => Ops.Linear(x, Weight, Bias);
}

/// <summary>torch.nn.Conv2d (groups 1, dilation 1): weight [O, C, KH, KW], bias [O].</summary>
public sealed class Conv2d : Module
{
    public Conv2d(IBackend backend, int inChannels, int outChannels, int kernel, PhiloxGenerator init,
        int stride = 1, int padding = 0, bool bias = true)
    {
        Stride = stride;
        Padding = padding;
        Weight = Register("weight", new Parameter(backend, new Shape(outChannels, inChannels, kernel, kernel)));
        int fanIn = inChannels * kernel * kernel;
        Init.KaimingUniformA5(Weight, fanIn, init);
        if (bias)
        {
            Bias = Register("bias", new Parameter(backend, new Shape(outChannels)));
            Init.Uniform(Bias, 1f / MathF.Sqrt(fanIn), init);
        }
    }

    public int Stride { get; }
    public int Padding { get; }
    public Parameter Weight { get; }
    public Parameter? Bias { get; }

    /// <summary>x: [N, C, H, W] -> [N, O, OH, OW].</summary>
    public Tensor Forward(Tensor x) => Ops.Conv2d(x, Weight, Bias, Stride, Padding);
}

/// <summary>torch.nn.ConvTranspose2d (output_padding 0): weight [Cin, Cout, KH, KW], bias [Cout].</summary>
public sealed class ConvTranspose2d : Module
{
    public ConvTranspose2d(IBackend backend, int inChannels, int outChannels, int kernel, PhiloxGenerator init,
        int stride = 1, int padding = 0, bool bias = true)
    {
        Stride = stride;
        Padding = padding;
        Weight = Register("weight", new Parameter(backend, new Shape(inChannels, outChannels, kernel, kernel)));
        // PyTorch computes fan_in from weight.size(1) * receptive field, which for a transposed conv is Cout.
        int fanIn = outChannels * kernel * kernel;
        Init.KaimingUniformA5(Weight, fanIn, init);
        if (bias)
        {
            Bias = Register("bias", new Parameter(backend, new Shape(outChannels)));
            Init.Uniform(Bias, 1f / MathF.Sqrt(fanIn), init);
        }
    }

    public int Stride { get; }
    public int Padding { get; }
    public Parameter Weight { get; }
    public Parameter? Bias { get; }

    /// <summary>x: [N, Cin, H, W] -> [N, Cout, (H-1)s - 2p + K, ...].</summary>
    public Tensor Forward(Tensor x) => Ops.ConvTranspose2d(x, Weight, Bias, Stride, Padding);
}

/// <summary>torch.nn.GroupNorm with affine weight 1 and bias 0 at start.</summary>
public sealed class GroupNorm : Module
{
    public GroupNorm(IBackend backend, int groups, int channels, float eps = 1e-5f)
    {
        if (groups <= 0 || channels % groups != 0)
            throw new ArgumentException($"GroupNorm: {channels} channels do not split into {groups} groups.");
        Groups = groups;
        Eps = eps;
        Weight = Register("weight", new Parameter(backend, new Shape(channels)));
        Bias = Register("bias", new Parameter(backend, new Shape(channels)));
        Init.Constant(Weight, 1f);
        Init.Constant(Bias, 0f);
    }

    public int Groups { get; }
    public float Eps { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    /// <summary>
    /// x: [N, C, ...] -> same shape; with <paramref name="silu"/>, silu of it in the same op; with
    /// <paramref name="shift"/> (N x C values), the norm of x + shift without storing the sum.
    /// </summary>
    public Tensor Forward(Tensor x, bool silu = false, Tensor? shift = null) => Ops.GroupNorm(x, Groups, Weight, Bias, Eps, silu, shift);
}

/// <summary>torch.nn.Dropout: active only in training mode; draws its mask from <see cref="Generator"/>.</summary>
public sealed class Dropout : Module
{
    public Dropout(float p)
    {
        if (p < 0f || p >= 1f) throw new ArgumentOutOfRangeException(nameof(p), $"Dropout probability {p} is outside [0, 1).");
        P = p;
    }

    public float P { get; }

    /// <summary>The stream masks are drawn from; set by the trainer (its offset is checkpointed).</summary>
    public PhiloxGenerator? Generator { get; set; }

    public Tensor Forward(Tensor x) => Ops.Dropout(x, P, Training, Generator);
}
