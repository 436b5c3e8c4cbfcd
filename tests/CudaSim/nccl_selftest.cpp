// Self-test of the simulated NCCL, run by build.sh: two forked ranks, each with its own simulated device, join
// one communicator (the parent makes the unique id before forking, standing in for the MPI broadcast) and
// check the all-reduce against sums computed here, its stream order, and the result codes for bad arguments.
// Each check prints PASS or FAIL per rank; the exit status is non-zero when any check failed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "sim_api.h"

extern "C" {
int cuInit(unsigned);
int cuDevicePrimaryCtxRetain(void**, int);
int cuCtxSetCurrent(void*);
int cuStreamCreate(void**, unsigned);
int cuStreamSynchronize(void*);
int cuMemAlloc_v2(uint64_t*, size_t);
int cuMemcpyHtoDAsync_v2(uint64_t, const void*, size_t, void*);
int cuMemcpyDtoHAsync_v2(void*, uint64_t, size_t, void*);
int cuMemsetD32Async(uint64_t, unsigned, size_t, void*);
int cuGetErrorString(int, const char**);
struct UniqueId { char internal[128]; };
int ncclGetVersion(int*);
int ncclGetUniqueId(UniqueId*);
int ncclCommInitRank(void**, int, UniqueId, int);
int ncclAllReduce(const void*, void*, size_t, int, int, void*, void*);
int ncclCommDestroy(void*);
const char* ncclGetErrorString(int);
}

namespace
{
constexpr int kFloat32 = 7, kInt32 = 2, kSum = 0, kProd = 1, kAvg = 4, kInvalidArgument = 4;
int g_failures = 0;
int g_rank = 0;

void check(bool ok, const std::string& what, const std::string& detail = "")
{
    printf("%s nccl rank %d: %s%s%s\n", ok ? "PASS" : "FAIL", g_rank, what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    if (!ok) g_failures++;
}

// Rank r's value of element i: distinct per rank, not exactly representable sums, so the order matters.
float value(int r, size_t i) { return (float)std::sin(0.37 * (double)i + 1.3 * r) * (r + 1.1f); }

int runRank(int rank, int nranks, UniqueId id)
{
    g_rank = rank;
    void* ctx = nullptr;
    void* stream = nullptr;
    cuInit(0);
    cuDevicePrimaryCtxRetain(&ctx, 0);
    cuCtxSetCurrent(ctx);
    cuStreamCreate(&stream, 1);
    void* comm = nullptr;
    int st = ncclCommInitRank(&comm, nranks, id, rank);
    check(st == 0 && comm != nullptr, "ncclCommInitRank", ncclGetErrorString(st));
    if (st != 0) return 1;

    // More than one exchange round (1 << 20 floats per round), in place.
    const size_t n = (1u << 20) + 1000;
    std::vector<float> host(n), out(n);
    for (size_t i = 0; i < n; i++) host[i] = value(rank, i);
    uint64_t buf = 0;
    cuMemAlloc_v2(&buf, n * sizeof(float));
    cuMemcpyHtoDAsync_v2(buf, host.data(), n * sizeof(float), stream);
    st = ncclAllReduce((void*)buf, (void*)buf, n, kFloat32, kSum, comm, stream);
    cuMemcpyDtoHAsync_v2(out.data(), buf, n * sizeof(float), stream);
    cuStreamSynchronize(stream);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
    {
        float expect = value(0, i);
        for (int r = 1; r < nranks; r++) expect += value(r, i);  // rank order, float: bit-identical
        if (std::memcmp(&expect, &out[i], sizeof(float)) != 0) bad++;
    }
    check(st == 0 && bad == 0, "in-place sum over two rounds equals the rank-order float sum",
        std::to_string(bad) + " of " + std::to_string(n) + " differ, rc " + std::to_string(st));

    // Stream order: a memset queued before the all-reduce is what the all-reduce reads.
    float two = 2.0f;
    unsigned bits;
    std::memcpy(&bits, &two, sizeof bits);
    cuMemsetD32Async(buf, bits, 16, stream);
    st = ncclAllReduce((void*)buf, (void*)buf, 16, kFloat32, kAvg, comm, stream);
    cuMemcpyDtoHAsync_v2(out.data(), buf, 16 * sizeof(float), stream);
    cuStreamSynchronize(stream);
    bool allTwo = true;
    for (int i = 0; i < 16; i++) allTwo = allTwo && out[i] == 2.0f;
    check(st == 0 && allTwo, "ncclAvg of work queued before it on the stream", "out[0] " + std::to_string(out[0]));

    // Bad arguments: result codes, and nothing queued (the ranks stay in step).
    check(ncclAllReduce((void*)buf, (void*)buf, 4, kFloat32, kSum, nullptr, stream) == kInvalidArgument, "a null comm is ncclInvalidArgument");
    check(ncclAllReduce((void*)buf, (void*)buf, 4, kInt32, kSum, comm, stream) == kInvalidArgument, "ncclInt32 is ncclInvalidArgument");
    check(ncclAllReduce((void*)buf, (void*)buf, 4, kFloat32, kProd, comm, stream) == kInvalidArgument, "ncclProd is ncclInvalidArgument");
    check(ncclAllReduce((void*)buf, (void*)buf, n + 1, kFloat32, kSum, comm, stream) == kInvalidArgument,
        "a count past the allocation is ncclInvalidArgument");
    check(ncclAllReduce((void*)buf, (void*)buf, (size_t)-1, kFloat32, kSum, comm, stream) == kInvalidArgument,
        "a negative count (as size_t) is ncclInvalidArgument");

    // Planted missing wait: another stream reads the receive buffer without waiting for the all-reduce's
    // completion point. Without the nccl-async check it reads the sum; with it the copy is reported by name.
    void* other = nullptr;
    cuStreamCreate(&other, 1);
    float one = 1.0f;
    std::memcpy(&bits, &one, sizeof bits);
    auto missingWait = [&](const char* checks) {
        ddpmsim_set_option("check", checks);
        cuMemsetD32Async(buf, bits, 16, stream);
        cuStreamSynchronize(stream);
        int rc = ncclAllReduce((void*)buf, (void*)buf, 16, kFloat32, kSum, comm, stream);
        out[0] = -1.0f;
        cuMemcpyDtoHAsync_v2(out.data(), buf, 16 * sizeof(float), other);
        int s = cuStreamSynchronize(other);
        const char* text = nullptr;
        cuGetErrorString(s, &text);
        return std::make_pair(rc == 0 ? s : -rc, std::string(text ? text : ""));
    };
    auto [old, oldText] = missingWait("-nccl-async");
    check(old == 0 && out[0] == (float)nranks, "planted missing wait: without nccl-async the other stream reads the sum at once", oldText);
    cuStreamSynchronize(stream);
    auto [now, text] = missingWait("default");
    check(now == 719 && text.find("cuMemcpyDtoHAsync (64 bytes from") != std::string::npos &&
              text.find("before ncclAllReduce of 16 floats completed in stream order") != std::string::npos,
        "planted missing wait: with nccl-async the read before the completion point is reported", text);
    check(ncclCommDestroy(comm) == 0, "ncclCommDestroy");
    return g_failures == 0 ? 0 : 1;
}
}  // namespace

int main()
{
    setvbuf(stdout, nullptr, _IOLBF, 0);
    int version = 0;
    ncclGetVersion(&version);
    printf("simulated NCCL %d self-test (2 ranks)\n", version);
    UniqueId id;
    if (ncclGetUniqueId(&id) != 0)
    {
        printf("FAIL ncclGetUniqueId\n");
        return 1;
    }
    const int nranks = 2;
    pid_t pids[nranks];
    for (int r = 0; r < nranks; r++)
    {
        pids[r] = fork();
        if (pids[r] == 0) _exit(runRank(r, nranks, id));
    }
    int failed = 0;
    for (int r = 0; r < nranks; r++)
    {
        int status = 0;
        waitpid(pids[r], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    printf("%d of %d ranks failed\n", failed, nranks);
    // An older release (NCCL_VERSION encoding of 2.9) has no ncclAvg: the binding then sums and scales.
    setenv("DDPM_NCCL_SIM_VERSION", "2.9.9", 1);
    ncclGetVersion(&version);
    void* ctx = nullptr;
    void* stream = nullptr;
    void* comm = nullptr;
    uint64_t buf = 0;
    cuInit(0);
    cuDevicePrimaryCtxRetain(&ctx, 0);
    cuCtxSetCurrent(ctx);
    cuStreamCreate(&stream, 1);
    cuMemAlloc_v2(&buf, 64);
    int avg = -1, sum = -1;
    if (ncclGetUniqueId(&id) == 0 && ncclCommInitRank(&comm, 1, id, 0) == 0)
    {
        avg = ncclAllReduce((void*)buf, (void*)buf, 16, kFloat32, kAvg, comm, stream);
        sum = ncclAllReduce((void*)buf, (void*)buf, 16, kFloat32, kSum, comm, stream);
        ncclCommDestroy(comm);
    }
    bool old = version == 20909 && avg == kInvalidArgument && sum == 0;
    printf("%s nccl: DDPM_NCCL_SIM_VERSION=2.9.9 reports %d, refuses ncclAvg (%d) and sums (%d)\n", old ? "PASS" : "FAIL", version, avg, sum);
    return failed == 0 && old ? 0 : 1;
}
