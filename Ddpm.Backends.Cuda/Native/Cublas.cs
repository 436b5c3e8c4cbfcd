using System.Runtime.InteropServices;

namespace Ddpm.Backends.Cuda.Native;

internal enum CublasOperation
{
    N = 0,
    T = 1,
}

internal enum CublasMath
{
    Default = 0,
    Pedantic = 2,
    Tf32TensorOp = 3,
}

/// <summary>cudaDataType_t (library_types.h): the element types of cublasGemmStridedBatchedEx's matrices.</summary>
internal enum CudaDataType
{
    R32F = 0,
    R16BF = 14,
}

/// <summary>cublasComputeType_t: CUBLAS_COMPUTE_32F, float32 sums (and scaling) whatever the matrices' types.</summary>
internal enum CublasComputeType
{
    Compute32F = 68,
}

/// <summary>cuBLAS (libcublas.so.13/.12/.11), the v2 API. Column-major, host pointer mode for alpha/beta.</summary>
internal static unsafe partial class Cublas
{
    private const string Lib = CudaLibraries.CublasName;

    [LibraryImport(Lib)] internal static partial int cublasCreate_v2(out nint handle);
    [LibraryImport(Lib)] internal static partial int cublasDestroy_v2(nint handle);
    [LibraryImport(Lib)] internal static partial int cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(Lib)] internal static partial int cublasSetMathMode(nint handle, CublasMath mode);
    [LibraryImport(Lib)] internal static partial int cublasGetVersion_v2(nint handle, out int version);

    /// <summary>libraryPropertyType: 0 major, 1 minor, 2 patch. Needs no handle, so the probe can use it.</summary>
    [LibraryImport(Lib)] internal static partial int cublasGetProperty(int type, out int value);

    [LibraryImport(Lib)]
    internal static partial int cublasSgemmStridedBatched(nint handle, CublasOperation transa, CublasOperation transb,
        int m, int n, int k, float* alpha, ulong a, int lda, long strideA, ulong b, int ldb, long strideB,
        float* beta, ulong c, int ldc, long strideC, int batchCount);

    /// <summary>cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT: the library's heuristic choice.</summary>
    internal const int GemmDefault = -1;

    /// <summary>C = alpha op(A) op(B) + beta C per batch with A, B and C of the given types; alpha and beta are floats for CUBLAS_COMPUTE_32F.</summary>
    [LibraryImport(Lib)]
    internal static partial int cublasGemmStridedBatchedEx(nint handle, CublasOperation transa, CublasOperation transb,
        int m, int n, int k, float* alpha, ulong a, CudaDataType aType, int lda, long strideA, ulong b, CudaDataType bType, int ldb, long strideB,
        float* beta, ulong c, CudaDataType cType, int ldc, long strideC, int batchCount, CublasComputeType computeType, int algo);

    internal static void Check(int status, string call)
    {
        if (status != 0)
            throw new CudaException($"{call} failed: {StatusName(status)}");
    }

    /// <summary>cublasStatus_t names (cublas_api.h); the library's own string function is missing in 11.x.</summary>
    internal static string StatusName(int status) => status switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED (the CUDA runtime could not be initialised)",
        3 => "CUBLAS_STATUS_ALLOC_FAILED (device memory allocation failed)",
        7 => "CUBLAS_STATUS_INVALID_VALUE (an argument is out of range)",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH (the device lacks a needed feature)",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED (the kernel failed to run)",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => $"cublasStatus_t {status}",
    };
}
