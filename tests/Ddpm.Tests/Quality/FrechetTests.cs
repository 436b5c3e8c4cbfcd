using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors;
using Ddpm.Tests.TestUtil;
using Xunit;

namespace Ddpm.Tests.Quality;

/// <summary>The Frechet distance, the statistics it is computed from, and the class-score measures, against closed forms.</summary>
public sealed class FrechetTests
{
    private static double[,] Diagonal(params double[] v)
    {
        var m = new double[v.Length, v.Length];
        for (int i = 0; i < v.Length; i++) m[i, i] = v[i];
        return m;
    }

    [Fact]
    public void DiagonalCovariancesGiveTheClosedForm()
    {
        // d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 for commuting diagonal covariances.
        double[] mu1 = [0.5, -1, 2, 0], mu2 = [1.5, 1, 2, -3];
        double[] a = [1, 4, 0.25, 9], b = [4, 1, 0.25, 0.01];
        double expected = 1 + 4 + 0 + 9;
        for (int i = 0; i < 4; i++) expected += Math.Pow(Math.Sqrt(a[i]) - Math.Sqrt(b[i]), 2);
        double d = Frechet.Distance(mu1, Diagonal(a), mu2, Diagonal(b));
        Assert.Equal(expected, d, 10);
    }

    [Fact]
    public void NonDiagonalTwoByTwoMatchesTheTraceDeterminantFormula()
    {
        // For 2x2 A = S1 S2 with positive eigenvalues l1, l2: tr A^(1/2) = sqrt(l1) + sqrt(l2)
        // = sqrt(tr A + 2 sqrt(det A)), computed here without any eigen-decomposition.
        double[,] s1 = { { 2.0, 0.8 }, { 0.8, 1.0 } };
        double[,] s2 = { { 0.5, -0.3 }, { -0.3, 3.0 } };
        double[] mu1 = [1, 2], mu2 = [-1, 0.5];
        double a00 = s1[0, 0] * s2[0, 0] + s1[0, 1] * s2[1, 0], a01 = s1[0, 0] * s2[0, 1] + s1[0, 1] * s2[1, 1];
        double a10 = s1[1, 0] * s2[0, 0] + s1[1, 1] * s2[1, 0], a11 = s1[1, 0] * s2[0, 1] + s1[1, 1] * s2[1, 1];
        double trRoot = Math.Sqrt(a00 + a11 + 2 * Math.Sqrt(a00 * a11 - a01 * a10));
        double expected = 4 + 2.25 + (2 + 1) + (0.5 + 3) - 2 * trRoot;
        Assert.Equal(expected, Frechet.Distance(mu1, s1, mu2, s2), 10);
        Assert.Equal(expected, Frechet.Distance(mu2, s2, mu1, s1), 10);
    }

    [Fact]
    public void DistanceIsZeroForEqualGaussiansAndInvariantUnderRotation()
    {
        var (mu1, s1) = RandomGaussian(8, 1);
        var (mu2, s2) = RandomGaussian(8, 2);
        Assert.Equal(0, Frechet.Distance(mu1, s1, mu1, s1), 8);
        double d = Frechet.Distance(mu1, s1, mu2, s2);
        Assert.True(d > 1, $"distinct Gaussians gave {d}");
        // An orthogonal change of basis Q (a product of Givens rotations) moves both Gaussians alike.
        var q = new double[8, 8];
        for (int i = 0; i < 8; i++) q[i, i] = 1;
        var gen = new PhiloxGenerator(3);
        for (int r = 0; r < 20; r++)
        {
            int i = gen.NextInt(8), j = (i + 1 + gen.NextInt(7)) % 8;
            double t = gen.NextInt(1000) / 1000.0 * Math.PI, c = Math.Cos(t), s = Math.Sin(t);
            for (int k = 0; k < 8; k++)
            {
                double qi = q[i, k], qj = q[j, k];
                q[i, k] = c * qi - s * qj;
                q[j, k] = s * qi + c * qj;
            }
        }
        double rotated = Frechet.Distance(Mul(q, mu1), Sandwich(q, s1), Mul(q, mu2), Sandwich(q, s2));
        Assert.Equal(d, rotated, 8);
    }

    [Fact]
    public void SingularCovarianceIsHandled()
    {
        // Fewer samples than features give a rank-deficient covariance; the distance stays finite and >= 0.
        var s1 = new double[3, 3];
        s1[0, 0] = 1; s1[0, 1] = s1[1, 0] = 1; s1[1, 1] = 1;
        double d = Frechet.Distance([0, 0, 0], s1, [0, 0, 0], s1);
        Assert.True(Math.Abs(d) < 1e-7, $"got {d}");
        double d2 = Frechet.Distance([0, 0, 0], s1, [0, 0, 0], Diagonal(1, 1, 1));
        Assert.True(double.IsFinite(d2) && d2 > 0, $"got {d2}");
    }

    [Fact]
    public void StatisticsAreTheSampleMeanAndUnbiasedCovariance()
    {
        // Rows (1,2), (3,6), (5,4): mean (3, 4); cov = [[4, 2], [2, 4]] (divided by n - 1 = 2).
        var st = GaussianStatistics.FromFeatures([1, 2, 3, 6, 5, 4], 3, 2);
        Assert.Equal([3.0, 4.0], st.Mean);
        Assert.Equal(4, st.Covariance[0, 0], 12);
        Assert.Equal(2, st.Covariance[0, 1], 12);
        Assert.Equal(2, st.Covariance[1, 0], 12);
        Assert.Equal(4, st.Covariance[1, 1], 12);
        Assert.Throws<ArgumentException>(() => GaussianStatistics.FromFeatures([1, 2], 1, 2));
    }

    [Fact]
    public void SampledGaussiansApproachTheirPopulationDistance()
    {
        // 20,000 draws of N(0, I) and N(m, 4 I) in 3-d: population distance |m|^2 + 3 (2 - 1)^2 = 1 + 3 = 4.
        int n = 20000, d = 3;
        var z = TestData.Normal(2 * n * d, 11);
        var a = z.AsSpan(0, n * d).ToArray();
        var b = z.AsSpan(n * d, n * d).ToArray();
        for (int i = 0; i < n; i++) { b[i * d] = 2 * b[i * d] + 1; b[i * d + 1] *= 2; b[i * d + 2] *= 2; }
        double fd = Frechet.Distance(GaussianStatistics.FromFeatures(a, n, d), GaussianStatistics.FromFeatures(b, n, d));
        Assert.InRange(fd, 3.85, 4.15);
    }

    [Fact]
    public void InceptionScoreOfUniformPredictionsIsOne()
    {
        var p = Enumerable.Repeat(0.1f, 50 * 10).ToArray();
        Assert.Equal(1.0, SampleQuality.InceptionScore(p, 50, 10), 6);
        // The same confident prediction for every image: also 1.
        var same = new float[20 * 4];
        for (int i = 0; i < 20; i++) same[i * 4 + 2] = 1;
        Assert.Equal(1.0, SampleQuality.InceptionScore(same, 20, 4), 12);
    }

    [Fact]
    public void InceptionScoreOfConfidentBalancedPredictionsIsTheClassCount()
    {
        var p = new float[40 * 4];
        for (int i = 0; i < 40; i++) p[i * 4 + i % 4] = 1;
        Assert.Equal(4.0, SampleQuality.InceptionScore(p, 40, 4), 10);
        // Two classes used equally, confidently: 2.
        var two = new float[10 * 4];
        for (int i = 0; i < 10; i++) two[i * 4 + i % 2] = 1;
        Assert.Equal(2.0, SampleQuality.InceptionScore(two, 10, 4), 10);
    }

    [Fact]
    public void HistogramCountsTheMostLikelyClass()
    {
        float[] p =
        [
            0.1f, 0.7f, 0.2f,
            0.5f, 0.2f, 0.3f,
            0.2f, 0.3f, 0.5f,
            0.0f, 0.9f, 0.1f,
            0.4f, 0.4f, 0.2f, // a tie goes to the first
        ];
        Assert.Equal([2, 2, 1], SampleQuality.ClassHistogram(p, 5, 3));
    }

    [Fact]
    public void ScrambleKeepsEachImagesValuesAndMovesThem()
    {
        var img = Enumerable.Range(0, 2 * 16).Select(i => (float)i).ToArray();
        var s = SampleQuality.ScramblePixels(img, 2, 1, 4, 4, 7);
        Assert.Equal(img[..16].Order(), s[..16].Order());
        Assert.Equal(img[16..].Order(), s[16..].Order());
        Assert.NotEqual(img, s);
        Assert.Equal(s, SampleQuality.ScramblePixels(img, 2, 1, 4, 4, 7));
    }

    [Fact]
    public void CrossEntropyMatchesLogSoftmaxAndStaysFiniteForLargeLogits()
    {
        var be = new CpuReferenceBackend();
        float[] logits = [1, 2, 3, -1, 0, 4, 1000, 0, -1000];
        int[] labels = [2, 0, 2];
        using var x = Tensor.FromArray(be, logits, 3, 3);
        double expected = 0;
        for (int i = 0; i < 2; i++)
        {
            double m = logits.Skip(i * 3).Take(3).Max();
            double lse = m + Math.Log(logits.Skip(i * 3).Take(3).Sum(v => Math.Exp(v - m)));
            expected += lse - logits[i * 3 + labels[i]];
        }
        // The third sample's label probability exp(-2000) underflows: its loss saturates at -log(FLT_MIN).
        expected += -Math.Log(1.17549435e-38);
        using var loss = Ops.CrossEntropy(x, labels);
        Assert.Equal(expected / 3, loss.Item(), 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => Ops.CrossEntropy(x, [0, 3, 1]));
    }

    private static (double[] Mean, double[,] Cov) RandomGaussian(int d, ulong seed)
    {
        // S = B B^T + 0.1 I is symmetric positive definite.
        var z = TestData.Normal(d * d + d, seed);
        var cov = new double[d, d];
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
            {
                double s = 0;
                for (int k = 0; k < d; k++) s += z[i * d + k] * z[j * d + k];
                cov[i, j] = s + (i == j ? 0.1 : 0);
            }
        return (z.Skip(d * d).Select(v => (double)v).ToArray(), cov);
    }

    private static double[] Mul(double[,] q, double[] v)
    {
        int d = v.Length;
        var r = new double[d];
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++) r[i] += q[i, k] * v[k];
        return r;
    }

    /// <summary>Q S Q^T.</summary>
    private static double[,] Sandwich(double[,] q, double[,] s)
    {
        int d = s.GetLength(0);
        var r = new double[d, d];
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
            {
                double acc = 0;
                for (int k = 0; k < d; k++)
                    for (int l = 0; l < d; l++) acc += q[i, k] * s[k, l] * q[j, l];
                r[i, j] = acc;
            }
        return r;
    }
}
