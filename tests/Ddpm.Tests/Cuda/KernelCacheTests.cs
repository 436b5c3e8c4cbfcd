using Ddpm.Backends.Cuda;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Cuda;

/// <summary>
/// The on-disk cache of compiled kernels: an entry is reused, a damaged one is ignored and rewritten, the key follows
/// every input of the compile, and the folder comes from DDPM_KERNEL_CACHE / XDG_CACHE_HOME / HOME. Needs NVRTC only.
/// </summary>
public sealed class KernelCacheTests
{
    private static KernelSource Source => KernelSources.Sources.Single(s => s.FileName == "adam.cu");

    [NvrtcFact]
    public void AModuleIsCompiledOnceThenRead()
    {
        using var dir = new TempDir();
        var first = KernelCache.At(dir.Path);
        var compiled = first.GetOrCompile(Source, "sm_80", cubin: true);
        Assert.Equal((1, 0), (first.Compiled, first.Loaded));
        Assert.Single(Directory.GetFiles(dir.Path));

        var second = KernelCache.At(dir.Path);
        var read = second.GetOrCompile(Source, "sm_80", cubin: true);
        Assert.Equal((0, 1), (second.Compiled, second.Loaded));
        Assert.Equal(compiled.Image, read.Image);
        Assert.Contains($"kernel cache {dir.Path} (1 modules read, 0 compiled)", second.Describe());
    }

    [NvrtcFact]
    public void ADamagedEntryIsIgnoredAndRewritten()
    {
        using var dir = new TempDir();
        var good = KernelCache.At(dir.Path).GetOrCompile(Source, "sm_80", cubin: true).Image;
        string entry = Directory.GetFiles(dir.Path).Single();
        foreach (Action<string> damage in new Action<string>[]
        {
            f => { var b = File.ReadAllBytes(f); b[^10] ^= 0x40; File.WriteAllBytes(f, b); },  // a flipped bit in the image
            f => { var b = File.ReadAllBytes(f); File.WriteAllBytes(f, b[..(b.Length / 2)]); }, // cut short
            f => File.WriteAllBytes(f, [1, 2, 3]),                                             // not an entry at all
        })
        {
            damage(entry);
            var cache = KernelCache.At(dir.Path);
            var image = cache.GetOrCompile(Source, "sm_80", cubin: true).Image;
            Assert.Equal((1, 0, 1), (cache.Compiled, cache.Loaded, cache.Rejected));
            Assert.Equal(good, image);
            var again = KernelCache.At(dir.Path);
            Assert.Equal(good, again.GetOrCompile(Source, "sm_80", cubin: true).Image);
            Assert.Equal((0, 1), (again.Compiled, again.Loaded));
        }
    }

    [NvrtcFact]
    public void TheKeyFollowsTheSourceTheTargetAndTheOutput()
    {
        string key = KernelCache.Key(Source, "sm_80", cubin: true);
        Assert.Equal(key, KernelCache.Key(Source, "sm_80", cubin: true));
        Assert.Equal(64, key.Length);
        Assert.NotEqual(key, KernelCache.Key(Source, "sm_90", cubin: true));
        Assert.NotEqual(key, KernelCache.Key(Source, "compute_80", cubin: false));
        Assert.NotEqual(key, KernelCache.Key(Source with { Text = Source.Text + "\n" }, "sm_80", cubin: true));
        Assert.NotEqual(key, KernelCache.Key(Source with { Options = ["--fmad=false"] }, "sm_80", cubin: true));
    }

    [NvrtcFact]
    public void AFolderThatCannotBeWrittenOnlyCostsTheCompile()
    {
        using var dir = new TempDir();
        string file = dir.File("not-a-folder");
        File.WriteAllText(file, "x");
        var cache = KernelCache.At(Path.Combine(file, "kernels"));
        Assert.NotEmpty(cache.GetOrCompile(Source, "sm_80", cubin: true).Image);
        Assert.Equal(1, cache.Compiled);
    }

    [Theory]
    [InlineData("off", null, "/home/u", null)]
    [InlineData("0", null, "/home/u", null)]
    [InlineData("/tmp/k", "/xdg", "/home/u", "/tmp/k")]
    [InlineData(null, "/xdg", "/home/u", "/xdg/ddpm/kernels")]
    [InlineData(null, null, "/home/u", "/home/u/.cache/ddpm/kernels")]
    [InlineData(null, null, null, null)]
    public void TheFolderComesFromTheEnvironment(string? cache, string? xdg, string? home, string? expected)
    {
        var env = new Dictionary<string, string?> { ["DDPM_KERNEL_CACHE"] = cache, ["XDG_CACHE_HOME"] = xdg, ["HOME"] = home };
        Assert.Equal(expected, KernelCache.FolderFrom(k => env.GetValueOrDefault(k)));
    }
}
