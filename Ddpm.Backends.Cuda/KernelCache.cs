using System.Security.Cryptography;
using System.Text;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// Compiled kernel modules kept on disk, so a process compiles each source with NVRTC once per machine rather than
/// at every start. An entry is keyed by the SHA-256 of everything the compile depends on: the source and the headers
/// it may include, the NVRTC options (the target architecture among them) and NVRTC's version. An entry that does not
/// read back whole (wrong magic, size or checksum) is ignored and rewritten; an entry is written to a temporary file
/// and renamed, so concurrent processes (the ranks of a job) never read half a file; a folder that cannot be written
/// only costs the compile. Folder: DDPM_KERNEL_CACHE, or $XDG_CACHE_HOME/ddpm/kernels, or ~/.cache/ddpm/kernels;
/// DDPM_KERNEL_CACHE=off compiles every time.
/// </summary>
internal sealed class KernelCache
{
    private static readonly byte[] Magic = "DDPMKC1\0"u8.ToArray();
    private const int HeaderBytes = 8 + 32 + 4;

    private KernelCache(string? folder) => Folder = folder;

    /// <summary>The cache folder, or null when caching is off.</summary>
    internal string? Folder { get; }

    /// <summary>Modules compiled by NVRTC since this cache was opened.</summary>
    internal int Compiled { get; private set; }

    /// <summary>Modules read from the folder since this cache was opened.</summary>
    internal int Loaded { get; private set; }

    /// <summary>Entries that did not read back whole and were replaced.</summary>
    internal int Rejected { get; private set; }

    /// <summary>The cache DDPM_KERNEL_CACHE, XDG_CACHE_HOME and HOME in <paramref name="env"/> point at.</summary>
    internal static KernelCache FromEnvironment(Func<string, string?> env) => new(FolderFrom(env));

    /// <summary>A cache in <paramref name="folder"/> (null: off).</summary>
    internal static KernelCache At(string? folder) => new(folder);

    internal static string? FolderFrom(Func<string, string?> env)
    {
        string? asked = env("DDPM_KERNEL_CACHE")?.Trim();
        if (asked is "off" or "0" or "none") return null;
        if (!string.IsNullOrEmpty(asked)) return asked;
        string? xdg = env("XDG_CACHE_HOME");
        if (!string.IsNullOrWhiteSpace(xdg)) return Path.Combine(xdg, "ddpm", "kernels");
        string? home = env("HOME");
        return string.IsNullOrWhiteSpace(home) ? null : Path.Combine(home, ".cache", "ddpm", "kernels");
    }

    /// <summary>"the kernel cache in FOLDER (7 modules read, 0 compiled)", or that it is off.</summary>
    internal string Describe() => Folder is null
        ? $"kernel cache off ({Compiled} modules compiled)"
        : $"kernel cache {Folder} ({Loaded} modules read, {Compiled} compiled{(Rejected > 0 ? $", {Rejected} damaged entries replaced" : "")})";

    /// <summary>The module of <paramref name="source"/> for <paramref name="target"/>, from the folder or compiled (and then stored).</summary>
    internal CompiledModule GetOrCompile(KernelSource source, string target, bool cubin)
    {
        string? path = Folder is null ? null : Path.Combine(Folder, Key(source, target, cubin) + ".bin");
        if (path is not null && File.Exists(path))
        {
            var image = Read(path);
            if (image is not null)
            {
                Loaded++;
                return new CompiledModule(source.FileName, target, cubin, image, "");
            }
            Rejected++;
        }
        var compiled = NvrtcCompiler.Compile(source, target, cubin);
        Compiled++;
        if (path is not null) Write(path, compiled.Image);
        return compiled;
    }

    /// <summary>SHA-256 (hex) of the source, the headers, the options, the output kind and NVRTC's version.</summary>
    internal static string Key(KernelSource source, string target, bool cubin)
    {
        var (major, minor) = NvrtcCompiler.Version();
        var sb = new StringBuilder();
        void Part(string name, string text) => sb.Append(name).Append('\0').Append(text.Length).Append('\0').Append(text).Append('\0');
        Part("nvrtc", $"{major}.{minor}");
        Part("output", cubin ? "cubin" : "ptx");
        Part("options", string.Join("\n", NvrtcCompiler.Options(source, target)));
        Part(source.FileName, source.Text);
        foreach (var h in KernelSources.Headers) Part(h.Name, h.Text);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    // An entry: magic, SHA-256 of the image, the image's length (little-endian int32), the image.
    private static byte[]? Read(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        if (bytes.Length < HeaderBytes || !bytes.AsSpan(0, 8).SequenceEqual(Magic)) return null;
        int length = BitConverter.ToInt32(bytes, 40);
        if (length <= 0 || length != bytes.Length - HeaderBytes) return null;
        var image = bytes[HeaderBytes..];
        return SHA256.HashData(image).AsSpan().SequenceEqual(bytes.AsSpan(8, 32)) ? image : null;
    }

    private static void Write(string path, byte[] image)
    {
        string temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using (var f = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
            {
                f.Write(Magic);
                f.Write(SHA256.HashData(image));
                f.Write(BitConverter.GetBytes(image.Length));
                f.Write(image);
            }
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A cache that cannot be written costs the next process a compile, nothing more.
            try { File.Delete(temp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
        }
    }
}
