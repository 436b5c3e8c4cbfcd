using Ddpm.Backends.Cpu.Fast;
using Xunit;

namespace Ddpm.Tests.FastCpu;

/// <summary>
/// The worker pool's contract: every item of every region runs exactly once, on a worker index in range, with
/// regions back to back (helpers awake) and after the helpers have gone to sleep; errors reach the caller;
/// nested or concurrent use is refused; the chunked splits cover their ranges exactly.
/// </summary>
public sealed class WorkerPoolTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void EveryItemRunsOnceInEveryRegion(int threads)
    {
        using var pool = new WorkerPool(threads);
        for (int region = 0; region < 2000; region++)
        {
            int count = 1 + region % 37;
            var hits = new int[count];
            var badWorker = 0;
            pool.For(count, (w, i) =>
            {
                if (w < 0 || w >= threads) Interlocked.Increment(ref badWorker);
                Interlocked.Increment(ref hits[i]);
            });
            Assert.Equal(0, badWorker);
            Assert.All(hits, h => Assert.Equal(1, h));
            // Now and then let the helpers fall asleep, so the wake-up path is taken too.
            if (region % 400 == 399) Thread.Sleep(5);
        }
    }

    [Fact]
    public void BothWorkersTakeItemsOfALongRegion()
    {
        using var pool = new WorkerPool(2);
        var byWorker = new int[2];
        // Items long enough that the helper, woken or spinning, joins before the caller finishes them all.
        pool.For(64, (w, _) =>
        {
            Interlocked.Increment(ref byWorker[w]);
            Thread.Sleep(1);
        });
        Assert.Equal(64, byWorker[0] + byWorker[1]);
        Assert.True(byWorker[1] > 0, "the helper thread ran no item of a 64-item region of 1 ms items");
    }

    [Fact]
    public void ErrorOfAnItemReachesTheCallerAndThePoolStaysUsable()
    {
        using var pool = new WorkerPool(2);
        var e = Assert.Throws<InvalidDataException>(() => pool.For(10, (_, i) =>
        {
            if (i == 7) throw new InvalidDataException("item 7");
        }));
        Assert.Equal("item 7", e.Message);
        int sum = 0;
        pool.For(10, (_, i) => Interlocked.Add(ref sum, i));
        Assert.Equal(45, sum);
    }

    [Fact]
    public void NestedUseIsRefused()
    {
        using var pool = new WorkerPool(2);
        var e = Assert.Throws<InvalidOperationException>(() => pool.For(4, (_, _) => pool.For(2, (_, _) => { })));
        Assert.Contains("re-entrant", e.Message);
    }

    [Fact]
    public async Task ConcurrentCallersAreRefused()
    {
        using var pool = new WorkerPool(2);
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var first = Task.Run(() => pool.For(1, (_, _) =>
        {
            inside.Set();
            release.Wait();
        }));
        inside.Wait();
        var e = Assert.Throws<InvalidOperationException>(() => pool.For(2, (_, _) => { }));
        Assert.Contains("two threads", e.Message);
        release.Set();
        await first;
        pool.For(2, (_, _) => { });
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(63, 1)]
    [InlineData(65, 1)]
    [InlineData(1000, 7)]
    [InlineData(100_000, 4096)]
    public void SplitsCoverTheRangeExactly(int n, int grain)
    {
        using var pool = new WorkerPool(3);
        foreach (bool aligned in new[] { true, false })
        {
            var hits = new int[n];
            Action<int, int> body = (s, len) =>
            {
                Assert.True(len > 0);
                if (aligned) Assert.Equal(0, s % 64);
                for (int i = s; i < s + len; i++) Interlocked.Increment(ref hits[i]);
            };
            if (aligned) pool.ForRange(n, grain, body);
            else pool.ForItems(n, grain, body);
            Assert.All(hits, h => Assert.Equal(1, h));
        }
    }

    [Fact]
    public void DisposedPoolStillRunsEveryItem()
    {
        var pool = new WorkerPool(2);
        pool.Dispose();
        int sum = 0;
        pool.For(100, (_, i) => Interlocked.Add(ref sum, i));
        Assert.Equal(4950, sum);
    }
}
