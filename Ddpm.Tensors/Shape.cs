using System.Collections;

namespace Ddpm.Tensors;

/// <summary>An immutable N-d shape (row-major). Rank 0 is a scalar with one element.</summary>
public sealed class Shape : IEquatable<Shape>, IReadOnlyList<int>
{
    /// <summary>
    /// The most dimensions a tensor may have. Every backend takes every shape up to this rank (the GPU kernels
    /// carry shapes by value in fixed arrays of this size) and refuses more with <see cref="CheckRank"/>'s message.
    /// </summary>
    public const int MaxRank = 16;

    private readonly int[] _dims;

    public Shape(params int[] dims)
    {
        ArgumentNullException.ThrowIfNull(dims);
        CheckRank(dims, "Shape");
        long size = 1;
        foreach (int d in dims)
        {
            if (d < 0) throw new ArgumentException($"Shape {Format(dims)} has a negative dimension.");
            size *= d;
            if (size > int.MaxValue) throw new ArgumentException($"Shape {Format(dims)} has more than {int.MaxValue} elements.");
        }
        _dims = (int[])dims.Clone();
        Size = (int)size;
    }

    /// <summary>Refuses a shape of more than <see cref="MaxRank"/> dimensions, the same way on every backend.</summary>
    public static void CheckRank(ReadOnlySpan<int> dims, string what)
    {
        if (dims.Length > MaxRank)
            throw new NotSupportedException($"{what}: shape {Format(dims)} has {dims.Length} dimensions; tensors have at most {MaxRank}.");
    }

    public int Rank => _dims.Length;
    public int Size { get; }
    public int this[int i] => _dims[i < 0 ? i + _dims.Length : i];
    public int Count => _dims.Length;
    public ReadOnlySpan<int> Dims => _dims;
    public int[] ToArray() => (int[])_dims.Clone();

    /// <summary>Normalises a possibly negative dimension index.</summary>
    public int Axis(int dim)
    {
        int d = dim < 0 ? dim + Rank : dim;
        if (d < 0 || d >= Rank) throw new ArgumentOutOfRangeException(nameof(dim), $"Dimension {dim} is out of range for shape {this}.");
        return d;
    }

    /// <summary>Product of the dimensions before <paramref name="dim"/>.</summary>
    public int Outer(int dim) { int p = 1; for (int i = 0; i < dim; i++) p *= _dims[i]; return p; }

    /// <summary>Product of the dimensions after <paramref name="dim"/>.</summary>
    public int Inner(int dim) { int p = 1; for (int i = dim + 1; i < _dims.Length; i++) p *= _dims[i]; return p; }

    public Shape With(int dim, int value)
    {
        var d = ToArray();
        d[Axis(dim)] = value;
        return new Shape(d);
    }

    /// <summary>Resolves a reshape target where one entry may be -1.</summary>
    public Shape Reshape(ReadOnlySpan<int> target)
    {
        var dims = target.ToArray();
        int infer = -1; long known = 1;
        for (int i = 0; i < dims.Length; i++)
        {
            if (dims[i] == -1)
            {
                if (infer >= 0) throw new ArgumentException($"Reshape of {this} to {Format(dims)}: only one dimension may be -1.");
                infer = i;
            }
            else known *= dims[i];
        }
        if (infer >= 0)
        {
            if (known == 0 || Size % known != 0) throw new ArgumentException($"Cannot reshape {this} to {Format(dims)}.");
            dims[infer] = (int)(Size / known);
        }
        var s = new Shape(dims);
        if (s.Size != Size) throw new ArgumentException($"Cannot reshape {this} ({Size} elements) to {s} ({s.Size} elements).");
        return s;
    }

    /// <summary>The broadcast of two shapes (NumPy rules), or an exception naming both.</summary>
    public static Shape Broadcast(Shape a, Shape b)
    {
        int rank = Math.Max(a.Rank, b.Rank);
        var r = new int[rank];
        for (int i = 0; i < rank; i++)
        {
            int da = i - (rank - a.Rank) >= 0 ? a._dims[i - (rank - a.Rank)] : 1;
            int db = i - (rank - b.Rank) >= 0 ? b._dims[i - (rank - b.Rank)] : 1;
            if (da != db && da != 1 && db != 1)
                throw new ArgumentException($"Shapes {a} and {b} cannot be broadcast together.");
            r[i] = da == 1 ? db : da;
        }
        return new Shape(r);
    }

    public bool Equals(Shape? other) => other is not null && _dims.AsSpan().SequenceEqual(other._dims);
    public override bool Equals(object? obj) => Equals(obj as Shape);
    public override int GetHashCode() { var h = new HashCode(); foreach (int d in _dims) h.Add(d); return h.ToHashCode(); }
    public static bool operator ==(Shape? a, Shape? b) => a is null ? b is null : a.Equals(b);
    public static bool operator !=(Shape? a, Shape? b) => !(a == b);
    public override string ToString() => Format(_dims);
    public static string Format(ReadOnlySpan<int> dims) => "[" + string.Join(", ", dims.ToArray()) + "]";
    public IEnumerator<int> GetEnumerator() => ((IEnumerable<int>)_dims).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => _dims.GetEnumerator();
    public static implicit operator Shape(int[] dims) => new(dims);
}
