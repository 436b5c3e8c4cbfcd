using Ddpm.Tests.TestUtil;
using Xunit;
using Xunit.Sdk;

namespace Ddpm.Tests.Core;

public class ClosenessTests
{
    [Fact]
    public void NmseAndRelL2AreTheSquaredAndPlainRatiosOfNorms()
    {
        // errors (0.5, -0.25, 0) against e = (1, 2, 2): sum d^2 = 0.3125, sum e^2 = 9.
        float[] e = [1f, 2f, 2f], a = [1.5f, 1.75f, 2f];
        var nmse = Closeness.Nmse(a, e);
        Assert.Equal(0.3125 / 9, nmse.Value, 1e-15);
        Assert.Equal(0, nmse.Worst);
        Assert.Equal(Math.Sqrt(0.3125 / 9), Closeness.RelL2(a, e).Value, 1e-15);
        // All-zero expected values: the plain sum of squares, 1.5^2 + 1.75^2 + 2^2.
        Assert.Equal(9.3125, Closeness.Nmse(a, new float[3]).Value, 1e-12);
    }

    [Fact]
    public void NonFiniteValuesMustMatchInKind()
    {
        float[] e = [1f, float.NaN, float.PositiveInfinity];
        Closeness.AssertNmse("same kinds", [1f, float.NaN, float.PositiveInfinity], e, 0);
        var r = Closeness.Nmse([1f, float.NaN, float.NegativeInfinity], e);
        Assert.Equal(2, r.Mismatch);
        Assert.True(double.IsNaN(r.Value));
        Assert.Throws<TrueException>(() => Closeness.AssertNmse("nan result", [float.NaN, float.NaN, float.PositiveInfinity], e, 1));
    }

    [Fact]
    public void ElementwiseCheckNamesTheWorstElement()
    {
        double[] e = [1, 10, 100];
        Closeness.AssertElementwise("within", [1.01f, 10.1f, 100.5f], e, 0.01, 0.01);
        var ex = Assert.ThrowsAny<XunitException>(() => Closeness.AssertElementwise("out", [1.5f, 10.1f, 130f], e, 0.01, 0.01));
        Assert.Contains("2 of 3 elements", ex.Message);
        // element 2 is 30 off against 1.01 allowed, element 0 only 0.5 against 0.02.
        Assert.Contains("worst element 2", ex.Message);
        Assert.ThrowsAny<XunitException>(() => Closeness.AssertElementwise("nan", [1f, float.NaN, 100f], e, 1, 1));
    }
}
