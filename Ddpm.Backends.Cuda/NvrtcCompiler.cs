using System.Runtime.InteropServices;
using System.Text;
using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda;

/// <summary>The output of one NVRTC compile: a cubin, or NUL-terminated PTX for the driver to JIT.</summary>
internal sealed record CompiledModule(string FileName, string Target, bool IsCubin, byte[] Image, string Log);

/// <summary>Compiles CUDA C sources with NVRTC. Needs libnvrtc only, no GPU.</summary>
internal static unsafe class NvrtcCompiler
{
    /// <summary>NVRTC's (major, minor) version.</summary>
    internal static (int Major, int Minor) Version()
    {
        CudaLibraries.Load(CudaLibrary.Nvrtc);
        Nvrtc.Check(Nvrtc.nvrtcVersion(out int major, out int minor), "nvrtcVersion");
        return (major, minor);
    }

    /// <summary>The real architectures (80 for sm_80, ...) this NVRTC can emit cubins for.</summary>
    internal static int[] SupportedArchitectures()
    {
        CudaLibraries.Load(CudaLibrary.Nvrtc);
        Nvrtc.Check(Nvrtc.nvrtcGetNumSupportedArchs(out int count), "nvrtcGetNumSupportedArchs");
        var archs = new int[count];
        fixed (int* p = archs) Nvrtc.Check(Nvrtc.nvrtcGetSupportedArchs(p), "nvrtcGetSupportedArchs");
        return archs;
    }

    /// <summary>
    /// Compiles <paramref name="source"/> for compute capability <paramref name="arch"/> (e.g. 90): a cubin
    /// for sm_XY when this NVRTC knows the architecture, otherwise PTX for the newest virtual architecture
    /// it knows below it, which the driver compiles on load. A compile error throws with the full log.
    /// </summary>
    internal static CompiledModule Compile(KernelSource source, int arch)
    {
        var (target, cubin) = TargetFor(arch);
        return Compile(source, target, cubin);
    }

    /// <summary>What a device of compute capability <paramref name="arch"/> gets: sm_XY cubins, or compute_XY PTX for a newer device.</summary>
    internal static (string Target, bool Cubin) TargetFor(int arch)
    {
        var supported = SupportedArchitectures();
        if (supported.Contains(arch)) return ($"sm_{arch}", true);
        int fallback = supported.Where(a => a <= arch).DefaultIfEmpty(-1).Max();
        if (fallback < 0)
            throw new CudaUnavailableException(
                $"NVRTC {Version().Major}.{Version().Minor} supports architectures {string.Join(", ", supported)}; none is at or below the device's sm_{arch}.");
        return ($"compute_{fallback}", false);
    }

    /// <summary>The NVRTC options <paramref name="source"/> is compiled with for <paramref name="target"/>.</summary>
    internal static IReadOnlyList<string> Options(KernelSource source, string target)
    {
        // C++17 is the one dialect every NVRTC we load (11.8 to 13) accepts; 11.8 does not default to it.
        var options = new List<string> { $"--gpu-architecture={target}", "--std=c++17", "-default-device" };
        options.AddRange(source.Options);
        return options;
    }

    /// <summary>Compiles to <paramref name="target"/> (sm_XY for a cubin, compute_XY for PTX).</summary>
    internal static CompiledModule Compile(KernelSource source, string target, bool cubin)
    {
        CudaLibraries.Load(CudaLibrary.Nvrtc);
        var options = Options(source, target);

        var headers = KernelSources.Headers;
        using var src = new Utf8Strings([source.Text, source.FileName]);
        using var headerTexts = new Utf8Strings(headers.Select(h => h.Text).ToArray());
        using var headerNames = new Utf8Strings(headers.Select(h => h.Name).ToArray());
        using var opts = new Utf8Strings(options);
        Nvrtc.Check(Nvrtc.nvrtcCreateProgram(out nint program, src[0], src[1], headers.Count, headerTexts.Pointers, headerNames.Pointers),
            "nvrtcCreateProgram");
        try
        {
            int result = Nvrtc.nvrtcCompileProgram(program, options.Count, opts.Pointers);
            string log = ReadLog(program);
            if (result != Nvrtc.Success)
                throw new CudaException(
                    $"nvrtcCompileProgram failed for {source.FileName} ({string.Join(" ", options)}): {Nvrtc.ErrorString(result)}\n{log}");
            byte[] image;
            if (cubin)
            {
                Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(program, out nuint size), "nvrtcGetCUBINSize");
                image = new byte[(int)size];
                fixed (byte* p = image) Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(program, p), "nvrtcGetCUBIN");
            }
            else
            {
                Nvrtc.Check(Nvrtc.nvrtcGetPTXSize(program, out nuint size), "nvrtcGetPTXSize");
                image = new byte[(int)size];
                fixed (byte* p = image) Nvrtc.Check(Nvrtc.nvrtcGetPTX(program, p), "nvrtcGetPTX");
            }
            return new CompiledModule(source.FileName, target, cubin, image, log);
        }
        finally
        {
            Nvrtc.nvrtcDestroyProgram(ref program);
        }
    }

    private static string ReadLog(nint program)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(program, out nuint size) != Nvrtc.Success || size <= 1) return "";
        var buf = new byte[(int)size];
        fixed (byte* p = buf)
            if (Nvrtc.nvrtcGetProgramLog(program, p) != Nvrtc.Success) return "";
        return Encoding.UTF8.GetString(buf, 0, buf.Length - 1).Trim();
    }

    /// <summary>NUL-terminated UTF-8 copies of strings in native memory, freed on dispose.</summary>
    private sealed class Utf8Strings : IDisposable
    {
        private readonly nint[] _blocks;
        private readonly nint _array;

        public Utf8Strings(IReadOnlyList<string> strings)
        {
            _blocks = strings.Select(s => (nint)Marshal.StringToCoTaskMemUTF8(s)).ToArray();
            _array = Marshal.AllocHGlobal(nint.Size * Math.Max(1, _blocks.Length));
            for (int i = 0; i < _blocks.Length; i++) ((nint*)_array)[i] = _blocks[i];
        }

        public byte* this[int i] => (byte*)_blocks[i];

        public byte** Pointers => (byte**)_array;

        public void Dispose()
        {
            foreach (var b in _blocks) Marshal.FreeCoTaskMem(b);
            Marshal.FreeHGlobal(_array);
        }
    }
}
