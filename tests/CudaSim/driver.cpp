// libcuda.so.1 of the CUDA simulator: the driver API entry points the Ddpm binding calls, run on the CPU.
// A test harness only: device pointers are host memory, kernels are the same CUDA C sources compiled for
// the host (see cuda_sim_kernel.h), and work queued on a stream runs only when the host synchronises.
#include <elf.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda_sim_kernel.h"
#include "sim_api.h"

#define API extern "C" __attribute__((visibility("default")))

// ---- CUDA's codes and names ------------------------------------------------------------------------------

namespace
{
enum : int
{
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    DEINITIALIZED = 4,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    NO_BINARY_FOR_GPU = 209,
    INVALID_PTX = 218,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    LAUNCH_FAILED = 719,
};

struct ErrorText
{
    int code;
    const char* name;
    const char* text;
};

// Names and texts as cuda.h / the driver give them.
const ErrorText kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {5, "CUDA_ERROR_PROFILER_DISABLED", "profiler disabled while using external profiling tool"},
    {34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {35, "CUDA_ERROR_INSUFFICIENT_DRIVER", "CUDA driver version is insufficient for CUDA runtime version"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {102, "CUDA_ERROR_DEVICE_NOT_LICENSED", "device doesn't have valid Grid license"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current"},
    {205, "CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"},
    {206, "CUDA_ERROR_UNMAP_FAILED", "unmapping of buffer object failed"},
    {207, "CUDA_ERROR_ARRAY_IS_MAPPED", "array is mapped"},
    {208, "CUDA_ERROR_ALREADY_MAPPED", "resource already mapped"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {210, "CUDA_ERROR_ALREADY_ACQUIRED", "resource already acquired"},
    {211, "CUDA_ERROR_NOT_MAPPED", "resource not mapped"},
    {214, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered"},
    {215, "CUDA_ERROR_UNSUPPORTED_LIMIT", "limit is not supported on this architecture"},
    {216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE", "exclusive-thread device already in use by a different thread"},
    {217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", "peer access is not supported between these two devices"},
    {218, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT", "invalid OpenGL or DirectX context"},
    {220, "CUDA_ERROR_NVLINK_UNCORRECTABLE", "uncorrectable NVLink error detected during the execution"},
    {221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "PTX JIT compiler library not found"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."},
    {300, "CUDA_ERROR_INVALID_SOURCE", "device kernel image is invalid"},
    {301, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND", "shared object symbol not found"},
    {303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", "shared object initialization failed"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"},
    {703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING", "launch uses incompatible texturing mode"},
    {704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", "peer access is already enabled"},
    {705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", "peer access has not been enabled"},
    {708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", "cannot set while device is active in this process"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {710, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {711, "CUDA_ERROR_TOO_MANY_PEERS", "peer mapping resources exhausted"},
    {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {714, "CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"},
    {715, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"},
    {716, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"},
    {717, "CUDA_ERROR_INVALID_ADDRESS_SPACE", "operation not supported on global/shared address space"},
    {718, "CUDA_ERROR_INVALID_PC", "invalid program counter"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "too many blocks in cooperative launch"},
    {800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorText* findError(int code)
{
    for (const auto& e : kErrors)
        if (e.code == code) return &e;
    return nullptr;
}

// ---- state ------------------------------------------------------------------------------------------------

constexpr size_t kGuard = 256;                     // guard bytes before and after every allocation
constexpr unsigned char kGuardByte = 0xCB;
constexpr uint64_t kTotalMemory = 16ull << 30;     // the simulated device's memory
constexpr size_t kNanFillLimit = 256u << 20;       // larger allocations stay lazily zero (no host memory)
constexpr unsigned kMaxShared = 48 * 1024;         // static + dynamic shared memory per block
constexpr int kMultiprocessors = 132;
constexpr size_t kFiberStack = 64 * 1024;

struct Alloc
{
    uintptr_t base;
    size_t size;
    size_t accounted;
    char* raw;
    size_t rawSize;
    bool mapped;
    uint64_t serial;
};

struct Kernel
{
    std::string name;
    DdpmSimKernelInfo info;
    size_t staticShared = 0;
};

struct Module
{
    std::unordered_set<std::string> names;
};

struct Function
{
    Module* module;
    Kernel* kernel;
};

struct Work
{
    uint64_t seq;
    std::string what;
    std::function<void()> run;
    std::function<void()> drop;  // releases resources when the work never runs
};

struct Stream
{
    bool nonBlocking = false;
    std::deque<Work> queue;
};

struct Event
{
    unsigned flags = 0;
    bool recorded = false;
    uint64_t recordSeq = 0;     // sequence number of the latest record's marker
    uint64_t completedSeq = 0;  // of the latest marker that ran
    double ms = 0;              // host time when that marker ran
    Stream* stream = nullptr;
};

struct Context
{
    int refs = 0;
};

std::mutex g_mu;
bool g_initialized = false;
Context g_primary;
thread_local Context* t_current = nullptr;

int g_sticky = SUCCESS;
std::string g_stickyDetail;
std::map<int, std::string> g_detail;  // latest detail per code, shown by cuGetErrorString
std::deque<std::string> g_texts;      // every string cuGetErrorString handed out stays valid

std::map<uintptr_t, Alloc> g_allocs;  // by user base address
std::map<uintptr_t, size_t> g_hostAllocs;  // pinned host memory: base, bytes
uint64_t g_used = 0;
uint64_t g_allocSerial = 0;

Stream g_legacy;  // stream handle 0 (also CU_STREAM_LEGACY and CU_STREAM_PER_THREAD)
std::unordered_set<Stream*> g_streams;
std::unordered_set<Event*> g_events;
std::unordered_set<Module*> g_modules;
std::unordered_set<Function*> g_functions;
uint64_t g_seq = 0;
std::string g_lastWork = "(nothing has run yet)";
bool g_immediate = false;

std::atomic<uint64_t> c_launches{0}, c_syncs{0}, c_htod{0}, c_dtoh{0}, c_dtod{0}, c_memsets{0}, c_gemms{0}, c_allocs{0};

std::unordered_map<std::string, Kernel*>& registry()
{
    static std::unordered_map<std::string, Kernel*> r;
    return r;
}

double nowMs()
{
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string format(const char* fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

int fail(int code, const std::string& detail = "")
{
    g_detail[code] = detail;
    return code;
}

void dropAllWork();

void setSticky(int code, const std::string& detail)
{
    if (g_sticky != SUCCESS) return;
    g_sticky = code;
    g_stickyDetail = detail;
    g_detail[code] = detail;
    const ErrorText* e = findError(code);
    fprintf(stderr, "cuda simulator: %s (%s): %s\n", e ? e->name : "CUDA_ERROR", e ? e->text : "", detail.c_str());
    fflush(stderr);
    dropAllWork();
}

// Calls that need a context: the caller holds g_mu.
int contextStatus()
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (t_current != &g_primary || g_primary.refs <= 0) return INVALID_CONTEXT;
    return g_sticky;
}

#define NEED_CONTEXT()                          \
    do                                          \
    {                                           \
        int st_ = contextStatus();              \
        if (st_ != SUCCESS) return st_;         \
    } while (0)

// ---- memory -----------------------------------------------------------------------------------------------

void fillNan(void* p, size_t bytes)
{
    uint32_t* w = static_cast<uint32_t*>(p);
    size_t n = bytes / 4;
    for (size_t i = 0; i < n; i++) w[i] = 0x7fc00000u;
    memset(static_cast<char*>(p) + n * 4, 0x7f, bytes - n * 4);
}

// The allocation holding [p, p + bytes); an empty range may sit at the end.
Alloc* findAlloc(uintptr_t p, size_t bytes)
{
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    Alloc& a = it->second;
    if (p < a.base || p - a.base > a.size || bytes > a.size - (p - a.base)) return nullptr;
    return &a;
}

bool inHostAlloc(uintptr_t p)
{
    // Pinned host memory: kernels may read it where the buffer is mapped; accept any pointer into one.
    auto it = g_hostAllocs.upper_bound(p);
    if (it == g_hostAllocs.begin()) return false;
    --it;
    return p - it->first <= it->second;
}

std::string describeAlloc(const Alloc& a)
{
    return format("allocation #%llu (%zu bytes at 0x%llx)", (unsigned long long)a.serial, a.size, (unsigned long long)a.base);
}

// Empty when both guard zones are intact, else what is damaged.
std::string guardDamage(const Alloc& a)
{
    const unsigned char* head = reinterpret_cast<const unsigned char*>(a.base) - kGuard;
    const unsigned char* tail = reinterpret_cast<const unsigned char*>(a.base) + a.size;
    for (size_t i = kGuard; i-- > 0;)
        if (head[i] != kGuardByte)
            return format("the guard zone before %s was overwritten (byte %zu before its start)", describeAlloc(a).c_str(), kGuard - i);
    for (size_t i = 0; i < kGuard; i++)
        if (tail[i] != kGuardByte)
            return format("the guard zone after %s was overwritten (byte %zu past its end)", describeAlloc(a).c_str(), i);
    return "";
}

void checkAllGuards()
{
    if (g_sticky != SUCCESS) return;
    for (auto& [base, a] : g_allocs)
    {
        std::string d = guardDamage(a);
        if (!d.empty())
        {
            setSticky(ILLEGAL_ADDRESS, d + "; the last work that ran: " + g_lastWork);
            return;
        }
    }
}

void releaseAlloc(Alloc& a)
{
    if (a.mapped) munmap(a.raw, a.rawSize);
    else free(a.raw);
    g_used -= a.accounted;
}

// ---- streams and execution --------------------------------------------------------------------------------

Stream* lookupStream(void* h)
{
    uintptr_t v = reinterpret_cast<uintptr_t>(h);
    if (v == 0 || v == 1 || v == 2) return &g_legacy;
    Stream* s = static_cast<Stream*>(h);
    return g_streams.count(s) ? s : nullptr;
}

void runOne(Stream* s)
{
    Work w = std::move(s->queue.front());
    s->queue.pop_front();
    g_lastWork = w.what;
    w.run();
}

// Runs the queued work of s (up to and including sequence number limit) in order. Blocking streams are
// ordered with the legacy stream: both queues run merged by sequence number.
void flushStream(Stream* s, uint64_t limit = UINT64_MAX)
{
    bool withLegacy = s != &g_legacy && !s->nonBlocking;
    for (;;)
    {
        if (g_sticky != SUCCESS) return;
        Stream* next = nullptr;
        if (!s->queue.empty() && s->queue.front().seq <= limit) next = s;
        if (withLegacy && !g_legacy.queue.empty() && g_legacy.queue.front().seq <= limit &&
            (next == nullptr || g_legacy.queue.front().seq < next->queue.front().seq))
            next = &g_legacy;
        if (s == &g_legacy)
        {
            // The legacy stream waits for the blocking streams' earlier work.
            for (Stream* o : g_streams)
                if (!o->nonBlocking && !o->queue.empty() && o->queue.front().seq <= limit &&
                    (next == nullptr || o->queue.front().seq < next->queue.front().seq))
                    next = o;
        }
        if (next == nullptr) break;
        runOne(next);
    }
    checkAllGuards();
}

void flushAll()
{
    for (;;)
    {
        if (g_sticky != SUCCESS) return;
        Stream* next = g_legacy.queue.empty() ? nullptr : &g_legacy;
        for (Stream* o : g_streams)
            if (!o->queue.empty() && (next == nullptr || o->queue.front().seq < next->queue.front().seq)) next = o;
        if (next == nullptr) break;
        runOne(next);
    }
    checkAllGuards();
}

bool anyPending()
{
    if (!g_legacy.queue.empty()) return true;
    for (Stream* o : g_streams)
        if (!o->queue.empty()) return true;
    return false;
}

void dropQueue(Stream* s)
{
    for (auto& w : s->queue)
        if (w.drop) w.drop();
    s->queue.clear();
}

void dropAllWork()
{
    dropQueue(&g_legacy);
    for (Stream* o : g_streams) dropQueue(o);
}

void enqueue(Stream* s, std::string what, std::function<void()> run, std::function<void()> drop = nullptr)
{
    s->queue.push_back(Work{++g_seq, std::move(what), std::move(run), std::move(drop)});
    if (g_immediate) flushStream(s);
}

// Context teardown when the last primary-context reference goes: CUDA frees everything the context owned.
void destroyContextState()
{
    dropAllWork();
    for (auto& [base, a] : g_allocs) releaseAlloc(a);
    g_allocs.clear();
    g_used = 0;
    for (Stream* s : g_streams) delete s;
    g_streams.clear();
    for (Event* e : g_events) delete e;
    g_events.clear();
    for (Function* f : g_functions) delete f;
    g_functions.clear();
    for (Module* m : g_modules) delete m;
    g_modules.clear();
    g_sticky = SUCCESS;
    g_stickyDetail.clear();
}

// ---- the block scheduler ----------------------------------------------------------------------------------

enum FiberState : uint8_t
{
    F_NEW,
    F_RUN,
    F_BARRIER,
    F_SHUFFLE,
    F_DONE,
    F_FAULT,
};

struct Fiber
{
    void* sp;
    char* stack;
    uint3 tid;
    FiberState state;
    uint8_t shSize;
    uint8_t shMode;
    unsigned shMask;
    int shOperand;
    int shWidth;
    uint64_t shValue;
    uint64_t shResult;
};

struct LaunchState
{
    Kernel* kernel;
    const void* args;
    unsigned dynamicShared;
};

struct SharedSlot
{
    const void* key;
    void* ptr;
};

std::vector<Fiber> g_fibers;
std::vector<char*> g_stackPool;
void* g_schedulerSp;
Fiber* g_current;
const LaunchState* g_launch;
size_t g_nextNew;       // lowest thread of the block not started yet
size_t g_blockThreads;  // threads in the block
size_t g_done, g_atBarrier, g_atShuffle;  // threads of the block that exited, wait at a barrier, at a shuffle
int g_faultCode;
std::string g_faultDetail;
alignas(64) unsigned char g_sharedArena[kMaxShared];
size_t g_sharedUsed;
std::vector<SharedSlot> g_sharedSlots;
}  // namespace

extern "C" {
uint3 ddpmsim_threadIdx __attribute__((visibility("default")));
uint3 ddpmsim_blockIdx __attribute__((visibility("default")));
dim3 ddpmsim_blockDim __attribute__((visibility("default")));
dim3 ddpmsim_gridDim __attribute__((visibility("default")));
void ddpmsim_fiber_switch(void** save, void* target) __attribute__((visibility("hidden")));
void ddpmsim_fiber_start(void) __attribute__((visibility("hidden")));
[[noreturn]] void ddpmsim_fiber_main(void) __attribute__((visibility("hidden")));
}

namespace
{
// Returns the top of a pooled fiber stack. Tops are staggered across the 4 KiB page so the live frames of a
// block's fibers do not all fall into the same cache sets.
char* takeStack()
{
    if (!g_stackPool.empty())
    {
        char* s = g_stackPool.back();
        g_stackPool.pop_back();
        return s;
    }
    static size_t created = 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* m = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
    {
        fprintf(stderr, "cuda simulator: cannot map a %zu-byte fiber stack\n", kFiberStack);
        abort();
    }
    mprotect(m, page, PROT_NONE);  // overflow faults instead of corrupting the next stack
    size_t colour = (created++ * 320) % 4096;
    return static_cast<char*>(m) + page + kFiberStack - colour;
}

void* initialFrame(char* top)
{
    uint64_t* slots = reinterpret_cast<uint64_t*>(top - 56);
    slots[6] = reinterpret_cast<uint64_t>(&ddpmsim_fiber_start);  // return address
    for (int i = 0; i < 6; i++) slots[i] = 0;                       // r15 .. rbp
    return slots;
}

void yieldToScheduler() { ddpmsim_fiber_switch(&g_current->sp, g_schedulerSp); }

[[noreturn]] void faultInFiber(int code, const std::string& detail)
{
    g_faultCode = code;
    g_faultDetail = detail;
    g_current->state = F_FAULT;
    yieldToScheduler();
    __builtin_unreachable();
}

std::string blockName()
{
    return format("(%u,%u,%u)", ddpmsim_blockIdx.x, ddpmsim_blockIdx.y, ddpmsim_blockIdx.z);
}

const char* shuffleName(int mode)
{
    static const char* names[] = {"__shfl_xor_sync", "__shfl_sync", "__shfl_down_sync", "__shfl_up_sync"};
    return names[mode & 3];
}

const char* stateName(FiberState s)
{
    switch (s)
    {
        case F_DONE: return "has exited";
        case F_BARRIER: return "waits at __syncthreads";
        case F_SHUFFLE: return "waits at a different shuffle";
        default: return "is running";
    }
}

std::string shuffleError(size_t first, size_t count, unsigned lane, const char* fmt, ...)
{
    const Fiber& f = g_fibers[first + lane];
    std::string where = format("kernel %s: %s(mask 0x%08x) by lane %u of warp %zu of block %s: ", g_launch->kernel->name.c_str(),
        shuffleName(f.shMode), f.shMask, lane, first / 32, blockName().c_str());
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    (void)count;
    return where + buf;
}

// Resolves the shuffles of one warp; empty on success, else the error (messages are built only on failure).
std::string resolveWarp(size_t first, size_t count)
{
    unsigned waiting = 0;
    for (size_t i = first; i < first + count; i++)
        if (g_fibers[i].state == F_SHUFFLE) waiting |= 1u << (i - first);
    if (waiting == 0) return "";
    // The common case in one pass: every waiting lane makes the same call, and the lanes it names are exactly
    // the waiting ones.
    const Fiber& f0 = g_fibers[first + __builtin_ctz(waiting)];
    bool uniform = f0.shMask == waiting && f0.shWidth == 32;
    for (unsigned m = waiting; m != 0 && uniform; m &= m - 1)
    {
        const Fiber& o = g_fibers[first + __builtin_ctz(m)];
        uniform = o.shMask == f0.shMask && o.shMode == f0.shMode && o.shSize == f0.shSize && o.shWidth == 32;
    }
    for (size_t i = first; i < first + count && !uniform; i++)
    {
        Fiber& f = g_fibers[i];
        if (f.state != F_SHUFFLE) continue;
        unsigned lane = (unsigned)(i - first);
        if (f.shWidth != 32) return shuffleError(first, count, lane, "width %d is not simulated (only 32)", f.shWidth);
        if (!(f.shMask >> lane & 1)) return shuffleError(first, count, lane, "the calling lane is not in the mask");
        if ((f.shMask & waiting) == f.shMask)
        {
            bool same = true;
            for (unsigned m = f.shMask; m != 0 && same; m &= m - 1)
            {
                const Fiber& o = g_fibers[first + __builtin_ctz(m)];
                same = o.shMask == f.shMask && o.shMode == f.shMode && o.shSize == f.shSize;
            }
            if (same) continue;
        }
        for (unsigned j = 0; j < 32; j++)
        {
            if (!(f.shMask >> j & 1)) continue;
            if (j >= count)
                return shuffleError(first, count, lane, "the mask names lane %u, but the warp has only %zu lanes (block of %u threads)", j,
                    count, ddpmsim_blockDim.x * ddpmsim_blockDim.y * ddpmsim_blockDim.z);
            Fiber& o = g_fibers[first + j];
            if (o.state != F_SHUFFLE || o.shMask != f.shMask || o.shMode != f.shMode || o.shSize != f.shSize)
                return shuffleError(first, count, lane, "lane %u named in the mask %s", j,
                    o.state == F_SHUFFLE ? "waits at a different shuffle" : stateName(o.state));
        }
    }
    for (size_t i = first; i < first + count; i++)
    {
        Fiber& f = g_fibers[i];
        if (f.state != F_SHUFFLE) continue;
        int lane = (int)(i - first), src = lane;
        switch (f.shMode)
        {
            case 0: src = lane ^ f.shOperand; break;
            case 1: src = f.shOperand & 31; break;
            case 2: src = lane + f.shOperand < 32 ? lane + f.shOperand : lane; break;
            default: src = lane - f.shOperand >= 0 ? lane - f.shOperand : lane; break;
        }
        if (src < 0 || src > 31 || !(f.shMask >> src & 1))
            return format("kernel %s: %s(mask 0x%08x) by lane %d of warp %zu of block %s reads lane %d, which the mask leaves out",
                g_launch->kernel->name.c_str(), shuffleName(f.shMode), f.shMask, lane, first / 32, blockName().c_str(), src);
        f.shResult = g_fibers[first + src].shValue;
    }
    for (size_t i = first; i < first + count; i++)
        if (g_fibers[i].state == F_SHUFFLE) g_fibers[i].state = F_RUN;
    return "";
}

void releaseFiberStacks(size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (g_fibers[i].stack != nullptr)
        {
            g_stackPool.push_back(g_fibers[i].stack);
            g_fibers[i].stack = nullptr;
        }
}

// Runs one block to completion; returns false (with g_faultCode/g_faultDetail) when it fails.
bool runBlock(size_t n)
{
    unsigned x = 0, y = 0, z = 0;
    for (size_t i = 0; i < n; i++)
    {
        Fiber& f = g_fibers[i];
        f.state = F_NEW;
        f.stack = nullptr;
        f.tid = uint3{x, y, z};
        if (++x == ddpmsim_blockDim.x)
        {
            x = 0;
            if (++y == ddpmsim_blockDim.y)
            {
                y = 0;
                z++;
            }
        }
    }
    g_blockThreads = n;
    g_done = g_atBarrier = g_atShuffle = 0;
    g_nextNew = 0;
    g_sharedSlots.clear();
    g_sharedUsed = (g_launch->dynamicShared + 15) & ~15u;
    fillNan(g_sharedArena, g_launch->dynamicShared);
    const std::string& kname = g_launch->kernel->name;
    for (;;)
    {
        for (size_t i = 0; i < n; i++)
        {
            Fiber& f = g_fibers[i];
            if (f.state == F_NEW)
            {
                f.stack = takeStack();
                f.sp = initialFrame(f.stack);
                f.state = F_RUN;
                g_nextNew = i + 1;
            }
            else if (f.state != F_RUN)
                continue;
            g_current = &f;
            ddpmsim_threadIdx = f.tid;
            ddpmsim_fiber_switch(&g_schedulerSp, f.sp);
            // The stack may have run later threads too: g_current is the one that switched back.
            Fiber& c = *g_current;
            if (c.state == F_DONE)
            {
                g_stackPool.push_back(c.stack);
                c.stack = nullptr;
            }
            else if (c.state == F_FAULT)
            {
                releaseFiberStacks(n);
                return false;
            }
        }
        size_t done = g_done, barrier = g_atBarrier, shuffle = g_atShuffle;
        if (done == n) return true;
        if (shuffle > 0)
        {
            for (size_t w = 0; w < n; w += 32)
            {
                std::string err = resolveWarp(w, n - w < 32 ? n - w : 32);
                if (!err.empty())
                {
                    g_faultCode = LAUNCH_FAILED;
                    g_faultDetail = err;
                    releaseFiberStacks(n);
                    return false;
                }
            }
            g_atShuffle = 0;
            continue;
        }
        if (barrier + done == n && done == 0)
        {
            for (size_t i = 0; i < n; i++) g_fibers[i].state = F_RUN;
            g_atBarrier = 0;
            continue;
        }
        g_faultCode = LAUNCH_FAILED;
        g_faultDetail = format("kernel %s: __syncthreads reached by %zu of %zu threads of block %s (the others had exited)",
            kname.c_str(), barrier, n, blockName().c_str());
        releaseFiberStacks(n);
        return false;
    }
}

struct LaunchRecord
{
    Kernel* kernel;
    unsigned grid[3];
    unsigned block[3];
    unsigned dynamicShared;
    void* args;
    ~LaunchRecord() { ::operator delete(args, std::align_val_t(kernel->info.argsAlign)); }
};

void runLaunch(const LaunchRecord& r)
{
    LaunchState st{r.kernel, r.args, r.dynamicShared};
    g_launch = &st;
    ddpmsim_gridDim = dim3{r.grid[0], r.grid[1], r.grid[2]};
    ddpmsim_blockDim = dim3{r.block[0], r.block[1], r.block[2]};
    size_t n = (size_t)r.block[0] * r.block[1] * r.block[2];
    if (g_fibers.size() < n) g_fibers.resize(n);
    for (unsigned z = 0; z < r.grid[2]; z++)
        for (unsigned y = 0; y < r.grid[1]; y++)
            for (unsigned x = 0; x < r.grid[0]; x++)
            {
                ddpmsim_blockIdx = uint3{x, y, z};
                if (!runBlock(n))
                {
                    g_launch = nullptr;
                    setSticky(g_faultCode, g_faultDetail);
                    return;
                }
            }
    g_launch = nullptr;
}

// ---- module images ----------------------------------------------------------------------------------------

// Function symbols of an ELF cubin; false when the header or section table is malformed.
int readCubin(const unsigned char* img, std::unordered_set<std::string>& names)
{
    const Elf64_Ehdr* eh = reinterpret_cast<const Elf64_Ehdr*>(img);
    if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB) return INVALID_IMAGE;
    if (eh->e_machine != 190 /* EM_CUDA */) return INVALID_IMAGE;
    // The architecture: e_flags bits 0-7 in ELF ABI version 7 (CUDA 11 and 12), bits 8-15 in version 8.
    unsigned abi = eh->e_ident[EI_ABIVERSION];
    unsigned sm = abi == 7 ? (eh->e_flags & 0xff) : abi >= 8 ? ((eh->e_flags >> 8) & 0xff) : 0;
    if (sm != 0 && (sm / 10 != 9 || sm > 90)) return fail(NO_BINARY_FOR_GPU, format("the cubin is for sm_%u; this device is sm_90", sm));
    if (eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shnum == 0 || eh->e_shoff == 0) return INVALID_IMAGE;
    const Elf64_Shdr* sh = reinterpret_cast<const Elf64_Shdr*>(img + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum; i++)
    {
        if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_entsize != sizeof(Elf64_Sym) || sh[i].sh_link >= eh->e_shnum) continue;
        const Elf64_Shdr& strtab = sh[sh[i].sh_link];
        const char* strings = reinterpret_cast<const char*>(img + strtab.sh_offset);
        const Elf64_Sym* syms = reinterpret_cast<const Elf64_Sym*>(img + sh[i].sh_offset);
        size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
        for (size_t k = 0; k < count; k++)
            if (ELF64_ST_TYPE(syms[k].st_info) == STT_FUNC && syms[k].st_name < strtab.sh_size)
                names.insert(strings + syms[k].st_name);
    }
    return SUCCESS;
}

bool isIdent(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$'; }

// PTX text: comments and white space, then ".version"; entries are ".entry NAME(".
int readPtx(const char* text, std::unordered_set<std::string>& names)
{
    const char* p = text;
    for (;;)
    {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (p[0] == '/' && p[1] == '/')
        {
            while (*p && *p != '\n') p++;
            continue;
        }
        if (p[0] == '/' && p[1] == '*')
        {
            const char* e = strstr(p + 2, "*/");
            if (!e) return INVALID_IMAGE;
            p = e + 2;
            continue;
        }
        break;
    }
    if (strncmp(p, ".version", 8) != 0) return INVALID_IMAGE;
    for (const char* q = strstr(p, ".entry"); q; q = strstr(q + 6, ".entry"))
    {
        const char* s = q + 6;
        if (!(*s == ' ' || *s == '\t')) continue;
        while (*s == ' ' || *s == '\t') s++;
        const char* e = s;
        while (isIdent(*e)) e++;
        if (e > s) names.emplace(s, e);
    }
    return SUCCESS;
}

int attributeValue(int attr, int* value)
{
    static const std::pair<int, int> table[] = {
        {1, 1024},        // MAX_THREADS_PER_BLOCK
        {2, 1024},        // MAX_BLOCK_DIM_X
        {3, 1024},        // MAX_BLOCK_DIM_Y
        {4, 64},          // MAX_BLOCK_DIM_Z
        {5, 2147483647},  // MAX_GRID_DIM_X
        {6, 65535},       // MAX_GRID_DIM_Y
        {7, 65535},       // MAX_GRID_DIM_Z
        {8, 49152},       // MAX_SHARED_MEMORY_PER_BLOCK
        {9, 65536},       // TOTAL_CONSTANT_MEMORY
        {10, 32},         // WARP_SIZE
        {11, 2147483647}, // MAX_PITCH
        {12, 65536},      // MAX_REGISTERS_PER_BLOCK
        {13, 1980000},    // CLOCK_RATE (kHz)
        {14, 512},        // TEXTURE_ALIGNMENT
        {15, 1},          // GPU_OVERLAP
        {16, kMultiprocessors},
        {17, 0},          // KERNEL_EXEC_TIMEOUT
        {18, 0},          // INTEGRATED
        {19, 1},          // CAN_MAP_HOST_MEMORY
        {20, 0},          // COMPUTE_MODE default
        {30, 512},        // SURFACE_ALIGNMENT
        {31, 1},          // CONCURRENT_KERNELS
        {32, 0},          // ECC_ENABLED
        {33, 0},          // PCI_BUS_ID
        {34, 0},          // PCI_DEVICE_ID
        {35, 0},          // TCC_DRIVER
        {36, 2619000},    // MEMORY_CLOCK_RATE (kHz)
        {37, 5120},       // GLOBAL_MEMORY_BUS_WIDTH
        {38, 50331648},   // L2_CACHE_SIZE
        {39, 2048},       // MAX_THREADS_PER_MULTIPROCESSOR
        {40, 3},          // ASYNC_ENGINE_COUNT
        {41, 1},          // UNIFIED_ADDRESSING
        {50, 0},          // PCI_DOMAIN_ID
        {75, 9},          // COMPUTE_CAPABILITY_MAJOR
        {76, 0},          // COMPUTE_CAPABILITY_MINOR
        {78, 1},          // STREAM_PRIORITIES_SUPPORTED
        {79, 1},          // GLOBAL_L1_CACHE_SUPPORTED
        {80, 1},          // LOCAL_L1_CACHE_SUPPORTED
        {81, 233472},     // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        {82, 65536},      // MAX_REGISTERS_PER_MULTIPROCESSOR
        {83, 1},          // MANAGED_MEMORY
        {84, 0},          // MULTI_GPU_BOARD
        {86, 2},          // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        {95, 1},          // COOPERATIVE_LAUNCH
        {97, 232448},     // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        {106, 32},        // MAX_BLOCKS_PER_MULTIPROCESSOR
        {111, 1024},      // RESERVED_SHARED_MEMORY_PER_BLOCK
    };
    for (const auto& [a, v] : table)
        if (a == attr)
        {
            *value = v;
            return SUCCESS;
        }
    return fail(INVALID_VALUE, format("cuDeviceGetAttribute: attribute %d is not simulated", attr));
}
}  // namespace

// ---- kernel-side entry points (called from fibers) --------------------------------------------------------

extern "C" {

// A fiber stack runs threads one after another: when a thread returns without having waited, the next thread
// not yet started runs on the same stack without a switch, so kernels without barriers cost about a call per
// thread. A thread that waits keeps the stack; the scheduler starts a new stack for the threads after it.
[[noreturn]] void ddpmsim_fiber_main(void)
{
    const DdpmSimKernelInfo& k = g_launch->kernel->info;
    for (;;)
    {
        k.invoke(k.fn, g_launch->args);
        Fiber* f = g_current;
        f->state = F_DONE;
        g_done++;
        if (g_nextNew >= g_blockThreads) break;
        Fiber* next = &g_fibers[g_nextNew++];
        next->stack = f->stack;
        f->stack = nullptr;
        next->state = F_RUN;
        g_current = next;
        ddpmsim_threadIdx = next->tid;
    }
    yieldToScheduler();
    __builtin_unreachable();
}

API void ddpmsim_syncthreads(void)
{
    g_current->state = F_BARRIER;
    g_atBarrier++;
    yieldToScheduler();
    ddpmsim_threadIdx = g_current->tid;
}

API uint64_t ddpmsim_shfl(uint64_t bits, unsigned size, unsigned mask, int operand, int width, int mode)
{
    Fiber* f = g_current;
    f->state = F_SHUFFLE;
    g_atShuffle++;
    f->shValue = bits;
    f->shSize = (uint8_t)size;
    f->shMask = mask;
    f->shOperand = operand;
    f->shWidth = width;
    f->shMode = (uint8_t)mode;
    yieldToScheduler();
    ddpmsim_threadIdx = f->tid;
    return f->shResult;
}

API [[noreturn]] void ddpmsim_trap(void)
{
    Fiber* f = g_current;
    faultInFiber(LAUNCH_FAILED, format("kernel %s: __trap() in thread (%u,%u,%u) of block %s", g_launch->kernel->name.c_str(),
                                    f->tid.x, f->tid.y, f->tid.z, blockName().c_str()));
}

API void* ddpmsim_shared_static(const void* key, size_t bytes, size_t align, const char* name)
{
    for (const auto& s : g_sharedSlots)
        if (s.key == key) return s.ptr;
    size_t off = (g_sharedUsed + align - 1) & ~(align - 1);
    if (off + bytes > kMaxShared)
        faultInFiber(LAUNCH_OUT_OF_RESOURCES,
            format("kernel %s: shared memory %s (%zu bytes) exceeds the %u bytes per block (%u of them dynamic)",
                g_launch->kernel->name.c_str(), name, bytes, kMaxShared, g_launch->dynamicShared));
    void* p = g_sharedArena + off;
    fillNan(p, bytes);
    g_sharedUsed = off + bytes;
    g_sharedSlots.push_back(SharedSlot{key, p});
    size_t staticBytes = g_sharedUsed - ((g_launch->dynamicShared + 15) & ~15u);
    if (staticBytes > g_launch->kernel->staticShared) g_launch->kernel->staticShared = staticBytes;
    return p;
}

API void* ddpmsim_shared_dynamic(void) { return g_sharedArena; }

API int ddpmsim_register_kernel(const DdpmSimKernelInfo* info)
{
    auto& r = registry();
    if (r.count(info->name))
    {
        fprintf(stderr, "cuda simulator: kernel %s is registered twice\n", info->name);
        abort();
    }
    Kernel* k = new Kernel{info->name, *info, 0};
    k->info.name = k->name.c_str();
    r[k->name] = k;
    return 1;
}

// ---- shared with libcublas and tests ------------------------------------------------------------------------

API void ddpmsim_get_counters(DdpmSimCounters* out)
{
    if (!out) return;
    out->launches = c_launches;
    out->host_syncs = c_syncs;
    out->bytes_htod = c_htod;
    out->bytes_dtoh = c_dtoh;
    out->bytes_dtod = c_dtod;
    out->memsets = c_memsets;
    out->gemms = c_gemms;
    out->allocations = c_allocs;
}

API void ddpmsim_reset_counters(void)
{
    c_launches = c_syncs = c_htod = c_dtoh = c_dtod = c_memsets = c_gemms = c_allocs = 0;
}

API const char* ddpmsim_version(void) { return "ddpm cuda simulator 1"; }

API int ddpmsim_enqueue_host_work(void* stream, const char* what, void (*fn)(void*), void* ctx, void (*free_ctx)(void*))
{
    std::lock_guard<std::mutex> lock(g_mu);
    int st = contextStatus();
    if (st != SUCCESS) return st;
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("%s: unknown stream %p", what, stream));
    enqueue(
        s, what,
        [fn, ctx, free_ctx] {
            fn(ctx);
            if (free_ctx) free_ctx(ctx);
        },
        [ctx, free_ctx] {
            if (free_ctx) free_ctx(ctx);
        });
    return SUCCESS;
}

API int ddpmsim_check_device_range(const void* p, size_t bytes)
{
    std::lock_guard<std::mutex> lock(g_mu);
    return findAlloc(reinterpret_cast<uintptr_t>(p), bytes) ? 0 : 1;
}

API void ddpmsim_set_sticky_error(int code, const char* detail)
{
    std::lock_guard<std::mutex> lock(g_mu);
    setSticky(code, detail ? detail : "");
}

API int ddpmsim_context_status(void)
{
    std::lock_guard<std::mutex> lock(g_mu);
    return contextStatus();
}

API void ddpmsim_count_gemm(void) { c_gemms++; }

// ---- driver API ---------------------------------------------------------------------------------------------

API int cuInit(unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (flags != 0) return fail(INVALID_VALUE, "cuInit: flags must be 0");
    if (!g_initialized)
    {
        const char* mode = getenv("DDPM_CUDA_SIM_EXEC");
        g_immediate = mode && strcmp(mode, "immediate") == 0;
        g_initialized = true;
    }
    return SUCCESS;
}

API int cuDriverGetVersion(int* version)
{
    if (!version) return INVALID_VALUE;
    *version = 12080;
    return SUCCESS;
}

API int cuDeviceGetCount(int* count)
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (!count) return INVALID_VALUE;
    *count = 1;
    return SUCCESS;
}

API int cuDeviceGet(int* device, int ordinal)
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (!device) return INVALID_VALUE;
    if (ordinal != 0) return INVALID_DEVICE;
    *device = 0;
    return SUCCESS;
}

API int cuDeviceGetName(char* name, int len, int device)
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (!name || len <= 0) return INVALID_VALUE;
    if (device != 0) return INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", "CUDA simulator (CPU)");
    return SUCCESS;
}

API int cuDeviceTotalMem_v2(size_t* bytes, int device)
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (!bytes) return INVALID_VALUE;
    if (device != 0) return INVALID_DEVICE;
    *bytes = kTotalMemory;
    return SUCCESS;
}

API int cuDeviceGetAttribute(int* value, int attribute, int device)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_initialized) return NOT_INITIALIZED;
    if (!value) return fail(INVALID_VALUE);
    if (device != 0) return fail(INVALID_DEVICE);
    return attributeValue(attribute, value);
}

API int cuDevicePrimaryCtxRetain(void** context, int device)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_initialized) return NOT_INITIALIZED;
    if (!context) return fail(INVALID_VALUE);
    if (device != 0) return fail(INVALID_DEVICE);
    g_primary.refs++;
    *context = &g_primary;
    return SUCCESS;
}

API int cuDevicePrimaryCtxRelease_v2(int device)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_initialized) return NOT_INITIALIZED;
    if (device != 0) return fail(INVALID_DEVICE);
    if (g_primary.refs <= 0) return fail(INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: the primary context is not retained");
    if (--g_primary.refs == 0) destroyContextState();
    return SUCCESS;
}

API int cuCtxSetCurrent(void* context)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_initialized) return NOT_INITIALIZED;
    if (context == nullptr)
    {
        t_current = nullptr;
        return SUCCESS;
    }
    if (context != &g_primary || g_primary.refs <= 0) return fail(INVALID_CONTEXT, format("cuCtxSetCurrent: unknown context %p", context));
    t_current = &g_primary;
    return SUCCESS;
}

API int cuCtxGetCurrent(void** context)
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (!context) return INVALID_VALUE;
    *context = t_current;
    return SUCCESS;
}

API int cuCtxSynchronize(void)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    c_syncs++;
    flushAll();
    return g_sticky;
}

API int cuMemAlloc_v2(uint64_t* dptr, size_t bytes)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!dptr || bytes == 0) return fail(INVALID_VALUE, "cuMemAlloc: null result pointer or 0 bytes");
    size_t accounted = (bytes + 511) & ~(size_t)511;
    if (accounted < bytes || g_used + accounted > kTotalMemory)
        return fail(OUT_OF_MEMORY, format("cuMemAlloc: %zu bytes asked, %llu of %llu free", bytes,
                                        (unsigned long long)(kTotalMemory - g_used), (unsigned long long)kTotalMemory));
    Alloc a{};
    a.size = bytes;
    a.accounted = accounted;
    a.rawSize = kGuard + bytes + kGuard;
    if (bytes >= (1u << 20))
    {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        a.rawSize = (a.rawSize + page - 1) / page * page;
        void* m = mmap(nullptr, a.rawSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return fail(OUT_OF_MEMORY, format("cuMemAlloc: the host could not map %zu bytes", a.rawSize));
        a.raw = static_cast<char*>(m);
        a.mapped = true;
    }
    else
    {
        void* m = nullptr;
        if (posix_memalign(&m, 256, (a.rawSize + 255) & ~(size_t)255) != 0)
            return fail(OUT_OF_MEMORY, format("cuMemAlloc: the host could not allocate %zu bytes", a.rawSize));
        a.raw = static_cast<char*>(m);
    }
    a.base = reinterpret_cast<uintptr_t>(a.raw + kGuard);
    a.serial = ++g_allocSerial;
    memset(a.raw, kGuardByte, kGuard);
    memset(a.raw + kGuard + bytes, kGuardByte, kGuard);
    if (bytes <= kNanFillLimit) fillNan(a.raw + kGuard, bytes);
    g_allocs[a.base] = a;
    g_used += accounted;
    c_allocs++;
    *dptr = a.base;
    return SUCCESS;
}

API int cuMemFree_v2(uint64_t dptr)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    auto it = g_allocs.find((uintptr_t)dptr);
    if (it == g_allocs.end())
        return fail(INVALID_VALUE, format("cuMemFree: 0x%llx is not the start of a live allocation", (unsigned long long)dptr));
    // CUDA's cuMemFree waits for the device; queued work may still use the block.
    if (anyPending()) flushAll();
    std::string damage = guardDamage(it->second);
    if (!damage.empty() && g_sticky == SUCCESS) setSticky(ILLEGAL_ADDRESS, damage + " (found at cuMemFree); the last work that ran: " + g_lastWork);
    releaseAlloc(it->second);
    g_allocs.erase(it);
    return g_sticky;
}

API int cuMemGetInfo_v2(size_t* free_, size_t* total)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!free_ || !total) return fail(INVALID_VALUE);
    *free_ = kTotalMemory - g_used;
    *total = kTotalMemory;
    return SUCCESS;
}

API int cuMemHostAlloc(void** p, size_t bytes, unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!p || bytes == 0 || (flags & ~7u) != 0) return fail(INVALID_VALUE, "cuMemHostAlloc: null pointer, 0 bytes or unknown flags");
    void* m = nullptr;
    if (posix_memalign(&m, 4096, bytes) != 0) return fail(OUT_OF_MEMORY);
    g_hostAllocs[reinterpret_cast<uintptr_t>(m)] = bytes;
    *p = m;
    return SUCCESS;
}

API int cuMemFreeHost(void* p)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!g_hostAllocs.erase(reinterpret_cast<uintptr_t>(p))) return fail(INVALID_VALUE, format("cuMemFreeHost: %p was not allocated by cuMemHostAlloc", p));
    free(p);
    return SUCCESS;
}

API int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t bytes, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemcpyHtoDAsync: unknown stream %p", stream));
    if (bytes == 0) return SUCCESS;
    if (!src || !findAlloc(dst, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyHtoDAsync: %zu bytes to 0x%llx do not fit one device allocation (or the source is null)",
                                       bytes, (unsigned long long)dst));
    c_htod += bytes;
    // The source is read when the copy runs, as the device's DMA would.
    enqueue(s, format("cuMemcpyHtoDAsync (%zu bytes to 0x%llx)", bytes, (unsigned long long)dst),
        [dst, src, bytes] { memcpy(reinterpret_cast<void*>(dst), src, bytes); });
    return SUCCESS;
}

API int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t bytes, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemcpyDtoHAsync: unknown stream %p", stream));
    if (bytes == 0) return SUCCESS;
    if (!dst || !findAlloc(src, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyDtoHAsync: %zu bytes from 0x%llx do not fit one device allocation (or the destination is null)",
                                       bytes, (unsigned long long)src));
    c_dtoh += bytes;
    enqueue(s, format("cuMemcpyDtoHAsync (%zu bytes from 0x%llx)", bytes, (unsigned long long)src),
        [dst, src, bytes] { memcpy(dst, reinterpret_cast<const void*>(src), bytes); });
    return SUCCESS;
}

API int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemcpyDtoDAsync: unknown stream %p", stream));
    if (bytes == 0) return SUCCESS;
    if (!findAlloc(src, bytes) || !findAlloc(dst, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyDtoDAsync: %zu bytes from 0x%llx to 0x%llx do not fit device allocations", bytes,
                                       (unsigned long long)src, (unsigned long long)dst));
    c_dtod += bytes;
    enqueue(s, format("cuMemcpyDtoDAsync (%zu bytes from 0x%llx to 0x%llx)", bytes, (unsigned long long)src, (unsigned long long)dst),
        [dst, src, bytes] { memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes); });
    return SUCCESS;
}

API int cuMemsetD32Async(uint64_t dst, unsigned value, size_t count, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemsetD32Async: unknown stream %p", stream));
    if (count == 0) return SUCCESS;
    if (dst % 4 != 0 || count > SIZE_MAX / 4 || !findAlloc(dst, count * 4))
        return fail(INVALID_VALUE, format("cuMemsetD32Async: %zu words at 0x%llx are misaligned or outside a device allocation", count,
                                       (unsigned long long)dst));
    c_memsets++;
    enqueue(s, format("cuMemsetD32Async (%zu words at 0x%llx)", count, (unsigned long long)dst), [dst, value, count] {
        uint32_t* p = reinterpret_cast<uint32_t*>(dst);
        for (size_t i = 0; i < count; i++) p[i] = value;
    });
    return SUCCESS;
}

API int cuStreamCreate(void** stream, unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!stream || flags > 1) return fail(INVALID_VALUE, "cuStreamCreate: null result pointer or unknown flags");
    Stream* s = new Stream();
    s->nonBlocking = flags == 1;
    g_streams.insert(s);
    *stream = s;
    return SUCCESS;
}

API int cuStreamDestroy_v2(void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = static_cast<Stream*>(stream);
    if (!g_streams.count(s)) return fail(INVALID_HANDLE, format("cuStreamDestroy: unknown stream %p", stream));
    // Work already queued still completes, as on a device.
    flushStream(s);
    dropQueue(s);
    for (Event* e : g_events)
        if (e->stream == s) e->stream = nullptr;
    g_streams.erase(s);
    delete s;
    return g_sticky;
}

API int cuStreamSynchronize(void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamSynchronize: unknown stream %p", stream));
    c_syncs++;
    flushStream(s);
    return g_sticky;
}

API int cuStreamQuery(void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamQuery: unknown stream %p", stream));
    if (!s->queue.empty())
    {
        c_syncs++;
        flushStream(s);
    }
    return g_sticky;
}

API int cuEventCreate(void** ev, unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!ev || (flags & ~7u) != 0) return fail(INVALID_VALUE, "cuEventCreate: null result pointer or unknown flags");
    Event* e = new Event();
    e->flags = flags;
    g_events.insert(e);
    *ev = e;
    return SUCCESS;
}

API int cuEventDestroy_v2(void* ev)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Event* e = static_cast<Event*>(ev);
    if (!g_events.erase(e)) return fail(INVALID_HANDLE, format("cuEventDestroy: unknown event %p", ev));
    // A marker still queued refers to the event through its own copy of the pointer: keep the object.
    bool pending = e->recorded && e->completedSeq < e->recordSeq;
    if (!pending) delete e;
    return SUCCESS;
}

API int cuEventRecord(void* ev, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Event* e = static_cast<Event*>(ev);
    if (!g_events.count(e)) return fail(INVALID_HANDLE, format("cuEventRecord: unknown event %p", ev));
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuEventRecord: unknown stream %p", stream));
    e->recorded = true;
    e->stream = s;
    e->recordSeq = g_seq + 1;
    uint64_t seq = e->recordSeq;
    enqueue(s, "event marker", [e, seq] {
        e->completedSeq = seq;
        e->ms = nowMs();
        if (!g_events.count(e) && e->recordSeq == seq) delete e;
    });
    return SUCCESS;
}

namespace
{
bool eventPending(const Event* e) { return e->recorded && e->completedSeq < e->recordSeq; }

void waitEvent(Event* e)
{
    if (!eventPending(e)) return;
    if (e->stream) flushStream(e->stream, e->recordSeq);
}
}

API int cuEventQuery(void* ev)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Event* e = static_cast<Event*>(ev);
    if (!g_events.count(e)) return fail(INVALID_HANDLE, format("cuEventQuery: unknown event %p", ev));
    if (eventPending(e))
    {
        // The simulated device finishes the work the moment it is asked about.
        c_syncs++;
        waitEvent(e);
    }
    if (g_sticky != SUCCESS) return g_sticky;
    return eventPending(e) ? NOT_READY : SUCCESS;
}

API int cuStreamWaitEvent(void* stream, void* ev, unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamWaitEvent: unknown stream %p", stream));
    Event* e = static_cast<Event*>(ev);
    if (!g_events.count(e)) return fail(INVALID_HANDLE, format("cuStreamWaitEvent: unknown event %p", ev));
    if (flags != 0) return fail(INVALID_VALUE, "cuStreamWaitEvent: unknown flags");
    // The wait is on the event's latest record at the time of this call (a later record does not change it);
    // an event never recorded, or whose work has run, lets the stream go on at once.
    if (!eventPending(e) || !e->stream) return SUCCESS;
    Stream* waitedOn = e->stream;
    uint64_t seq = e->recordSeq;
    enqueue(s, "cuStreamWaitEvent", [waitedOn, seq] {
        // The simulated device runs the other stream's work up to the marker before this stream's next work.
        if (waitedOn == &g_legacy || g_streams.count(waitedOn)) flushStream(waitedOn, seq);
    });
    return SUCCESS;
}

API int cuEventSynchronize(void* ev)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Event* e = static_cast<Event*>(ev);
    if (!g_events.count(e)) return fail(INVALID_HANDLE, format("cuEventSynchronize: unknown event %p", ev));
    c_syncs++;
    waitEvent(e);
    return g_sticky;
}

API int cuEventElapsedTime(float* ms, void* start, void* end)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!ms) return fail(INVALID_VALUE);
    Event* a = static_cast<Event*>(start);
    Event* b = static_cast<Event*>(end);
    if (!g_events.count(a) || !g_events.count(b)) return fail(INVALID_HANDLE, "cuEventElapsedTime: unknown event");
    if ((a->flags | b->flags) & 2)
        return fail(INVALID_HANDLE, "cuEventElapsedTime: an event was created with CU_EVENT_DISABLE_TIMING");
    if (!a->recorded || !b->recorded) return fail(INVALID_HANDLE, "cuEventElapsedTime: an event was never recorded");
    if (eventPending(a) || eventPending(b)) return NOT_READY;
    *ms = (float)(b->ms - a->ms);
    return SUCCESS;
}

API int cuModuleLoadData(void** module, const void* image)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!module || !image) return fail(INVALID_VALUE, "cuModuleLoadData: null pointer");
    const unsigned char* img = static_cast<const unsigned char*>(image);
    std::unordered_set<std::string> names;
    int r;
    if (img[0] == 0x7f && img[1] == 'E' && img[2] == 'L' && img[3] == 'F') r = readCubin(img, names);
    else r = readPtx(static_cast<const char*>(image), names);
    if (r != SUCCESS) return r == INVALID_IMAGE ? fail(INVALID_IMAGE, "cuModuleLoadData: neither an sm_90 ELF cubin nor PTX text") : r;
    Module* m = new Module{std::move(names)};
    g_modules.insert(m);
    *module = m;
    return SUCCESS;
}

API int cuModuleUnload(void* module)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Module* m = static_cast<Module*>(module);
    if (!g_modules.count(m)) return fail(INVALID_HANDLE, format("cuModuleUnload: unknown module %p", module));
    if (anyPending()) flushAll();
    for (auto it = g_functions.begin(); it != g_functions.end();)
    {
        if ((*it)->module == m)
        {
            delete *it;
            it = g_functions.erase(it);
        }
        else
            ++it;
    }
    g_modules.erase(m);
    delete m;
    return g_sticky;
}

API int cuModuleGetFunction(void** function, void* module, const char* name)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!function || !name) return fail(INVALID_VALUE, "cuModuleGetFunction: null pointer");
    Module* m = static_cast<Module*>(module);
    if (!g_modules.count(m)) return fail(INVALID_HANDLE, format("cuModuleGetFunction: unknown module %p", module));
    if (!m->names.count(name)) return fail(NOT_FOUND, format("cuModuleGetFunction: the module has no kernel %s", name));
    auto it = registry().find(name);
    if (it == registry().end())
        return fail(NOT_FOUND, format("cuModuleGetFunction: kernel %s is in the image but was not compiled into the simulator "
                                      "(rebuild it with tests/CudaSim/build.sh)", name));
    for (Function* f : g_functions)
        if (f->module == m && f->kernel == it->second)
        {
            *function = f;
            return SUCCESS;
        }
    Function* f = new Function{m, it->second};
    g_functions.insert(f);
    *function = f;
    return SUCCESS;
}

API int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned sharedBytes, void* stream, void** kernelParams, void** extra)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Function* f = static_cast<Function*>(function);
    if (!g_functions.count(f)) return fail(INVALID_HANDLE, format("cuLaunchKernel: unknown function %p", function));
    Kernel* k = f->kernel;
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuLaunchKernel(%s): unknown stream %p", k->name.c_str(), stream));
    if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): grid %ux%ux%u is outside 1..2^31-1 x 1..65535 x 1..65535", k->name.c_str(), gx, gy, gz));
    if (bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): block %ux%ux%u exceeds 1024x1024x64 or 1024 threads", k->name.c_str(), bx, by, bz));
    if (sharedBytes > kMaxShared)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): %u bytes of dynamic shared memory exceed %u", k->name.c_str(), sharedBytes, kMaxShared));
    if (sharedBytes + k->staticShared > kMaxShared)
        return fail(LAUNCH_OUT_OF_RESOURCES, format("cuLaunchKernel(%s): %u dynamic + %zu static bytes of shared memory exceed %u",
                                                 k->name.c_str(), sharedBytes, k->staticShared, kMaxShared));
    if (extra) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): the extra argument is not supported by the simulator", k->name.c_str()));
    unsigned np = k->info.paramCount;
    if (np > 0 && !kernelParams) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): kernelParams is null for %u parameters", k->name.c_str(), np));
    for (unsigned i = 0; i < np; i++)
        if (!kernelParams[i]) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): kernelParams[%u] is null", k->name.c_str(), i));
    auto rec = std::make_shared<LaunchRecord>();
    rec->kernel = k;
    rec->args = ::operator new(k->info.argsSize ? k->info.argsSize : 1, std::align_val_t(k->info.argsAlign));
    k->info.pack(rec->args, kernelParams);
    for (unsigned i = 0; i < np; i++)
    {
        if (!(k->info.pointerParams >> i & 1)) continue;
        uintptr_t p;
        memcpy(&p, kernelParams[i], sizeof p);
        if (p != 0 && !findAlloc(p, 0) && !inHostAlloc(p))
            return fail(INVALID_VALUE, format("cuLaunchKernel(%s): pointer parameter %u (0x%llx) is not in any device allocation",
                                           k->name.c_str(), i, (unsigned long long)p));
    }
    rec->grid[0] = gx;
    rec->grid[1] = gy;
    rec->grid[2] = gz;
    rec->block[0] = bx;
    rec->block[1] = by;
    rec->block[2] = bz;
    rec->dynamicShared = sharedBytes;
    c_launches++;
    enqueue(s, "kernel " + k->name, [rec] { runLaunch(*rec); });
    return SUCCESS;
}

API int cuGetErrorName(int error, const char** name)
{
    if (!name) return INVALID_VALUE;
    const ErrorText* e = findError(error);
    if (!e)
    {
        *name = nullptr;
        return INVALID_VALUE;
    }
    *name = e->name;
    return SUCCESS;
}

API int cuGetErrorString(int error, const char** text)
{
    if (!text) return INVALID_VALUE;
    const ErrorText* e = findError(error);
    if (!e)
    {
        *text = nullptr;
        return INVALID_VALUE;
    }
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_detail.find(error);
    if (it == g_detail.end() || it->second.empty())
    {
        *text = e->text;
        return SUCCESS;
    }
    g_texts.push_back(std::string(e->text) + " (simulator: " + it->second + ")");
    *text = g_texts.back().c_str();
    return SUCCESS;
}
}
