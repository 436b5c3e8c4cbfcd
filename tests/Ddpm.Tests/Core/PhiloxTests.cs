using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Xunit;

namespace Ddpm.Tests.Core;

public sealed class PhiloxTests
{
    /// <summary>
    /// Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2 words),
    /// expected output (4 words).
    /// </summary>
    [Theory]
    [InlineData(0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [InlineData(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    [InlineData(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void Philox4x32x10MatchesRandom123KnownAnswers(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1,
        uint e0, uint e1, uint e2, uint e3)
    {
        Assert.Equal((e0, e1, e2, e3), Philox.Block(c0, c1, c2, c3, k0, k1));
    }

    [Fact]
    public void StreamPositionIsAWordOfTheCounterBlock()
    {
        // Position p is word p % 4 of the block with counter (p / 4 as 64 bits, 0, 0) and key = seed.
        ulong seed = 0x0123456789ABCDEFUL;
        foreach (ulong p in new ulong[] { 0, 1, 2, 3, 4, 5, 1UL << 34 | 2 })
        {
            ulong blk = p / 4;
            var w = Philox.Block((uint)blk, (uint)(blk >> 32), 0, 0, (uint)seed, (uint)(seed >> 32));
            uint expected = (p % 4) switch { 0 => w.Item1, 1 => w.Item2, 2 => w.Item3, _ => w.Item4 };
            Assert.Equal(expected, Philox.Word(seed, p));
        }
    }

    private static readonly int[] Chunks = [1, 2, 3, 7, 13, 4, 5, 64, 129, 11];

    [Fact]
    public void FillsDoNotDependOnChunking()
    {
        const int n = 1000;
        const ulong seed = 1234, offset = 5;
        var whole = new float[n];
        Philox.FillNormal(whole, seed, offset);
        var wholeU = new float[n];
        Philox.FillUniform(wholeU, seed, offset);

        var chunked = new float[n];
        var chunkedU = new float[n];
        using var be = new CpuReferenceBackend();
        var viaBackend = new float[n];
        int at = 0, k = 0;
        while (at < n)
        {
            int len = Math.Min(Chunks[k++ % Chunks.Length], n - at);
            Philox.FillNormal(chunked.AsSpan(at, len), seed, offset + (ulong)at);
            Philox.FillUniform(chunkedU.AsSpan(at, len), seed, offset + (ulong)at);
            var buf = be.Allocate(len);
            be.FillNormal(seed, offset + (ulong)at, buf, len);
            be.Download(buf, 0, viaBackend.AsSpan(at, len));
            buf.Release();
            at += len;
        }
        Assert.Equal(whole, chunked);
        Assert.Equal(wholeU, chunkedU);
        Assert.Equal(whole, viaBackend);
    }

    [Fact]
    public void NormalAndUniformMomentsAreRight()
    {
        // 1e5 draws; bounds are 5 standard errors: mean 1/sqrt(n), variance sqrt(2/n) for the normal.
        const int n = 100_000;
        var z = new float[n];
        Philox.FillNormal(z, 77, 0);
        double mean = z.Average(v => (double)v);
        double variance = z.Sum(v => (v - mean) * (v - mean)) / n;
        Assert.True(Math.Abs(mean) < 5 / Math.Sqrt(n), $"normal mean {mean}");
        Assert.True(Math.Abs(variance - 1) < 5 * Math.Sqrt(2.0 / n), $"normal variance {variance}");
        double tail = z.Count(v => Math.Abs(v) > 1.959964) / (double)n;
        Assert.True(Math.Abs(tail - 0.05) < 5 * Math.Sqrt(0.05 * 0.95 / n), $"two-sided 5% tail holds {tail}");

        var u = new float[n];
        Philox.FillUniform(u, 77, 0);
        Assert.All(u, v => Assert.True(v >= 0f && v < 1f));
        double um = u.Average(v => (double)v);
        Assert.True(Math.Abs(um - 0.5) < 5 * Math.Sqrt(1.0 / 12 / n), $"uniform mean {um}");
    }

    [Fact]
    public void GeneratorReservesWholeBlocks()
    {
        var g = new PhiloxGenerator(3, 0);
        Assert.Equal(0UL, g.Take(5));
        Assert.Equal(8UL, g.Offset);
        Assert.Equal(8UL, g.Take(4));
        Assert.Equal(12UL, g.Offset);
        var perm = new PhiloxGenerator(9).Permutation(50);
        Assert.Equal(Enumerable.Range(0, 50), perm.Order());
        Assert.All(new PhiloxGenerator(9).NextInts(1000, 7), v => Assert.InRange(v, 0, 6));
    }
}
