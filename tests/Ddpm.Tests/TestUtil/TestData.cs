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

/// <summary>Small comparison helpers that report the worst element.</summary>
internal static class Close
{
    /// <summary>Asserts |actual - expected| &lt;= atol + rtol |expected| elementwise.</summary>
    public static void All(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        Xunit.Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            if (!(err <= atol + rtol * Math.Abs(expected[i])))
                Xunit.Assert.Fail($"{what}: element {i} is {actual[i]:R}, expected {expected[i]:R} (|err| {err:E3} > {atol:E1} + {rtol:E1}|expected|).");
        }
    }

    public static void All(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        var e = new double[expected.Length];
        for (int i = 0; i < e.Length; i++) e[i] = expected[i];
        All(e, actual, atol, rtol, what);
    }
}
