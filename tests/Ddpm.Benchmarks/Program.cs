using BenchmarkDotNet.Running;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>dotnet run -c Release --project tests/Ddpm.Benchmarks</c> runs the quick side-by-side report (FMA peak,
/// SGEMM as % of peak, conv2d) with medians; <c>-- bdn [BenchmarkDotNet args]</c> runs the BenchmarkDotNet
/// classes instead; <c>-- unet [options]</c> the op table of a UNet step timed by thread CPU time (<see cref="UnetProfile"/>).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "bdn")
        {
            BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args[1..]);
            return 0;
        }
        if (args.Length > 0 && args[0] == "unet") return UnetProfile.Run(args[1..]);
        if (args.Length > 0 && args[0] == "winograd") return WinogradParts.Run(args[1..]);
        if (args.Length > 0 && args[0] == "winograd-sweep") return WinogradSweep.Run(args[1..]);
        if (args.Length > 0 && args[0] == "groupnorm") return NormBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "conv") return ConvBench.Run(args[1..]);
        if (args.Length > 0 && args[0] == "gemm") return GemmBench.Run(args[1..]);
        return QuickReport.Run(args);
    }
}
