using System.Reflection;
using System.Runtime.InteropServices;

namespace Ddpm.Backends.Cuda.Native;

/// <summary>The native libraries the backend binds, by the name used in <c>[LibraryImport]</c>.</summary>
internal enum CudaLibrary
{
    Driver,
    Cublas,
    Nvrtc,

    /// <summary>NCCL, for data-parallel all-reduce between CUDA ranks; optional (MPI through host memory without it).</summary>
    Nccl,

    /// <summary>cuDNN 9, for the convolutions; optional (im2col + cuBLAS without it).</summary>
    Cudnn,
}

/// <summary>
/// Finds and loads libcuda, libcublas, libnvrtc, libnccl and libcudnn. The <c>[LibraryImport]</c> names are logical ("cuda",
/// "cublas", "nvrtc"); the resolver maps them to the handle loaded here, so a missing library is reported by
/// <see cref="Load"/> with every place searched, instead of as a bare DllNotFoundException on first call.
/// Search order: DDPM_CUDA_LIB_DIR (one folder or a ':'-separated list), directories added by <see cref="AddSearchDirectory"/>, CUDA_PATH/lib64,
/// /usr/local/cuda/lib64 (and /usr/local/nvidia/lib64 for the driver), the loader's default search, then the
/// lib folders of the nvidia-* Python wheels (system, virtual environment, /opt/*/.venv, ~/.local).
/// </summary>
internal static class CudaLibraries
{
    internal const string DriverName = "cuda";
    internal const string CublasName = "cublas";
    internal const string NvrtcName = "nvrtc";
    internal const string NcclName = "nccl";
    internal const string CudnnName = "cudnn";

    private static readonly object Gate = new();
    private static readonly Dictionary<CudaLibrary, nint> Loaded = [];
    private static readonly Dictionary<CudaLibrary, string> LoadedPaths = [];
    private static readonly List<string> ExtraDirectories = [];
    private static int _resolverInstalled;

    /// <summary>File names tried for each library, newest first.</summary>
    internal static IReadOnlyList<string> FileNames(CudaLibrary lib) => lib switch
    {
        CudaLibrary.Driver => ["libcuda.so.1", "libcuda.so"],
        CudaLibrary.Cublas => ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11"],
        CudaLibrary.Nvrtc => ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"],
        CudaLibrary.Nccl => ["libnccl.so.2"],
        CudaLibrary.Cudnn => ["libcudnn.so.9"],
        _ => throw new ArgumentOutOfRangeException(nameof(lib)),
    };

    /// <summary>Adds a folder searched right after DDPM_CUDA_LIB_DIR (tests use it for the CI copy of NVRTC).</summary>
    internal static void AddSearchDirectory(string directory)
    {
        lock (Gate)
        {
            if (!ExtraDirectories.Contains(directory)) ExtraDirectories.Add(directory);
        }
    }

    /// <summary>
    /// The directories searched, in order; null stands for the loader's default search. Pure in its inputs so
    /// tests can check the order without touching the process environment.
    /// </summary>
    internal static IReadOnlyList<string?> SearchDirectories(CudaLibrary lib, Func<string, string?> env,
        IEnumerable<string> extra, Func<string, IEnumerable<string>> expandWheelPattern)
    {
        var dirs = new List<string?>();
        void Add(string? d)
        {
            if (!string.IsNullOrWhiteSpace(d) && !dirs.Contains(d)) dirs.Add(d);
        }
        // DDPM_CUDA_LIB_DIR may list several folders, separated by ':' like PATH.
        foreach (var d in (env("DDPM_CUDA_LIB_DIR") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            Add(d);
        foreach (var d in extra) Add(d);
        string? cudaPath = env("CUDA_PATH");
        if (!string.IsNullOrWhiteSpace(cudaPath))
        {
            Add(Path.Combine(cudaPath, "lib64"));
            Add(Path.Combine(cudaPath, "lib"));
        }
        Add("/usr/local/cuda/lib64");
        // Containers mount the driver here (nvidia-container-toolkit) without always putting it on the loader path.
        if (lib == CudaLibrary.Driver) Add("/usr/local/nvidia/lib64");
        dirs.Add(null);
        if (lib != CudaLibrary.Driver)
        {
            // pip's nvidia-* wheels: nvidia/cublas/lib, nvidia/cuda_nvrtc/lib (CUDA 12) or nvidia/cu13/lib (CUDA 13), and
            // nvidia/cudnn/lib (nvidia-cudnn-cu12 and -cu13).
            string? venv = env("VIRTUAL_ENV"), home = env("HOME");
            var roots = new List<string>();
            if (!string.IsNullOrWhiteSpace(venv)) roots.Add($"{venv}/lib/python3*/site-packages");
            roots.AddRange(["/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
                "/usr/lib/python3/dist-packages", "/opt/*/.venv/lib/python3*/site-packages"]);
            if (!string.IsNullOrWhiteSpace(home)) roots.Add($"{home}/.local/lib/python3*/site-packages");
            foreach (var root in roots)
                foreach (var d in expandWheelPattern($"{root}/nvidia/*/lib"))
                    Add(d);
        }
        return dirs;
    }

    /// <summary>Expands one '*' in a path's directory components (python3*), returning existing folders.</summary>
    internal static IEnumerable<string> ExpandPattern(string pattern)
    {
        int star = pattern.IndexOf('*');
        if (star < 0) return Directory.Exists(pattern) ? [pattern] : [];
        int slashBefore = pattern.LastIndexOf('/', star);
        int slashAfter = pattern.IndexOf('/', star);
        string parent = pattern[..slashBefore];
        string component = slashAfter < 0 ? pattern[(slashBefore + 1)..] : pattern[(slashBefore + 1)..slashAfter];
        string rest = slashAfter < 0 ? "" : pattern[slashAfter..];
        if (!Directory.Exists(parent)) return [];
        string[] matches;
        try
        {
            matches = Directory.GetDirectories(parent, component);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            // An unreadable folder holds no library we could load either.
            return [];
        }
        return matches.Order(StringComparer.Ordinal).SelectMany(d => ExpandPattern(d + rest));
    }

    /// <summary>
    /// The CUDA major version a library file name belongs to: 13 for libcublas.so.13, 11 for libnvrtc.so.11.2;
    /// null for the driver, which has no toolkit major of its own.
    /// </summary>
    internal static int? MajorOf(string fileName)
    {
        int so = fileName.IndexOf(".so.", StringComparison.Ordinal);
        // NCCL's and cuDNN's sonames carry their own majors (2, 9), not a CUDA one.
        if (so < 0 || fileName.StartsWith("libcuda.", StringComparison.Ordinal) || fileName.StartsWith("libnccl.", StringComparison.Ordinal)
            || fileName.StartsWith("libcudnn.", StringComparison.Ordinal))
            return null;
        string rest = fileName[(so + 4)..];
        int dot = rest.IndexOf('.');
        return int.TryParse(dot < 0 ? rest : rest[..dot], out int major) ? major : null;
    }

    /// <summary>
    /// The file names worth trying for <paramref name="lib"/>, newest first, given the driver's CUDA major
    /// version (null when no driver is loaded: NVRTC alone needs none). cuBLAS needs a driver of at least its own
    /// major; NVRTC output of an older major loads on a newer driver, a newer one does not.
    /// </summary>
    internal static IReadOnlyList<string> CandidateFileNames(CudaLibrary lib, int? driverMajor) =>
        driverMajor is null ? FileNames(lib) : FileNames(lib).Where(f => (MajorOf(f) ?? 0) <= driverMajor).ToArray();

    /// <summary>Loads <paramref name="lib"/> (once) or throws <see cref="CudaUnavailableException"/> naming what was tried.</summary>
    internal static nint Load(CudaLibrary lib)
    {
        InstallResolver();
        int? driverMajor = lib == CudaLibrary.Driver ? null : DriverMajorIfLoadable();
        lock (Gate)
        {
            if (Loaded.TryGetValue(lib, out var h)) return h;
            var dirs = SearchDirectories(lib, Environment.GetEnvironmentVariable, ExtraDirectories, ExpandPattern);
            var names = CandidateFileNames(lib, driverMajor);
            var failed = new List<string>();
            foreach (var dir in dirs)
            {
                foreach (var file in names)
                {
                    string candidate = dir is null ? file : Path.Combine(dir, file);
                    if (dir is not null && !File.Exists(candidate)) continue;
                    if (dir is not null) PreloadCompanions(lib, dir, file);
                    try
                    {
                        h = NativeLibrary.Load(candidate);
                    }
                    catch (DllNotFoundException e) when (dir is not null)
                    {
                        // The file is there but the loader refused it: keep its own reason (dlerror).
                        failed.Add($"{candidate} ({e.Message.Trim()})");
                        continue;
                    }
                    catch (DllNotFoundException)
                    {
                        continue;
                    }
                    Loaded[lib] = h;
                    LoadedPaths[lib] = candidate;
                    return h;
                }
            }
            string where = string.Join(", ", dirs.Select(d => d ?? "the loader's default search path"));
            var skipped = FileNames(lib).Except(names).ToList();
            throw new CudaUnavailableException(
                $"{FileNames(lib)[0]} was not found ({Describe(lib)}; tried {string.Join(", ", names)} in: {where}" +
                (skipped.Count > 0 ? $"; not tried: {string.Join(", ", skipped)}, newer than the driver's CUDA {driverMajor}" : "") +
                (failed.Count > 0 ? $"; present but failed to load: {string.Join("; ", failed)}" : "") +
                "). Set DDPM_CUDA_LIB_DIR to the folder that holds it.");
        }
    }

    /// <summary>The driver's CUDA major version (cuDriverGetVersion needs no cuInit), or null when no driver loads.</summary>
    private static int? DriverMajorIfLoadable()
    {
        try
        {
            Load(CudaLibrary.Driver);
            return Driver.cuDriverGetVersion(out int v) == CUresult.Success && v > 0 ? v / 1000 : null;
        }
        catch (CudaUnavailableException)
        {
            return null;
        }
    }

    /// <summary>The handle of a library <see cref="Load"/> has loaded, or 0.</summary>
    internal static nint LoadedHandle(CudaLibrary lib)
    {
        lock (Gate) return Loaded.GetValueOrDefault(lib);
    }

    /// <summary>Path of a loaded library, or null.</summary>
    internal static string? LoadedPath(CudaLibrary lib)
    {
        lock (Gate) return LoadedPaths.GetValueOrDefault(lib);
    }

    private static string Describe(CudaLibrary lib) => lib switch
    {
        CudaLibrary.Driver => "the CUDA driver; it comes with the NVIDIA display driver, so no NVIDIA driver is installed or visible here",
        CudaLibrary.Cublas => "cuBLAS, from the CUDA toolkit or the nvidia-cublas Python wheel",
        CudaLibrary.Nccl => "NCCL, from NVIDIA's containers, the nvidia-nccl Python wheel (PyTorch's CUDA wheels bring it) or NVIDIA's libnccl2 package",
        CudaLibrary.Cudnn => "cuDNN 9, from NVIDIA's containers, the nvidia-cudnn-cu13 or -cu12 Python wheel (PyTorch's CUDA wheels bring it) or NVIDIA's libcudnn9 package",
        _ => "NVRTC, from the CUDA toolkit, the nvidia-cuda-nvrtc wheel or Debian's libnvrtc11.2",
    };

    // libnvrtc dlopens its builtins library by soname, and libcublas needs the libcublasLt of its own release:
    // loading them first from the same folder makes the right one be used when the folder is not on the
    // loader's path (the Debian packages unpacked for CI, a wheel's lib folder).
    private static void PreloadCompanions(CudaLibrary lib, string dir, string file)
    {
        if (!Directory.Exists(dir)) return;
        if (lib == CudaLibrary.Nvrtc)
        {
            foreach (var f in Directory.EnumerateFiles(dir, "libnvrtc-builtins.so*").Order(StringComparer.Ordinal))
                if (NativeLibrary.TryLoad(f, out _)) return;
        }
        else if (lib == CudaLibrary.Cublas)
        {
            string lt = Path.Combine(dir, file.Replace("libcublas.", "libcublasLt.", StringComparison.Ordinal));
            if (File.Exists(lt)) NativeLibrary.TryLoad(lt, out _);
        }
        else if (lib == CudaLibrary.Cudnn)
        {
            // libcudnn.so.9 dlopens its sub-libraries (graph, ops, cnn, engines, heuristic) by soname: loaded here
            // first, from the same release's folder. They depend on one another, so passes repeat while one loads.
            var pending = Directory.EnumerateFiles(dir, "libcudnn_*.so.9").Order(StringComparer.Ordinal).ToList();
            for (int loaded = -1; loaded != 0 && pending.Count > 0;)
            {
                loaded = pending.RemoveAll(f => NativeLibrary.TryLoad(f, out _));
            }
        }
    }

    private static void InstallResolver()
    {
        if (Interlocked.Exchange(ref _resolverInstalled, 1) == 1) return;
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path) => name switch
    {
        DriverName => Load(CudaLibrary.Driver),
        CublasName => Load(CudaLibrary.Cublas),
        NvrtcName => Load(CudaLibrary.Nvrtc),
        NcclName => Load(CudaLibrary.Nccl),
        CudnnName => Load(CudaLibrary.Cudnn),
        _ => 0,
    };
}
