// Self-test of the CUDA simulator, run by build.sh: each check prints PASS or FAIL with what it saw; the
// exit status is the number of failures. Uses the built libcuda.so.1 / libcublas.so.12 through their C ABI.
// The "planted" checks run a kernel with a planted bug (planted_kernels.cu) with the simulator's check for it
// off, where it passes, and on, where the simulator must name it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <elf.h>

#include "sim_api.h"

extern "C" {
int cuInit(unsigned);
int cuDriverGetVersion(int*);
int cuDeviceGet(int*, int);
int cuDeviceGetName(char*, int, int);
int cuDeviceGetAttribute(int*, int, int);
int cuDevicePrimaryCtxRetain(void**, int);
int cuDevicePrimaryCtxRelease_v2(int);
int cuCtxSetCurrent(void*);
int cuCtxSynchronize(void);
int cuMemAlloc_v2(uint64_t*, size_t);
int cuMemFree_v2(uint64_t);
int cuMemGetInfo_v2(size_t*, size_t*);
int cuMemcpyHtoDAsync_v2(uint64_t, const void*, size_t, void*);
int cuMemcpyDtoHAsync_v2(void*, uint64_t, size_t, void*);
int cuMemcpyDtoDAsync_v2(uint64_t, uint64_t, size_t, void*);
int cuMemsetD32Async(uint64_t, unsigned, size_t, void*);
int cuStreamCreate(void**, unsigned);
int cuStreamDestroy_v2(void*);
int cuStreamSynchronize(void*);
int cuEventCreate(void**, unsigned);
int cuEventRecord(void*, void*);
int cuEventSynchronize(void*);
int cuEventElapsedTime(float*, void*, void*);
int cuEventDestroy_v2(void*);
int cuStreamWaitEvent(void*, void*, unsigned);
int cuStreamQuery(void*);
int cuEventQuery(void*);
int cuModuleLoadData(void**, const void*);
int cuModuleUnload(void*);
int cuModuleGetFunction(void**, void*, const char*);
int cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);
int cuGetErrorName(int, const char**);
int cuGetErrorString(int, const char**);
int cublasCreate_v2(void**);
int cublasDestroy_v2(void*);
int cublasSetStream_v2(void*, void*);
int cublasSetMathMode(void*, int);
int cublasSgemmStridedBatched(void*, int, int, int, int, int, const float*, uint64_t, int, long long, uint64_t, int, long long,
    const float*, uint64_t, int, long long, int);
int cublasGemmEx(void*, int, int, int, int, int, const void*, uint64_t, int, int, uint64_t, int, int, const void*, uint64_t, int, int, int, int);
int cublasGemmStridedBatchedEx(void*, int, int, int, int, int, const void*, uint64_t, int, int, long long, uint64_t, int, int, long long,
    const void*, uint64_t, int, int, long long, int, int, int);
}

namespace
{
int g_failures = 0;
void* g_stream = nullptr;
void* g_module = nullptr;

void check(bool ok, const std::string& what, const std::string& detail = "")
{
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    if (!ok) g_failures++;
}

std::string errorString(int code)
{
    const char* s = nullptr;
    cuGetErrorString(code, &s);
    return s ? s : "(null)";
}

// The test kernels, named as NVRTC's PTX would name them; not_compiled is in the image only.
const char* const kKernels[] = {"selftest_divergent_barrier", "selftest_full_mask_shuffle", "selftest_block_sum", "selftest_shared_per_block",
    "selftest_store", "selftest_trap", "selftest_params", "selftest_block_order", "selftest_warp_ring", "selftest_half_warp_shuffle",
    "planted_missing_barrier", "planted_neighbour_read", "planted_block_overlap", "planted_atomic_sum", "planted_off_by_one_read",
    "planted_unwritten_max", "planted_sum", "planted_many_registers", "not_compiled"};

std::string ptxImage()
{
    std::string p = "//\n// Generated for the simulator's self-test\n//\n\n.version 7.8\n.target sm_90\n.address_size 64\n\n";
    for (const char* k : kKernels) p += std::string(".visible .entry ") + k + "(\n)\n{\nret;\n}\n";
    return p;
}

// Sets a simulator option (ddpmsim_set_option) for one scope, then restores it.
struct Option
{
    std::string name, saved;
    Option(const char* n, const char* value) : name(n), saved(ddpmsim_get_option(n))
    {
        if (ddpmsim_set_option(n, value) != 0) printf("ddpmsim_set_option(%s, %s) failed\n", n, value);
    }
    ~Option() { ddpmsim_set_option(name.c_str(), saved.c_str()); }
};

// A fresh primary context (the previous one's sticky error, memory and handles go with it).
void freshContext()
{
    if (g_module) cuModuleUnload(g_module);
    g_module = nullptr;
    g_stream = nullptr;
    cuDevicePrimaryCtxRelease_v2(0);
    void* ctx = nullptr;
    cuDevicePrimaryCtxRetain(&ctx, 0);
    cuCtxSetCurrent(ctx);
    cuStreamCreate(&g_stream, 1);
    static const std::string ptx = ptxImage();
    cuModuleLoadData(&g_module, ptx.c_str());
}

void* function(const char* name)
{
    void* f = nullptr;
    int r = cuModuleGetFunction(&f, g_module, name);
    if (r != 0) printf("cuModuleGetFunction(%s) = %d\n", name, r);
    return f;
}

uint64_t alloc(size_t bytes)
{
    uint64_t p = 0;
    int r = cuMemAlloc_v2(&p, bytes);
    if (r != 0) printf("cuMemAlloc_v2(%zu) = %d\n", bytes, r);
    return p;
}

template <typename T> std::vector<T> download(uint64_t src, size_t n)
{
    std::vector<T> h(n);
    cuMemcpyDtoHAsync_v2(h.data(), src, n * sizeof(T), g_stream);
    cuStreamSynchronize(g_stream);
    return h;
}

int launch(void* f, unsigned grid, unsigned block, std::vector<void*> params)
{
    return cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, g_stream, params.data(), nullptr);
}

uint64_t upload(const std::vector<float>& h)
{
    uint64_t d = alloc(h.size() * 4);
    cuMemcpyHtoDAsync_v2(d, h.data(), h.size() * 4, g_stream);
    return d;
}

bool contains(const std::string& text, const char* part) { return text.find(part) != std::string::npos; }

// Runs the launch, synchronises, and returns (status, error text).
std::pair<int, std::string> runKernel(const char* name, unsigned grid, unsigned block, std::vector<void*> params)
{
    int r = launch(function(name), grid, block, std::move(params));
    int s = r != 0 ? r : cuStreamSynchronize(g_stream);
    return {s, s == 0 ? "" : errorString(s)};
}

void testNotInitialized()
{
    int dev = -1;
    check(cuDeviceGet(&dev, 0) == 3, "calls before cuInit return CUDA_ERROR_NOT_INITIALIZED (3)");
}

void testDevice()
{
    char name[64] = {};
    int major = 0, minor = 0, version = 0;
    cuDeviceGetName(name, sizeof name, 0);
    cuDeviceGetAttribute(&major, 75, 0);
    cuDeviceGetAttribute(&minor, 76, 0);
    cuDriverGetVersion(&version);
    check(strcmp(name, "CUDA simulator (CPU)") == 0 && major == 9 && minor == 0 && version == 12080,
        "device: name, compute capability 9.0, driver 12080", std::string(name));
    const char* n = nullptr;
    cuGetErrorName(1, &n);
    check(n && strcmp(n, "CUDA_ERROR_INVALID_VALUE") == 0, "cuGetErrorName(1) is CUDA_ERROR_INVALID_VALUE");
}

void testDivergentBarrier()
{
    freshContext();
    uint64_t out = alloc(4 * 256 * 4);
    int r = launch(function("selftest_divergent_barrier"), 4, 256, {&out});
    int s = cuStreamSynchronize(g_stream);
    std::string text = errorString(719);
    check(r == 0 && s == 719 && text.find("kernel selftest_divergent_barrier: __syncthreads reached by 224 of 256 threads of block (") !=
                                    std::string::npos,
        "divergent __syncthreads is reported with the kernel's name (sticky 719)", text);
    uint64_t p = 0;
    check(cuMemAlloc_v2(&p, 16) == 719, "the launch failure is sticky for later calls");
}

void testPartialWarpShuffle()
{
    freshContext();
    uint64_t out = alloc(48 * 4);
    launch(function("selftest_full_mask_shuffle"), 1, 48, {&out});
    int s = cuStreamSynchronize(g_stream);
    std::string text = errorString(719);
    check(s == 719 && text.find("kernel selftest_full_mask_shuffle: __shfl_xor_sync(mask 0xffffffff)") != std::string::npos &&
              text.find("only 16 lanes") != std::string::npos,
        "a full-mask shuffle in a partial warp is reported", text);
    freshContext();
    out = alloc(64 * 4);
    launch(function("selftest_full_mask_shuffle"), 1, 64, {&out});
    auto h = download<float>(out, 64);
    bool ok = cuStreamSynchronize(g_stream) == 0;
    for (int i = 0; i < 64; i++) ok = ok && h[i] == (float)(i + (i ^ 1));
    check(ok, "a full-mask shuffle in whole warps exchanges lane i with lane i^1");
}

void testBlockSum()
{
    freshContext();
    const int blocks = 3, threads = 256;
    std::vector<float> x(blocks * threads);
    for (int i = 0; i < blocks * threads; i++) x[i] = (float)(i % 1000) * 0.25f;
    uint64_t dx = alloc(x.size() * 4), out = alloc(blocks * 4), outd = alloc(blocks * 8);
    cuMemcpyHtoDAsync_v2(dx, x.data(), x.size() * 4, g_stream);
    launch(function("selftest_block_sum"), blocks, threads, {&dx, &out, &outd});
    auto s = download<float>(out, blocks);
    auto sd = download<double>(outd, blocks);
    bool ok = true;
    std::string detail;
    for (int b = 0; b < blocks; b++)
    {
        double ref = 0;
        for (int t = 0; t < threads; t++) ref += x[b * threads + t];
        ok = ok && s[b] == (float)ref && sd[b] == ref;
        detail += std::to_string(s[b]) + "/" + std::to_string(ref) + " ";
    }
    check(ok, "block_sum and block_sum_d of quarter-integers are exact", detail);
}

void testSharedPerBlock()
{
    freshContext();
    Option noInit("check", "-init");  // the kernel reads shared memory nothing wrote, to see it is NaN
    const int blocks = 3, threads = 256;
    uint64_t out = alloc(blocks * threads * 4), fresh = alloc(blocks * 4);
    launch(function("selftest_shared_per_block"), blocks, threads, {&out, &fresh});
    auto h = download<float>(out, blocks * threads);
    auto f = download<float>(fresh, blocks);
    bool ok = true;
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < threads; t++) ok = ok && h[b * threads + t] == b * 1000.0f + (threads - 1 - t);
    check(ok, "shared memory is per block (each block reads back its own values)");
    check(f[0] == 1.0f && f[1] == 1.0f && f[2] == 1.0f, "each block starts with fresh (NaN) shared memory");
}

void testInitCheckShared()
{
    freshContext();
    uint64_t out = alloc(3 * 256 * 4), fresh = alloc(3 * 4);
    auto [st, text] = runKernel("selftest_shared_per_block", 3, 256, {&out, &fresh});
    check(st == 719 && contains(text, "init check: kernel selftest_shared_per_block: thread (0,0,0) of block (") &&
              contains(text, "reads first+0, which no thread of the block has written"),
        "init check: a read of shared memory no thread of the block wrote is reported, naming the variable", text);
}

void testParams()
{
    freshContext();
    uint64_t out = alloc(7 * 8);
    struct Dims
    {
        int n;
        float scale;
        int extra[3];
    } d{11, 2.5f, {1, 2, 3}};
    int a = -7;
    unsigned long long b = 0x123456789ull;
    float c = 0.75f;
    long long e = -(1ll << 40);
    // kernelParams point at separately placed values, as the binding's 8-byte slots do.
    launch(function("selftest_params"), 1, 32, {&out, &a, &b, &c, &d, &e});
    auto h = download<double>(out, 7);
    check(h[0] == -7 && h[1] == (double)0x123456789ull && h[2] == 0.75 && h[3] == 11 && h[4] == 2.5 && h[5] == 3 &&
              h[6] == -(double)(1ll << 40),
        "kernel parameters are unpacked by the kernel's signature (int, u64, float, struct, long long)");
}

void testTrap()
{
    freshContext();
    uint64_t p = alloc(256 * 4);
    launch(function("selftest_trap"), 2, 64, {&p});
    int s = cuCtxSynchronize();
    std::string text = errorString(719);
    check(s == 719 && text.find("kernel selftest_trap: __trap() in thread (5,0,0) of block (1,0,0)") != std::string::npos,
        "__trap() fails the launch, naming the kernel", text);
}

void testGuardZone()
{
    // The guard bytes, as they work without the bounds check (a write past the end shows at free or sync).
    Option none("check", "none");
    freshContext();
    uint64_t p = alloc(100 * 4);
    int index = 100;
    float value = 1.0f;
    launch(function("selftest_store"), 1, 32, {&p, &index, &value});
    int r = cuMemFree_v2(p);
    std::string text = errorString(700);
    check(r == 700 && text.find("guard zone after allocation") != std::string::npos &&
              text.find("kernel selftest_store") != std::string::npos,
        "a write past the end is found at cuMemFree (naming the allocation and the last kernel)", text);
    freshContext();
    p = alloc(64);
    index = -1;
    value = 1.0f;
    launch(function("selftest_store"), 1, 32, {&p, &index, &value});
    int s = cuStreamSynchronize(g_stream);
    check(s == 700 && errorString(700).find("guard zone before") != std::string::npos,
        "a write before the start is found at the next synchronisation", errorString(700));
}

void testNanFillAndStaleCopies()
{
    freshContext();
    const size_t n = 1000;
    uint64_t d = alloc(n * 4);
    std::vector<uint32_t> h(n, 0);
    cuMemcpyDtoHAsync_v2(h.data(), d, n * 4, g_stream);
    cuStreamSynchronize(g_stream);
    bool nan = true;
    for (uint32_t w : h) nan = nan && w == 0x7fc00000u;
    check(nan, "fresh device memory reads as NaN (0x7fc00000)");

    std::vector<float> src(n, 3.0f), dst(n, -1.0f);
    cuMemcpyHtoDAsync_v2(d, src.data(), n * 4, g_stream);
    cuMemcpyDtoHAsync_v2(dst.data(), d, n * 4, g_stream);
    bool stale = dst[0] == -1.0f && dst[n - 1] == -1.0f;
    src[0] = 5.0f;  // an upload reads its source when it runs, as a DMA engine would
    cuStreamSynchronize(g_stream);
    check(stale && dst[0] == 5.0f && dst[n - 1] == 3.0f, "a device-to-host copy is stale before the stream is synchronised, right after");

    void *e0 = nullptr, *e1 = nullptr, *e2 = nullptr;
    cuEventCreate(&e0, 0);
    cuEventCreate(&e1, 0);
    cuEventCreate(&e2, 2);
    cuEventRecord(e0, g_stream);
    cuMemsetD32Async(d, 0x40000000u, n, g_stream);
    cuEventRecord(e1, g_stream);
    cuEventRecord(e2, g_stream);
    float ms = -1;
    int early = cuEventElapsedTime(&ms, e0, e1);
    cuEventSynchronize(e1);
    int timed = cuEventElapsedTime(&ms, e0, e1);
    int untimed = cuEventElapsedTime(&ms, e0, e2);
    check(early == 600 && timed == 0 && ms >= 0 && untimed == 400,
        "event timing: NOT_READY before, elapsed after, INVALID_HANDLE for CU_EVENT_DISABLE_TIMING");
    cuEventDestroy_v2(e0);
    cuEventDestroy_v2(e1);
    cuEventDestroy_v2(e2);
}

// Two streams ordered by an event: the waiting stream's later work sees the other stream's work up to the
// record, not what that stream queued after it, even when the event is recorded again before the wait runs.
void testStreamWaitEvent()
{
    freshContext();
    void* other = nullptr;
    cuStreamCreate(&other, 1);
    uint64_t a = alloc(16), b = alloc(16);
    void* ev = nullptr;
    cuEventCreate(&ev, 2);
    cuMemsetD32Async(a, 0x3f800000u, 4, g_stream);  // a = 1
    cuEventRecord(ev, g_stream);
    int r = cuStreamWaitEvent(other, ev, 0);
    cuMemsetD32Async(a, 0x40000000u, 4, g_stream);  // a = 2, after the record
    cuEventRecord(ev, g_stream);                    // does not move the wait queued above
    cuMemcpyDtoDAsync_v2(b, a, 16, other);          // b = a as of the record: 1
    std::vector<float> h(4, -1.0f);
    cuMemcpyDtoHAsync_v2(h.data(), b, 16, other);
    cuStreamSynchronize(other);
    bool ordered = r == 0 && h[0] == 1.0f && h[3] == 1.0f;
    void* never = nullptr;
    cuEventCreate(&never, 2);
    bool free = cuStreamWaitEvent(other, never, 0) == 0 && cuStreamWaitEvent(other, never, 1) == 1 &&
                cuStreamWaitEvent((void*)0x1234, never, 0) == 400;
    cuStreamSynchronize(g_stream);
    auto after = download<float>(a, 4);
    check(ordered && free && after[0] == 2.0f,
        "cuStreamWaitEvent orders a stream after the other's work up to the record (a later record does not move it)",
        "b " + std::to_string(h[0]) + ", a " + std::to_string(after[0]));
    cuEventDestroy_v2(ev);
    cuEventDestroy_v2(never);
    cuStreamDestroy_v2(other);
}

// The simulator's documented float32 order: k in blocks of 256, each summed by fused multiply-adds in order,
// the block sums added in order; in TF32 math A and B rounded first. Also the exact double-precision value.
void referenceGemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
    float* c, int ldc, bool tf32, double* exact = nullptr)
{
    auto in = [tf32](float v) { return tf32 ? ddpmsim_round_tf32(v) : v; };
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
        {
            float total = 0.0f;
            double d = 0;
            for (int k0 = 0; k0 < k; k0 += 256)
            {
                float acc = 0.0f;
                for (int l = k0; l < k && l < k0 + 256; l++)
                {
                    float av = in(ta ? a[l + (size_t)i * lda] : a[i + (size_t)l * lda]);
                    float bv = in(tb ? b[j + (size_t)l * ldb] : b[l + (size_t)j * ldb]);
                    acc = fmaf(av, bv, acc);
                    d += (double)av * bv;
                }
                total += acc;
            }
            float v = alpha * total;
            if (beta != 0.0f) v = fmaf(beta, c[i + (size_t)j * ldc], v);
            if (exact) exact[i + (size_t)j * ldc] = (double)alpha * d + (beta != 0.0f ? (double)beta * c[i + (size_t)j * ldc] : 0.0);
            c[i + (size_t)j * ldc] = v;
        }
}

void testCublas()
{
    freshContext();
    void* h = nullptr;
    cublasCreate_v2(&h);
    cublasSetStream_v2(h, g_stream);
    float one = 1.0f, zero = 0.0f;
    uint64_t buf = alloc(1 << 20);
    check(cublasSgemmStridedBatched(h, 0, 0, 4, 4, 4, &one, buf, 3, 16, buf, 4, 16, &zero, buf, 4, 16, 1) == 7,
        "cuBLAS: lda < m returns CUBLAS_STATUS_INVALID_VALUE (7)");
    check(cublasSgemmStridedBatched(h, 5, 0, 4, 4, 4, &one, buf, 4, 16, buf, 4, 16, &zero, buf, 4, 16, 1) == 7,
        "cuBLAS: an unknown transa returns CUBLAS_STATUS_INVALID_VALUE (7)");

    // beta == 0: C holds NaN (fresh memory) and must not leak into the result.
    const int m = 5, n = 3, k = 7;
    std::vector<float> a(m * k), b(k * n);
    for (int i = 0; i < m * k; i++) a[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < k * n; i++) b[i] = (float)((i * 5) % 13) * 0.5f - 3.0f;
    uint64_t da = alloc(a.size() * 4), db = alloc(b.size() * 4), dc = alloc(m * n * 4);
    cuMemcpyHtoDAsync_v2(da, a.data(), a.size() * 4, g_stream);
    cuMemcpyHtoDAsync_v2(db, b.data(), b.size() * 4, g_stream);
    cublasSgemmStridedBatched(h, 0, 0, m, n, k, &one, da, m, 0, db, k, 0, &zero, dc, m, 0, 1);
    auto c = download<float>(dc, m * n);
    std::vector<float> ref(m * n, 0.0f);
    referenceGemm(false, false, m, n, k, 1.0f, a.data(), m, b.data(), k, 0.0f, ref.data(), m, false);
    check(c == ref, "cuBLAS: beta == 0 ignores NaN in C");

    // Strided batched, every transpose combination, padded leading dimensions, beta != 0.
    const int M = 9, N = 6, K = 300, batch = 3;
    float alpha = 0.5f, beta = -1.25f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
        {
            int lda = (ta ? K : M) + 2, ldb = (tb ? N : K) + 1, ldc = M + 3;
            long long sa = (long long)lda * (ta ? M : K) + 5, sb = (long long)ldb * (tb ? K : N) + 2, sc = (long long)ldc * N + 1;
            std::vector<float> A(sa * batch), B(sb * batch), C(sc * batch);
            for (size_t i = 0; i < A.size(); i++) A[i] = (float)((i * 37) % 101) / 17.0f - 2.0f;
            for (size_t i = 0; i < B.size(); i++) B[i] = (float)((i * 53) % 97) / 13.0f - 3.0f;
            for (size_t i = 0; i < C.size(); i++) C[i] = (float)((i * 29) % 89) / 7.0f - 5.0f;
            uint64_t dA = alloc(A.size() * 4), dB = alloc(B.size() * 4), dC = alloc(C.size() * 4);
            cuMemcpyHtoDAsync_v2(dA, A.data(), A.size() * 4, g_stream);
            cuMemcpyHtoDAsync_v2(dB, B.data(), B.size() * 4, g_stream);
            cuMemcpyHtoDAsync_v2(dC, C.data(), C.size() * 4, g_stream);
            int st = cublasSgemmStridedBatched(h, ta, tb, M, N, K, &alpha, dA, lda, sa, dB, ldb, sb, &beta, dC, ldc, sc, batch);
            auto got = download<float>(dC, C.size());
            std::vector<double> exact(C.size());
            for (int bi = 0; bi < batch; bi++)
                referenceGemm(ta, tb, M, N, K, alpha, A.data() + bi * sa, lda, B.data() + bi * sb, ldb, beta, C.data() + bi * sc, ldc, false,
                    exact.data() + bi * sc);
            double maxRel = 0;
            for (int bi = 0; bi < batch; bi++)
                for (int j = 0; j < N; j++)
                    for (int i = 0; i < M; i++)
                    {
                        size_t x = (size_t)bi * sc + (size_t)j * ldc + i;
                        maxRel = std::fmax(maxRel, std::fabs(got[x] - exact[x]) / std::fmax(1.0, std::fabs(exact[x])));
                    }
            check(st == 0 && got == C && maxRel < 1e-5, std::string("cuBLAS: strided batched sgemm ") + (ta ? "T" : "N") + (tb ? "T" : "N") +
                                           " sums in float32 in the documented blocked order, within 1e-5 of the exact value (padding untouched)",
                "largest relative difference from the exact sum " + std::to_string(maxRel));
        }
    cublasDestroy_v2(h);
    check(cublasSgemmStridedBatched(h, 0, 0, 4, 4, 4, &one, buf, 4, 16, buf, 4, 16, &zero, buf, 4, 16, 1) == 1,
        "cuBLAS: a destroyed handle returns CUBLAS_STATUS_NOT_INITIALIZED (1)");
}

// A minimal cubin: ELF64 for EM_CUDA (190) with one function symbol; flags 0x5a055a as NVRTC writes for sm_90.
// registers >= 0 adds the .nv.info entry EIATTR_REGCOUNT for it; shared >= 0 a .nv.shared.NAME section of that
// size (which, as NVRTC's for sm_90, includes the 1 KiB the system reserves).
std::vector<unsigned char> tinyCubin(const char* kernel, unsigned flags, int registers = -1, long shared = -1)
{
    std::string shstr = std::string("\0.shstrtab\0.strtab\0.symtab\0.nv.info\0.nv.shared.", 47) + kernel + std::string("\0", 1);
    size_t nShstrtab = 1, nStrtab = 11, nSymtab = 19, nInfo = 27, nShared = 36;
    std::string strtab = std::string("\0", 1) + kernel + std::string("\0", 1);
    std::vector<unsigned char> info;
    if (registers >= 0)
    {
        uint32_t payload[2] = {1, (uint32_t)registers};  // symbol 1, register count
        info = {4, 0x2f, 8, 0};
        info.insert(info.end(), (unsigned char*)payload, (unsigned char*)payload + 8);
    }
    size_t shstrOff = sizeof(Elf64_Ehdr), strOff = shstrOff + shstr.size(), infoOff = strOff + strtab.size();
    size_t symOff = (infoOff + info.size() + 7) & ~(size_t)7;
    size_t shOff = symOff + 2 * sizeof(Elf64_Sym);
    int sections = 4 + (registers >= 0 ? 1 : 0) + (shared >= 0 ? 1 : 0);
    std::vector<unsigned char> img(shOff + sections * sizeof(Elf64_Shdr), 0);
    Elf64_Ehdr eh{};
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_ident[EI_OSABI] = 51;
    eh.e_ident[EI_ABIVERSION] = 7;
    eh.e_type = ET_EXEC;
    eh.e_machine = 190;
    eh.e_version = EV_CURRENT;
    eh.e_flags = flags;
    eh.e_ehsize = sizeof(Elf64_Ehdr);
    eh.e_shoff = shOff;
    eh.e_shentsize = sizeof(Elf64_Shdr);
    eh.e_shnum = (Elf64_Half)sections;
    eh.e_shstrndx = 1;
    memcpy(img.data(), &eh, sizeof eh);
    memcpy(img.data() + shstrOff, shstr.data(), shstr.size());
    memcpy(img.data() + strOff, strtab.data(), strtab.size());
    if (!info.empty()) memcpy(img.data() + infoOff, info.data(), info.size());
    Elf64_Sym sym{};
    sym.st_name = 1;
    sym.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
    memcpy(img.data() + symOff + sizeof(Elf64_Sym), &sym, sizeof sym);
    std::vector<Elf64_Shdr> sh(sections);
    sh[1] = Elf64_Shdr{};
    sh[1].sh_name = (Elf64_Word)nShstrtab;
    sh[1].sh_type = SHT_STRTAB;
    sh[1].sh_offset = shstrOff;
    sh[1].sh_size = shstr.size();
    sh[2].sh_name = (Elf64_Word)nStrtab;
    sh[2].sh_type = SHT_STRTAB;
    sh[2].sh_offset = strOff;
    sh[2].sh_size = strtab.size();
    sh[3].sh_name = (Elf64_Word)nSymtab;
    sh[3].sh_type = SHT_SYMTAB;
    sh[3].sh_offset = symOff;
    sh[3].sh_size = 2 * sizeof(Elf64_Sym);
    sh[3].sh_link = 2;
    sh[3].sh_entsize = sizeof(Elf64_Sym);
    int next = 4;
    if (registers >= 0)
    {
        sh[next].sh_name = (Elf64_Word)nInfo;
        sh[next].sh_type = 0x70000000;  // SHT_LOPROC, as NVIDIA's tools mark .nv.info
        sh[next].sh_offset = infoOff;
        sh[next].sh_size = info.size();
        sh[next].sh_link = 3;
        next++;
    }
    if (shared >= 0)
    {
        sh[next].sh_name = (Elf64_Word)nShared;
        sh[next].sh_type = SHT_NOBITS;
        sh[next].sh_size = (Elf64_Xword)shared;
    }
    memcpy(img.data() + shOff, sh.data(), sections * sizeof(Elf64_Shdr));
    return img;
}

void testCubinImages()
{
    freshContext();
    auto img = tinyCubin("selftest_store", 0x5a055a);
    void *m = nullptr, *f = nullptr, *g = nullptr;
    int r = cuModuleLoadData(&m, img.data());
    check(r == 0 && cuModuleGetFunction(&f, m, "selftest_store") == 0 && cuModuleGetFunction(&g, m, "selftest_trap") == 500,
        "an sm_90 ELF cubin loads; its symbol table decides which kernels it has");
    if (m) cuModuleUnload(m);
    auto old = tinyCubin("selftest_store", 0x500550);
    check(cuModuleLoadData(&m, old.data()) == 209, "an sm_80 cubin returns CUDA_ERROR_NO_BINARY_FOR_GPU (209)");
    // 40 KiB of static shared memory in the cubin (plus the 1 KiB reserve): 8 KiB more of dynamic is too much.
    auto shared = tinyCubin("selftest_store", 0x5a055a, -1, 40 * 1024 + 1024);
    m = nullptr;
    cuModuleLoadData(&m, shared.data());
    cuModuleGetFunction(&f, m, "selftest_store");
    uint64_t p = alloc(256);
    int index = 0;
    float value = 1.0f;
    void* params[] = {&p, &index, &value};
    int fits = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 8 * 1024, g_stream, params, nullptr);
    int over = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 8 * 1024 + 1, g_stream, params, nullptr);
    check(fits == 0 && over == 701 && contains(errorString(701), "8193 dynamic + 40960 static bytes of shared memory exceed 49152"),
        "a cubin's static shared memory counts against the 48 KiB of a block at the launch", errorString(701));
}

void testLaunchLimitsAndLookups()
{
    freshContext();
    uint64_t p = alloc(1024);
    void* f = function("selftest_trap");
    void* params[] = {&p};
    auto L = [&](unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void** ps,
                 void** extra) { return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, g_stream, ps, extra); };
    void* extra[] = {nullptr};
    bool ok = L(1, 1, 1, 1025, 1, 1, 0, params, nullptr) == 1 && L(1, 1, 1, 32, 32, 2, 0, params, nullptr) == 1 &&
              L(1, 1, 1, 1, 1, 65, 0, params, nullptr) == 1 && L(0, 1, 1, 32, 1, 1, 0, params, nullptr) == 1 &&
              L(1, 65536, 1, 32, 1, 1, 0, params, nullptr) == 1 && L(1, 1, 1, 32, 1, 1, 48 * 1024 + 1, params, nullptr) == 1 &&
              L(1, 1, 1, 32, 1, 1, 0, nullptr, nullptr) == 1 && L(1, 1, 1, 32, 1, 1, 0, params, extra) == 1 &&
              L(2147483648u, 1, 1, 32, 1, 1, 0, params, nullptr) == 1;
    check(ok, "launch limits: block > 1024 threads, z > 64, grid 0, x >= 2^31 or y > 65535, > 48 KiB shared, null params, extra refused");
    uint64_t host = 0x1000;
    void* bad[] = {&host};
    check(L(1, 1, 1, 32, 1, 1, 0, bad, nullptr) == 1, "a pointer parameter outside every allocation is refused");
    void* g = nullptr;
    check(cuModuleGetFunction(&g, g_module, "no_such_kernel") == 500, "an unknown kernel name returns CUDA_ERROR_NOT_FOUND (500)");
    check(cuModuleGetFunction(&g, g_module, "not_compiled") == 500, "a kernel in the image but not in the simulator returns 500");
    void* m = nullptr;
    const char junk[] = "not an image";
    check(cuModuleLoadData(&m, junk) == 200, "an image that is neither ELF nor PTX returns CUDA_ERROR_INVALID_IMAGE (200)");
    check(cuStreamSynchronize((void*)0x1234) == 400 && cuLaunchKernel((void*)0x99, 1, 1, 1, 1, 1, 1, 0, nullptr, params, nullptr) == 400,
        "unknown stream and function handles return CUDA_ERROR_INVALID_HANDLE (400)");
    freshContext();
}

void testCounters()
{
    freshContext();
    void* h = nullptr;
    cublasCreate_v2(&h);
    cublasSetStream_v2(h, g_stream);
    ddpmsim_reset_counters();
    uint64_t a = alloc(256), b = alloc(256);
    std::vector<float> x(16, 1.0f);
    int index = 0;
    float value = 2.0f;
    float one = 1.0f, zero = 0.0f;
    cuMemcpyHtoDAsync_v2(a, x.data(), 64, g_stream);
    cuMemsetD32Async(b, 0, 64, g_stream);
    cuMemcpyDtoDAsync_v2(b, a, 32, g_stream);
    launch(function("selftest_store"), 1, 32, {&a, &index, &value});
    launch(function("selftest_store"), 1, 32, {&b, &index, &value});
    cublasSgemmStridedBatched(h, 0, 0, 4, 4, 4, &one, a, 4, 0, a, 4, 0, &zero, b, 4, 0, 1);
    cuMemcpyDtoHAsync_v2(x.data(), b, 48, g_stream);
    cuStreamSynchronize(g_stream);
    cuCtxSynchronize();
    DdpmSimCounters c{};
    ddpmsim_get_counters(&c);
    char text[256];
    snprintf(text, sizeof text, "launches %llu syncs %llu htod %llu dtoh %llu dtod %llu memsets %llu gemms %llu allocations %llu",
        (unsigned long long)c.launches, (unsigned long long)c.host_syncs, (unsigned long long)c.bytes_htod,
        (unsigned long long)c.bytes_dtoh, (unsigned long long)c.bytes_dtod, (unsigned long long)c.memsets, (unsigned long long)c.gemms,
        (unsigned long long)c.allocations);
    check(c.launches == 2 && c.host_syncs == 2 && c.bytes_htod == 64 && c.bytes_dtoh == 48 && c.bytes_dtod == 32 && c.memsets == 1 &&
              c.gemms == 1 && c.allocations == 2,
        "the counters count launches, syncs, copied bytes, memsets, GEMMs and allocations", text);
    cublasDestroy_v2(h);
}

void testOutOfMemory()
{
    freshContext();
    size_t free_ = 0, total = 0;
    cuMemGetInfo_v2(&free_, &total);
    uint64_t p = 0;
    int r = cuMemAlloc_v2(&p, total + 1);
    check(r == 2 && total == (16ull << 30), "an allocation above the free memory returns CUDA_ERROR_OUT_OF_MEMORY (2)");
}

void testOptions()
{
    std::string schedule = ddpmsim_get_option("schedule"), checks = ddpmsim_get_option("check");
    bool set = ddpmsim_set_option("schedule", "random:77") == 0 && std::string(ddpmsim_get_option("schedule")) == "random:77" &&
               ddpmsim_set_option("check", "none,race,order") == 0 && std::string(ddpmsim_get_option("check")) == "race,order" &&
               ddpmsim_set_option("check", "-race") == 0 &&
               std::string(ddpmsim_get_option("check")) == "bounds,init,fence,poison,overlap,nccl-async,resources";
    bool refused = ddpmsim_set_option("schedule", "sideways") == 1 && ddpmsim_set_option("speed", "1") == 1 &&
                   ddpmsim_get_option("speed") == nullptr && ddpmsim_set_option("check", "races") == 1;
    std::string text = errorString(1);
    ddpmsim_set_option("schedule", schedule.c_str());
    ddpmsim_set_option("check", checks.c_str());
    check(set && refused && contains(text, "check 'races' is not one of race, bounds"),
        "options: schedule and check lists are set, read back and refused when unknown", text);
}

void testHalfWarpShuffle()
{
    freshContext();
    uint64_t out = alloc(32 * 4);
    launch(function("selftest_half_warp_shuffle"), 1, 32, {&out});
    auto h = download<float>(out, 32);
    bool ok = cuStreamSynchronize(g_stream) == 0;
    for (int i = 0; i < 32; i++) ok = ok && h[i] == (float)(i + (i ^ 2));
    check(ok, "shuffles of two half-warp masks resolve each on its own");
}

// The block order of each schedule, and results that do not depend on it where the kernel is correct.
void testSchedules()
{
    const int blocks = 8;
    auto orderOf = [&](const char* schedule) {
        Option o("schedule", schedule);
        freshContext();
        uint64_t order = alloc(blocks * 4), counter = alloc(4);
        cuMemsetD32Async(counter, 0, 1, g_stream);
        launch(function("selftest_block_order"), blocks, 64, {&order, &counter});
        return download<int>(order, blocks);
    };
    auto ordered = orderOf("ordered"), reverse = orderOf("reverse"), r1 = orderOf("random:1"), r1again = orderOf("random:1"),
         r2 = orderOf("random:2");
    bool orderedOk = true, reverseOk = true, permutation = true;
    std::vector<int> seen(blocks, 0);
    for (int b = 0; b < blocks; b++)
    {
        orderedOk = orderedOk && ordered[b] == b;
        reverseOk = reverseOk && reverse[b] == blocks - 1 - b;
        if (r1[b] >= 0 && r1[b] < blocks) seen[r1[b]]++;
    }
    for (int v : seen) permutation = permutation && v == 1;
    std::string text;
    for (auto* v : {&ordered, &reverse, &r1, &r1again, &r2})
    {
        for (int x : *v) text += std::to_string(x) + " ";
        text += "| ";
    }
    check(orderedOk && reverseOk && permutation && r1 == r1again && r1 != r2 && r1 != ordered,
        "schedules: ordered runs blocks in index order, reverse backwards, random:SEED a permutation the seed repeats", text);

    bool same = true;
    std::vector<float> first;
    for (const char* sch : {"ordered", "reverse", "random:1", "random:2", "random:3"})
    {
        Option o("schedule", sch);
        freshContext();
        uint64_t out = alloc(4 * 8 * 4);
        launch(function("selftest_warp_ring"), 4, 256, {&out});
        auto h = download<float>(out, 32);
        same = same && cuStreamSynchronize(g_stream) == 0;
        for (int b = 0; b < 4; b++)
            for (int w = 0; w < 8; w++) same = same && h[b * 8 + w] == (float)(b * 100 + (w + 1) % 8);
    }
    check(same, "a kernel with its barriers gives the same results under every schedule");
}

void testQueries()
{
    freshContext();
    uint64_t d = alloc(1024);
    void* ev = nullptr;
    cuEventCreate(&ev, 2);
    cuMemsetD32Async(d, 0, 256, g_stream);
    cuEventRecord(ev, g_stream);
    int e1 = cuEventQuery(ev), e2 = cuEventQuery(ev);
    cuMemsetD32Async(d, 0, 256, g_stream);
    int s1 = cuStreamQuery(g_stream), s2 = cuStreamQuery(g_stream);
    int lenient;
    {
        Option o("check", "-nccl-async");
        cuMemsetD32Async(d, 0, 256, g_stream);
        cuEventRecord(ev, g_stream);
        lenient = cuEventQuery(ev);
    }
    cuEventDestroy_v2(ev);
    check(e1 == 600 && e2 == 0 && s1 == 600 && s2 == 0 && lenient == 0,
        "queries of unfinished work say NOT_READY (600) and the work finishes behind them; without nccl-async they finish it first");
}

void testTf32()
{
    freshContext();
    void* h = nullptr;
    cublasCreate_v2(&h);
    cublasSetStream_v2(h, g_stream);
    const int m = 7, n = 5, k = 600;
    std::vector<float> a(m * k), b(k * n);
    for (size_t i = 0; i < a.size(); i++) a[i] = 1.0f + (float)((i * 7919) % 1000) * 1e-4f;
    for (size_t i = 0; i < b.size(); i++) b[i] = 1.0f - (float)((i * 104729) % 1000) * 1e-4f;
    uint64_t da = upload(a), db = upload(b), dc = alloc(m * n * 4);
    float one = 1.0f, zero = 0.0f;
    cublasSetMathMode(h, 3);
    cublasSgemmStridedBatched(h, 0, 0, m, n, k, &one, da, m, 0, db, k, 0, &zero, dc, m, 0, 1);
    auto tf32 = download<float>(dc, m * n);
    cublasSetMathMode(h, 0);
    cublasSgemmStridedBatched(h, 0, 0, m, n, k, &one, da, m, 0, db, k, 0, &zero, dc, m, 0, 1);
    auto fp32 = download<float>(dc, m * n);
    std::vector<float> refTf32(m * n), refFp32(m * n);
    referenceGemm(false, false, m, n, k, 1.0f, a.data(), m, b.data(), k, 0.0f, refTf32.data(), m, true);
    referenceGemm(false, false, m, n, k, 1.0f, a.data(), m, b.data(), k, 0.0f, refFp32.data(), m, false);
    double worst = 0;
    for (int i = 0; i < m * n; i++) worst = std::fmax(worst, std::fabs(tf32[i] - fp32[i]) / std::fabs(fp32[i]));
    check(tf32 == refTf32 && fp32 == refFp32 && worst > 1e-5 && worst < 2e-3,
        "cuBLAS TF32 math rounds A and B to 10-bit mantissas (results differ from float32 by a TF32-sized amount)",
        "largest relative difference " + std::to_string(worst));
    check(ddpmsim_round_tf32(1.0f + 0x1p-11f) == 1.0f + 0x1p-10f && ddpmsim_round_tf32(1.0f + 0x1p-12f) == 1.0f &&
              ddpmsim_round_tf32(-1.0f - 0x1p-11f) == -1.0f - 0x1p-10f,
        "TF32 rounding is to nearest with ties away from zero");
    cublasDestroy_v2(h);
}

// cudaDataType_t and cublasComputeType_t values of the GemmEx tests.
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
constexpr int kCompute16F = 64, kCompute32F = 68, kCompute32FPedantic = 69, kCompute32FFast16BF = 75, kCompute32FFastTf32 = 77;
constexpr int kGemmDefault = -1;

uint64_t uploadBf16(const std::vector<uint16_t>& h)
{
    uint64_t d = alloc(h.size() * 2);
    cuMemcpyHtoDAsync_v2(d, h.data(), h.size() * 2, g_stream);
    return d;
}

void testBf16Rounding()
{
    auto bits = [](float v) { uint32_t u; memcpy(&u, &v, 4); return u; };
    auto from = [](uint32_t u) { float v; memcpy(&v, &u, 4); return v; };
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1; 1 + 3 * 2^-8 halfway between 1 + 2^-7 and
    // 1 + 2^-6: to 1 + 2^-6. Just above half goes up.
    check(ddpmsim_round_bf16(1.0f + 0x1p-8f) == 1.0f && ddpmsim_round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f &&
              ddpmsim_round_bf16(-1.0f - 3 * 0x1p-8f) == -1.0f - 0x1p-6f && ddpmsim_round_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f &&
              ddpmsim_round_bf16(1.0f + 0x1p-8f - 0x1p-20f) == 1.0f,
        "bfloat16 rounding is to nearest with ties to even (__float2bfloat16_rn)");
    float inf = from(0x7f800000u), nan = from(0x7fc00001u), signalling = from(0x7f800001u);
    check(std::isinf(ddpmsim_round_bf16(from(0x7f7fffffu))) && ddpmsim_round_bf16(from(0x7f7f0000u)) == from(0x7f7f0000u) &&
              ddpmsim_round_bf16(inf) == inf && ddpmsim_round_bf16(-inf) == -inf && std::isnan(ddpmsim_round_bf16(nan)) &&
              std::isnan(ddpmsim_round_bf16(signalling)) && ddpmsim_round_bf16(from(0x00000001u)) == 0.0f &&
              bits(ddpmsim_round_bf16(from(0x00018000u))) == 0x00020000u,
        "bfloat16 rounding: past the largest finite value to infinity, NaN stays NaN (signalling ones too), subnormals round like the rest");
}

// A and B given as bfloat16 are multiplied exactly and summed in the float32 order of the SGEMM; a bfloat16 C is the
// float32 result rounded to nearest even. Also: the argument rules of cublasGemmEx's type table.
void testGemmExBf16()
{
    freshContext();
    void* h = nullptr;
    cublasCreate_v2(&h);
    cublasSetStream_v2(h, g_stream);
    const int M = 9, N = 7, K = 300, batch = 2;
    float alpha = 0.75f, beta = -0.5f, one = 1.0f, zero = 0.0f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
        {
            int lda = (ta ? K : M) + 1, ldb = (tb ? N : K) + 2, ldc = M + 1;
            long long sa = (long long)lda * (ta ? M : K) + 3, sb = (long long)ldb * (tb ? K : N) + 1, sc = (long long)ldc * N + 2;
            std::vector<float> A(sa * batch), B(sb * batch), C(sc * batch), Cb(sc * batch);
            for (size_t i = 0; i < A.size(); i++) A[i] = std::sin((float)i * 0.37f) * 3.0f;
            for (size_t i = 0; i < B.size(); i++) B[i] = std::cos((float)i * 0.11f) * 2.0f - 0.3f;
            for (size_t i = 0; i < C.size(); i++) C[i] = (float)((i * 29) % 89) / 7.0f - 5.0f;
            std::vector<uint16_t> A16(A.size()), B16(B.size()), C16(C.size());
            for (size_t i = 0; i < A.size(); i++) A16[i] = ddpmsim_float_to_bf16(A[i]), A[i] = ddpmsim_bf16_to_float(A16[i]);
            for (size_t i = 0; i < B.size(); i++) B16[i] = ddpmsim_float_to_bf16(B[i]), B[i] = ddpmsim_bf16_to_float(B16[i]);
            for (size_t i = 0; i < C.size(); i++) C16[i] = ddpmsim_float_to_bf16(C[i]), Cb[i] = C[i] = ddpmsim_bf16_to_float(C16[i]);
            uint64_t dA = uploadBf16(A16), dB = uploadBf16(B16), dC = upload(C), dC16 = uploadBf16(C16);
            int st = cublasGemmStridedBatchedEx(h, ta, tb, M, N, K, &alpha, dA, kR16BF, lda, sa, dB, kR16BF, ldb, sb, &beta, dC, kR32F, ldc, sc,
                batch, kCompute32F, kGemmDefault);
            int st16 = cublasGemmStridedBatchedEx(h, ta, tb, M, N, K, &alpha, dA, kR16BF, lda, sa, dB, kR16BF, ldb, sb, &beta, dC16, kR16BF, ldc,
                sc, batch, kCompute32FPedantic, kGemmDefault);
            auto got = download<float>(dC, C.size());
            auto got16 = download<uint16_t>(dC16, C.size());
            for (int bi = 0; bi < batch; bi++)
            {
                referenceGemm(ta, tb, M, N, K, alpha, A.data() + bi * sa, lda, B.data() + bi * sb, ldb, beta, C.data() + bi * sc, ldc, false);
                referenceGemm(ta, tb, M, N, K, alpha, A.data() + bi * sa, lda, B.data() + bi * sb, ldb, beta, Cb.data() + bi * sc, ldc, false);
            }
            bool sameBf16 = true;
            for (int bi = 0; bi < batch; bi++)
                for (int j = 0; j < N; j++)
                    for (int i = 0; i < M; i++)
                    {
                        size_t x = (size_t)bi * sc + (size_t)j * ldc + i;
                        sameBf16 &= got16[x] == ddpmsim_float_to_bf16(Cb[x]);
                    }
            for (size_t x = 0; x < C16.size(); x++)  // the padding between matrices is not written
                if ((x % sc) >= (size_t)ldc * N || (x % sc) % ldc >= (size_t)M) sameBf16 &= got16[x] == C16[x];
            std::string op = std::string(ta ? "T" : "N") + (tb ? "T" : "N");
            check(st == 0 && got == C, "cuBLAS: strided batched GemmEx " + op + " with bfloat16 A and B and a float32 C sums the exact products in float32");
            check(st16 == 0 && sameBf16, "cuBLAS: strided batched GemmEx " + op + " with a bfloat16 C rounds the float32 result to nearest even");
        }

    // float32 data under CUBLAS_COMPUTE_32F_FAST_16BF: the inputs rounded to bfloat16, the same sums.
    const int m = 5, n = 4, k = 33;
    std::vector<float> a(m * k), b(k * n);
    for (size_t i = 0; i < a.size(); i++) a[i] = 1.0f + (float)((i * 7919) % 1000) * 1e-4f;
    for (size_t i = 0; i < b.size(); i++) b[i] = 1.0f - (float)((i * 104729) % 1000) * 1e-4f;
    uint64_t da = upload(a), db = upload(b), dc = alloc(m * n * 4);
    int fast = cublasGemmEx(h, 0, 0, m, n, k, &one, da, kR32F, m, db, kR32F, k, &zero, dc, kR32F, m, kCompute32FFast16BF, kGemmDefault);
    auto gotFast = download<float>(dc, m * n);
    std::vector<float> ra(a), rb(b), ref(m * n), refFp32(m * n);
    for (auto& v : ra) v = ddpmsim_round_bf16(v);
    for (auto& v : rb) v = ddpmsim_round_bf16(v);
    referenceGemm(false, false, m, n, k, 1.0f, ra.data(), m, rb.data(), k, 0.0f, ref.data(), m, false);
    referenceGemm(false, false, m, n, k, 1.0f, a.data(), m, b.data(), k, 0.0f, refFp32.data(), m, false);
    double worst = 0;
    for (int i = 0; i < m * n; i++) worst = std::fmax(worst, std::fabs(gotFast[i] - refFp32[i]) / std::fabs(refFp32[i]));
    check(fast == 0 && gotFast == ref && worst > 1e-4 && worst < 2 * 0x1p-8,
        "cuBLAS: GemmEx in CUBLAS_COMPUTE_32F_FAST_16BF rounds float32 A and B to bfloat16 (off float32 by a bfloat16-sized amount)",
        "largest relative difference " + std::to_string(worst));

    // What cuBLAS's type table does not list is CUBLAS_STATUS_NOT_SUPPORTED (15); bad sizes and algorithms are 7.
    uint64_t buf = alloc(1 << 16);
    auto ex = [&](int at, int bt, int ct, int compute, int algo, int lda) {
        return cublasGemmEx(h, 0, 0, 4, 4, 4, &one, buf, at, lda, buf, bt, 4, &zero, buf, ct, 4, compute, algo);
    };
    check(ex(kR16BF, kR32F, kR32F, kCompute32F, kGemmDefault, 4) == 15, "cuBLAS GemmEx: bfloat16 A with float32 B is NOT_SUPPORTED (15)");
    check(ex(kR16BF, kR16BF, kR32F, kCompute16F, kGemmDefault, 4) == 15, "cuBLAS GemmEx: bfloat16 inputs with CUBLAS_COMPUTE_16F are NOT_SUPPORTED");
    check(ex(kR16BF, kR16BF, kR32F, kCompute32FFastTf32, kGemmDefault, 4) == 15,
        "cuBLAS GemmEx: bfloat16 inputs with CUBLAS_COMPUTE_32F_FAST_TF32 are NOT_SUPPORTED");
    check(ex(kR16BF, kR16BF, kR16F, kCompute32F, kGemmDefault, 4) == 15, "cuBLAS GemmEx: bfloat16 inputs with a half C are NOT_SUPPORTED");
    check(ex(kR32F, kR32F, kR16BF, kCompute32F, kGemmDefault, 4) == 15, "cuBLAS GemmEx: float32 inputs with a bfloat16 C are NOT_SUPPORTED");
    check(ex(kR16BF, kR16BF, kR32F, kCompute32F, 50, 4) == 7, "cuBLAS GemmEx: an unknown algorithm is INVALID_VALUE (7)");
    check(ex(kR16BF, kR16BF, kR32F, kCompute32F, kGemmDefault, 3) == 7, "cuBLAS GemmEx: lda < m is INVALID_VALUE (7)");
    cublasDestroy_v2(h);
    check(ex(kR16BF, kR16BF, kR32F, kCompute32F, kGemmDefault, 4) == 1, "cuBLAS GemmEx: a destroyed handle is NOT_INITIALIZED (1)");
}

// ---- planted bugs ----------------------------------------------------------------------------------------

std::vector<float> ramp(size_t n, float scale)
{
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)((i * 37) % 101) * scale - 1.0f;
    return v;
}

void plantedMissingBarrier()
{
    const int blocks = 4, threads = 256;
    auto x = ramp(blocks * threads, 0.25f);
    std::vector<float> expected(2 * blocks);
    for (int b = 0; b < blocks; b++)
    {
        double s = 0, q = 0;
        for (int t = 0; t < threads; t++) s += x[b * threads + t], q += (double)x[b * threads + t] * x[b * threads + t];
        expected[2 * b] = (float)s, expected[2 * b + 1] = (float)q;
    }
    auto run = [&](const char* schedule, const char* checks) {
        Option o1("schedule", schedule), o2("check", checks);
        freshContext();
        uint64_t dx = upload(x), sums = alloc(2 * blocks * 4);
        auto r = runKernel("planted_missing_barrier", blocks, threads, {&dx, &sums});
        return std::make_pair(r, r.first == 0 ? download<float>(sums, 2 * blocks) : std::vector<float>());
    };
    auto [old, oldSums] = run("ordered", "none");
    check(old.first == 0 && oldSums == expected, "planted missing barrier (block_sum without its trailing __syncthreads): passes with "
                                                 "warps in lock step and no race detector");
    auto [race, unused] = run("ordered", "none,race");
    check(race.first == 719 && contains(race.second, "race detector: kernel planted_missing_barrier") && contains(race.second, "scratch+"),
        "planted missing barrier: the race detector names the kernel, both threads and the shared variable", race.second);
    int wrong = 0;
    for (int seed = 1; seed <= 8; seed++)
    {
        std::string sch = "random:" + std::to_string(seed);
        auto [r, sums] = run(sch.c_str(), "none");
        if (r.first == 0 && sums != expected) wrong++;
    }
    check(wrong > 0, "planted missing barrier: random schedules let warps run ahead and give wrong sums",
        std::to_string(wrong) + " of 8 seeds wrong");
}

void plantedNeighbourRead()
{
    const int threads = 256;
    auto x = ramp(threads, 0.5f);
    std::vector<float> expected(threads);
    for (int t = 0; t < threads; t++) expected[t] = x[t] + (t > 0 ? x[t - 1] : 0.0f);
    auto run = [&](const char* schedule, const char* checks) {
        Option o1("schedule", schedule), o2("check", checks);
        freshContext();
        uint64_t dx = upload(x), dy = alloc(threads * 4);
        auto r = runKernel("planted_neighbour_read", 1, threads, {&dx, &dy});
        return std::make_pair(r, r.first == 0 ? download<float>(dy, threads) : std::vector<float>());
    };
    auto [old, y] = run("ordered", "none");
    check(old.first == 0 && y == expected, "planted neighbour read (thread t reads tile[t - 1] with no barrier): passes when threads run "
                                           "in index order without the race detector");
    auto [rev, yr] = run("reverse", "none");
    check(rev.first == 0 && yr != expected, "planted neighbour read: the reverse schedule gives wrong values");
    auto [race, unused] = run("random:5", "none,race");
    check(race.first == 719 && contains(race.second, "race detector: kernel planted_neighbour_read") && contains(race.second, "tile+") &&
              contains(race.second, "hazard in shared memory"),
        "planted neighbour read: the race detector names it", race.second);
}

void plantedBlockOverlap()
{
    const int blocks = 4, threads = 64, n = blocks * threads;
    auto x = ramp(n, 1.0f);
    // In index order the later block's write wins.
    std::vector<float> expected(blocks * (threads - 1) + 1);
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < threads; t++) expected[b * (threads - 1) + t] = x[b * threads + t];
    auto run = [&](const char* schedule, const char* checks) {
        Option o1("schedule", schedule), o2("check", checks);
        freshContext();
        uint64_t dx = upload(x), dy = alloc(expected.size() * 4);
        auto r = runKernel("planted_block_overlap", blocks, threads, {&dx, &dy});
        return std::make_pair(r, r.first == 0 ? download<float>(dy, expected.size()) : std::vector<float>());
    };
    auto [old, y] = run("ordered", "none");
    check(old.first == 0 && y == expected, "planted block overlap (neighbouring blocks write one element each): passes with blocks in order");
    auto [race, u1] = run("random:3", "none,race");
    check(race.first == 719 && contains(race.second, "race detector: kernel planted_block_overlap") &&
              contains(race.second, "a write-write hazard in global memory") && contains(race.second, "which block ("),
        "planted block overlap: the race detector names both blocks and the allocation", race.second);
    auto [order, u2] = run("ordered", "none,order");
    check(order.first == 719 && contains(order.second, "order check: kernel planted_block_overlap wrote different results"),
        "planted block overlap: the order check names the kernel", order.second);
}

void plantedAtomicSum()
{
    const int n = 64 * 1024;
    std::vector<float> x(n);
    for (int i = 0; i < n; i++) x[i] = 1.0f + (float)((i * 7919) % 1000) * 1e-3f;
    auto run = [&](const char* schedule, const char* checks) {
        Option o1("schedule", schedule), o2("check", checks);
        freshContext();
        uint64_t dx = upload(x), total = alloc(4);
        int count = n;
        cuMemsetD32Async(total, 0, 1, g_stream);
        return runKernel("planted_atomic_sum", 32, 256, {&dx, &count, &total});
    };
    auto old = run("ordered", "none");
    auto race = run("random:9", "none,race");
    check(old.first == 0 && race.first == 0, "planted atomic float sum: passes without the order check (atomics are not a race)",
        old.second + race.second);
    auto order = run("random:9", "none,race,order");
    check(order.first == 719 && contains(order.second, "order check: kernel planted_atomic_sum"),
        "planted atomic float sum: the order check shows the result depends on the order blocks run in", order.second);
}

void plantedOffByOneRead()
{
    const int n = 64 * 1024;  // 256 KiB: the allocation's end is the fence page
    auto x = ramp(n, 1.0f);
    auto run = [&](const char* checks) {
        Option o("check", checks);
        freshContext();
        uint64_t dx = upload(x), dy = alloc(n * 4);
        int count = n;
        return runKernel("planted_off_by_one_read", 64, 256, {&dx, &dy, &count});
    };
    auto old = run("none");
    check(old.first == 0, "planted off-by-one read (x[n]): passes with guard zones only", old.second);
    auto fence = run("none,fence");
    check(fence.first == 700 && contains(fence.second, "kernel planted_off_by_one_read: thread (") &&
              contains(fence.second, "0 bytes past the end of allocation"),
        "planted off-by-one read: the fence page faults, reported as CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel and thread", fence.second);
    auto bounds = run("none,bounds");
    check(bounds.first == 700 && contains(bounds.second, "kernel planted_off_by_one_read: thread (") &&
              contains(bounds.second, "reads 4 bytes at") && contains(bounds.second, "0 bytes past the end of allocation"),
        "planted off-by-one read: the bounds check names the kernel, thread and allocation", bounds.second);
}

void plantedUseAfterFree()
{
    Option o("check", "none,bounds");
    freshContext();
    uint64_t p = alloc(4096);
    cuMemFree_v2(p);
    uint64_t other = alloc(64);
    (void)other;
    int index = 3;
    float value = 1.0f;
    // The pointer check of cuLaunchKernel refuses a freed base; a stale pointer into the middle of a live one is
    // what the bounds check sees: the kernel stores through p via an index past a live allocation instead.
    uint64_t live = alloc(256);
    int far = (int)((p - live) / 4) + index;
    auto r = runKernel("selftest_store", 1, 32, {&live, &far, &value});
    check(r.first == 700 && contains(r.second, "which was freed"), "a kernel's access to freed memory is named as such", r.second);
}

void plantedUnwrittenRead()
{
    const int n = 4096;
    auto x = ramp(n, 1.0f);
    auto run = [&](const char* checks) {
        Option o("check", checks);
        freshContext();
        uint64_t dx = upload(x), floor = alloc(n * 4), dy = alloc(n * 4);
        int count = n;
        auto r = runKernel("planted_unwritten_max", 16, 256, {&dx, &floor, &dy, &count});
        return std::make_pair(r, r.first == 0 ? download<float>(dy, n) : std::vector<float>());
    };
    auto [poisoned, y] = run("-init");
    check(poisoned.first == 0 && y == x, "planted read of an unwritten buffer through fmaxf: NaN poison does not show it");
    auto [init, u] = run("default");
    check(init.first == 719 && contains(init.second, "init check: kernel planted_unwritten_max") &&
              contains(init.second, "which nothing has written"),
        "planted read of an unwritten buffer: the init check names the kernel, thread and allocation", init.second);
}

void plantedLargeUnpoisoned()
{
    // Without the poison check an allocation past 256 MiB reads as zero; with it as NaN whatever its size (and the init check names the read).
    const size_t bytes = 300u << 20, tail = 1u << 20;
    auto run = [&](const char* checks) {
        Option o("check", checks);
        freshContext();
        uint64_t big = alloc(bytes), total = alloc(64 * 4);
        uint64_t end = big + bytes - tail * 4;
        int count = (int)tail;
        auto r = runKernel("planted_sum", 64, 256, {&end, &count, &total});
        return std::make_pair(r, r.first == 0 ? download<float>(total, 64) : std::vector<float>());
    };
    auto [old, zeros] = run("none");
    check(old.first == 0 && zeros[0] == 0.0f && zeros[63] == 0.0f, "planted read of an unwritten 300 MiB buffer: reads zero without poisoning");
    auto [poison, nan] = run("none,poison");
    check(poison.first == 0 && std::isnan(nan[0]) && std::isnan(nan[63]), "planted read of an unwritten 300 MiB buffer: NaN with the poison");
    auto [init, u] = run("default");
    check(init.first == 719 && contains(init.second, "init check: kernel planted_sum"), "planted read of an unwritten 300 MiB buffer: the "
                                                                                      "init check names it", init.second);
}

void plantedOverlappingCopy()
{
    auto run = [&](const char* checks) {
        Option o("check", checks);
        freshContext();
        uint64_t d = upload(ramp(1024, 1.0f));
        int r = cuMemcpyDtoDAsync_v2(d + 64, d, 2048, g_stream);
        return std::make_pair(r, errorString(1));
    };
    auto [old, t1] = run("none");
    auto [now, text] = run("default");
    check(old == 0 && now == 1 && contains(text, "cuMemcpyDtoDAsync: the 2048 bytes from") && contains(text, "overlap (by 1984 bytes)"),
        "planted overlapping device-to-device copy: refused with CUDA_ERROR_INVALID_VALUE (without the check it ran as memmove)", text);
}

// A cubin that says planted_many_registers uses 128 registers, as NVRTC's does (tests/Ddpm.Tests compiles the real one).
void plantedTooManyRegisters()
{
    auto run = [&](const char* checks, unsigned threads) {
        Option o("check", checks);
        freshContext();
        auto img = tinyCubin("planted_many_registers", 0x5a055a, 128, -1);
        void *m = nullptr, *f = nullptr;
        cuModuleLoadData(&m, img.data());
        cuModuleGetFunction(&f, m, "planted_many_registers");
        uint64_t x = upload(ramp(96 * 1024, 0.01f)), y = alloc(1024 * 4);
        int n = 1024;
        void* params[] = {&x, &y, &n};
        int r = cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, 0, g_stream, params, nullptr);
        int s = r == 0 ? cuStreamSynchronize(g_stream) : r;
        return std::make_pair(s, s == 0 ? std::string() : errorString(s));
    };
    auto old = run("-resources", 1024);
    auto fits = run("default", 512);
    auto big = run("default", 1024);
    check(old.first == 0 && fits.first == 0 && big.first == 701 &&
              contains(big.second, "cuLaunchKernel(planted_many_registers): a block of 1024 threads needs 131072 registers (128 per thread") &&
              contains(big.second, "enough for 512 threads"),
        "planted too-large block (1024 threads x 128 registers): CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (701), 512 threads fit", big.second);
}
}  // namespace

int main()
{
    setvbuf(stdout, nullptr, _IOLBF, 0);
    printf("%s self-test\n", ddpmsim_version());
    testNotInitialized();
    cuInit(0);
    void* ctx = nullptr;
    cuDevicePrimaryCtxRetain(&ctx, 0);
    testDevice();
    testOptions();
    testDivergentBarrier();
    testPartialWarpShuffle();
    testHalfWarpShuffle();
    testSchedules();
    testBlockSum();
    testSharedPerBlock();
    testInitCheckShared();
    testParams();
    testTrap();
    testGuardZone();
    testNanFillAndStaleCopies();
    testStreamWaitEvent();
    testQueries();
    testCublas();
    testTf32();
    testBf16Rounding();
    testGemmExBf16();
    testLaunchLimitsAndLookups();
    testCubinImages();
    testCounters();
    testOutOfMemory();
    plantedMissingBarrier();
    plantedNeighbourRead();
    plantedBlockOverlap();
    plantedAtomicSum();
    plantedOffByOneRead();
    plantedUseAfterFree();
    plantedUnwrittenRead();
    plantedLargeUnpoisoned();
    plantedOverlappingCopy();
    plantedTooManyRegisters();
    printf("%d failed\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
