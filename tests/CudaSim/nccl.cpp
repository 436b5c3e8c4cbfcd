// Simulated NCCL (libnccl.so.2) for the CUDA simulator: a test harness, never a product library. Each rank is
// its own process with its own simulated device (device memory is host memory there), so ranks exchange data
// through a POSIX shared-memory segment named by the unique id. Only what the Ddpm binding calls:
// ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclAllReduce (float32, sum or average), ncclCommDestroy,
// ncclCommAbort, ncclGetErrorString, ncclGetLastError.
//
// Stream order: ncclAllReduce queues the exchange on the stream (behind the copies and kernels already queued
// there) and then synchronises that stream, so the ranks exchange at the call, after the work before it. A GPU
// runs queued work without the host; the simulator runs it only when the host synchronises, and an exchange
// left queued would wait for the next synchronisation of each rank, which need not come in the same order on
// every rank (rank 0 writes files, the others do not). With the nccl-async check (the default) the result is
// then held back: the receive buffer holds NaN, marked as the pending result of the call, until a second piece
// of work queued on the stream (the collective's completion point) writes it; so work that reads the buffer
// without waiting for that point in stream order (an event, a stream wait) is reported by name, as a GPU would
// give it stale or partial data.
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sim_api.h"

extern "C" int cuStreamSynchronize(void* stream);

#define API extern "C" __attribute__((visibility("default")))

namespace
{
// ncclResult_t (nccl.h)
constexpr int kSuccess = 0, kUnhandledCudaError = 1, kSystemError = 2, kInternalError = 3, kInvalidArgument = 4,
              kInvalidUsage = 5, kRemoteError = 6, kInProgress = 7;
// ncclDataType_t ncclFloat32, ncclRedOp_t ncclSum / ncclAvg
constexpr int kFloat32 = 7, kSum = 0, kAvg = 4;

constexpr size_t kIdBytes = 128;                // NCCL_UNIQUE_ID_BYTES
constexpr char kIdMagic[] = "ddpmsim-nccl-id";  // first 16 bytes of a unique id; the segment name follows
constexpr size_t kChunkFloats = 1u << 20;       // per rank and round: larger buffers go in several rounds
constexpr size_t kHeaderBytes = 4096;
constexpr uint32_t kCommMagic = 0x6e63636cu;

struct Header
{
    std::atomic<int> nranks;         // set by the first rank that opens the segment
    std::atomic<uint32_t> arrived;   // ranks in the current barrier round
    std::atomic<uint32_t> generation;  // barrier rounds completed (futex word)
    std::atomic<int> failed;         // a rank gave up waiting: the others stop too
};
static_assert(sizeof(Header) <= kHeaderBytes, "header fits its page");

struct Comm
{
    uint32_t magic = kCommMagic;
    int rank = 0;
    int nranks = 0;
    Header* header = nullptr;
    float* slots = nullptr;  // nranks slots of kChunkFloats floats
    size_t bytes = 0;
    int error = kSuccess;    // a failed reduction leaves the communicator unusable
};

thread_local std::string t_lastError;

int fail(int code, const std::string& detail)
{
    t_lastError = detail;
    return code;
}

bool valid(const Comm* c) { return c != nullptr && c->magic == kCommMagic; }

// NCCL_VERSION(X, Y, Z) of nccl.h: the old encoding up to 2.8, the wider one from 2.9.
int versionCode()
{
    int x = 2, y = 21, z = 5;
    if (const char* v = getenv("DDPM_NCCL_SIM_VERSION")) sscanf(v, "%d.%d.%d", &x, &y, &z);
    return (x <= 2 && y <= 8) ? x * 1000 + y * 100 + z : x * 10000 + y * 100 + z;
}

double timeoutSeconds()
{
    const char* v = getenv("DDPM_NCCL_SIM_TIMEOUT_S");
    double t = v ? atof(v) : 0;
    return t > 0 ? t : 300;
}

double nowSeconds()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// A generation-counted barrier of all ranks in the segment: the last rank to arrive resets the count and
// advances the generation; the others sleep on the generation word (a process-shared futex).
int barrier(Comm* c, const char* what)
{
    Header* h = c->header;
    uint32_t gen = h->generation.load(std::memory_order_acquire);
    if (h->arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == (uint32_t)c->nranks)
    {
        h->arrived.store(0, std::memory_order_relaxed);
        h->generation.fetch_add(1, std::memory_order_release);
        syscall(SYS_futex, &h->generation, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
        return kSuccess;
    }
    double deadline = nowSeconds() + timeoutSeconds();
    while (h->generation.load(std::memory_order_acquire) == gen)
    {
        if (h->failed.load(std::memory_order_acquire))
            return fail(kRemoteError, std::string(what) + ": another rank failed");
        if (nowSeconds() > deadline)
        {
            h->failed.store(1, std::memory_order_release);
            syscall(SYS_futex, &h->generation, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
            return fail(kSystemError, std::string(what) + ": the other ranks did not arrive within " +
                                          std::to_string((int)timeoutSeconds()) + " s (DDPM_NCCL_SIM_TIMEOUT_S)");
        }
        timespec wait{0, 100 * 1000 * 1000};
        syscall(SYS_futex, &h->generation, FUTEX_WAIT, gen, &wait, nullptr, 0);
    }
    return kSuccess;
}

struct Reduction
{
    Comm* comm;
    const float* send;
    float* recv;
    size_t count;
    bool average;
    std::vector<float> result;  // with nccl-async: the sums, until the completion point writes them to recv
    std::string what;
};
using ReductionRef = std::shared_ptr<Reduction>;

// Every rank copies its chunk in, waits, reduces the slots in rank order (so every rank computes bit-identical
// results), waits again (no slot is overwritten while another rank reads it), and moves on.
void runReduction(void* p)
{
    Reduction* r = static_cast<ReductionRef*>(p)->get();
    Comm* c = r->comm;
    bool async = !r->result.empty();
    float* out = async ? r->result.data() : r->recv;
    for (size_t done = 0; done < r->count && c->error == kSuccess; done += kChunkFloats)
    {
        size_t n = r->count - done < kChunkFloats ? r->count - done : kChunkFloats;
        memcpy(c->slots + (size_t)c->rank * kChunkFloats, r->send + done, n * sizeof(float));
        int st = barrier(c, "ncclAllReduce");
        if (st != kSuccess)
        {
            c->error = st;
            return;
        }
        for (size_t i = 0; i < n; i++)
        {
            float acc = c->slots[i];
            for (int k = 1; k < c->nranks; k++) acc += c->slots[(size_t)k * kChunkFloats + i];
            out[done + i] = r->average ? acc / (float)c->nranks : acc;
        }
        st = barrier(c, "ncclAllReduce");
        if (st != kSuccess) c->error = st;
    }
    if (async) ddpmsim_mark_pending(r->recv, r->count * sizeof(float), r->what.c_str());
    else ddpmsim_mark_written(r->recv, r->count * sizeof(float));
}

// The completion point: the sums land in the receive buffer.
void completeReduction(void* p)
{
    Reduction* r = static_cast<ReductionRef*>(p)->get();
    memcpy(r->recv, r->result.data(), r->count * sizeof(float));
    ddpmsim_mark_written(r->recv, r->count * sizeof(float));
}

void freeReduction(void* p) { delete static_cast<ReductionRef*>(p); }

void release(Comm* c)
{
    if (c->header) munmap(c->header, c->bytes);
    c->magic = 0;
    delete c;
}
}  // namespace

API int ncclGetVersion(int* version)
{
    if (!version) return fail(kInvalidArgument, "ncclGetVersion: version is NULL");
    *version = versionCode();
    return kSuccess;
}

API int ncclGetUniqueId(void* id)
{
    if (!id) return fail(kInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    unsigned long long r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) return fail(kSystemError, "ncclGetUniqueId: getrandom failed");
    char* out = static_cast<char*>(id);
    memset(out, 0, kIdBytes);
    memcpy(out, kIdMagic, sizeof kIdMagic);
    snprintf(out + sizeof kIdMagic, kIdBytes - sizeof kIdMagic, "/ddpmsim-nccl-%d-%016llx", (int)getpid(), r);
    return kSuccess;
}

// ncclUniqueId is a struct of 128 bytes passed by value; on x86-64 it travels in memory, as this one does.
struct UniqueId
{
    char internal[kIdBytes];
};

API int ncclCommInitRank(Comm** comm, int nranks, UniqueId id, int rank)
{
    if (!comm) return fail(kInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = nullptr;
    if (nranks < 1) return fail(kInvalidArgument, "ncclCommInitRank: nranks " + std::to_string(nranks) + " < 1");
    if (rank < 0 || rank >= nranks)
        return fail(kInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " is not in [0, " + std::to_string(nranks) + ")");
    if (memcmp(id.internal, kIdMagic, sizeof kIdMagic) != 0 || id.internal[kIdBytes - 1] != 0)
        return fail(kInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
    if (ddpmsim_context_status() != 0) return fail(kUnhandledCudaError, "ncclCommInitRank: no usable current CUDA context");
    const char* name = id.internal + sizeof kIdMagic;
    size_t bytes = kHeaderBytes + (size_t)nranks * kChunkFloats * sizeof(float);
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return fail(kSystemError, std::string("ncclCommInitRank: shm_open(") + name + "): " + strerror(errno));
    if (ftruncate(fd, (off_t)bytes) != 0)
    {
        int e = errno;
        close(fd);
        return fail(kSystemError, std::string("ncclCommInitRank: ftruncate: ") + strerror(e));
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return fail(kSystemError, std::string("ncclCommInitRank: mmap: ") + strerror(errno));
    Comm* c = new Comm();
    c->rank = rank;
    c->nranks = nranks;
    c->header = static_cast<Header*>(p);
    c->slots = reinterpret_cast<float*>(static_cast<char*>(p) + kHeaderBytes);
    c->bytes = bytes;
    int expected = 0;
    if (!c->header->nranks.compare_exchange_strong(expected, nranks) && expected != nranks)
    {
        release(c);
        return fail(kInvalidUsage, "ncclCommInitRank: nranks " + std::to_string(nranks) + " but another rank said " + std::to_string(expected));
    }
    // Initialisation is collective: it returns when every rank has joined.
    int st = barrier(c, "ncclCommInitRank");
    if (st != kSuccess)
    {
        shm_unlink(name);
        release(c);
        return st;
    }
    if (rank == 0) shm_unlink(name);  // every rank has it mapped now; nothing is left behind in /dev/shm
    *comm = c;
    return kSuccess;
}

API int ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, int datatype, int op, Comm* comm, void* stream)
{
    if (!valid(comm)) return fail(kInvalidArgument, "ncclAllReduce: comm is NULL or not a communicator");
    if (datatype != kFloat32)
        return fail(kInvalidArgument, "ncclAllReduce: datatype " + std::to_string(datatype) + " (the simulator has ncclFloat32 only)");
    if (op != kSum && !(op == kAvg && versionCode() >= 21000))
        return fail(kInvalidArgument, "ncclAllReduce: op " + std::to_string(op) + " (the simulator has ncclSum, and ncclAvg from 2.10)");
    if (comm->error != kSuccess) return fail(comm->error, "ncclAllReduce: the communicator failed earlier");
    if (count == 0) return kSuccess;
    if (count > SIZE_MAX / sizeof(float) || ddpmsim_check_device_range(sendbuff, count * sizeof(float)) != 0 ||
        ddpmsim_check_device_range(recvbuff, count * sizeof(float)) != 0)
        return fail(kInvalidArgument, "ncclAllReduce: " + std::to_string(count) + " floats at sendbuff/recvbuff lie outside the device allocations");
    if (ddpmsim_context_status() != 0) return fail(kUnhandledCudaError, "ncclAllReduce: no usable current CUDA context");
    bool async = (ddpmsim_checks() & DDPMSIM_CHECK_NCCL_ASYNC) != 0;
    auto r = std::make_shared<Reduction>();
    *r = Reduction{comm, static_cast<const float*>(sendbuff), static_cast<float*>(recvbuff), count, op == kAvg, {},
        "ncclAllReduce of " + std::to_string(count) + " floats"};
    if (async) r->result.assign(count, 0.0f);
    auto* exchange = new ReductionRef(r);
    if (ddpmsim_enqueue_host_work(stream, "ncclAllReduce", runReduction, exchange, freeReduction) != 0)
    {
        delete exchange;
        return fail(kUnhandledCudaError, "ncclAllReduce: the stream is not a stream of the current context");
    }
    if (cuStreamSynchronize(stream) != 0) return fail(kUnhandledCudaError, "ncclAllReduce: cuStreamSynchronize failed");
    if (comm->error != kSuccess) return comm->error;
    if (async)
    {
        auto* completion = new ReductionRef(r);
        if (ddpmsim_enqueue_host_work(stream, "ncclAllReduce (completion)", completeReduction, completion, freeReduction) != 0)
        {
            delete completion;
            return fail(kUnhandledCudaError, "ncclAllReduce: the stream is not a stream of the current context");
        }
    }
    return kSuccess;
}

API int ncclCommDestroy(Comm* comm)
{
    if (comm == nullptr) return kSuccess;
    if (!valid(comm)) return fail(kInvalidArgument, "ncclCommDestroy: not a communicator");
    release(comm);
    return kSuccess;
}

API int ncclCommAbort(Comm* comm)
{
    if (comm == nullptr) return kSuccess;
    if (!valid(comm)) return fail(kInvalidArgument, "ncclCommAbort: not a communicator");
    comm->header->failed.store(1, std::memory_order_release);
    syscall(SYS_futex, &comm->header->generation, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    release(comm);
    return kSuccess;
}

API const char* ncclGetErrorString(int result)
{
    switch (result)
    {
    case kSuccess: return "no error";
    case kUnhandledCudaError: return "unhandled cuda error";
    case kSystemError: return "unhandled system error";
    case kInternalError: return "internal error";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage";
    case kRemoteError: return "remote process exited or there was a network error";
    case kInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

// The detail of this thread's latest failed call (NCCL 2.13+ has it too).
API const char* ncclGetLastError(Comm* comm)
{
    (void)comm;
    return t_lastError.c_str();
}
