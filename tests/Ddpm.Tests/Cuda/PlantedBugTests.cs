using System.Globalization;
using System.Text.RegularExpressions;
using Ddpm.Backends.Cuda;
using Ddpm.Backends.Cuda.Nccl;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// Bugs planted on purpose, each shown to pass where the simulated CUDA device lacks the check that finds it (the
/// check off, or the backend's caching allocator) and to be named by the device once the check is on: kernels
/// from tests/CudaSim/planted_kernels.cu (compiled by NVRTC, so the register count is the real cubin's), a
/// backend buffer read past its end, a reused block read before it is written, a missing wait for a NCCL
/// all-reduce. The self-test of tests/CudaSim covers the same checks from C++. Skipped on any driver other than
/// the simulator.
/// </summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class PlantedBugTests
{
    private static readonly CudaMemoryChecks Caching = new(ExactAllocation: false, Poison: false);

    private readonly SimulatorOptions _sim = SimulatorOptions.Open()!;

    // planted_kernels.cu compiled once by NVRTC for sm_90.
    private static readonly Lazy<byte[]> PlantedCubin = new(() =>
    {
        string file = Path.Combine(CudaTestEnvironment.RepositoryRoot()!, "tests", "CudaSim", "planted_kernels.cu");
        string text = File.ReadAllText(file);
        var compiled = NvrtcCompiler.Compile(new KernelSource("planted_kernels.cu", text, [], KernelSources.KernelNames(text)), 90);
        Assert.True(compiled.IsCubin, "NVRTC made PTX, not an sm_90 cubin");
        return compiled.Image;
    });

    /// <summary>
    /// The planted kernels' module on a backend: the shared test backend, or one of its own with the memory checks
    /// given. On dispose the module is unloaded, an own backend disposed and any planted fault cleared.
    /// </summary>
    private sealed class Device : IDisposable
    {
        private readonly nint _module;
        private readonly SimulatorOptions _sim;
        private readonly bool _owned;
        private readonly List<DeviceBuffer> _buffers = [];
        private readonly List<ulong> _raw = [];

        public Device(SimulatorOptions sim, CudaMemoryChecks? checks = null)
        {
            _sim = sim;
            _owned = checks is not null;
            Backend = checks is { } c ? new CudaBackend(new BackendOptions { Precision = Precision.Fp32 }, ConvolutionEngine.Auto, c) : CudaTestEnvironment.Backend;
            Backend.Synchronize();
            Backend.MakeCurrent();
            unsafe
            {
                fixed (byte* image = PlantedCubin.Value) Driver.Check(Driver.cuModuleLoadData(out _module, image), "cuModuleLoadData");
            }
        }

        public CudaBackend Backend { get; }

        public CudaBuffer Allocate(int n)
        {
            var b = (CudaBuffer)Backend.Allocate(n);
            _buffers.Add(b);
            return b;
        }

        /// <summary>A new cuMemAlloc of n floats that nothing has written (a cached block may hold an earlier buffer's data).</summary>
        public ulong FreshAllocation(int n)
        {
            Backend.MakeCurrent();
            Driver.Check(Driver.cuMemAlloc_v2(out ulong p, (nuint)(4L * n)), "cuMemAlloc_v2");
            _raw.Add(p);
            return p;
        }

        public CudaBuffer Upload(float[] values)
        {
            var b = Allocate(values.Length);
            Backend.Upload(values, b, 0);
            return b;
        }

        /// <summary>Launches a planted kernel with 8-byte argument slots and waits; the failure, if any, as a CudaException.</summary>
        public unsafe void Run(string kernel, uint grid, uint block, params ulong[] args)
        {
            Backend.MakeCurrent();
            Driver.Check(Driver.cuModuleGetFunction(out nint f, _module, kernel), $"cuModuleGetFunction({kernel})");
            ulong* slots = stackalloc ulong[args.Length];
            void** ptrs = stackalloc void*[args.Length];
            for (int i = 0; i < args.Length; i++)
            {
                slots[i] = args[i];
                ptrs[i] = slots + i;
            }
            Driver.Check(Driver.cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, Backend.Stream, ptrs, null), $"cuLaunchKernel({kernel})");
            Backend.Synchronize();
        }

        public void Dispose()
        {
            Backend.MakeCurrent();
            Driver.cuModuleUnload(_module);
            _sim.ClearError();
            foreach (var b in _buffers) b.Release();
            foreach (var p in _raw) Driver.cuMemFree_v2(p);
            if (_owned) Backend.Dispose();
        }
    }

    private static float[] Ramp(int n) => Enumerable.Range(0, n).Select(i => (i * 37 % 101) * 0.25f - 3f).ToArray();

    private static float[] Download(CudaBackend be, DeviceBuffer b, int n)
    {
        var r = new float[n];
        be.Download(b, 0, r);
        return r;
    }

    private IDisposable Checks(string checks, string schedule = "random:7")
    {
        var a = _sim.Override("check", checks);
        var b = _sim.Override("schedule", schedule);
        return new Both(b, a);
    }

    private sealed class Both(IDisposable first, IDisposable second) : IDisposable
    {
        public void Dispose()
        {
            first.Dispose();
            second.Dispose();
        }
    }

    [SimulatorFact]
    public void ABlockTooLargeForTheCubinsRegisterCountIsRefusedAsOnAGpu()
    {
        using var device = new Device(_sim);
        const int n = 1024;
        var x = device.Upload(Ramp(96 * n));
        var y = device.Allocate(n);
        using (Checks("-resources")) device.Run("planted_many_registers", 1, 1024, x.Pointer, y.Pointer, n);
        CudaException e;
        using (Checks("default"))
        {
            device.Run("planted_many_registers", 2, 512, x.Pointer, y.Pointer, n);
            e = Assert.Throws<CudaException>(() => device.Run("planted_many_registers", 1, 1024, x.Pointer, y.Pointer, n));
        }
        Assert.Equal((int)CUresult.ErrorLaunchOutOfResources, e.ErrorCode);
        Assert.Contains("cuLaunchKernel(planted_many_registers): a block of 1024 threads needs", e.Message);
        int registers = int.Parse(Regex.Match(e.Message, @"\((\d+) per thread in the cubin").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.True(registers > 64, $"NVRTC gave planted_many_registers {registers} registers; the test needs more than 64. {e.Message}");
    }

    [SimulatorFact]
    public void AReadPastABuffersEndFaultsOnlyWhenEachBufferIsItsOwnAllocation()
    {
        // 1000 floats: the caching allocator's 4096-byte bucket leaves 96 bytes of slack after the buffer.
        const int n = 1000;
        using (var cached = new Device(_sim, Caching))
        using (Checks("none"))
        {
            var x = cached.Upload(Ramp(n));
            var y = cached.Allocate(n);
            cached.Run("planted_off_by_one_read", 4, 256, x.Pointer, y.Pointer, n);
        }
        using (var exact = new Device(_sim, new CudaMemoryChecks(ExactAllocation: true, Poison: false)))
        using (Checks("none,bounds"))
        {
            var x = exact.Upload(Ramp(n));
            var y = exact.Allocate(n);
            Assert.Equal(4L * n, x.BlockBytes);
            var e = Assert.Throws<CudaException>(() => exact.Run("planted_off_by_one_read", 4, 256, x.Pointer, y.Pointer, n));
            Assert.Equal((int)CUresult.ErrorIllegalAddress, e.ErrorCode);
            Assert.Matches(@"kernel planted_off_by_one_read: thread \(\d+,0,0\) of block \(\d+,0,0\) reads 4 bytes at 0x[0-9a-f]+, 0 bytes past the end of allocation #\d+ \(4000 bytes", e.Message);
        }
        // 1024 floats end on the fence page: the fault itself is reported, without instrumented kernels.
        using (var exact = new Device(_sim, new CudaMemoryChecks(ExactAllocation: true, Poison: false)))
        using (Checks("none,fence"))
        {
            var x = exact.Upload(Ramp(1024));
            var y = exact.Allocate(1024);
            var e = Assert.Throws<CudaException>(() => exact.Run("planted_off_by_one_read", 4, 256, x.Pointer, y.Pointer, 1024));
            Assert.Equal((int)CUresult.ErrorIllegalAddress, e.ErrorCode);
            Assert.Contains("kernel planted_off_by_one_read: thread (", e.Message);
            Assert.Contains("0 bytes past the end of allocation", e.Message);
        }
    }

    [SimulatorFact]
    public void AReusedBlockReadBeforeItIsWrittenShowsOnlyWhenPoisoned()
    {
        // Axpby with b = 0 still reads y: a caller that hands it a fresh buffer reads memory nobody wrote. A block
        // from the cache holds the previous buffer's values, so the result looks right unless blocks are poisoned.
        foreach (bool poison in new[] { false, true })
        {
            using var device = new Device(_sim, new CudaMemoryChecks(ExactAllocation: false, Poison: poison));
            using var _ = Checks("none");
            var be = device.Backend;
            var ones = device.Upload(Enumerable.Repeat(1f, 1000).ToArray());
            var old = (CudaBuffer)be.Allocate(1000);
            be.Upload(Ramp(1000), old, 0);
            ulong reused = old.Pointer;
            old.Release();
            var y = device.Allocate(1000);
            Assert.Equal(reused, y.Pointer);
            be.Axpby(ones, 1000, 2f, 0f, y);
            var result = Download(be, y, 1000);
            if (poison) Assert.All(result, v => Assert.True(float.IsNaN(v), $"{v}: a poisoned block read by the kernel gives NaN"));
            else Assert.All(result, v => Assert.Equal(2f, v));
        }
    }

    [SimulatorFact]
    public void ReadingANcclResultBeforeItsCompletionPointIsReported()
    {
        using var device = new Device(_sim);
        var be = device.Backend;
        var values = Ramp(40);
        foreach (string checks in new[] { "-nccl-async", "default" })
        {
            using var nccl = NcclCollective.Create(SingleProcess.Instance, be);
            var buf = device.Upload(values);
            // The collective holds its reductions back until its first wait (modules load before NCCL spins); one
            // waited reduction gets past that, so the next is queued in stream order at once.
            nccl.StartAllReduce(device.Upload(values), 0, 40, ReduceOp.Sum).Wait();
            using var _ = Checks(checks);
            // Planted: the reduction is started but never waited for before the buffer is read.
            var pending = nccl.StartAllReduce(buf, 0, 40, ReduceOp.Sum);
            if (checks == "-nccl-async")
            {
                Assert.Equal(values, Download(be, buf, 40));
                pending.Wait();
                continue;
            }
            var e = Assert.Throws<CudaException>(() => Download(be, buf, 40));
            Assert.Contains("cuMemcpyDtoHAsync (160 bytes from", e.Message);
            Assert.Contains("before ncclAllReduce of 40 floats completed in stream order", e.Message);
        }
    }

    public static IEnumerable<object[]> KernelBugs =>
    [
        // kernel, the checks it passes under, the checks that name it, what they say
        ["planted_missing_barrier", "none", "none,race", "race detector: kernel planted_missing_barrier"],
        ["planted_block_overlap", "none", "none,race", "a write-write hazard in global memory"],
        ["planted_block_overlap", "none", "none,order", "order check: kernel planted_block_overlap wrote different results"],
        ["planted_unwritten_max", "-init", "none,init", "init check: kernel planted_unwritten_max"],
    ];

    [SimulatorTheory]
    [MemberData(nameof(KernelBugs))]
    public void APlantedKernelBugPassesWithoutItsCheckAndIsNamedWithIt(string kernel, string lenient, string strict, string message)
    {
        using var device = new Device(_sim);
        const int blocks = 4, threads = 256, n = blocks * threads;
        var x = device.Upload(Ramp(n));
        var y = device.Allocate(n);
        ulong floor = device.FreshAllocation(n);
        void Run() =>
            device.Run(kernel, blocks, threads, kernel == "planted_unwritten_max" ? [x.Pointer, floor, y.Pointer, n] : [x.Pointer, y.Pointer]);
        // The lenient run has threads, warps and blocks in index order, as a device without these checks runs them.
        using (Checks(lenient, "ordered")) Run();
        using (Checks(strict, "random:11"))
        {
            var e = Assert.Throws<CudaException>(Run);
            Assert.Contains(message, e.Message);
        }
    }
}
