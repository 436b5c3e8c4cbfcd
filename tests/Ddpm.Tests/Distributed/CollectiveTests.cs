using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Xunit;

namespace Ddpm.Tests.Distributed;

public sealed class CollectiveTests
{
    [Fact]
    public void TheSingleProcessCollectiveLeavesEverythingAsItIs()
    {
        using var be = new CpuBackend(1);
        var c = SingleProcess.Instance;
        Assert.Equal((0, 1, "none"), (c.Rank, c.Size, c.Name));
        float[] values = [1.5f, -2f, 3.25f, 7f];
        var buf = be.Allocate(values.Length);
        be.Upload(values, buf, 0);
        c.AllReduce(buf, 1, 2, ReduceOp.Average);
        c.AllReduce(buf, 0, 4, ReduceOp.Sum);
        var back = new float[4];
        be.Download(buf, 0, back);
        Assert.Equal(values, back);
        var bytes = new byte[] { 1, 2, 3 };
        c.Broadcast(bytes, 0);
        Assert.Equal(new byte[] { 1, 2, 3 }, bytes);
        c.Barrier();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => c.AllReduce(buf, 3, 2, ReduceOp.Sum));
        Assert.Contains("[3, 3 + 2)", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => c.Broadcast(bytes, 1));
        buf.Release();
    }

    [Fact]
    public void TheInProcessRanksSumAverageAndBroadcast()
    {
        var job = new InProcessRanks(3);
        var results = job.Run(c =>
        {
            using var be = new CpuBackend(1);
            var buf = be.Allocate(4);
            be.Upload([c.Rank, 10 * c.Rank, 1, 0.5f], buf, 0);
            c.AllReduce(buf, 1, 2, ReduceOp.Sum);
            var host = new float[4];
            be.Download(buf, 0, host);
            buf.Release();
            double[] avg = [c.Rank + 1.0];
            c.AllReduce(avg, ReduceOp.Average);
            var b = new byte[] { (byte)(c.Rank + 7) };
            c.Broadcast(b, 2);
            return (host, avg[0], b[0]);
        });
        for (int r = 0; r < 3; r++)
        {
            Assert.Equal(new float[] { r, 30, 3, 0.5f }, results[r].host);
            Assert.Equal(2.0, results[r].Item2);
            Assert.Equal(9, results[r].Item3);
        }
    }

    [Fact]
    public void AStopRequestOnOneRankStopsEveryRank()
    {
        var results = new InProcessRanks(3).Run(c =>
        {
            var dp = new Ddpm.Diffusion.Training.DataParallel(c);
            return (dp.AnyRank(false), dp.AnyRank(c.Rank == 1), dp.IsRoot);
        });
        Assert.Equal([(false, true, true), (false, true, false), (false, true, false)], results);
    }

    [Fact]
    public void EveryRankLearnsEveryRanksExitCode()
    {
        // How the ranks agree before training on whether each can start: rank 2 alone failed with a usage error.
        var results = new InProcessRanks(4).Run(c =>
            new Ddpm.Diffusion.Training.DataParallel(c).GatherCodes(c.Rank == 2 ? 2 : 0));
        Assert.All(results, r => Assert.Equal([0, 0, 2, 0], r));
        Assert.Equal([130], Ddpm.Diffusion.Training.DataParallel.None.GatherCodes(130));
    }

    [Fact]
    public void TheLaunchEnvironmentIsReadFromTheLaunchersVariables()
    {
        LaunchEnvironment? Detect(params (string, string)[] vars) =>
            LaunchEnvironment.Detect(name => vars.FirstOrDefault(v => v.Item1 == name).Item2);
        Assert.Null(Detect());
        Assert.Equal(new LaunchEnvironment("MPICH/PMI", 1, 4), Detect(("PMI_RANK", "1"), ("PMI_SIZE", "4")));
        Assert.Equal(new LaunchEnvironment("Open MPI", 2, 3), Detect(("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "3")));
        Assert.Equal(new LaunchEnvironment("Slurm", 0, 2), Detect(("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "2")));
        Assert.False(Detect(("PMI_RANK", "0"), ("PMI_SIZE", "1"))!.IsParallel);
        var e = Assert.Throws<FormatException>(() => Detect(("PMI_SIZE", "two")));
        Assert.Contains("PMI_SIZE='two'", e.Message);
        e = Assert.Throws<FormatException>(() => Detect(("PMI_RANK", "4"), ("PMI_SIZE", "4")));
        Assert.Contains("PMI_RANK='4'", e.Message);
        // The rank among the host's ranks, which picks a CUDA rank's device.
        Assert.Equal(new LaunchEnvironment("MPICH/PMI", 5, 8, 1), Detect(("PMI_RANK", "5"), ("PMI_SIZE", "8"), ("MPI_LOCALRANKID", "1")));
        Assert.Equal(3, Detect(("OMPI_COMM_WORLD_RANK", "7"), ("OMPI_COMM_WORLD_SIZE", "8"), ("OMPI_COMM_WORLD_LOCAL_RANK", "3"))!.LocalRank);
        Assert.Equal(2, Detect(("SLURM_PROCID", "6"), ("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_LOCALID", "2"))!.LocalRank);
        e = Assert.Throws<FormatException>(() => Detect(("PMI_RANK", "1"), ("PMI_SIZE", "2"), ("MPI_LOCALRANKID", "x")));
        Assert.Contains("MPI_LOCALRANKID='x'", e.Message);
    }

    [Theory]
    [InlineData(0, 8, 0)]
    [InlineData(3, 8, 3)]
    [InlineData(9, 8, 1)]
    [InlineData(1, 1, 0)] // one GPU per rank through CUDA_VISIBLE_DEVICES
    [InlineData(2, 0, 0)] // no device visible: device 0, whose absence the backend reports
    public void EachLocalRankTakesItsOwnDevice(int localRank, int devices, int expected) =>
        Assert.Equal(expected, Ddpm.Tool.ToolBackends.DeviceForRank(localRank, devices));
}
