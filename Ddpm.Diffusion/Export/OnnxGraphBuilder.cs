using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;

namespace Ddpm.Diffusion.Export;

/// <summary>
/// Builds an ONNX GraphProto node by node: weights and constants as initializers (raw little-endian data), nodes
/// with their attributes, and fresh names for intermediate values. A thin layer over the generated protobuf
/// classes; it knows no model.
/// </summary>
internal sealed class OnnxGraphBuilder
{
    private readonly GraphProto _graph;
    private int _next;

    public OnnxGraphBuilder(string name) => _graph = new GraphProto { Name = name };

    public GraphProto Graph => _graph;

    /// <summary>A value name not used before: prefix_N.</summary>
    public string Fresh(string prefix) => $"{prefix}_{_next++}";

    /// <summary>A float32 initializer of shape <paramref name="dims"/>, named <paramref name="name"/>.</summary>
    public string Weight(string name, float[] data, params long[] dims)
    {
        if (data.Length != dims.Aggregate(1L, (a, b) => a * b))
            throw new ArgumentException($"Initializer {name}: {data.Length} values for shape [{string.Join(", ", dims)}].");
        var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        t.Dims.AddRange(dims);
        // ONNX stores raw_data little-endian, as x64 and arm64 hold floats: one copy of the bytes, wrapped by the message.
        t.RawData = UnsafeByteOperations.UnsafeWrap(MemoryMarshal.AsBytes(data.AsSpan()).ToArray());
        _graph.Initializer.Add(t);
        return name;
    }

    /// <summary>A float32 scalar constant (shape []).</summary>
    public string Scalar(float value)
    {
        string name = Fresh("const");
        var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        t.FloatData.Add(value);
        _graph.Initializer.Add(t);
        return name;
    }

    /// <summary>An int64 vector constant (shapes for Reshape, axes, split sizes).</summary>
    public string Int64s(params long[] values)
    {
        string name = Fresh("const");
        var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Int64 };
        t.Dims.Add(values.Length);
        t.Int64Data.AddRange(values);
        _graph.Initializer.Add(t);
        return name;
    }

    /// <summary>Adds a node of the default domain with <paramref name="outputs"/> fresh outputs; returns their names.</summary>
    public string[] NodeN(string op, int outputs, string[] inputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = Fresh(op) };
        node.Input.AddRange(inputs);
        var names = Enumerable.Range(0, outputs).Select(_ => Fresh(op.ToLowerInvariant())).ToArray();
        node.Output.AddRange(names);
        node.Attribute.AddRange(attributes);
        _graph.Node.Add(node);
        return names;
    }

    /// <summary>Adds a node with one output; returns its name.</summary>
    public string Node(string op, string[] inputs, params AttributeProto[] attributes) => NodeN(op, 1, inputs, attributes)[0];

    /// <summary>Renames the output of the last node (the graph's output name).</summary>
    public void NameLastOutput(string name) => _graph.Node[^1].Output[0] = name;

    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    public static AttributeProto Ints(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }

    /// <summary>A graph input or output: a tensor of <paramref name="elementType"/> whose dimensions are numbers or, for a string, named (dynamic).</summary>
    public static ValueInfoProto Value(string name, TensorProto.Types.DataType elementType, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is string p ? new TensorShapeProto.Types.Dimension { DimParam = p } : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(d, System.Globalization.CultureInfo.InvariantCulture) });
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)elementType, Shape = shape } },
        };
    }
}
