using System.Reflection;
using System.Text.RegularExpressions;

namespace Ddpm.Backends.Cuda;

/// <summary>One CUDA C source compiled as one module, with its NVRTC options and kernel names.</summary>
internal sealed record KernelSource(string FileName, string Text, IReadOnlyList<string> Options, IReadOnlyList<string> Kernels);

/// <summary>
/// What a kernel may write, as its signature shows: the positions of its pointer parameters to non-const data (a kernel
/// writes through no others), or <see cref="Anywhere"/> where a parameter could hide a pointer the signature does not
/// show (a struct with a pointer field, or a type this reading does not know).
/// </summary>
internal sealed record KernelWrites(IReadOnlyList<int> Pointers, bool Anywhere);

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

    [GeneratedRegex(@"extern\s+""C""\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)")]
    private static partial Regex KernelSignature();

    [GeneratedRegex(@"struct\s+(\w+)\s*\{([^}]*)\}")]
    private static partial Regex StructDefinition();

    /// <summary>The by-value parameter types that hold no pointer.</summary>
    private static readonly HashSet<string> Scalars = new(StringComparer.Ordinal)
    {
        "int", "unsigned", "unsigned int", "float", "double", "u32", "u64", "long long", "unsigned long long", "short", "unsigned short", "char",
        "unsigned char", "bool",
    };

    /// <summary>
    /// <see cref="KernelWrites"/> of every kernel of <paramref name="source"/>, read from its signature; the structs its
    /// parameters name are looked up in <paramref name="definitions"/> (the sources and headers).
    /// </summary>
    internal static Dictionary<string, KernelWrites> WritesOf(string source, IEnumerable<string> definitions)
    {
        var structs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var text in definitions.Append(source))
            foreach (Match m in StructDefinition().Matches(text)) structs[m.Groups[1].Value] = m.Groups[2].Value;
        var writes = new Dictionary<string, KernelWrites>(StringComparer.Ordinal);
        foreach (Match m in KernelSignature().Matches(source))
        {
            var pointers = new List<int>();
            bool anywhere = false;
            string parameters = m.Groups[2].Value.Trim();
            string[] list = parameters.Length == 0 ? [] : parameters.Split(',');
            for (int i = 0; i < list.Length; i++)
            {
                string p = Regex.Replace(list[i], @"\s+", " ").Trim();
                int star = p.LastIndexOf('*');
                if (star >= 0)
                {
                    // Data behind the pointer is const only where "const" comes before the '*' ("float* const p" is writable).
                    if (!Regex.IsMatch(p[..star], @"\bconst\b")) pointers.Add(i);
                    continue;
                }
                int name = p.LastIndexOf(' ');
                string type = Regex.Replace(name < 0 ? p : p[..name], @"\bconst\b", "").Trim();
                if (Scalars.Contains(type)) continue;
                if (!structs.TryGetValue(type.StartsWith("struct ", StringComparison.Ordinal) ? type[7..].Trim() : type, out var body) || body.Contains('*'))
                    anywhere = true;
            }
            writes[m.Groups[1].Value] = new KernelWrites(pointers, anywhere);
        }
        return writes;
    }

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
