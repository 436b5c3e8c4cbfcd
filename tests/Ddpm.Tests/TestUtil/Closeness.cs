using Xunit;

namespace Ddpm.Tests.TestUtil;

/// <summary>
/// The one way tests compare a float32 result with its expected values: normalized mean squared error, relative
/// L2 error, or an elementwise atol + rtol check. Non-finite values are compared in kind: an expected NaN, +Inf
/// or -Inf must be matched exactly, and a non-finite result where a finite one is expected is a mismatch, so a
/// NaN is never hidden by a sum. Every failure names the worst element.
/// </summary>
internal static class Closeness
{
    /// <summary>
    /// One comparison's figures. <see cref="Value"/> is the metric over the finite pairs, or NaN when a non-finite
    /// mismatch exists (so that any <c>Value &lt;= tol</c> check fails). <see cref="Worst"/> is the finite pair with
    /// the largest |actual - expected| (-1 when none); <see cref="Mismatch"/> is the first non-finite mismatch (-1
    /// when none).
    /// </summary>
    public readonly record struct Result(double Value, int Worst, float WorstActual, double WorstExpected,
        int Mismatch, float MismatchActual, double MismatchExpected)
    {
        public string Describe(string what, string metric, double tol)
        {
            if (Mismatch >= 0) return $"{what}: element {Mismatch} is {MismatchActual}, expected {MismatchExpected}.";
            string worst = Worst < 0 ? "" : $"; worst element {Worst}: {WorstActual:R} vs {WorstExpected:R}";
            return $"{what}: {metric} {Value:E3} > {tol:E0}{worst}.";
        }
    }

    /// <summary>NMSE = sum (a - e)^2 / sum e^2 over the finite pairs (the plain sum when every e is 0).</summary>
    public static Result Nmse(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected) => Measure(actual, expected, sqrt: false);

    public static Result Nmse(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected) => Nmse(actual, Widen(expected));

    /// <summary>Relative L2 error ||a - e|| / ||e|| over the finite pairs (||a - e|| when e is 0): the square root of NMSE.</summary>
    public static Result RelL2(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected) => Measure(actual, expected, sqrt: true);

    public static Result RelL2(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected) => RelL2(actual, Widen(expected));

    /// <summary>Asserts NMSE &lt;= <paramref name="tol"/> and no non-finite mismatch.</summary>
    public static void AssertNmse(string what, ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double tol)
    {
        var r = Nmse(actual, expected);
        Assert.True(r.Value <= tol, r.Describe(what, "NMSE", tol));
    }

    public static void AssertNmse(string what, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double tol) =>
        AssertNmse(what, actual, Widen(expected), tol);

    /// <summary>
    /// Asserts actual == expected or |actual - expected| &lt;= atol + rtol |expected| for every element (a NaN
    /// anywhere fails); the failure reports how many elements are out and the worst of them relative to its allowance.
    /// </summary>
    public static void AssertElementwise(string what, ReadOnlySpan<float> actual, ReadOnlySpan<double> expected,
        double atol, double rtol)
    {
        Assert.Equal(expected.Length, actual.Length);
        int bad = 0, worst = -1;
        double worstRatio = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            if (actual[i] == expected[i]) continue;
            double err = Math.Abs(actual[i] - expected[i]);
            double allowed = atol + rtol * Math.Abs(expected[i]);
            if (err <= allowed) continue;
            bad++;
            double ratio = double.IsNaN(err) ? double.PositiveInfinity : err / allowed;
            if (ratio > worstRatio) { worstRatio = ratio; worst = i; }
        }
        if (bad == 0) return;
        double e = expected[worst];
        Assert.Fail($"{what}: {bad} of {expected.Length} elements out of tolerance; worst element {worst} is " +
            $"{actual[worst]:R}, expected {e:R} (|err| {Math.Abs(actual[worst] - e):E3} > {atol:E1} + {rtol:E1}|expected|).");
    }

    public static void AssertElementwise(string what, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected,
        double atol, double rtol) => AssertElementwise(what, actual, Widen(expected), atol, rtol);

    private static double[] Widen(ReadOnlySpan<float> v)
    {
        var r = new double[v.Length];
        for (int i = 0; i < r.Length; i++) r[i] = v[i];
        return r;
    }

    private static Result Measure(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, bool sqrt)
    {
        Assert.Equal(expected.Length, actual.Length);
        double num = 0, den = 0, worstErr = -1;
        int worst = -1, mismatch = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i];
            float a = actual[i];
            if (!double.IsFinite(e) || !float.IsFinite(a))
            {
                bool same = double.IsNaN(e) ? float.IsNaN(a) : e == a;
                if (!same && mismatch < 0) mismatch = i;
                continue;
            }
            double d = a - e;
            num += d * d;
            den += e * e;
            if (Math.Abs(d) > worstErr) { worstErr = Math.Abs(d); worst = i; }
        }
        double nmse = den == 0 ? num : num / den;
        double value = mismatch >= 0 ? double.NaN : sqrt ? Math.Sqrt(nmse) : nmse;
        return new Result(value, worst, worst < 0 ? 0f : actual[worst], worst < 0 ? 0 : expected[worst],
            mismatch, mismatch < 0 ? 0f : actual[mismatch], mismatch < 0 ? 0 : expected[mismatch]);
    }
}
