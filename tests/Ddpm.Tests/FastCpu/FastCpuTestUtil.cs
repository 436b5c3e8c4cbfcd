using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.FastCpu;

internal static class FastCpuTestUtil
{
    public const double Eps = 1.0 / (1 << 24);

    public static float[] Random(int n, int seed, float lo = -1f, float hi = 1f)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * (float)r.NextDouble();
        return a;
    }

    public static DeviceBuffer Up(IBackend be, float[] data)
    {
        var b = be.Allocate(data.Length);
        be.Upload(data, b, 0);
        return b;
    }

    public static float[] Down(IBackend be, DeviceBuffer b, int n)
    {
        var r = new float[n];
        be.Download(b, 0, r);
        return r;
    }

    /// <summary>Sum of squared errors over sum of squared reference values.</summary>
    public static double NormalizedMse(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double num = 0, den = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"NaN at {i}");
            double d = actual[i] - expected[i];
            num += d * d;
            den += expected[i] * expected[i];
        }
        return den == 0 ? num : num / den;
    }

    /// <summary>|actual - expected| &lt;= atol + rtol |expected| elementwise, with the first failure named.</summary>
    public static void Close(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double rtol, double atol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < actual.Length; i++)
        {
            if (actual[i] == expected[i]) continue;
            double err = Math.Abs(actual[i] - expected[i]);
            if (!(err <= atol + rtol * Math.Abs(expected[i])))
                Assert.Fail($"{what}: element {i} is {actual[i]}, expected {expected[i]} (error {err:g3}, allowed {atol + rtol * Math.Abs(expected[i]):g3}).");
        }
    }
}
