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
}
