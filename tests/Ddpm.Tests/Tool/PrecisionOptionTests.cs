using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tool;
using Ddpm.Tool.Commands;
using Xunit;
using static Ddpm.Tests.Tool.ToolTests;

namespace Ddpm.Tests.Tool;

/// <summary>
/// --precision: which arithmetic each verb asks of each backend by default, and one usage line for what a backend
/// cannot do. None of this needs a GPU: the registry knows what the cuda backend supports without opening it.
/// </summary>
public sealed class PrecisionOptionTests
{
    [Fact]
    public void TrainingAndSamplingDefaultToTheBackendsChoiceOtherVerbsToFp32()
    {
        var registry = ToolBackends.Registry();
        Assert.Equal(Precision.Tf32, new TrainOptions().ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Tf32, new SampleOptions().ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Tf32, new EvalOptions().ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Tf32, new BenchOptions().ResolvePrecision(registry, "cuda"));
        // The parity verb compares backends in float32, whatever the backend would pick for training.
        Assert.Equal(Precision.Fp32, new ParityOptions().ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Fp32, new TrainOptions().ResolvePrecision(registry, "cpu"));
        Assert.Equal(Precision.Fp32, new TrainOptions { Precision = "fp32" }.ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Tf32, new ParityOptions { Precision = "TF32" }.ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Bf16, new TrainOptions { Precision = "bf16" }.ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Bf16, new SampleOptions { Precision = "bf16" }.ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Bf16, new EvalOptions { Precision = "BF16" }.ResolvePrecision(registry, "cuda"));
        Assert.Equal(Precision.Bf16, new BenchOptions { Precision = "bf16" }.ResolvePrecision(registry, "cuda"));
        // --tf32, the older spelling, still asks for tf32.
        Assert.Equal(Precision.Tf32, new ParityOptions { Tf32 = true }.ResolvePrecision(registry, "cuda"));
    }

    [Theory]
    [InlineData("--precision tf32 is not available on --backend cpu", "--backend", "cpu", "--precision", "tf32")]
    [InlineData("--precision tf32 is not available on --backend cpu-reference", "--backend", "cpu-reference", "--tf32")]
    [InlineData("--precision bf16 is not available on --backend cpu, which computes in fp32 only", "--backend", "cpu", "--precision", "bf16")]
    [InlineData("--precision bf16 is not available on --backend cpu-reference", "--backend", "cpu-reference", "--precision", "bf16")]
    [InlineData("--precision must be fp32, tf32, bf16, got 'fp16'", "--precision", "fp16")]
    [InlineData("--tf32 contradicts --precision bf16", "--precision", "bf16", "--tf32")]
    [InlineData("--tf32 contradicts --precision fp32", "--precision", "fp32", "--tf32")]
    public void WhatABackendCannotDoIsOneUsageLine(string message, params string[] options)
    {
        var (code, _, err) = Run(["bench", "--mode", "gemm", "--size", "8", "--steps", "1", "--threads", "2", .. options]);
        Assert.Equal(2, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains(message, err);
    }

    [Fact]
    public void Fp32RunsOnTheCpu()
    {
        var (code, output, err) = Run("bench", "--mode", "gemm", "--size", "8", "--steps", "1", "--threads", "2", "--precision", "fp32");
        Assert.True(code == 0, err + output);
    }

    [Fact]
    public void TheRegistryRefusesAPrecisionTheBackendLacks()
    {
        var registry = new BackendRegistry().RegisterCpu();
        var e = Assert.Throws<NotSupportedException>(() => registry.Create("cpu", new BackendOptions { Precision = Precision.Tf32 }));
        Assert.Equal("Backend 'cpu' computes in fp32 only, not tf32.", e.Message);
        e = Assert.Throws<NotSupportedException>(() => registry.Create("cpu", new BackendOptions { Precision = Precision.Bf16 }));
        Assert.Equal("Backend 'cpu' computes in fp32 only, not bf16.", e.Message);
        using var be = registry.Create("cpu", new BackendOptions { Threads = 1, Precision = Precision.Fp32 });
        Assert.IsType<CpuBackend>(be);
    }
}
