using Ddpm.Tensors;

namespace Ddpm.Tests.TestUtil;

/// <summary>Reproducible host test data drawn from Philox streams (independent of any backend).</summary>
internal static class TestData
{
    /// <summary>n standard normal numbers of stream <paramref name="seed"/>.</summary>
    public static float[] Normal(int n, ulong seed)
    {
        var r = new float[n];
        Philox.FillNormal(r, seed, 0);
        return r;
    }

    /// <summary>n numbers uniform in [lo, hi).</summary>
    public static float[] Uniform(int n, ulong seed, float lo, float hi)
    {
        var r = new float[n];
        Philox.FillUniform(r, seed, 0);
        for (int i = 0; i < n; i++) r[i] = lo + (hi - lo) * r[i];
        return r;
    }

    /// <summary>n numbers with random sign and magnitude in [lo, hi): away from zero for kinks and poles.</summary>
    public static float[] AwayFromZero(int n, ulong seed, float lo, float hi)
    {
        var mag = Uniform(n, seed, lo, hi);
        var sign = Uniform(n, seed + 1000, 0f, 1f);
        for (int i = 0; i < n; i++) if (sign[i] < 0.5f) mag[i] = -mag[i];
        return mag;
    }

    public static int Size(int[] shape)
    {
        int s = 1;
        foreach (int d in shape) s *= d;
        return s;
    }
}
