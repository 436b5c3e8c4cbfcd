using BenchmarkDotNet.Running;

namespace Ddpm.Benchmarks;

/// <summary>
/// <c>dotnet run -c Release --project tests/Ddpm.Benchmarks</c> runs the quick side-by-side report (FMA peak,
/// SGEMM as % of peak, conv2d) with medians; <c>-- bdn [BenchmarkDotNet args]</c> runs the BenchmarkDotNet
/// classes instead.
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
        return QuickReport.Run(args);
    }
}
