// libcuda.so.1 of the CUDA simulator: the driver API entry points the Ddpm binding calls, run on the CPU.
// A test harness only: device pointers are host memory, kernels are the same CUDA C sources compiled for
// the host (see cuda_sim_kernel.h), and work queued on a stream runs only when the host synchronises.
// This file holds the entry points, the options, errors, streams and events; memory.cpp the allocations,
// scheduler.cpp the launches, checks.cpp the instrumented checks, module.cpp the module images.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sim_internal.h"

namespace sim
{
namespace
{
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
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
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

Context g_primary;
thread_local Context* t_current = nullptr;

std::string g_stickyDetail;
std::map<int, std::string> g_detail;  // latest detail per code, shown by cuGetErrorString
std::deque<std::string> g_texts;      // every string cuGetErrorString handed out stays valid

std::unordered_set<Event*> g_events;
std::unordered_set<Module*> g_modules;
std::unordered_set<Function*> g_functions;
bool g_immediate = false;
uint64_t g_launchSerial = 0;
std::string g_optionText;  // what ddpmsim_get_option last returned

double nowMs()
{
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

struct CheckName
{
    const char* name;
    unsigned bit;
};
const CheckName kCheckNames[] = {
    {"race", DDPMSIM_CHECK_RACE},     {"bounds", DDPMSIM_CHECK_BOUNDS},   {"init", DDPMSIM_CHECK_INIT},
    {"fence", DDPMSIM_CHECK_FENCE},   {"poison", DDPMSIM_CHECK_POISON},   {"overlap", DDPMSIM_CHECK_OVERLAP},
    {"nccl-async", DDPMSIM_CHECK_NCCL_ASYNC}, {"resources", DDPMSIM_CHECK_RESOURCES}, {"order", DDPMSIM_CHECK_ORDER},
};

std::string checksText(unsigned bits)
{
    std::string s;
    for (const auto& c : kCheckNames)
        if (bits & c.bit) s += (s.empty() ? "" : ",") + std::string(c.name);
    return s.empty() ? "none" : s;
}

// DDPM_CUDA_SIM_SCHEDULE: ordered, reverse, random (a seed from the clock) or random:SEED.
bool parseSchedule(const char* v, Options& o, std::string& error)
{
    if (strcmp(v, "ordered") == 0) o.schedule = Schedule::Ordered;
    else if (strcmp(v, "reverse") == 0) o.schedule = Schedule::Reverse;
    else if (strcmp(v, "random") == 0)
    {
        o.schedule = Schedule::Random;
        o.seed = ((uint64_t)time(nullptr) * 1000003u ^ (uint64_t)getpid()) % 1000000007u;
    }
    else if (strncmp(v, "random:", 7) == 0 && v[7] != 0)
    {
        char* end = nullptr;
        unsigned long long seed = strtoull(v + 7, &end, 0);
        if (*end != 0)
        {
            error = format("schedule random:%s: the seed is not a number", v + 7);
            return false;
        }
        o.schedule = Schedule::Random;
        o.seed = seed;
    }
    else
    {
        error = format("schedule '%s' is not ordered, reverse, random or random:SEED", v);
        return false;
    }
    return true;
}

// DDPM_CUDA_SIM_CHECK: a comma list applied to the default set: a check's name adds it, -name removes it,
// none clears every check, all sets every one, default restores the default set.
bool parseChecks(const char* v, Options& o, std::string& error)
{
    unsigned bits = kDefaultChecks;
    std::string list(v);
    size_t pos = 0;
    while (pos <= list.size())
    {
        size_t comma = list.find(',', pos);
        std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        pos = comma == std::string::npos ? list.size() + 1 : comma + 1;
        while (!item.empty() && item.front() == ' ') item.erase(0, 1);
        while (!item.empty() && item.back() == ' ') item.pop_back();
        if (item.empty()) continue;
        bool remove = item[0] == '-';
        if (remove || item[0] == '+') item.erase(0, 1);
        if (item == "none") { bits = 0; continue; }
        if (item == "default") { bits = kDefaultChecks; continue; }
        unsigned bit = 0;
        if (item == "all") bit = ~0u;
        for (const auto& c : kCheckNames)
            if (item == c.name) bit = c.bit;
        if (bit == 0)
        {
            std::string names;
            for (const auto& c : kCheckNames) names += std::string(names.empty() ? "" : ", ") + c.name;
            error = format("check '%s' is not one of %s, all, none, default (a leading - removes one)", item.c_str(), names.c_str());
            return false;
        }
        bits = remove ? bits & ~bit : bits | bit;
    }
    o.checks = bits & ((DDPMSIM_CHECK_ORDER << 1) - 1);
    return true;
}

// DDPM_CUDA_SIM_SUMMARY=FILE: one line per process at exit, appended, saying what ran under which options.
void writeSummary()
{
    const char* path = getenv("DDPM_CUDA_SIM_SUMMARY");
    if (!path || !*path || g_count.launches == 0) return;
    std::string line = format("pid %d: schedule %s, checks %s: %llu launches, %llu instrumented, %llu order-checked, %llu accesses checked\n",
        (int)getpid(), scheduleText(g_opt.schedule, g_opt.seed).c_str(), checksText(g_opt.checks).c_str(),
        (unsigned long long)g_count.launches, (unsigned long long)g_count.checkedLaunches, (unsigned long long)g_count.orderChecks,
        (unsigned long long)g_count.checkedAccesses);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t w = write(fd, line.data(), line.size());
    (void)w;
    close(fd);
}
}  // namespace

std::mutex g_mu;
bool g_initialized = false;
int g_sticky = SUCCESS;
Options g_opt{Schedule::Random, 0, kDefaultChecks};
Counters g_count;
Stream g_legacy;
std::unordered_set<Stream*> g_streams;
uint64_t g_seq = 0;
std::string g_lastWork = "(nothing has run yet)";

const ErrorText* findError(int code)
{
    for (const auto& e : kErrors)
        if (e.code == code) return &e;
    return nullptr;
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

std::string scheduleText(Schedule s, uint64_t seed)
{
    switch (s)
    {
        case Schedule::Ordered: return "ordered";
        case Schedule::Reverse: return "reverse";
        default: return format("random:%llu", (unsigned long long)seed);
    }
}

bool readEnvironmentOptions(std::string& error)
{
    Options o;
    o.checks = kDefaultChecks;
    o.schedule = Schedule::Random;
    const char* s = getenv("DDPM_CUDA_SIM_SCHEDULE");
    if (!parseSchedule(s && *s ? s : "random", o, error))
    {
        error = "DDPM_CUDA_SIM_SCHEDULE: " + error;
        return false;
    }
    const char* c = getenv("DDPM_CUDA_SIM_CHECK");
    if (c && !parseChecks(c, o, error))
    {
        error = "DDPM_CUDA_SIM_CHECK: " + error;
        return false;
    }
    g_opt = o;
    return true;
}

int fail(int code, const std::string& detail)
{
    g_detail[code] = detail;
    return code;
}

void setSticky(int code, const std::string& detail)
{
    if (g_sticky != SUCCESS) return;
    // The schedule that ran, so DDPM_CUDA_SIM_SCHEDULE can run the same order again.
    std::string full = detail + format(" [simulator schedule %s, checks %s]", scheduleText(g_opt.schedule, g_opt.seed).c_str(),
                                    checksText(g_opt.checks).c_str());
    g_sticky = code;
    g_stickyDetail = full;
    g_detail[code] = full;
    const ErrorText* e = findError(code);
    fprintf(stderr, "cuda simulator: %s (%s): %s\n", e ? e->name : "CUDA_ERROR", e ? e->text : "", full.c_str());
    fflush(stderr);
    dropAllWork();
}

int contextStatus()
{
    if (!g_initialized) return NOT_INITIALIZED;
    if (t_current != &g_primary || g_primary.refs <= 0) return INVALID_CONTEXT;
    return g_sticky;
}

// ---- streams and execution --------------------------------------------------------------------------------

Stream* lookupStream(void* h)
{
    uintptr_t v = reinterpret_cast<uintptr_t>(h);
    if (v == 0 || v == 1 || v == 2) return &g_legacy;
    Stream* s = static_cast<Stream*>(h);
    return g_streams.count(s) ? s : nullptr;
}

namespace
{
void runOne(Stream* s)
{
    Work w = std::move(s->queue.front());
    s->queue.pop_front();
    g_lastWork = w.what;
    w.run();
}

void dropQueue(Stream* s)
{
    for (auto& w : s->queue)
        if (w.drop) w.drop();
    s->queue.clear();
}
}  // namespace

void flushStream(Stream* s, uint64_t limit)
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

void dropAllWork()
{
    dropQueue(&g_legacy);
    for (Stream* o : g_streams) dropQueue(o);
}

void enqueue(Stream* s, std::string what, std::function<void()> run, std::function<void()> drop, Uses uses)
{
    if (s->capture)
    {
        recordWork(s, Work{0, std::move(what), std::move(run), std::move(drop), std::move(uses)});
        return;
    }
    s->queue.push_back(Work{++g_seq, std::move(what), std::move(run), std::move(drop), std::move(uses)});
    if (g_immediate) flushStream(s);
}

namespace
{
// Context teardown when the last primary-context reference goes: CUDA frees everything the context owned.
void destroyContextState()
{
    dropAllWork();
    destroyGraphs();
    for (Stream* s : g_streams) endCaptureOf(s);
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

// A copy that reads the pending result of a collective fails as a kernel would (see checks.cpp).
bool readsPending(uintptr_t src, size_t bytes, const char* what)
{
    if (!checking(DDPMSIM_CHECK_NCCL_ASYNC)) return false;
    uintptr_t q = firstPending(src, bytes);
    if (q == UINTPTR_MAX) return false;
    Alloc* a = findAlloc(q, 0);
    setSticky(LAUNCH_FAILED, format("%s reads byte %llu of %s before %s completed in stream order (the result lands at the "
                                    "collective's completion point: a missing wait or event)",
                                 what, (unsigned long long)(a ? q - a->base : 0), a ? describeAlloc(*a).c_str() : "an allocation",
                                 a ? a->pendingWhat.c_str() : "a collective"));
    return true;
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
        {16, 132},       // MULTIPROCESSOR_COUNT
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
}  // namespace sim

using namespace sim;

// ---- shared with the other simulated libraries and tests --------------------------------------------------

extern "C" {

API void ddpmsim_get_counters(DdpmSimCounters* out)
{
    if (!out) return;
    out->launches = g_count.launches;
    out->host_syncs = g_count.syncs;
    out->bytes_htod = g_count.htod;
    out->bytes_dtoh = g_count.dtoh;
    out->bytes_dtod = g_count.dtod;
    out->memsets = g_count.memsets;
    out->gemms = g_count.gemms;
    out->allocations = g_count.allocs;
    out->checked_launches = g_count.checkedLaunches;
    out->order_checks = g_count.orderChecks;
    out->checked_accesses = g_count.checkedAccesses;
    out->graph_launches = g_count.graphLaunches;
    out->graph_kernels = g_count.graphKernels;
}

API void ddpmsim_reset_counters(void)
{
    g_count.launches = g_count.syncs = g_count.htod = g_count.dtoh = g_count.dtod = g_count.memsets = g_count.gemms = g_count.allocs = 0;
    g_count.checkedLaunches = g_count.orderChecks = g_count.checkedAccesses = 0;
    g_count.graphLaunches = g_count.graphKernels = 0;
}

API const char* ddpmsim_version(void) { return "ddpm cuda simulator 2"; }

API unsigned ddpmsim_checks(void)
{
    std::lock_guard<std::mutex> lock(g_mu);
    return g_opt.checks;
}

API int ddpmsim_set_option(const char* name, const char* value)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!name || !value) return INVALID_VALUE;
    Options o = g_opt;
    std::string error;
    bool ok = strcmp(name, "schedule") == 0 ? parseSchedule(value, o, error)
              : strcmp(name, "check") == 0  ? parseChecks(value, o, error)
                                            : (error = format("no option '%s' (schedule, check)", name), false);
    if (!ok) return fail(INVALID_VALUE, "ddpmsim_set_option: " + error);
    if ((o.checks & DDPMSIM_CHECK_FENCE) && g_initialized) installFaultHandler();
    // A schedule set now repeats its orders from here: launches are counted from 0 again.
    if (strcmp(name, "schedule") == 0) g_launchSerial = 0;
    g_opt = o;
    return SUCCESS;
}

API const char* ddpmsim_get_option(const char* name)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!name) return nullptr;
    if (strcmp(name, "schedule") == 0) g_optionText = scheduleText(g_opt.schedule, g_opt.seed);
    else if (strcmp(name, "check") == 0) g_optionText = checksText(g_opt.checks);
    else return nullptr;
    return g_optionText.c_str();
}

API void ddpmsim_clear_error(void)
{
    std::lock_guard<std::mutex> lock(g_mu);
    g_sticky = SUCCESS;
    g_stickyDetail.clear();
}

API int ddpmsim_enqueue_host_work(void* stream, const char* what, void (*fn)(void*), void* ctx, void (*free_ctx)(void*))
{
    std::lock_guard<std::mutex> lock(g_mu);
    int st = contextStatus();
    if (st != SUCCESS) return st;
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("%s: unknown stream %p", what, stream));
    if (int st = captureStatus(s, what)) return st;
    // The context lives as long as the work: once after it ran or was dropped, or, captured into a graph, until the
    // last graph that replays it goes.
    std::shared_ptr<void> holder(ctx, [free_ctx](void* c) {
        if (free_ctx) free_ctx(c);
    });
    enqueue(s, what, [fn, holder] { fn(holder.get()); });
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

API void ddpmsim_count_gemm(void) { g_count.gemms++; }

// Called from queued work, which runs under g_mu already.
API void ddpmsim_mark_written(const void* p, size_t bytes) { markRange(reinterpret_cast<uintptr_t>(p), bytes, kHostWrite); }

API void ddpmsim_mark_pending(void* p, size_t bytes, const char* what)
{
    fillNan(p, bytes);
    markRange(reinterpret_cast<uintptr_t>(p), bytes, kPendingWrite);
    if (Alloc* a = findAlloc(reinterpret_cast<uintptr_t>(p), 0)) a->pendingWhat = what ? what : "a collective";
}

// ---- driver API ---------------------------------------------------------------------------------------------

API int cuInit(unsigned flags)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (flags != 0) return fail(INVALID_VALUE, "cuInit: flags must be 0");
    if (!g_initialized)
    {
        const char* mode = getenv("DDPM_CUDA_SIM_EXEC");
        g_immediate = mode && strcmp(mode, "immediate") == 0;
        std::string error;
        if (!readEnvironmentOptions(error))
        {
            fprintf(stderr, "cuda simulator: %s\n", error.c_str());
            return fail(INVALID_VALUE, error);
        }
        if (checking(DDPMSIM_CHECK_FENCE)) installFaultHandler();
        atexit(writeSummary);
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
    if (int st = unsafeDuringCapture("cuCtxSynchronize")) return st;
    g_count.syncs++;
    flushAll();
    return g_sticky;
}

API int cuMemAlloc_v2(uint64_t* dptr, size_t bytes)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    if (!dptr || bytes == 0) return fail(INVALID_VALUE, "cuMemAlloc: null result pointer or 0 bytes");
    return allocateDevice(bytes, dptr);
}

API int cuMemFree_v2(uint64_t dptr)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    auto it = g_allocs.find((uintptr_t)dptr);
    if (it == g_allocs.end())
        return fail(INVALID_VALUE, format("cuMemFree: 0x%llx is not the start of a live allocation", (unsigned long long)dptr));
    // cuMemFree synchronises: not while a capture forbids it.
    if (int st = unsafeDuringCapture("cuMemFree")) return st;
    // CUDA's cuMemFree waits for the device; queued work may still use the block.
    if (anyPending()) flushAll();
    std::string damage = guardDamage(it->second);
    if (!damage.empty() && g_sticky == SUCCESS) setSticky(ILLEGAL_ADDRESS, damage + " (found at cuMemFree); the last work that ran: " + g_lastWork);
    rememberFreed(it->second);
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
    if (int st = captureStatus(s, "cuMemcpyHtoDAsync")) return st;
    if (bytes == 0) return SUCCESS;
    if (!src || !findAlloc(dst, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyHtoDAsync: %zu bytes to 0x%llx do not fit one device allocation (or the source is null)",
                                       bytes, (unsigned long long)dst));
    if (capturing(s) && !inHostAlloc(reinterpret_cast<uintptr_t>(src)))
        return refuseInCapture(s, "cuMemcpyHtoDAsync", format("the source %p is pageable host memory (a captured copy needs pinned memory)", src));
    g_count.htod += bytes;
    // The source is read when the copy runs, as the device's DMA would.
    enqueue(
        s, format("cuMemcpyHtoDAsync (%zu bytes to 0x%llx)", bytes, (unsigned long long)dst),
        [dst, src, bytes] {
            memcpy(reinterpret_cast<void*>(dst), src, bytes);
            markRange(dst, bytes, kHostWrite);
        },
        nullptr, {{dst, bytes}});
    return SUCCESS;
}

API int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t bytes, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemcpyDtoHAsync: unknown stream %p", stream));
    if (int st = captureStatus(s, "cuMemcpyDtoHAsync")) return st;
    if (bytes == 0) return SUCCESS;
    if (capturing(s) && !inHostAlloc(reinterpret_cast<uintptr_t>(dst)))
        return refuseInCapture(s, "cuMemcpyDtoHAsync", format("the destination %p is pageable host memory (a captured copy needs pinned memory)", dst));
    if (!dst || !findAlloc(src, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyDtoHAsync: %zu bytes from 0x%llx do not fit one device allocation (or the destination is null)",
                                       bytes, (unsigned long long)src));
    g_count.dtoh += bytes;
    std::string what = format("cuMemcpyDtoHAsync (%zu bytes from 0x%llx)", bytes, (unsigned long long)src);
    enqueue(
        s, what, [dst, src, bytes, what] {
            if (!readsPending(src, bytes, what.c_str())) memcpy(dst, reinterpret_cast<const void*>(src), bytes);
        },
        nullptr, {{src, bytes}});
    return SUCCESS;
}

API int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemcpyDtoDAsync: unknown stream %p", stream));
    if (int st = captureStatus(s, "cuMemcpyDtoDAsync")) return st;
    if (bytes == 0) return SUCCESS;
    if (!findAlloc(src, bytes) || !findAlloc(dst, bytes))
        return fail(INVALID_VALUE, format("cuMemcpyDtoDAsync: %zu bytes from 0x%llx to 0x%llx do not fit device allocations", bytes,
                                       (unsigned long long)src, (unsigned long long)dst));
    // CUDA leaves a copy between overlapping ranges undefined (it is not a memmove).
    if (checking(DDPMSIM_CHECK_OVERLAP) && dst != src && dst < src + bytes && src < dst + bytes)
        return fail(INVALID_VALUE, format("cuMemcpyDtoDAsync: the %zu bytes from 0x%llx and to 0x%llx overlap (by %llu bytes); CUDA leaves "
                                       "such a copy undefined (copy through a temporary)",
                                       bytes, (unsigned long long)src, (unsigned long long)dst,
                                       (unsigned long long)(dst < src ? dst + bytes - src : src + bytes - dst)));
    g_count.dtod += bytes;
    std::string what = format("cuMemcpyDtoDAsync (%zu bytes from 0x%llx to 0x%llx)", bytes, (unsigned long long)src, (unsigned long long)dst);
    enqueue(
        s, what, [dst, src, bytes, what] {
            if (readsPending(src, bytes, what.c_str())) return;
            memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
            copyWrittenState(dst, src, bytes);
        },
        nullptr, {{src, bytes}, {dst, bytes}});
    return SUCCESS;
}

API int cuMemsetD32Async(uint64_t dst, unsigned value, size_t count, void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuMemsetD32Async: unknown stream %p", stream));
    if (int st = captureStatus(s, "cuMemsetD32Async")) return st;
    if (count == 0) return SUCCESS;
    if (dst % 4 != 0 || count > SIZE_MAX / 4 || !findAlloc(dst, count * 4))
        return fail(INVALID_VALUE, format("cuMemsetD32Async: %zu words at 0x%llx are misaligned or outside a device allocation", count,
                                       (unsigned long long)dst));
    g_count.memsets++;
    enqueue(
        s, format("cuMemsetD32Async (%zu words at 0x%llx)", count, (unsigned long long)dst),
        [dst, value, count] {
            uint32_t* p = reinterpret_cast<uint32_t*>(dst);
            for (size_t i = 0; i < count; i++) p[i] = value;
            markRange(dst, count * 4, kHostWrite);
        },
        nullptr, {{dst, count * 4}});
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
    endCaptureOf(s);
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
    if (capturing(s)) return refuseInCapture(s, "cuStreamSynchronize", "the stream is capturing (its work is recorded, not run)");
    if (s == &g_legacy)
        if (int st = unsafeDuringCapture("cuStreamSynchronize of the legacy stream")) return st;
    g_count.syncs++;
    flushStream(s);
    return g_sticky;
}

// With nccl-async, a query of unfinished work answers NOT_READY and lets the device finish it afterwards (a
// later query answers SUCCESS), as a GPU busy with the work would; without it the query finishes the work first.
API int cuStreamQuery(void* stream)
{
    std::lock_guard<std::mutex> lock(g_mu);
    NEED_CONTEXT();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuStreamQuery: unknown stream %p", stream));
    if (capturing(s)) return refuseInCapture(s, "cuStreamQuery", "the stream is capturing");
    if (s->queue.empty()) return g_sticky;
    flushStream(s);
    if (g_sticky != SUCCESS) return g_sticky;
    return checking(DDPMSIM_CHECK_NCCL_ASYNC) ? NOT_READY : SUCCESS;
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
    if (capturing(s))
        return refuseInCapture(s, "cuEventRecord", "event record nodes are not modelled by the simulator (a GPU would capture one)");
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
    if (!eventPending(e)) return g_sticky;
    waitEvent(e);
    if (g_sticky != SUCCESS) return g_sticky;
    return checking(DDPMSIM_CHECK_NCCL_ASYNC) || eventPending(e) ? NOT_READY : SUCCESS;
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
    if (capturing(s)) return refuseInCapture(s, "cuStreamWaitEvent", "event wait nodes are not modelled by the simulator");
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
    g_count.syncs++;
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
    Module* m = new Module();
    int r = readImage(image, *m);
    if (r != SUCCESS)
    {
        delete m;
        return r == INVALID_IMAGE ? fail(INVALID_IMAGE, "cuModuleLoadData: neither an sm_90 ELF cubin nor PTX text") : r;
    }
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
    auto in = m->kernels.find(name);
    if (in == m->kernels.end()) return fail(NOT_FOUND, format("cuModuleGetFunction: the module has no kernel %s", name));
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
    Function* f = new Function{m, it->second, in->second};
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
    const char* kn = k->name.c_str();
    Stream* s = lookupStream(stream);
    if (!s) return fail(INVALID_HANDLE, format("cuLaunchKernel(%s): unknown stream %p", kn, stream));
    if (int st = captureStatus(s, "cuLaunchKernel")) return st;
    if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): grid %ux%ux%u is outside 1..2^31-1 x 1..65535 x 1..65535", kn, gx, gy, gz));
    if (bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): block %ux%ux%u exceeds 1024x1024x64 or 1024 threads", kn, bx, by, bz));
    if (sharedBytes > kMaxShared)
        return fail(INVALID_VALUE, format("cuLaunchKernel(%s): %u bytes of dynamic shared memory exceed %u", kn, sharedBytes, kMaxShared));
    size_t staticShared = k->staticShared;
    if (f->image.staticShared > 0 && (size_t)f->image.staticShared > staticShared) staticShared = (size_t)f->image.staticShared;
    if (sharedBytes + staticShared > kMaxShared)
        return fail(LAUNCH_OUT_OF_RESOURCES, format("cuLaunchKernel(%s): %u dynamic + %zu static bytes of shared memory exceed %u",
                                                 kn, sharedBytes, staticShared, kMaxShared));
    if (checking(DDPMSIM_CHECK_RESOURCES) && f->image.registers > 0)
    {
        // sm_90: 65536 registers per block, allocated per warp in units of 256.
        uint64_t threads = (uint64_t)bx * by * bz, warps = (threads + 31) / 32;
        uint64_t perWarp = ((uint64_t)f->image.registers * 32 + 255) / 256 * 256;
        if (warps * perWarp > 65536)
            return fail(LAUNCH_OUT_OF_RESOURCES,
                format("cuLaunchKernel(%s): a block of %llu threads needs %llu registers (%d per thread in the cubin, %llu per warp); "
                       "sm_90 has 65536 per block, enough for %llu threads of this kernel",
                    kn, (unsigned long long)threads, (unsigned long long)(warps * perWarp), f->image.registers,
                    (unsigned long long)perWarp, (unsigned long long)(65536 / perWarp * 32)));
    }
    if (extra) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): the extra argument is not supported by the simulator", kn));
    const DdpmSimKernelInfo& info = k->hasPlain ? k->plain : k->instrumented;
    unsigned np = info.paramCount;
    if (np > 0 && !kernelParams) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): kernelParams is null for %u parameters", kn, np));
    for (unsigned i = 0; i < np; i++)
        if (!kernelParams[i]) return fail(INVALID_VALUE, format("cuLaunchKernel(%s): kernelParams[%u] is null", kn, i));
    auto rec = std::make_shared<LaunchRecord>();
    rec->kernel = k;
    rec->argsAlign = info.argsAlign;
    rec->args = ::operator new(info.argsSize ? info.argsSize : 1, std::align_val_t(info.argsAlign));
    info.pack(rec->args, kernelParams);
    for (unsigned i = 0; i < np; i++)
    {
        if (!(info.pointerParams >> i & 1)) continue;
        uintptr_t p;
        memcpy(&p, kernelParams[i], sizeof p);
        if (p != 0 && !findAlloc(p, 0) && !inHostAlloc(p))
            return fail(INVALID_VALUE, format("cuLaunchKernel(%s): pointer parameter %u (0x%llx) is not in any device allocation",
                                           kn, i, (unsigned long long)p));
        if (p != 0) rec->pointers.push_back(p);
    }
    rec->grid[0] = gx;
    rec->grid[1] = gy;
    rec->grid[2] = gz;
    rec->block[0] = bx;
    rec->block[1] = by;
    rec->block[2] = bz;
    rec->dynamicShared = sharedBytes;
    rec->serial = ++g_launchSerial;
    g_count.launches++;
    Uses uses;
    for (uintptr_t p : rec->pointers) uses.push_back({p, 0});
    // The arguments were packed above, at the call: a graph replays the values they had at capture. Each replay is
    // a launch of its own for the schedule (a new serial, so random orders differ from run to run).
    enqueue(
        s, "kernel " + k->name,
        [rec, ran = false]() mutable {
            if (ran) rec->serial = ++g_launchSerial;
            ran = true;
            runLaunch(*rec);
        },
        nullptr, std::move(uses));
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
