// libcublas.so.12 of the CUDA simulator: SGEMM (plain and strided batched) and GemmEx (plain and strided batched,
// float32 and bfloat16 operands) on the CPU, queued on the handle's stream through the simulated driver so it runs in
// stream order with the copies and kernels. Column-major as cuBLAS documents. Sums are float32, as on a GPU: k in
// blocks of 256, each block by fused multiply-adds in index order, the blocks added in order (a GPU's blocking
// differs; the rounding is of the same size). In TF32 math mode (CUBLAS_TF32_TENSOR_OP_MATH) float32 A and B are
// first rounded to TF32's 10-bit mantissa, as tensor cores do. bfloat16 operands are widened exactly (their
// products are exact in float32, so only the sums round); a bfloat16 C is rounded to nearest even once at the end.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "sim_api.h"

#define API extern "C" __attribute__((visibility("default")))

namespace
{
enum : int
{
    STATUS_SUCCESS = 0,
    STATUS_NOT_INITIALIZED = 1,
    STATUS_ALLOC_FAILED = 3,
    STATUS_INVALID_VALUE = 7,
    STATUS_ARCH_MISMATCH = 8,
    STATUS_MAPPING_ERROR = 11,
    STATUS_EXECUTION_FAILED = 13,
    STATUS_INTERNAL_ERROR = 14,
    STATUS_NOT_SUPPORTED = 15,
    STATUS_LICENSE_ERROR = 16,
};

constexpr int kMathTf32 = 3;   // CUBLAS_TF32_TENSOR_OP_MATH

// cudaDataType_t (library_types.h): the element types GemmEx is given.
enum : int
{
    R_32F = 0,
    R_64F = 1,
    R_16F = 2,
    R_8I = 3,
    R_16BF = 14,
};

// cublasComputeType_t (cublas_api.h).
enum : int
{
    COMPUTE_16F = 64,
    COMPUTE_16F_PEDANTIC = 65,
    COMPUTE_32F = 68,
    COMPUTE_32F_PEDANTIC = 69,
    COMPUTE_64F = 70,
    COMPUTE_64F_PEDANTIC = 71,
    COMPUTE_32I = 72,
    COMPUTE_32I_PEDANTIC = 73,
    COMPUTE_32F_FAST_16F = 74,
    COMPUTE_32F_FAST_16BF = 75,
    COMPUTE_32F_FAST_TF32 = 77,
};

// How A and B are rounded before they are multiplied.
enum class Rounding
{
    None,
    Tf32,
    Bf16,
};

size_t elementBytes(int type) { return type == R_16BF ? 2 : 4; }
constexpr int kBlockK = 256;   // the k blocks of a sum (see tileSums)

struct Handle
{
    void* stream = nullptr;
    int mathMode = 0;
};

std::mutex g_mu;
std::unordered_set<Handle*> g_handles;

bool valid(Handle* h)
{
    std::lock_guard<std::mutex> lock(g_mu);
    return h != nullptr && g_handles.count(h) != 0;
}

struct Gemm
{
    bool transA, transB;
    int m, n, k;
    float alpha, beta;
    const void* a;
    int lda;
    long long strideA;
    const void* b;
    int ldb;
    long long strideB;
    void* c;
    int ldc;
    long long strideC;
    int batch;
    int abType, cType;  // R_32F or R_16BF
    Rounding rounding;
};

// Element i of a matrix of `type` as the float the arithmetic sees, rounded as `r` asks.
inline float load(const void* p, size_t i, int type, Rounding r)
{
    float v = type == R_16BF ? ddpmsim_bf16_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
    return r == Rounding::Tf32 ? ddpmsim_round_tf32(v) : r == Rounding::Bf16 ? ddpmsim_round_bf16(v) : v;
}

// Matrix `bi` of a strided batch.
inline const void* batchAt(const void* p, int type, long long stride, int bi)
{
    return static_cast<const char*>(p) + (size_t)bi * (size_t)stride * elementBytes(type);
}

// op(A) rows as floats (rounded as g.rounding asks), 4 rows interleaved per panel: panel p holds rows
// 4p..4p+3, element (i, l) at [p][l * 4 + i % 4]; rows past m are zero.
void packA(const Gemm& g, const void* a, std::vector<float>& out)
{
    int panels = (g.m + 3) / 4;
    out.assign((size_t)panels * g.k * 4, 0.0f);
    for (int i = 0; i < g.m; i++)
    {
        float* dst = out.data() + (size_t)(i / 4) * g.k * 4 + (i % 4);
        for (int l = 0; l < g.k; l++)
        {
            dst[(size_t)l * 4] = load(a, !g.transA ? i + (size_t)l * g.lda : (size_t)i * g.lda + l, g.abType, g.rounding);
        }
    }
}

// op(B) columns likewise: panel q holds columns 4q..4q+3, element (l, j) at [q][l * 4 + j % 4].
void packB(const Gemm& g, const void* b, std::vector<float>& out)
{
    int panels = (g.n + 3) / 4;
    out.assign((size_t)panels * g.k * 4, 0.0f);
    for (int j = 0; j < g.n; j++)
    {
        float* dst = out.data() + (size_t)(j / 4) * g.k * 4 + (j % 4);
        for (int l = 0; l < g.k; l++)
        {
            dst[(size_t)l * 4] = load(b, !g.transB ? (size_t)j * g.ldb + l : j + (size_t)l * g.ldb, g.abType, g.rounding);
        }
    }
}

// One 4x4 tile of sums: for each output, k is cut into blocks of kBlockK; each block is summed in float32
// by fused multiply-adds in index order (what one GPU thread's accumulator does), and the block sums are added
// in float32 in order (as split-K adds its partial products).
template <bool HardwareFma>
inline __attribute__((always_inline)) void tileSums(const float* ap, const float* bp, int k, float total[4][4])
{
    for (int r = 0; r < 4; r++)
        for (int s = 0; s < 4; s++) total[r][s] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += kBlockK)
    {
        int k1 = k - k0 < kBlockK ? k : k0 + kBlockK;
        float acc[4][4] = {};
        for (int l = k0; l < k1; l++)
        {
            const float* av = ap + (size_t)l * 4;
            const float* bv = bp + (size_t)l * 4;
            for (int r = 0; r < 4; r++)
                for (int s = 0; s < 4; s++)
                    acc[r][s] = HardwareFma ? __builtin_fmaf(av[r], bv[s], acc[r][s]) : fmaf(av[r], bv[s], acc[r][s]);
        }
        for (int r = 0; r < 4; r++)
            for (int s = 0; s < 4; s++) total[r][s] += acc[r][s];
    }
}

// The same arithmetic (a fused multiply-add rounds once either way); the first where the host has FMA.
__attribute__((target("fma"))) void tileSumsFma(const float* ap, const float* bp, int k, float total[4][4]) { tileSums<true>(ap, bp, k, total); }
void tileSumsPortable(const float* ap, const float* bp, int k, float total[4][4]) { tileSums<false>(ap, bp, k, total); }

void runGemm(void* ctx)
{
    const Gemm& g = *static_cast<Gemm*>(ctx);
    static const bool hardwareFma = __builtin_cpu_supports("fma");
    std::vector<float> pa, pb;
    for (int bi = 0; bi < g.batch; bi++)
    {
        void* c = const_cast<void*>(batchAt(g.c, g.cType, g.strideC, bi));
        bool product = g.alpha != 0.0f && g.k > 0;
        if (product)
        {
            packA(g, batchAt(g.a, g.abType, g.strideA, bi), pa);
            packB(g, batchAt(g.b, g.abType, g.strideB, bi), pb);
        }
        for (int jq = 0; jq < g.n; jq += 4)
        {
            const float* bp = product ? pb.data() + (size_t)(jq / 4) * g.k * 4 : nullptr;
            for (int ip = 0; ip < g.m; ip += 4)
            {
                float acc[4][4] = {};
                if (product)
                {
                    const float* ap = pa.data() + (size_t)(ip / 4) * g.k * 4;
                    if (hardwareFma) tileSumsFma(ap, bp, g.k, acc);
                    else tileSumsPortable(ap, bp, g.k, acc);
                }
                int rows = g.m - ip < 4 ? g.m - ip : 4, cols = g.n - jq < 4 ? g.n - jq : 4;
                for (int s = 0; s < cols; s++)
                {
                    size_t at = (size_t)(jq + s) * g.ldc + ip;
                    for (int r = 0; r < rows; r++)
                    {
                        float v = g.alpha * acc[r][s];
                        // beta == 0: C is output only, so whatever it held (NaN included) is not read.
                        if (g.beta != 0.0f) v = fmaf(g.beta, load(c, at + r, g.cType, Rounding::None), v);
                        if (g.cType == R_16BF) static_cast<uint16_t*>(c)[at + r] = ddpmsim_float_to_bf16(v);
                        else static_cast<float*>(c)[at + r] = v;
                    }
                }
            }
        }
        size_t cb = elementBytes(g.cType);
        for (int j = 0; j < g.n; j++) ddpmsim_mark_written(static_cast<char*>(c) + (size_t)j * g.ldc * cb, (size_t)g.m * cb);
    }
}

void freeGemm(void* ctx) { delete static_cast<Gemm*>(ctx); }

bool fits(const void* p, int type, int rows, int cols, int ld, long long stride, int batch)
{
    // Elements touched: the last batch's matrix, column-major rows x cols with leading dimension ld.
    size_t extent = (size_t)(batch - 1) * (size_t)stride + (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
    return ddpmsim_check_device_range(p, extent * elementBytes(type)) == 0;
}

// The element types and rounding of one GEMM (what sgemm and gemmEx differ in).
struct Types
{
    int ab, c;
    Rounding rounding;
};

int gemm(Handle* h, int transa, int transb, int m, int n, int k, const float* alpha, const void* a, int lda, long long strideA,
    const void* b, int ldb, long long strideB, const float* beta, void* c, int ldc, long long strideC, int batch, Types t, const char* what)
{
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    if (transa < 0 || transa > 2 || transb < 0 || transb > 2) return STATUS_INVALID_VALUE;
    bool ta = transa != 0, tb = transb != 0;  // CUBLAS_OP_C is CUBLAS_OP_T for real matrices
    if (m < 0 || n < 0 || k < 0 || batch < 0) return STATUS_INVALID_VALUE;
    int rowsA = ta ? k : m, rowsB = tb ? n : k;
    if (lda < (rowsA > 1 ? rowsA : 1) || ldb < (rowsB > 1 ? rowsB : 1) || ldc < (m > 1 ? m : 1)) return STATUS_INVALID_VALUE;
    if (!alpha || !beta) return STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0) return STATUS_SUCCESS;
    int st = ddpmsim_context_status();
    if (st != 0) return STATUS_EXECUTION_FAILED;
    bool product = *alpha != 0.0f && k > 0;
    std::string bad;
    if (product && !fits(a, t.ab, rowsA, ta ? m : k, lda, strideA, batch)) bad = "A";
    else if (product && !fits(b, t.ab, rowsB, tb ? k : n, ldb, strideB, batch)) bad = "B";
    else if (!fits(c, t.c, m, n, ldc, strideC, batch)) bad = "C";
    if (!bad.empty())
    {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: matrix %s (m %d, n %d, k %d, batch %d) lies outside the device allocations", what, bad.c_str(), m,
            n, k, batch);
        ddpmsim_set_sticky_error(700, msg);
        return STATUS_EXECUTION_FAILED;
    }
    Gemm* g = new Gemm{ta, tb, m, n, k, *alpha, *beta, a, lda, strideA, b, ldb, strideB, c, ldc, strideC, batch, t.ab, t.c, t.rounding};
    if (ddpmsim_enqueue_host_work(h->stream, what, runGemm, g, freeGemm) != 0)
    {
        delete g;
        return STATUS_EXECUTION_FAILED;
    }
    ddpmsim_count_gemm();
    return STATUS_SUCCESS;
}

bool tf32Math(const Handle* h) { return (h->mathMode & 15) == kMathTf32; }

int sgemm(Handle* h, int transa, int transb, int m, int n, int k, const float* alpha, const float* a, int lda, long long strideA,
    const float* b, int ldb, long long strideB, const float* beta, float* c, int ldc, long long strideC, int batch, const char* what)
{
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    return gemm(h, transa, transb, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batch,
        Types{R_32F, R_32F, tf32Math(h) ? Rounding::Tf32 : Rounding::None}, what);
}

// The combinations of cublasGemmEx's table (cuBLAS 12) that the simulator computes: float32 scaling and sums with
// A and B both float32 or both bfloat16. float32 data: CUBLAS_COMPUTE_32F (TF32 products under the handle's TF32
// math mode), _PEDANTIC (never rounded), _FAST_TF32 and _FAST_16BF (inputs rounded to TF32 or bfloat16). bfloat16 A
// and B: CUBLAS_COMPUTE_32F or _PEDANTIC with a bfloat16 or float32 C. Every other combination, the half, int8,
// double and complex ones cuBLAS also accepts included, is CUBLAS_STATUS_NOT_SUPPORTED here.
int exTypes(const Handle* h, int aType, int bType, int cType, int compute, Types* out)
{
    if (aType != bType) return STATUS_NOT_SUPPORTED;
    bool pedantic = compute == COMPUTE_32F_PEDANTIC;
    if (aType == R_32F && cType == R_32F)
    {
        switch (compute)
        {
            case COMPUTE_32F: *out = Types{R_32F, R_32F, tf32Math(h) ? Rounding::Tf32 : Rounding::None}; return STATUS_SUCCESS;
            case COMPUTE_32F_PEDANTIC: *out = Types{R_32F, R_32F, Rounding::None}; return STATUS_SUCCESS;
            case COMPUTE_32F_FAST_TF32: *out = Types{R_32F, R_32F, Rounding::Tf32}; return STATUS_SUCCESS;
            case COMPUTE_32F_FAST_16BF: *out = Types{R_32F, R_32F, Rounding::Bf16}; return STATUS_SUCCESS;
            default: return STATUS_NOT_SUPPORTED;
        }
    }
    if (aType == R_16BF && (cType == R_16BF || cType == R_32F) && (compute == COMPUTE_32F || pedantic))
    {
        *out = Types{R_16BF, cType, Rounding::None};
        return STATUS_SUCCESS;
    }
    return STATUS_NOT_SUPPORTED;
}

// cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT (-1), ALGO0..23, DEFAULT_TENSOR_OP (99), ALGO0_TENSOR_OP..15 (100..115).
// All give the same arithmetic here (cuBLAS 12 treats the numbered ones as the default).
bool knownAlgo(int algo) { return (algo >= -1 && algo <= 23) || (algo >= 99 && algo <= 115); }

int gemmEx(Handle* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* a, int aType, int lda, long long strideA,
    const void* b, int bType, int ldb, long long strideB, const void* beta, void* c, int cType, int ldc, long long strideC, int batch,
    int compute, int algo, const char* what)
{
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    if (!knownAlgo(algo)) return STATUS_INVALID_VALUE;
    Types t;
    int st = exTypes(h, aType, bType, cType, compute, &t);
    if (st != STATUS_SUCCESS) return st;
    return gemm(h, transa, transb, m, n, k, static_cast<const float*>(alpha), a, lda, strideA, b, ldb, strideB, static_cast<const float*>(beta),
        c, ldc, strideC, batch, t, what);
}
}  // namespace

API int cublasCreate_v2(void** handle)
{
    if (!handle) return STATUS_INVALID_VALUE;
    if (ddpmsim_context_status() != 0) return STATUS_NOT_INITIALIZED;
    Handle* h = new Handle();
    std::lock_guard<std::mutex> lock(g_mu);
    g_handles.insert(h);
    *handle = h;
    return STATUS_SUCCESS;
}

API int cublasDestroy_v2(void* handle)
{
    Handle* h = static_cast<Handle*>(handle);
    std::lock_guard<std::mutex> lock(g_mu);
    if (!h || !g_handles.erase(h)) return STATUS_NOT_INITIALIZED;
    delete h;
    return STATUS_SUCCESS;
}

API int cublasSetStream_v2(void* handle, void* stream)
{
    Handle* h = static_cast<Handle*>(handle);
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    h->stream = stream;
    return STATUS_SUCCESS;
}

API int cublasGetStream_v2(void* handle, void** stream)
{
    Handle* h = static_cast<Handle*>(handle);
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    if (!stream) return STATUS_INVALID_VALUE;
    *stream = h->stream;
    return STATUS_SUCCESS;
}

API int cublasSetMathMode(void* handle, int mode)
{
    Handle* h = static_cast<Handle*>(handle);
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    // CUBLAS_DEFAULT_MATH 0, CUBLAS_TENSOR_OP_MATH 1, PEDANTIC 2, TF32 3, plus the 16 disallow-reduced-precision flag.
    // TF32 (3) rounds A and B to TF32 in the GEMMs queued after this call; the others compute in float32.
    int base = mode & ~16;
    if (base < 0 || base > 3) return STATUS_INVALID_VALUE;
    h->mathMode = mode;
    return STATUS_SUCCESS;
}

API int cublasGetVersion_v2(void* handle, int* version)
{
    Handle* h = static_cast<Handle*>(handle);
    if (!valid(h)) return STATUS_NOT_INITIALIZED;
    if (!version) return STATUS_INVALID_VALUE;
    *version = 120804;
    return STATUS_SUCCESS;
}

API int cublasGetProperty(int type, int* value)
{
    if (!value) return STATUS_INVALID_VALUE;
    switch (type)
    {
        case 0: *value = 12; return STATUS_SUCCESS;
        case 1: *value = 8; return STATUS_SUCCESS;
        case 2: *value = 4; return STATUS_SUCCESS;
        default: return STATUS_INVALID_VALUE;
    }
}

API int cublasSgemmStridedBatched(void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const float* a,
    int lda, long long strideA, const float* b, int ldb, long long strideB, const float* beta, float* c, int ldc, long long strideC,
    int batchCount)
{
    return sgemm(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC,
        batchCount, "cublasSgemmStridedBatched");
}

API int cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const float* a, int lda,
    const float* b, int ldb, const float* beta, float* c, int ldc)
{
    return sgemm(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1, "cublasSgemm_v2");
}

API int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* a, int aType, int lda,
    const void* b, int bType, int ldb, const void* beta, void* c, int cType, int ldc, int computeType, int algo)
{
    return gemmEx(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, a, aType, lda, 0, b, bType, ldb, 0, beta, c, cType, ldc, 0, 1,
        computeType, algo, "cublasGemmEx");
}

API int cublasGemmStridedBatchedEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* a, int aType,
    int lda, long long strideA, const void* b, int bType, int ldb, long long strideB, const void* beta, void* c, int cType, int ldc,
    long long strideC, int batchCount, int computeType, int algo)
{
    return gemmEx(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, a, aType, lda, strideA, b, bType, ldb, strideB, beta, c, cType,
        ldc, strideC, batchCount, computeType, algo, "cublasGemmStridedBatchedEx");
}

API const char* cublasGetStatusName(int status)
{
    switch (status)
    {
        case STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

API const char* cublasGetStatusString(int status)
{
    switch (status)
    {
        case STATUS_SUCCESS: return "the operation completed successfully";
        case STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        case STATUS_LICENSE_ERROR: return "the functionality requested requires some license";
        default: return "unknown error";
    }
}
