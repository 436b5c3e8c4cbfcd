using System.Runtime.InteropServices;
using System.Text;
using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// The CUDA backend: one device, its primary context, one non-blocking stream on which every copy, kernel
/// and cuBLAS call is queued in order, kernels compiled at start by NVRTC for the device's architecture,
/// and a caching allocator. Only <see cref="Download"/>, <see cref="SumOfSquares"/> and
/// <see cref="Synchronize"/> wait for the device. Not thread-safe: one backend is driven by one thread at a
/// time (any thread; the context is made current on each call). No finalizer: call Dispose.
/// </summary>
public sealed partial class CudaBackend : IBackend, IDeviceCounters
{
    private const int StagingBytes = 16 << 20;
    private const int ThreadsPerBlock = 256;

    private readonly Dictionary<string, nint> _functions = new(StringComparer.Ordinal);
    private readonly Dictionary<string, KernelWrites> _kernelWrites = new(StringComparer.Ordinal);
    private readonly List<nint> _modules = [];
    private readonly BackendOptions _options;
    private readonly bool _syncEachLaunch;
    private readonly int _device;
    private nint _context;
    private nint _stream;
    private nint _cublas;
    private CudaAllocator? _allocator;
    private StagingRing? _staging;
    private bool _disposed;
    private long _launches, _blasCalls, _dnnCalls, _hostSyncs, _peakBytes;

    /// <summary>
    /// Opens device <see cref="BackendOptions.Device"/>, its convolutions on <paramref name="convolutions"/>; throws
    /// <see cref="CudaUnavailableException"/> or <see cref="CudaException"/>. The memory checks come from the
    /// environment (DDPM_CUDA_EXACT_ALLOC, DDPM_CUDA_POISON).
    /// </summary>
    public CudaBackend(BackendOptions? options = null, ConvolutionEngine convolutions = ConvolutionEngine.Auto)
        : this(options, convolutions, CudaMemoryChecks.FromEnvironment())
    {
    }

    /// <summary>Opens the device with the memory checks given (the public constructor reads them from the environment).</summary>
    internal CudaBackend(BackendOptions? options, ConvolutionEngine convolutions, CudaMemoryChecks memoryChecks)
    {
        _options = options ?? new BackendOptions();
        // DDPM_CUDA_SYNC=1: wait after every kernel and cuBLAS call, so that a fault is reported under the call
        // that caused it rather than under a later, unrelated one.
        _syncEachLaunch = Environment.GetEnvironmentVariable("DDPM_CUDA_SYNC") == "1";
        var info = CudaProbe.OpenDevice(_options.Device);
        Device = info;
        try
        {
            Driver.Check(Driver.cuDeviceGet(out _device, info.Ordinal), "cuDeviceGet");
            Driver.Check(Driver.cuDevicePrimaryCtxRetain(out _context, _device), "cuDevicePrimaryCtxRetain");
            Driver.Check(Driver.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
            Driver.Check(Driver.cuStreamCreate(out _stream, Driver.StreamNonBlocking), "cuStreamCreate");

            CudaLibraries.Load(CudaLibrary.Cublas);
            Cublas.Check(Cublas.cublasCreate_v2(out _cublas), "cublasCreate_v2");
            Cublas.Check(Cublas.cublasSetStream_v2(_cublas, _stream), "cublasSetStream_v2");
            // Full FP32 math unless the caller asks for TF32 tensor cores (never in parity runs).
            Cublas.Check(Cublas.cublasSetMathMode(_cublas, _options.Precision == Precision.Tf32 ? CublasMath.Tf32TensorOp : CublasMath.Default),
                "cublasSetMathMode");
            Cublas.Check(Cublas.cublasGetVersion_v2(_cublas, out int cublasVersion), "cublasGetVersion_v2");
            CublasVersion = cublasVersion;
            OpenConvolutions(convolutions);

            LoadKernels(info.ComputeCapability);
            _allocator = new CudaAllocator(SynchronizeStream, memoryChecks, PoisonBlock);
            _staging = new StagingRing(_stream, StagingBytes);
        }
        catch
        {
            Dispose();
            throw;
        }
        var (nvMajor, nvMinor) = NvrtcCompiler.Version();
        Description = $"cuda: {info.Name} (sm_{info.ComputeCapability}, {info.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, " +
            $"{info.Multiprocessors} SMs), driver {CudaProbe.FormatVersion(info.DriverVersion)}, cuBLAS {CublasVersion}, convolutions: {ConvolutionPath}, " +
            $"NVRTC {nvMajor}.{nvMinor} ({KernelTarget}; {KernelCacheReport}), precision {BackendPrecisions.Name(_options.Precision)}" +
            (_syncEachLaunch ? ", DDPM_CUDA_SYNC=1 (a wait after every launch)" : "") + memoryChecks.Describe();
    }

    /// <summary>A backend for device <see cref="BackendOptions.Device"/>, or null with the reason CUDA is unavailable.</summary>
    public static CudaBackend? TryCreate(out string reason, BackendOptions? options = null, ConvolutionEngine convolutions = ConvolutionEngine.Auto)
    {
        try
        {
            var b = new CudaBackend(options, convolutions);
            reason = "";
            return b;
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException or EntryPointNotFoundException)
        {
            // A missing entry point means a driver or NVRTC older than these bindings (CUDA 11.2).
            reason = e is EntryPointNotFoundException ? $"The CUDA libraries found are too old: {e.Message}" : e.Message;
            return null;
        }
    }

    public string Name => "cuda";

    public string Description { get; } = "cuda";

    /// <summary>The device this backend runs on.</summary>
    public CudaDeviceInfo Device { get; }

    /// <summary>cublasGetVersion: e.g. 120804 for 12.8.4.</summary>
    public int CublasVersion { get; }

    /// <summary>What the kernels were compiled to: "sm_90 cubin" or "compute_90 PTX".</summary>
    public string KernelTarget { get; private set; } = "";

    /// <summary>Where the compiled kernels came from: the cache folder, how many modules were read and how many compiled.</summary>
    public string KernelCacheReport { get; private set; } = "";

    /// <summary>Bytes in live buffers and in the allocator's cache.</summary>
    public (long InUse, long Cached) MemoryUse => (_allocator?.InUseBytes ?? 0, _allocator?.CachedBytes ?? 0);

    public DeviceCounters ReadCounters() =>
        new(_launches, _blasCalls, _dnnCalls, _hostSyncs + (_staging?.Waits ?? 0), _peakBytes)
        {
            GraphLaunches = _graphLaunches, CastKernels = _castKernels, CastElements = _castElements,
        };

    public void ResetPeak() => _peakBytes = _allocator?.InUseBytes ?? 0;

    /// <summary>Frees the allocator's cached blocks (after the queued work has finished).</summary>
    public void ReleaseCachedMemory()
    {
        Enter();
        _allocator!.ReleaseCache();
    }

    /// <summary>Device time of the work <paramref name="enqueue"/> queues, measured by CUDA events; waits for it.</summary>
    public float MeasureMilliseconds(Action enqueue)
    {
        Enter();
        Driver.Check(Driver.cuEventCreate(out nint start, 0), "cuEventCreate");
        nint end = 0;
        try
        {
            Driver.Check(Driver.cuEventCreate(out end, 0), "cuEventCreate");
            Driver.Check(Driver.cuEventRecord(start, _stream), "cuEventRecord");
            enqueue();
            Driver.Check(Driver.cuEventRecord(end, _stream), "cuEventRecord");
            _hostSyncs++;
            Driver.Check(Driver.cuEventSynchronize(end), "cuEventSynchronize");
            Driver.Check(Driver.cuEventElapsedTime(out float ms, start, end), "cuEventElapsedTime");
            return ms;
        }
        finally
        {
            Driver.cuEventDestroy_v2(start);
            if (end != 0) Driver.cuEventDestroy_v2(end);
        }
    }

    /// <summary>
    /// Loads every kernel module, from the on-disk cache or compiled by NVRTC, and fetches every kernel: with CUDA's
    /// lazy loading, cuModuleGetFunction is what loads a kernel, so all of ours are on the device before any
    /// work (and before any NCCL collective, which must not run beside a kernel load).
    /// </summary>
    private void LoadKernels(int computeCapability)
    {
        var cache = KernelCache.FromEnvironment(Environment.GetEnvironmentVariable);
        var (target, cubin) = NvrtcCompiler.TargetFor(computeCapability);
        var definitions = KernelSources.Headers.Select(h => h.Text).ToList();
        foreach (var source in KernelSources.Sources)
        {
            foreach (var (name, writes) in KernelSources.WritesOf(source.Text, definitions)) _kernelWrites[name] = writes;
            var compiled = cache.GetOrCompile(source, target, cubin);
            nint module;
            unsafe
            {
                fixed (byte* image = compiled.Image)
                {
                    var r = Driver.cuModuleLoadData(out module, image);
                    if (r != CUresult.Success)
                        throw new CudaException("cuModuleLoadData", r, $"Loading {source.FileName} compiled for {compiled.Target}");
                }
            }
            _modules.Add(module);
            foreach (var name in source.Kernels)
            {
                Driver.Check(Driver.cuModuleGetFunction(out nint f, module, name), $"cuModuleGetFunction({name})");
                _functions[name] = f;
            }
        }
        KernelTarget = $"{target} {(cubin ? "cubin" : "PTX")}";
        KernelCacheReport = cache.Describe();
    }

    /// <summary>The stream every operation of this backend is queued on; NCCL queues its all-reduce there too.</summary>
    internal nint Stream => _stream;

    /// <summary>
    /// Makes this backend's context current on the calling thread and returns the device pointer of element
    /// <paramref name="offset"/> of <paramref name="b"/>, after checking that it is a live buffer of this backend
    /// holding [offset, offset + count). The caller may write the range.
    /// </summary>
    internal ulong EnterAndPointer(DeviceBuffer b, int offset, int count, string what)
    {
        Enter();
        ulong p = Ptr(b, offset, count, what);
        // What the caller does with the range is out of sight (an NCCL all-reduce writes it): a weight copy there is stale.
        Writes(p, 4L * count);
        return p;
    }

    /// <summary>Makes this backend's context current on the calling thread (the CUDA runtime inside NCCL uses it).</summary>
    internal void MakeCurrent() => Enter();

    // ---- plumbing -------------------------------------------------------------------------------------

    private void Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Driver.Check(Driver.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
    }

    /// <summary>Fills a block the allocator hands out with NaN, on the stream (DDPM_CUDA_POISON=1).</summary>
    private void PoisonBlock(ulong pointer, long bytes) => MemsetAsync(pointer, CudaAllocator.PoisonBits, (nuint)(bytes / 4));

    private void SynchronizeStream()
    {
        ThrowIfRecording("waits for the device");
        _hostSyncs++;
        Driver.Check(Driver.cuStreamSynchronize(_stream), "cuStreamSynchronize");
        _staging?.AllCompleted();
    }

    /// <summary>Blocks of a grid-stride launch over <paramref name="work"/> items: enough to fill the device, no more.</summary>
    private uint GridFor(long work, int threads = ThreadsPerBlock)
    {
        long blocks = (work + threads - 1) / threads;
        long cap = (long)Device.Multiprocessors * 32;
        return (uint)Math.Clamp(blocks, 1, Math.Max(cap, 1));
    }

    private unsafe void Launch(string kernel, uint grid, uint block, params ReadOnlySpan<KernelArg> args)
    {
        if (!_functions.TryGetValue(kernel, out nint f))
            throw new InvalidOperationException($"Kernel {kernel} is not in the compiled modules.");
        int bytes = 0;
        foreach (var a in args) bytes += (a.Size + 7) & ~7;
        byte* storage = stackalloc byte[bytes + 8];
        void** ptrs = stackalloc void*[args.Length];
        int off = 0;
        for (int i = 0; i < args.Length; i++)
        {
            var a = args[i];
            byte* p = storage + off;
            if (a.Blob is not null) a.Blob.CopyTo(new Span<byte>(p, a.Size));
            else if (a.Size == 4) *(uint*)p = (uint)a.Bits;
            else *(ulong*)p = a.Bits;
            ptrs[i] = p;
            off += (a.Size + 7) & ~7;
        }
        KernelWrites(kernel, args);
        if (Replaying(kernel, [(ulong)f, grid, block], new ReadOnlySpan<byte>(storage, bytes))) return;
        var r = Driver.cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, _stream, ptrs, null);
        if (r != CUresult.Success) throw new CudaException($"cuLaunchKernel({kernel})", r);
        _launches++;
        if (_syncEachLaunch) SynchronizeAfter($"kernel {kernel}");
    }

    /// <summary>With DDPM_CUDA_SYNC=1: waits for the call just queued and names it if it failed.</summary>
    private void SynchronizeAfter(string what)
    {
        _hostSyncs++;
        var r = Driver.cuStreamSynchronize(_stream);
        if (r != CUresult.Success) throw new CudaException($"cuStreamSynchronize after {what} (DDPM_CUDA_SYNC=1)", r);
    }

    /// <summary>The device pointer of element <paramref name="offset"/>, after checking the buffer holds [offset, offset+count).</summary>
    private ulong Ptr(DeviceBuffer b, long offset, long count, string what)
    {
        if (b is not CudaBuffer cb || !ReferenceEquals(cb.Backend, this))
            throw new ArgumentException($"{what}: a buffer of backend '{b.Backend.Name}' was passed to this cuda backend.");
        if (cb.IsReleased) throw new ObjectDisposedException(what, $"{what}: the buffer was already released.");
        if (offset < 0 || count < 0 || offset + count > cb.Length)
            throw new ArgumentOutOfRangeException(what, $"{what}: elements [{offset}, {offset + count}) are outside a buffer of {cb.Length}.");
        return cb.Pointer + (ulong)offset * sizeof(float);
    }

    private ulong Ptr(DeviceBuffer b, long count, string what) => Ptr(b, 0, count, what);

    /// <summary>A device scratch buffer of <paramref name="floats"/> elements, back in the cache on dispose.</summary>
    private CudaBuffer Scratch(long floats)
    {
        if (floats > int.MaxValue) throw new NotSupportedException($"A scratch buffer of {floats} floats exceeds the 2^31 element limit of a buffer.");
        return (CudaBuffer)Allocate((int)floats);
    }

    private unsafe void UploadBytes(ReadOnlySpan<byte> src, ulong dst)
    {
        if (_recording is not null)
        {
            // Inside a recorded step: the bytes go to the recording's input buffer (uploaded before each replay) and
            // a device-to-device copy in the step moves them to dst.
            CopyAsync(dst, StageInput(src), (nuint)src.Length);
            return;
        }
        Writes(dst, src.Length);
        var staging = _staging!;
        long done = 0;
        while (done < src.Length)
        {
            int chunk = (int)Math.Min(src.Length - done, staging.Bytes);
            var (p, start) = staging.Acquire(chunk);
            src.Slice((int)done, chunk).CopyTo(new Span<byte>((void*)p, chunk));
            Driver.Check(Driver.cuMemcpyHtoDAsync_v2(dst + (ulong)done, (void*)p, (nuint)chunk, _stream), "cuMemcpyHtoDAsync_v2");
            staging.Commit(start, chunk);
            done += chunk;
        }
    }

    private unsafe void DownloadBytes(ulong src, Span<byte> dst)
    {
        ThrowIfRecording("downloads");
        var staging = _staging!;
        long done = 0;
        while (done < dst.Length)
        {
            int chunk = (int)Math.Min(dst.Length - done, staging.Bytes);
            var (p, _) = staging.Acquire(chunk);
            Driver.Check(Driver.cuMemcpyDtoHAsync_v2((void*)p, src + (ulong)done, (nuint)chunk, _stream), "cuMemcpyDtoHAsync_v2");
            SynchronizeStream();
            new ReadOnlySpan<byte>((void*)p, chunk).CopyTo(dst.Slice((int)done, chunk));
            done += chunk;
        }
    }

    // ---- memory ---------------------------------------------------------------------------------------

    public DeviceBuffer Allocate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Enter();
        if (length == 0) return new CudaBuffer(this, _allocator!, 0, 0, 0);
        var (p, block) = _recording is { } g ? g.Rent(4L * length) : _allocator!.Rent(4L * length);
        _peakBytes = Math.Max(_peakBytes, _allocator!.InUseBytes + StepGraphBytes);
        return new CudaBuffer(this, _allocator, p, block, length);
    }

    public void Upload(ReadOnlySpan<float> src, DeviceBuffer dst, int dstOffset)
    {
        Enter();
        ulong d = Ptr(dst, dstOffset, src.Length, "Upload dst");
        UploadBytes(MemoryMarshal.AsBytes(src), d);
    }

    public void Download(DeviceBuffer src, int srcOffset, Span<float> dst)
    {
        Enter();
        ulong s = Ptr(src, srcOffset, dst.Length, "Download src");
        if (dst.Length == 0)
        {
            SynchronizeStream();
            return;
        }
        DownloadBytes(s, MemoryMarshal.AsBytes(dst));
    }

    public void Synchronize()
    {
        Enter();
        SynchronizeStream();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_context != 0) Driver.cuCtxSetCurrent(_context);
        // Teardown reports nothing: a failure here (e.g. after a sticky kernel fault) must not hide the
        // original error, and every handle below is released by the context anyway.
        if (_stream != 0) Driver.cuStreamSynchronize(_stream);
        DisposeStepGraphs();
        try { _allocator?.Dispose(); } catch (CudaException) { }
        _staging?.Dispose();
        CloseConvolutions();
        if (_cublas != 0) Cublas.cublasDestroy_v2(_cublas);
        foreach (var m in _modules) Driver.cuModuleUnload(m);
        _modules.Clear();
        if (_stream != 0) Driver.cuStreamDestroy_v2(_stream);
        if (_context != 0) Driver.cuDevicePrimaryCtxRelease_v2(_device);
        _context = 0;
        _stream = 0;
        _cublas = 0;
    }

    public override string ToString() => Description;

    internal static string Join(ReadOnlySpan<int> dims)
    {
        var sb = new StringBuilder("[");
        for (int i = 0; i < dims.Length; i++) sb.Append(i == 0 ? "" : ", ").Append(dims[i]);
        return sb.Append(']').ToString();
    }
}
