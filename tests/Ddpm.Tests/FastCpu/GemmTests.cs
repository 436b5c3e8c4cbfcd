using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cpu.Fast;
using Xunit;
using static Ddpm.Tests.FastCpu.FastCpuTestUtil;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// SGEMM against a naive double-precision GEMM. Tolerance per element, from the classic bound for a float
/// dot product of length k (|error| &lt;= k u sum |a_i b_i|, u = 2^-24) plus the roundings of alpha, beta and the
/// final add: |c - ref| &lt;= (k + 4) u (|alpha| sum_p |a_ip b_pj| + |beta c_ij|) + 1e-30.
/// </summary>
public sealed class GemmTests
{
    private static void Check(CpuBackend be, bool transA, bool transB, int batch, int m, int n, int k, float alpha, float beta,
        long strideA, long strideB, long strideC, int seed, bool nanInC = false)
    {
        int la = (int)((batch - 1) * strideA + (long)m * k), lb = (int)((batch - 1) * strideB + (long)k * n);
        int lc = (int)((batch - 1) * strideC + (long)m * n);
        var a = Random(la, seed); var b = Random(lb, seed + 1); var c = Random(lc, seed + 2);
        if (nanInC) Array.Fill(c, float.NaN);
        var expected = new double[lc]; var bound = new double[lc];
        for (int i = 0; i < lc; i++) expected[i] = c[i];
        for (int bi = 0; bi < batch; bi++)
        {
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0, abs = 0;
                    for (int p = 0; p < k; p++)
                    {
                        double av = transA ? a[bi * strideA + (long)p * m + i] : a[bi * strideA + (long)i * k + p];
                        double bv = transB ? b[bi * strideB + (long)j * k + p] : b[bi * strideB + (long)p * n + j];
                        s += av * bv; abs += Math.Abs(av * bv);
                    }
                    long ci = bi * strideC + (long)i * n + j;
                    double old = beta == 0f ? 0 : expected[ci] * beta;
                    expected[ci] = alpha * s + old;
                    bound[ci] = (k + 4) * Eps * (Math.Abs(alpha) * abs + Math.Abs(old)) * (strideC == 0 ? batch : 1) + 1e-30;
                }
        }
        var ab = Up(be, a); var bb = Up(be, b); var cb = Up(be, c);
        be.Gemm(transA, transB, ab, strideA, bb, strideB, batch, m, n, k, alpha, beta, cb, strideC);
        var got = Down(be, cb, lc);
        for (int i = 0; i < lc; i++)
        {
            double err = Math.Abs(got[i] - expected[i]);
            if (!(err <= bound[i]))
                Assert.Fail($"Gemm tA={transA} tB={transB} batch={batch} {m}x{n}x{k} a={alpha} b={beta}: C[{i}] = {got[i]}, expected {expected[i]}, error {err:g3} > {bound[i]:g3}.");
        }
        ab.Release(); bb.Release(); cb.Release();
    }

    public static IEnumerable<object[]> Sizes()
    {
        int[][] sizes = [[1, 1, 1], [7, 5, 3], [13, 37, 29], [33, 65, 17], [8, 32, 256], [97, 131, 300], [200, 70, 513], [9, 1000, 31], [64, 96, 300], [40, 33, 65], [21, 50, 1601], [70, 40, 800]];
        foreach (var s in sizes)
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    yield return [s[0], s[1], s[2], ta, tb];
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void OddSizesAllTransposes(int m, int n, int k, bool transA, bool transB)
    {
        using var be = new CpuBackend(2);
        Check(be, transA, transB, 1, m, n, k, 1f, 0f, 0, 0, 0, m * 31 + n);
        Check(be, transA, transB, 1, m, n, k, -0.75f, 0.5f, 0, 0, 0, m * 37 + k);
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public unsafe void DirectBReadsRowMajorBInPlace(int m, int n, int k, bool transA, bool transB)
    {
        if (transB) return; // RunDirectB reads a row-major B only
        foreach (bool avx512 in new[] { true, false })
        {
            using var pool = new WorkerPool(new CpuBackendOptions { Threads = 1, Avx512 = avx512 });
            foreach (var (alpha, beta) in new[] { (1f, 0f), (-0.75f, 0.5f), (1.25f, 1f) })
            {
                var a = Random(m * k, m + 3); var b = Random(k * n, n + 5); var c = Random(m * n, k + 7);
                var expected = new double[m * n]; var bound = new double[m * n];
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++)
                    {
                        double sum = 0, abs = 0;
                        for (int p = 0; p < k; p++)
                        {
                            double av = transA ? a[p * m + i] : a[i * k + p], bv = b[p * n + j];
                            sum += av * bv; abs += Math.Abs(av * bv);
                        }
                        double old = beta == 0f ? 0 : c[i * n + j] * (double)beta;
                        expected[i * n + j] = alpha * sum + old;
                        bound[i * n + j] = (k + 4) * Eps * (Math.Abs(alpha) * abs + Math.Abs(old)) + 1e-30;
                    }
                fixed (float* ap = a, bp = b, cp = c)
                    Sgemm.RunDirectB(pool.Scratch(0), transA, m, n, k, alpha, ap, transA ? m : k, bp, n, beta, cp, n);
                for (int i = 0; i < m * n; i++)
                    if (!(Math.Abs(c[i] - expected[i]) <= bound[i]))
                        Assert.Fail($"RunDirectB avx512={avx512} tA={transA} {m}x{n}x{k} a={alpha} b={beta}: C[{i}] = {c[i]}, expected {expected[i]}.");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Vector256MicroKernel(int m, int n, int k, bool transA, bool transB)
    {
        using var be = new CpuBackend(new CpuBackendOptions { Threads = 2, Avx512 = false });
        Assert.DoesNotContain("AVX-512", be.Description);
        Check(be, transA, transB, 1, m, n, k, 1.5f, 1f, 0, 0, 0, m * 41 + n);
    }

    /// <summary>Small block sizes force many k-blocks, row blocks and column blocks on every size.</summary>
    [Theory]
    [MemberData(nameof(Sizes))]
    public void SmallBlocks(int m, int n, int k, bool transA, bool transB)
    {
        using var be = new CpuBackend(new CpuBackendOptions { Threads = 2, GemmKC = 16, GemmMC = 24, GemmNC = 64 });
        Check(be, transA, transB, 1, m, n, k, 1f, 0.5f, 0, 0, 0, m * 43 + k);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void ThreadCounts(int threads)
    {
        using var be = new CpuBackend(threads);
        Check(be, false, false, 1, 301, 517, 259, 1f, 0f, 0, 0, 0, threads);
        Check(be, false, true, 1, 101, 213, 1700, 1f, 0.5f, 0, 0, 0, threads + 10);
    }

    [Fact]
    public void BetaZeroOverwritesNaN()
    {
        using var be = new CpuBackend(2);
        Check(be, false, true, 1, 45, 77, 20, 2f, 0f, 0, 0, 0, 5, nanInC: true);
        Check(be, true, false, 3, 9, 40, 3, 1f, 0f, 9 * 3, 3 * 40, 9 * 40, 6, nanInC: true);
    }

    [Fact]
    public void AlphaZeroScalesC()
    {
        using var be = new CpuBackend(2);
        Check(be, false, false, 1, 5, 6, 7, 0f, 0.25f, 0, 0, 0, 8);
        Check(be, false, false, 1, 5, 6, 0, 1f, 2f, 0, 0, 0, 9);
    }

    [Theory]
    [InlineData(false, false, 5, 7, 9, 11)]
    [InlineData(true, false, 64, 16, 16, 32)]
    [InlineData(false, true, 3, 130, 70, 40)]
    [InlineData(true, true, 9, 33, 17, 65)]
    public void Batched(bool transA, bool transB, int batch, int m, int n, int k)
    {
        using var be = new CpuBackend(2);
        // Contiguous batches, padded batches, and a broadcast (stride 0) operand on either side.
        Check(be, transA, transB, batch, m, n, k, 1f, 0f, (long)m * k, (long)k * n, (long)m * n, 1);
        Check(be, transA, transB, batch, m, n, k, 0.5f, 1f, (long)m * k + 3, (long)k * n + 5, (long)m * n + 7, 2);
        Check(be, transA, transB, batch, m, n, k, 1f, 0f, 0, (long)k * n, (long)m * n, 3);
        Check(be, transA, transB, batch, m, n, k, 1f, -1f, (long)m * k, 0, (long)m * n, 4);
    }

    [Fact]
    public void StrideZeroCAccumulatesInOrder()
    {
        using var be = new CpuBackend(2);
        Check(be, false, false, 4, 6, 5, 7, 1f, 1f, 6 * 7, 7 * 5, 0, 10);
    }

    /// <summary>k-blocks cover k exactly, are at most KC deep, multiples of 16 when k is split, and there are
    /// no more of them than ceil(k / KC).</summary>
    [Fact]
    public void KBlocksCoverKInTheFewestEvenBlocks()
    {
        int kcMax = new CpuBackendOptions().GemmKC;
        foreach (int k in new[] { 1, 15, 255, kcMax - 1, kcMax, kcMax + 1, 1024, 1601, 2048, 2304, 4609 })
        {
            int kc = Sgemm.KBlock(k, kcMax);
            Assert.InRange(kc, 1, Math.Min(k, kcMax));
            int blocks = (k + kc - 1) / kc;
            Assert.Equal((k + kcMax - 1) / kcMax, blocks);
            if (k > kcMax) Assert.Equal(0, kc % 16);
        }
    }

    /// <summary>A row blocks: multiples of MR, not past MC by more than one MR, and on several workers as many
    /// blocks as a multiple of the worker count whenever the rows allow it.</summary>
    [Fact]
    public void RowBlocksSplitEvenlyOverTheWorkers()
    {
        foreach (int threads in new[] { 1, 2, 3, 4 })
            foreach (int mr in new[] { 6, 8, 12 })
                foreach (int m in new[] { 1, 7, 32, 64, 96, 128, 256, 300, 1024, 2048, 2304 })
                {
                    int mcMax = new CpuBackendOptions().GemmMC;
                    int mc = Sgemm.RowBlock(m, mr, threads, mcMax);
                    Assert.Equal(0, mc % mr);
                    Assert.InRange(mc, mr, Math.Max(mr, mcMax / mr * mr) + mr);
                    int blocks = (m + mc - 1) / mc;
                    if (threads > 1 && m >= threads * mr * 2 && m % (threads * mr) == 0)
                        Assert.True(blocks % threads == 0, $"m={m} mr={mr} threads={threads}: {blocks} blocks of {mc}");
                }
    }
}
