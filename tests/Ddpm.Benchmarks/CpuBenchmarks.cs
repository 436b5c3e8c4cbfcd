using BenchmarkDotNet.Attributes;
using Ddpm.Backends.Cpu;
using Ddpm.Tensors;

namespace Ddpm.Benchmarks;

/// <summary>BenchmarkDotNet: SGEMM at s x s x s on the fast CPU backend (all cores).</summary>
[MemoryDiagnoser]
public class SgemmBenchmark
{
    private CpuBackend _be = null!;
    private DeviceBuffer _a = null!, _b = null!, _c = null!;

    [Params(256, 1024, 2048)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _be = new CpuBackend(0);
        int n = Size * Size;
        _a = _be.Allocate(n); _b = _be.Allocate(n); _c = _be.Allocate(n);
        _be.FillUniform(1, 0, _a, n);
        _be.FillUniform(2, 0, _b, n);
    }

    [Benchmark]
    public void Gemm() => _be.Gemm(false, false, _a, 0, _b, 0, 1, Size, Size, Size, 1f, 0f, _c, 0);

    [GlobalCleanup]
    public void Cleanup() => _be.Dispose();
}

/// <summary>BenchmarkDotNet: conv2d 3x3 s1 p1, x [16,64,32,32], w [64,64,3,3]: forward, backward-data, backward-weight.</summary>
[MemoryDiagnoser]
public class Conv2dBenchmark
{
    private readonly ConvGeometry _g = new(16, 64, 32, 32, 64, 3, 3, 1, 1, 1, 1);
    private CpuBackend _be = null!;
    private DeviceBuffer _x = null!, _w = null!, _bias = null!, _y = null!, _dx = null!, _dw = null!, _db = null!;

    [GlobalSetup]
    public void Setup()
    {
        _be = new CpuBackend(0);
        _x = _be.Allocate(_g.InputSize); _w = _be.Allocate(_g.WeightSize); _bias = _be.Allocate(_g.O);
        _y = _be.Allocate(_g.OutputSize); _dx = _be.Allocate(_g.InputSize); _dw = _be.Allocate(_g.WeightSize); _db = _be.Allocate(_g.O);
        _be.FillUniform(1, 0, _x, _g.InputSize);
        _be.FillUniform(2, 0, _w, _g.WeightSize);
        _be.FillUniform(3, 0, _bias, _g.O);
        _be.FillUniform(4, 0, _y, _g.OutputSize);
    }

    [Benchmark]
    public void Forward() => _be.Conv2dForward(_x, _w, _bias, _g, _y);

    [Benchmark]
    public void BackwardData() => _be.Conv2dBackwardData(_y, _w, _g, _dx);

    [Benchmark]
    public void BackwardWeight() => _be.Conv2dBackwardWeight(_x, _y, _g, _dw, _db);

    [GlobalCleanup]
    public void Cleanup() => _be.Dispose();
}
