using System.Runtime.CompilerServices;

namespace Ddpm.Tensors;

/// <summary>
/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the counter-based
/// generator of Random123, cuRAND and PyTorch. A stream is addressed by (seed, position): position p is word
/// p % 4 of the block with 128-bit counter (p / 4, 0) under the 64-bit key seed. So element i of a fill that
/// starts at offset o is the same number whatever the chunking, thread count or backend.
/// </summary>
public static class Philox
{
    private const uint M0 = 0xD2511F53, M1 = 0xCD9E8D57;
    private const uint W0 = 0x9E3779B9, W1 = 0xBB67AE85;

    /// <summary>The raw 10-round bijection: four 32-bit words from a 128-bit counter and a 64-bit key.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (uint, uint, uint, uint) Block(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
    {
        for (int r = 0; r < 10; r++)
        {
            if (r > 0) { k0 += W0; k1 += W1; }
            ulong p0 = (ulong)M0 * c0;
            ulong p1 = (ulong)M1 * c2;
            uint hi0 = (uint)(p0 >> 32), lo0 = (uint)p0;
            uint hi1 = (uint)(p1 >> 32), lo1 = (uint)p1;
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
        }
        return (c0, c1, c2, c3);
    }

    /// <summary>The four words of block <paramref name="blockIndex"/> of stream <paramref name="seed"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (uint, uint, uint, uint) StreamBlock(ulong seed, ulong blockIndex) =>
        Block((uint)blockIndex, (uint)(blockIndex >> 32), 0, 0, (uint)seed, (uint)(seed >> 32));

    /// <summary>Uniform in [0,1) from the top 24 bits of a word: exact in float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToUniform(uint x) => (x >> 8) * (1.0f / 16777216.0f);

    /// <summary>
    /// Box-Muller on two words, computed in double and rounded once, so every backend gets the same floats:
    /// u1 = (a + 1) / 2^32 in (0, 1], u2 = b / 2^32; returns (r cos(2 pi u2), r sin(2 pi u2)), r = sqrt(-2 ln u1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (float, float) BoxMuller(uint a, uint b)
    {
        double u1 = (a + 1.0) * (1.0 / 4294967296.0);
        double u2 = b * (1.0 / 4294967296.0);
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        double th = 2.0 * Math.PI * u2;
        return ((float)(r * Math.Cos(th)), (float)(r * Math.Sin(th)));
    }

    /// <summary>Standard normals at positions offset .. offset + dst.Length of stream seed.</summary>
    public static void FillNormal(Span<float> dst, ulong seed, ulong offset)
    {
        int i = 0;
        while (i < dst.Length)
        {
            ulong pos = offset + (ulong)i;
            var (w0, w1, w2, w3) = StreamBlock(seed, pos >> 2);
            var (z0, z1) = BoxMuller(w0, w1);
            var (z2, z3) = BoxMuller(w2, w3);
            for (int j = (int)(pos & 3); j < 4 && i < dst.Length; j++, i++)
                dst[i] = j switch { 0 => z0, 1 => z1, 2 => z2, _ => z3 };
        }
    }

    /// <summary>Uniform [0,1) numbers at positions offset .. offset + dst.Length of stream seed.</summary>
    public static void FillUniform(Span<float> dst, ulong seed, ulong offset)
    {
        int i = 0;
        while (i < dst.Length)
        {
            ulong pos = offset + (ulong)i;
            var (w0, w1, w2, w3) = StreamBlock(seed, pos >> 2);
            for (int j = (int)(pos & 3); j < 4 && i < dst.Length; j++, i++)
                dst[i] = ToUniform(j switch { 0 => w0, 1 => w1, 2 => w2, _ => w3 });
        }
    }

    /// <summary>The raw 32-bit word at a stream position (integer draws: shuffles, timesteps).</summary>
    public static uint Word(ulong seed, ulong position)
    {
        var (w0, w1, w2, w3) = StreamBlock(seed, position >> 2);
        return (position & 3) switch { 0 => w0, 1 => w1, 2 => w2, _ => w3 };
    }
}

/// <summary>
/// A Philox stream with a moving offset: each draw takes the next positions, rounded up to whole 4-word
/// blocks so a fill always starts at a block boundary (as PyTorch's Philox offsets do). The state is just
/// (seed, offset), which checkpoints save so that resumed training draws the same numbers.
/// </summary>
public sealed class PhiloxGenerator
{
    public PhiloxGenerator(ulong seed, ulong offset = 0)
    {
        Seed = seed;
        Offset = offset;
    }

    public ulong Seed { get; }
    public ulong Offset { get; set; }

    /// <summary>The batch shard that draws are scaled to while a <see cref="ShardBatch"/> scope is open; null otherwise.</summary>
    public BatchShard? Shard { get; private set; }

    /// <summary>
    /// Reserves <paramref name="count"/> positions and returns the first. Inside a <see cref="ShardBatch"/>
    /// scope, <paramref name="count"/> is per-sample numbers times the shard's sample count: the generator
    /// reserves what the whole batch would draw and returns the positions of the shard's samples, so a shard
    /// draws exactly the numbers its samples get in the whole batch.
    /// </summary>
    public ulong Take(long count)
    {
        ulong start = Offset;
        if (Shard is { } s)
        {
            if (count % s.Count != 0)
                throw new InvalidOperationException(
                    $"A draw of {count} random numbers does not split over the {s.Count} samples of a batch shard (draws inside a shard must be per-sample).");
            ulong per = (ulong)(count / s.Count);
            Offset += (per * (ulong)s.Total + 3) & ~3UL;
            return start + (ulong)s.Start * per;
        }
        Offset += ((ulong)count + 3) & ~3UL;
        return start;
    }

    /// <summary>
    /// Until the returned handle is disposed, every draw is for samples [start, start + count) of a batch of
    /// <paramref name="total"/>: data-parallel ranks each draw their shard and together get the numbers one
    /// process drawing the whole batch gets, and the generator ends at the same offset.
    /// </summary>
    public IDisposable ShardBatch(int start, int count, int total)
    {
        if (count <= 0 || start < 0 || total <= 0 || start > total - count)
            throw new ArgumentOutOfRangeException(nameof(start), $"Shard [{start}, {start} + {count}) is not inside a batch of {total}.");
        if (Shard is not null) throw new InvalidOperationException("The generator is already drawing for a batch shard.");
        Shard = new BatchShard(start, count, total);
        return new ShardScope(this);
    }

    private sealed class ShardScope(PhiloxGenerator gen) : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            gen.Shard = null;
        }
    }

    /// <summary>A uniform integer in [0, n) (Lemire's multiply-shift on one word; bias below 2^-32 * n).</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        uint w = Philox.Word(Seed, Take(1));
        return (int)(((ulong)w * (ulong)n) >> 32);
    }

    /// <summary>n uniform integers in [0, bound), from consecutive words of one reservation.</summary>
    public int[] NextInts(int count, int bound)
    {
        if (bound <= 0) throw new ArgumentOutOfRangeException(nameof(bound));
        ulong start = Take(count);
        var r = new int[count];
        for (int i = 0; i < count; i++)
            r[i] = (int)(((ulong)Philox.Word(Seed, start + (ulong)i) * (ulong)bound) >> 32);
        return r;
    }

    /// <summary>A Fisher-Yates permutation of 0..n-1.</summary>
    public int[] Permutation(int n)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        ulong start = Take(n);
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)(((ulong)Philox.Word(Seed, start + (ulong)i) * (ulong)(i + 1)) >> 32);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}

/// <summary>Samples [Start, Start + Count) of a batch of Total samples.</summary>
public readonly record struct BatchShard(int Start, int Count, int Total);
