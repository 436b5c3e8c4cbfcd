using Ddpm.Backends.Cpu;
using Ddpm.Backends.Cuda.Nccl;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The NCCL binding on one rank, against the simulated libnccl.so.2 (tests/CudaSim): the communicator joins, an
/// all-reduce of one rank leaves the range as it was and runs after the work queued before it, and failed calls
/// become exceptions naming the call. Two ranks are checked by .ci/mpi-tests.sh and the simulator's self-test.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class NcclCollectiveTests
{
    [Fact]
    public void VersionsDecodeInBothOfNcclsEncodings()
    {
        // NCCL_VERSION(X, Y, Z): X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z from 2.9 (nccl.h).
        Assert.Equal((2, 21, 5), NcclNative.DecodeVersion(22105));
        Assert.Equal((2, 10, 3), NcclNative.DecodeVersion(21003));
        Assert.Equal((2, 8, 4), NcclNative.DecodeVersion(2804));
    }

    [Fact]
    public void NcclIsLookedForByItsOwnSoname()
    {
        Assert.Equal(["libnccl.so.2"], CudaLibraries.FileNames(CudaLibrary.Nccl));
        // Its soname major is NCCL's (2), not a CUDA major: no driver version rules it out.
        Assert.Null(CudaLibraries.MajorOf("libnccl.so.2"));
        Assert.Equal(["libnccl.so.2"], CudaLibraries.CandidateFileNames(CudaLibrary.Nccl, 11));
    }

    [SimulatorFact]
    public void OneRankAllReduceLeavesTheRangeAndRunsAfterQueuedWork()
    {
        var be = CudaTestEnvironment.Backend;
        using var nccl = NcclCollective.Create(SingleProcess.Instance, be);
        Assert.Equal((0, 1, "nccl"), (nccl.Rank, nccl.Size, nccl.Name));
        Assert.Matches(@"^NCCL 2\.\d+\.\d+$", nccl.Version);
        var host = Enumerable.Range(0, 40).Select(i => 0.25f * i - 3f).ToArray();
        var buf = be.Allocate(host.Length);
        try
        {
            be.Upload(host, buf, 0);
            // Queued, not yet run on the simulator: the all-reduce must see its result.
            be.Affine(buf, host.Length, 2f, 1f, buf);
            foreach (var op in new[] { ReduceOp.Sum, ReduceOp.Average })
                nccl.AllReduce(buf, 5, 30, op);
            var back = new float[host.Length];
            be.Download(buf, 0, back);
            Assert.Equal(host.Select(x => 2f * x + 1f), back);
        }
        finally
        {
            buf.Release();
        }
    }

    [SimulatorFact]
    public void StartedAllReducesRunOnTheirOwnStreamBetweenTheBackendsWork()
    {
        var be = CudaTestEnvironment.Backend;
        using var nccl = NcclCollective.Create(SingleProcess.Instance, be);
        var host = Enumerable.Range(0, 40).Select(i => 0.5f * i - 7f).ToArray();
        var buf = be.Allocate(host.Length);
        var head = be.Slice(buf, 0, 5);
        try
        {
            be.Upload(host, buf, 0);
            be.Affine(buf, host.Length, 2f, 1f, buf);
            // Two buckets in flight, and backend work on the range neither of them covers meanwhile.
            var first = nccl.StartAllReduce(buf, 25, 15, ReduceOp.Average);
            var second = nccl.StartAllReduce(buf, 5, 20, ReduceOp.Sum);
            be.Affine(head, 5, 1f, 10f, head);
            // Waited for in the other order, twice: the later work runs after both.
            second.Wait();
            first.Wait();
            first.Wait();
            Assert.True(first.Test() && second.Test());
            be.Affine(buf, host.Length, 3f, 0f, buf);
            var back = new float[host.Length];
            be.Download(buf, 0, back);
            Assert.Equal(host.Select((x, i) => 3f * (2f * x + 1f + (i < 5 ? 10f : 0f))), back);
            Assert.Same(PendingReduce.Completed, nccl.StartAllReduce(buf, 3, 0, ReduceOp.Sum));
            Assert.Throws<ArgumentOutOfRangeException>(() => nccl.StartAllReduce(buf, 30, 11, ReduceOp.Sum));
        }
        finally
        {
            head.Release();
            buf.Release();
        }
    }

    [SimulatorFact]
    public void TheFirstStartedAllReducesWaitUntilTheBackendHasDrainedOnce()
    {
        // Library kernels load lazily at their first launch; no NCCL kernel may spin beside such a load. So the
        // reductions started before the first wait are held back until then, and the backend's stream is drained
        // once (one host wait); from then on they start at once and a wait is an event, not a host wait.
        var be = CudaTestEnvironment.Backend;
        using var nccl = NcclCollective.Create(SingleProcess.Instance, be);
        var host = Enumerable.Range(0, 30).Select(i => 0.5f * i - 4f).ToArray();
        var buf = be.Allocate(host.Length);
        try
        {
            be.Upload(host, buf, 0);
            for (int round = 0; round < 2; round++)
            {
                be.Affine(buf, host.Length, 2f, 1f, buf);
                var before = be.ReadCounters();
                var a = nccl.StartAllReduce(buf, 0, 10, ReduceOp.Average);
                var b = nccl.StartAllReduce(buf, 10, 20, ReduceOp.Sum);
                if (round == 0) Assert.False(a.Test() || b.Test(), "a held-back reduction cannot be done before the first wait");
                a.Wait();
                b.Wait();
                Assert.Equal(round == 0 ? 1 : 0, be.ReadCounters().HostSynchronizations - before.HostSynchronizations);
            }
            var back = new float[host.Length];
            be.Download(buf, 0, back);
            Assert.Equal(host.Select(x => 2f * (2f * x + 1f) + 1f), back);
        }
        finally
        {
            buf.Release();
        }
    }

    [SimulatorFact]
    public void FailedCallsNameTheCallAndTheResult()
    {
        var be = CudaTestEnvironment.Backend;
        using var nccl = NcclCollective.Create(SingleProcess.Instance, be);
        var buf = be.Allocate(8);
        using var cpu = new CpuBackend();
        var other = cpu.Allocate(8);
        try
        {
            ulong p = be.EnterAndPointer(buf, 0, 8, "test");
            var e = Assert.Throws<NcclException>(() =>
                NcclNative.Check(NcclNative.ncclAllReduce(p, p, 8, NcclNative.Float32, NcclNative.OpSum, 0, be.Stream), "ncclAllReduce"));
            Assert.Equal(("ncclAllReduce", 4), (e.Call, e.Result));
            Assert.StartsWith("ncclAllReduce failed: ncclInvalidArgument (invalid argument)", e.Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => nccl.AllReduce(buf, 4, 5, ReduceOp.Sum));
            Assert.Throws<ArgumentException>(() => nccl.AllReduce(other, 0, 8, ReduceOp.Sum));
        }
        finally
        {
            buf.Release();
            other.Release();
        }
    }
}
