namespace Ddpm.Tensors;

/// <summary>Where values stop being finite, on host copies.</summary>
public static class Finite
{
    /// <summary>
    /// The index of the first NaN or infinite value, or -1 when every value is finite. One vectorised pass: x - x is
    /// 0 for every finite x and NaN otherwise.
    /// </summary>
    public static long FirstNonFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            int w = System.Numerics.Vector<float>.Count;
            for (; i + w <= values.Length; i += w)
            {
                var v = new System.Numerics.Vector<float>(values.Slice(i, w));
                if (!System.Numerics.Vector.EqualsAll(v - v, System.Numerics.Vector<float>.Zero)) break;
            }
        }
        for (; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return i;
        return -1;
    }
}
