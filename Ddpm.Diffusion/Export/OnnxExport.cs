using System.Text.Json;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tensors.Nn;
using Google.Protobuf;
using Onnx;
using static Ddpm.Diffusion.Export.OnnxGraphBuilder;

namespace Ddpm.Diffusion.Export;

/// <summary>What <see cref="OnnxExport"/> writes besides the graph.</summary>
public sealed record OnnxExportOptions
{
    /// <summary>A fixed batch size for the inputs; null: a dynamic first dimension named N.</summary>
    public int? Batch { get; init; }

    /// <summary>The name of the graph's output: eps for a noise-predicting model, v for a v-predicting one.</summary>
    public string OutputName { get; init; } = "eps";

    /// <summary>Key-value pairs stored in the model's metadata_props (the diffusion config, the prediction).</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>The producer version stored in the model.</summary>
    public string ProducerVersion { get; init; } = "";
}

/// <summary>
/// The UNet as an ONNX graph (opset <see cref="Opset"/>, IR version 8), written with Google.Protobuf through the
/// message classes generated from the official onnx.proto. Inputs: <c>x</c> float32 [N, C, S, S] (S the model's
/// image size), <c>t</c> int64 [N] timesteps and, for a class-conditional model, <c>y</c> int64 [N] classes
/// (0..K-1, K the null class). One output [N, C, S, S]. The graph is the forward pass op for op in eval mode:
/// GroupNorm as InstanceNormalization over groups (as PyTorch exports it at this opset), Swish as x sigmoid(x),
/// dropout left out; parameter names are the labml state_dict names.
/// </summary>
public static class OnnxExport
{
    public const int Opset = 17;
    public const long IrVersion = 8;

    /// <summary>The metadata key that holds the model's config (JSON).</summary>
    public const string ModelConfigKey = "ddpm.model";

    /// <summary>Writes <paramref name="model"/> to <paramref name="path"/> (through a temporary file and a rename).</summary>
    public static void Save(UNet model, string path, OnnxExportOptions? options = null)
    {
        var proto = Build(model, options ?? new OnnxExportOptions());
        AtomicFile.Write(path, s => proto.WriteTo(s));
    }

    /// <summary>Writes the serialized model to <paramref name="stream"/>.</summary>
    public static void Write(UNet model, Stream stream, OnnxExportOptions? options = null) =>
        Build(model, options ?? new OnnxExportOptions()).WriteTo(stream);

    /// <summary>The serialized model.</summary>
    public static byte[] ToBytes(UNet model, OnnxExportOptions? options = null) => Build(model, options ?? new OnnxExportOptions()).ToByteArray();

    internal static ModelProto Build(UNet model, OnnxExportOptions options)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX raw tensor data is little-endian; this machine is not.");
        if (options.Batch is <= 0) throw new ArgumentOutOfRangeException(nameof(options), $"The batch must be positive, got {options.Batch}.");
        if (string.IsNullOrWhiteSpace(options.OutputName)) throw new ArgumentException("The output needs a name.", nameof(options));
        var cfg = model.Config;
        var weights = model.NamedParameters().ToDictionary(p => p.Name, p => p.Param);
        var g = new OnnxGraphBuilder("ddpm_unet");
        new UNetGraph(g, cfg, weights).Emit(options.OutputName);

        object batch = options.Batch is { } b ? b : "N";
        int c = cfg.ImageChannels, s = cfg.ImageSize;
        var graph = g.Graph;
        graph.Input.Add(Value("x", TensorProto.Types.DataType.Float, batch, c, s, s));
        graph.Input.Add(Value("t", TensorProto.Types.DataType.Int64, batch));
        if (cfg.IsConditional) graph.Input.Add(Value("y", TensorProto.Types.DataType.Int64, batch));
        graph.Output.Add(Value(options.OutputName, TensorProto.Types.DataType.Float, batch, c, s, s));
        graph.DocString = $"labml's DDPM UNet: {cfg}" + (cfg.IsConditional ? $"; y = {cfg.NullClass} is the null class (classifier-free guidance)" : "");

        var m = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = "ddpm",
            ProducerVersion = options.ProducerVersion,
            Graph = graph,
            DocString = "Exported by ddpm (a C# DDPM engine) from its UNet.",
        };
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        m.MetadataProps.Add(new StringStringEntryProto { Key = ModelConfigKey, Value = JsonSerializer.Serialize(cfg) });
        foreach (var (k, v) in options.Metadata ?? new Dictionary<string, string>())
            m.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return m;
    }

    /// <summary>Emits the UNet's nodes; mirrors <see cref="UNet"/>'s construction and forward pass.</summary>
    private sealed class UNetGraph(OnnxGraphBuilder g, UNetConfig cfg, Dictionary<string, Parameter> weights)
    {
        private readonly HashSet<string> _emitted = new();
        private string _tembAct = "";

        /// <summary>The initializer of parameter <paramref name="name"/>, added on first use.</summary>
        private string W(string name)
        {
            if (!weights.TryGetValue(name, out var p)) throw new InvalidOperationException($"The model has no parameter {name}.");
            if (_emitted.Add(name)) g.Weight(name, p.ToArray(), p.Shape.ToArray().Select(d => (long)d).ToArray());
            return name;
        }

        private string Silu(string x) => g.Node("Mul", [x, g.Node("Sigmoid", [x])]);

        /// <summary>GroupNorm(groups) of x [N, C, H, W], as Reshape [N, G, -1], InstanceNormalization, Reshape back, x gamma + beta.</summary>
        private string GroupNorm(string x, string prefix, int groups, int channels, int h, int w)
        {
            string grouped = g.Node("Reshape", [x, g.Int64s(0, groups, -1)]);
            string scale = g.Weight(g.Fresh("ones"), Enumerable.Repeat(1f, groups).ToArray(), groups);
            string bias = g.Weight(g.Fresh("zeros"), new float[groups], groups);
            string normed = g.Node("InstanceNormalization", [grouped, scale, bias], Float("epsilon", 1e-5f));
            string back = g.Node("Reshape", [normed, g.Int64s(0, channels, h, w)]);
            string gamma = g.Node("Reshape", [W(prefix + ".weight"), g.Int64s(channels, 1, 1)]);
            string beta = g.Node("Reshape", [W(prefix + ".bias"), g.Int64s(channels, 1, 1)]);
            return g.Node("Add", [g.Node("Mul", [back, gamma]), beta]);
        }

        private string Conv(string x, string prefix, int kernel, int stride, int padding) =>
            g.Node("Conv", [x, W(prefix + ".weight"), W(prefix + ".bias")],
                Ints("kernel_shape", kernel, kernel), Ints("strides", stride, stride), Ints("pads", padding, padding, padding, padding));

        /// <summary>x [M, in] -> [M, out]: x W^T + b.</summary>
        private string Linear(string x, string prefix) =>
            g.Node("Gemm", [x, W(prefix + ".weight"), W(prefix + ".bias")], Int("transB", 1));

        public void Emit(string outputName)
        {
            int nc = cfg.NChannels, tc = 4 * nc, levels = cfg.ChMults.Length, size = cfg.ImageSize;
            string temb = TimeEmbedding(tc);
            if (cfg.IsConditional)
            {
                // one_hot(y) W^T is column y of W [tc, K + 1]: Gather along axis 1, then [tc, N] -> [N, tc].
                string cols = g.Node("Gather", [W("class_emb.weight"), "y"], Int("axis", 1));
                temb = g.Node("Add", [temb, g.Node("Transpose", [cols], Ints("perm", 1, 0))]);
            }
            // Every residual block applies Swish to the embedding first: the same value, computed once.
            _tembAct = Silu(temb);

            var skips = new Stack<(string Name, int Channels)>();
            string h = Conv("x", "image_proj", 3, 1, 1);
            skips.Push((h, nc));
            int index = 0, inCh = nc, outCh = nc, side = size;
            for (int i = 0; i < levels; i++)
            {
                outCh = inCh * cfg.ChMults[i];
                for (int j = 0; j < cfg.NBlocks; j++)
                {
                    h = ResAttn(h, $"down.{index++}", inCh, outCh, cfg.IsAttn[i], side);
                    inCh = outCh;
                    skips.Push((h, inCh));
                }
                if (i < levels - 1)
                {
                    h = Conv(h, $"down.{index++}.conv", 3, 2, 1);
                    side /= 2;
                    skips.Push((h, inCh));
                }
            }
            h = Residual(h, "middle.res1", outCh, outCh, side);
            h = Attention(h, "middle.attn", outCh, side);
            h = Residual(h, "middle.res2", outCh, outCh, side);

            index = 0;
            inCh = outCh;
            for (int i = levels - 1; i >= 0; i--)
            {
                outCh = inCh;
                for (int j = 0; j <= cfg.NBlocks; j++)
                {
                    if (j == cfg.NBlocks) outCh = inCh / cfg.ChMults[i];
                    var (skip, skipCh) = skips.Pop();
                    string cat = g.Node("Concat", [h, skip], Int("axis", 1));
                    h = ResAttn(cat, $"up.{index++}", inCh + skipCh, outCh, cfg.IsAttn[i], side);
                }
                inCh = outCh;
                if (i > 0)
                {
                    string p = $"up.{index++}.conv";
                    h = g.Node("ConvTranspose", [h, W(p + ".weight"), W(p + ".bias")],
                        Ints("kernel_shape", 4, 4), Ints("strides", 2, 2), Ints("pads", 1, 1, 1, 1));
                    side *= 2;
                }
            }
            string a = Silu(GroupNorm(h, "norm", 8, nc, side, side));
            Conv(a, "final", 3, 1, 1);
            g.NameLastOutput(outputName);
        }

        /// <summary>labml's TimeEmbedding of t [N] (int64): [sin(t f), cos(t f)] -> lin1 -> Swish -> lin2, [N, tc].</summary>
        private string TimeEmbedding(int tc)
        {
            var freqs = Model.TimeEmbedding.Frequencies(tc);
            string tf = g.Node("Cast", ["t"], Int("to", (int)TensorProto.Types.DataType.Float));
            string col = g.Node("Unsqueeze", [tf, g.Int64s(1)]);
            string arg = g.Node("Mul", [col, g.Weight(g.Fresh("time_freqs"), freqs, 1, freqs.Length)]);
            string emb = g.Node("Concat", [g.Node("Sin", [arg]), g.Node("Cos", [arg])], Int("axis", 1));
            string h = Silu(Linear(emb, "time_emb.lin1"));
            return Linear(h, "time_emb.lin2");
        }

        private string ResAttn(string x, string prefix, int inCh, int outCh, bool attn, int side)
        {
            string h = Residual(x, prefix + ".res", inCh, outCh, side);
            return attn ? Attention(h, prefix + ".attn", outCh, side) : h;
        }

        /// <summary>labml's ResidualBlock: conv1(Swish(norm1 x)) + time_emb(Swish t), conv2(Swish(norm2 .)), + shortcut(x).</summary>
        private string Residual(string x, string prefix, int inCh, int outCh, int side)
        {
            string h1 = Conv(Silu(GroupNorm(x, prefix + ".norm1", cfg.NGroups, inCh, side, side)), prefix + ".conv1", 3, 1, 1);
            string te = g.Node("Unsqueeze", [Linear(_tembAct, prefix + ".time_emb"), g.Int64s(2, 3)]);
            string h2 = g.Node("Add", [h1, te]);
            string h3 = Conv(Silu(GroupNorm(h2, prefix + ".norm2", cfg.NGroups, outCh, side, side)), prefix + ".conv2", 3, 1, 1);
            string sc = inCh != outCh ? Conv(x, prefix + ".shortcut", 1, 1, 0) : x;
            return g.Node("Add", [h3, sc]);
        }

        /// <summary>
        /// labml's AttentionBlock on x [N, C, S, S]: the positions as a sequence [N, S^2, C], q, k, v by one
        /// projection (of the normalised input with attn_norm), softmax(q k^T d_k^-1/2) v per head, output
        /// projection, + x, back to [N, C, S, S].
        /// </summary>
        private string Attention(string x, string prefix, int ch, int side)
        {
            int heads = cfg.NHeads, dk = ch, hw = side * side;
            string Seq(string v) => g.Node("Transpose", [g.Node("Reshape", [v, g.Int64s(0, ch, hw)])], Ints("perm", 0, 2, 1));
            string xs = Seq(x);
            string src = cfg.AttnNorm ? Seq(GroupNorm(x, prefix + ".norm", cfg.NGroups, ch, side, side)) : xs;
            string flat = g.Node("Reshape", [src, g.Int64s(-1, ch)]);
            string qkv = g.Node("Reshape", [Linear(flat, prefix + ".projection"), g.Int64s(-1, hw, heads, 3 * dk)]);
            var parts = g.NodeN("Split", 3, [qkv, g.Int64s(dk, dk, dk)], Int("axis", 3));
            string q = g.Node("Transpose", [parts[0]], Ints("perm", 0, 2, 1, 3));      // [N, heads, HW, dk]
            string kT = g.Node("Transpose", [parts[1]], Ints("perm", 0, 2, 3, 1));     // [N, heads, dk, HW]
            string v = g.Node("Transpose", [parts[2]], Ints("perm", 0, 2, 1, 3));
            string scores = g.Node("Mul", [g.Node("MatMul", [q, kT]), g.Scalar((float)Math.Pow(dk, -0.5))]);
            string attn = g.Node("Softmax", [scores], Int("axis", -1));              // over the keys
            string res = g.Node("Transpose", [g.Node("MatMul", [attn, v])], Ints("perm", 0, 2, 1, 3)); // [N, HW, heads, dk]
            string merged = g.Node("Reshape", [res, g.Int64s(-1, heads * dk)]);
            string o = g.Node("Reshape", [Linear(merged, prefix + ".output"), g.Int64s(-1, hw, ch)]);
            string r = g.Node("Add", [o, xs]);
            return g.Node("Reshape", [g.Node("Transpose", [r], Ints("perm", 0, 2, 1)), g.Int64s(-1, ch, side, side)]);
        }
    }
}
