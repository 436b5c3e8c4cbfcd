using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Factorization;

namespace Ddpm.Diffusion.Quality;

/// <summary>The mean and covariance of a set of feature vectors (the Gaussian that FID fits to them).</summary>
public sealed class GaussianStatistics
{
    public GaussianStatistics(double[] mean, double[,] covariance, int count)
    {
        int d = mean.Length;
        if (covariance.GetLength(0) != d || covariance.GetLength(1) != d)
            throw new ArgumentException($"A mean of {d} entries needs a {d}x{d} covariance, not {covariance.GetLength(0)}x{covariance.GetLength(1)}.");
        Mean = mean;
        Covariance = covariance;
        Count = count;
    }

    public double[] Mean { get; }
    public double[,] Covariance { get; }

    /// <summary>How many vectors the statistics were computed from.</summary>
    public int Count { get; }

    public int Dim => Mean.Length;

    /// <summary>
    /// Statistics of <paramref name="n"/> vectors of <paramref name="d"/> values (features: [n, d], row-major),
    /// accumulated in double; the covariance is the unbiased one (divided by n - 1), as numpy.cov and
    /// pytorch-fid compute it.
    /// </summary>
    public static GaussianStatistics FromFeatures(ReadOnlySpan<float> features, int n, int d)
    {
        if (n < 2) throw new ArgumentException($"A covariance needs at least 2 vectors; got {n}.");
        if (features.Length != (long)n * d) throw new ArgumentException($"{features.Length} values are not {n} vectors of {d}.");
        var mean = new double[d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) mean[j] += features[i * d + j];
        for (int j = 0; j < d; j++) mean[j] /= n;
        // Centred rows as an [n, d] matrix; cov = X^T X / (n - 1) through MathNet's matrix product.
        var x = Matrix<double>.Build.Dense(n, d);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) x[i, j] = features[i * d + j] - mean[j];
        var cov = x.TransposeThisAndMultiply(x).Divide(n - 1).ToArray();
        // Exact symmetry, so the symmetric eigen solver sees the matrix it assumes.
        for (int i = 0; i < d; i++)
            for (int j = 0; j < i; j++) cov[i, j] = cov[j, i] = 0.5 * (cov[i, j] + cov[j, i]);
        return new GaussianStatistics(mean, cov, n);
    }
}

/// <summary>
/// The Frechet (2-Wasserstein) distance between two Gaussians, the quantity behind FID (Heusel et al. 2017):
/// d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
/// </summary>
public static class Frechet
{
    public static double Distance(GaussianStatistics a, GaussianStatistics b)
    {
        if (a.Dim != b.Dim) throw new ArgumentException($"Statistics of {a.Dim} and {b.Dim} features cannot be compared.");
        return Distance(a.Mean, a.Covariance, b.Mean, b.Covariance);
    }

    /// <summary>
    /// tr (S1 S2)^(1/2) is computed as tr (S1^(1/2) S2 S1^(1/2))^(1/2): the two matrices are similar (same
    /// eigenvalues), and the second is symmetric positive semi-definite, so both square roots come from
    /// MathNet's symmetric eigen-decomposition with real, non-negative eigenvalues. That avoids the general
    /// sqrtm of the non-symmetric S1 S2, which gives complex round-off and needs scipy's offset trick when S1
    /// is singular (fewer samples than features). Eigenvalues that round-off pushes below zero count as zero.
    /// </summary>
    public static double Distance(double[] mu1, double[,] s1, double[] mu2, double[,] s2)
    {
        int d = mu1.Length;
        if (mu2.Length != d || s1.GetLength(0) != d || s1.GetLength(1) != d || s2.GetLength(0) != d || s2.GetLength(1) != d)
            throw new ArgumentException($"Means of {mu1.Length} and {mu2.Length} entries with covariances {s1.GetLength(0)}x{s1.GetLength(1)} and {s2.GetLength(0)}x{s2.GetLength(1)} do not match.");
        double meanTerm = 0;
        for (int i = 0; i < d; i++) meanTerm += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
        var a = Matrix<double>.Build.DenseOfArray(s1);
        var b = Matrix<double>.Build.DenseOfArray(s2);
        var rootA = SymmetricSqrt(a);
        var m = rootA * b * rootA;
        m = 0.5 * (m + m.Transpose());
        double traceRoot = SymmetricEigenvalues(m).Sum(v => Math.Sqrt(Math.Max(v, 0)));
        return meanTerm + a.Trace() + b.Trace() - 2 * traceRoot;
    }

    /// <summary>The symmetric positive semi-definite square root V diag(sqrt(max(l, 0))) V^T of a symmetric matrix.</summary>
    public static Matrix<double> SymmetricSqrt(Matrix<double> s)
    {
        var evd = s.Evd(Symmetricity.Symmetric);
        var roots = Vector<double>.Build.Dense(s.RowCount, i => Math.Sqrt(Math.Max(evd.EigenValues[i].Real, 0)));
        var v = evd.EigenVectors;
        return v * Matrix<double>.Build.DiagonalOfDiagonalVector(roots) * v.Transpose();
    }

    private static double[] SymmetricEigenvalues(Matrix<double> s) =>
        s.Evd(Symmetricity.Symmetric).EigenValues.Select(c => c.Real).ToArray();
}
