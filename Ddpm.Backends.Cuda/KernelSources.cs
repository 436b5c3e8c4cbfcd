using System.Reflection;
using System.Text.RegularExpressions;

namespace Ddpm.Backends.Cuda;

/// <summary>One CUDA C source compiled as one module, with its NVRTC options and kernel names.</summary>
internal sealed record KernelSource(string FileName, string Text, IReadOnlyList<string> Options, IReadOnlyList<string> Kernels);

/// <summary>A header the kernel sources include by name.</summary>
internal sealed record KernelHeader(string Name, string Text);

/// <summary>The kernel sources embedded in this assembly (Kernels/*.cu and the headers Kernels/*.cuh).</summary>
internal static partial class KernelSources
{
    private const string Prefix = "Ddpm.Backends.Cuda.Kernels.";

    private static readonly Lazy<(KernelHeader[] Headers, KernelSource[] Sources)> All = new(LoadAll);

    /// <summary>common.cuh (shared helpers) and ops.cuh (op codes generated from the enums).</summary>
    internal static IReadOnlyList<KernelHeader> Headers => All.Value.Headers;

    internal static IReadOnlyList<KernelSource> Sources => All.Value.Sources;

    /// <summary>Per-file compiler options. The Philox fills must not fuse multiply-adds, to round like C#.</summary>
    private static IReadOnlyList<string> OptionsFor(string file) =>
        file == "philox.cu" ? ["--fmad=false"] : [];

    [GeneratedRegex(@"extern\s+""C""\s+__global__\s+void\s+(\w+)\s*\(")]
    private static partial Regex KernelDeclaration();

    internal static IReadOnlyList<string> KernelNames(string source) =>
        KernelDeclaration().Matches(source).Select(m => m.Groups[1].Value).ToArray();

    private static (KernelHeader[], KernelSource[]) LoadAll()
    {
        var asm = typeof(KernelSources).Assembly;
        var headers = asm.GetManifestResourceNames()
            .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cuh", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n => new KernelHeader(n[Prefix.Length..], Read(asm, n)))
            .ToArray();
        var sources = asm.GetManifestResourceNames()
            .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n =>
            {
                string file = n[Prefix.Length..];
                string text = Read(asm, n);
                return new KernelSource(file, text, OptionsFor(file), KernelNames(text));
            })
            .ToArray();
        if (sources.Length == 0) throw new InvalidOperationException("No CUDA kernel sources are embedded in Ddpm.Backends.Cuda.");
        return (headers, sources);
    }

    private static string Read(Assembly asm, string name)
    {
        using var s = asm.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"Embedded kernel source {name} is missing from {asm.GetName().Name}.");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }
}
