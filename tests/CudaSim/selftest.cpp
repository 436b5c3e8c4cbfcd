// Self-test of the CUDA simulator, run by build.sh: each check prints PASS or FAIL with what it saw; the
// exit status is the number of failures. Uses the built libcuda.so.1 / libcublas.so.12 through their C ABI.
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
int cuModuleLoadData(void**, const void*);
int cuModuleUnload(void*);
int cuModuleGetFunction(void**, void*, const char*);
int cuLaunchKernel(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);
int cuGetErrorName(int, const char**);
int cuGetErrorString(int, const char**);
int cublasCreate_v2(void**);
int cublasDestroy_v2(void*);
int cublasSetStream_v2(void*, void*);
int cublasSgemmStridedBatched(void*, int, int, int, int, int, const float*, uint64_t, int, long long, uint64_t, int, long long,
    const float*, uint64_t, int, long long, int);
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
const char kPtx[] =
    "//\n// Generated for the simulator's self-test\n//\n\n.version 7.8\n.target sm_90\n.address_size 64\n\n"
    ".visible .entry selftest_divergent_barrier(\n.param .u64 p0\n)\n{\nret;\n}\n"
    ".visible .entry selftest_full_mask_shuffle(\n.param .u64 p0\n)\n{\nret;\n}\n"
    ".visible .entry selftest_block_sum(\n)\n{\nret;\n}\n"
    ".visible .entry selftest_shared_per_block(\n)\n{\nret;\n}\n"
    ".visible .entry selftest_store(\n)\n{\nret;\n}\n"
    ".visible .entry selftest_trap(\n)\n{\nret;\n}\n"
    ".visible .entry selftest_params(\n)\n{\nret;\n}\n"
    ".visible .entry not_compiled(\n)\n{\nret;\n}\n";

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
    cuModuleLoadData(&g_module, kPtx);
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
    check(r == 0 && s == 719 && text.find("kernel selftest_divergent_barrier: __syncthreads reached by 224 of 256 threads of block (0,0,0)") !=
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

void naiveGemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
    float* c, int ldc)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
        {
            double s = 0;
            for (int l = 0; l < k; l++)
            {
                double av = ta ? a[l + (size_t)i * lda] : a[i + (size_t)l * lda];
                double bv = tb ? b[j + (size_t)l * ldb] : b[l + (size_t)j * ldb];
                s += av * bv;
            }
            double v = (double)alpha * s;
            if (beta != 0.0f) v += (double)beta * c[i + (size_t)j * ldc];
            c[i + (size_t)j * ldc] = (float)v;
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
    naiveGemm(false, false, m, n, k, 1.0f, a.data(), m, b.data(), k, 0.0f, ref.data(), m);
    check(c == ref, "cuBLAS: beta == 0 ignores NaN in C");

    // Strided batched, every transpose combination, padded leading dimensions, beta != 0.
    const int M = 9, N = 6, K = 11, batch = 3;
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
            for (int bi = 0; bi < batch; bi++)
                naiveGemm(ta, tb, M, N, K, alpha, A.data() + bi * sa, lda, B.data() + bi * sb, ldb, beta, C.data() + bi * sc, ldc);
            double maxDiff = 0;
            for (size_t i = 0; i < C.size(); i++) maxDiff = std::fmax(maxDiff, std::fabs((double)got[i] - C[i]));
            check(st == 0 && got == C, std::string("cuBLAS: strided batched sgemm ") + (ta ? "T" : "N") + (tb ? "T" : "N") +
                                           " matches a naive double reference (padding between batches untouched)",
                "max |diff| " + std::to_string(maxDiff));
        }
    cublasDestroy_v2(h);
    check(cublasSgemmStridedBatched(h, 0, 0, 4, 4, 4, &one, buf, 4, 16, buf, 4, 16, &zero, buf, 4, 16, 1) == 1,
        "cuBLAS: a destroyed handle returns CUBLAS_STATUS_NOT_INITIALIZED (1)");
}

// A minimal cubin: ELF64 for EM_CUDA (190) with one function symbol; flags 0x5a055a as NVRTC writes for sm_90.
std::vector<unsigned char> tinyCubin(const char* kernel, unsigned flags)
{
    std::string strtab = std::string("\0", 1) + kernel + std::string("\0", 1);
    size_t strOff = sizeof(Elf64_Ehdr), symOff = (strOff + strtab.size() + 7) & ~(size_t)7;
    size_t shOff = symOff + 2 * sizeof(Elf64_Sym);
    std::vector<unsigned char> img(shOff + 3 * sizeof(Elf64_Shdr), 0);
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
    eh.e_shnum = 3;
    memcpy(img.data(), &eh, sizeof eh);
    memcpy(img.data() + strOff, strtab.data(), strtab.size());
    Elf64_Sym sym{};
    sym.st_name = 1;
    sym.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
    memcpy(img.data() + symOff + sizeof(Elf64_Sym), &sym, sizeof sym);
    Elf64_Shdr sh[3]{};
    sh[1].sh_type = SHT_STRTAB;
    sh[1].sh_offset = strOff;
    sh[1].sh_size = strtab.size();
    sh[2].sh_type = SHT_SYMTAB;
    sh[2].sh_offset = symOff;
    sh[2].sh_size = 2 * sizeof(Elf64_Sym);
    sh[2].sh_link = 1;
    sh[2].sh_entsize = sizeof(Elf64_Sym);
    memcpy(img.data() + shOff, sh, sizeof sh);
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
    testDivergentBarrier();
    testPartialWarpShuffle();
    testBlockSum();
    testSharedPerBlock();
    testParams();
    testTrap();
    testGuardZone();
    testNanFillAndStaleCopies();
    testStreamWaitEvent();
    testCublas();
    testLaunchLimitsAndLookups();
    testCubinImages();
    testCounters();
    testOutOfMemory();
    printf("%d failed\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
