// Internal interface of libcuda.so.1 (the simulated driver), shared by its translation units: driver.cpp (the
// cu* entry points), memory.cpp (allocations, fences, NaN poisoning, shadow memory), scheduler.cpp (fibers,
// blocks, warps, barriers, shuffles, the order check), checks.cpp (the instrumented kernels' memory checks and
// race detector) and module.cpp (cubin and PTX images). Nothing here is exported; other libraries use sim_api.h.
// Unless a comment says otherwise, a function here expects the caller to hold g_mu.
#pragma once

#include <stdint.h>

#include <atomic>
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

namespace sim
{
// ---- CUDA's codes -----------------------------------------------------------------------------------------

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
    ILLEGAL_STATE = 401,
    STREAM_CAPTURE_UNSUPPORTED = 900,
    STREAM_CAPTURE_INVALIDATED = 901,
    STREAM_CAPTURE_WRONG_THREAD = 908,
};

struct ErrorText
{
    int code;
    const char* name;
    const char* text;
};
const ErrorText* findError(int code);

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Records detail as the text cuGetErrorString appends for code, and returns code.
int fail(int code, const std::string& detail = "");
// Makes the context's error sticky (once), prints it with the schedule that ran, and drops all queued work.
void setSticky(int code, const std::string& detail);
// 0 when the calling thread has the primary context current and no error is sticky.
int contextStatus();

#define NEED_CONTEXT()                          \
    do                                          \
    {                                           \
        int st_ = ::sim::contextStatus();       \
        if (st_ != ::sim::SUCCESS) return st_;  \
    } while (0)

extern std::mutex g_mu;  // one lock for the whole device: every entry point and all queued work run under it
extern bool g_initialized;
extern int g_sticky;

// ---- options ----------------------------------------------------------------------------------------------

enum class Schedule : uint8_t
{
    Ordered,
    Reverse,
    Random,
};

struct Options
{
    Schedule schedule = Schedule::Random;
    uint64_t seed = 0;
    unsigned checks = 0;  // DdpmSimCheck bits
};
extern Options g_opt;
constexpr unsigned kDefaultChecks = DDPMSIM_CHECK_RACE | DDPMSIM_CHECK_BOUNDS | DDPMSIM_CHECK_INIT | DDPMSIM_CHECK_FENCE |
                                    DDPMSIM_CHECK_POISON | DDPMSIM_CHECK_OVERLAP | DDPMSIM_CHECK_NCCL_ASYNC | DDPMSIM_CHECK_RESOURCES;
constexpr unsigned kInstrumentedChecks = DDPMSIM_CHECK_RACE | DDPMSIM_CHECK_BOUNDS | DDPMSIM_CHECK_INIT;
inline bool checking(unsigned bits) { return (g_opt.checks & bits) != 0; }
// "random:42", "ordered", "reverse".
std::string scheduleText(Schedule s, uint64_t seed);
// The environment's options (DDPM_CUDA_SIM_SCHEDULE, DDPM_CUDA_SIM_CHECK); false with a message when one is invalid.
bool readEnvironmentOptions(std::string& error);

// ---- counters ----------------------------------------------------------------------------------------------

struct Counters
{
    std::atomic<uint64_t> launches{0}, syncs{0}, htod{0}, dtoh{0}, dtod{0}, memsets{0}, gemms{0}, allocs{0};
    std::atomic<uint64_t> checkedLaunches{0}, orderChecks{0}, checkedAccesses{0};
    std::atomic<uint64_t> graphLaunches{0}, graphKernels{0};
};
extern Counters g_count;

// ---- device memory (memory.cpp) ---------------------------------------------------------------------------

// Shadow words of the init check and the race detector, one per 4 bytes of an allocation (see checks.cpp).
// writer: 0 never written, kHostWrite by a copy, memset or library, kPendingWrite a collective's result in
// flight, else the serial of the block that wrote it last. reader: the serial of the first block that read it in
// the current launch, with kManyReaders set when other blocks read it too.
constexpr uint32_t kHostWrite = 1;
constexpr uint32_t kPendingWrite = 2;
constexpr uint32_t kFirstBlockSerial = 3;
constexpr uint32_t kManyReaders = 0x80000000u;

struct Alloc
{
    uintptr_t base = 0;
    size_t size = 0;
    size_t accounted = 0;  // what the device's 16 GiB are charged (512-byte granules)
    char* raw = nullptr;   // the host mapping that holds the guard bytes, the data and (fenced) the no-access page
    size_t rawSize = 0;
    uint64_t serial = 0;
    bool fenced = false;   // mapped with a no-access page right after the data (rounded to 256 bytes)
    bool mapped = false;   // raw came from mmap (else malloc)
    uint32_t* writer = nullptr;  // shadow words, made on first use
    uint32_t* reader = nullptr;
    size_t words = 0;
    std::string pendingWhat;  // the collective whose result is pending somewhere in the allocation
};

extern std::map<uintptr_t, Alloc> g_allocs;  // by base address
extern std::map<uintptr_t, size_t> g_hostAllocs;  // pinned host memory: base, bytes
extern uint64_t g_used;

constexpr uint64_t kTotalMemory = 16ull << 30;  // the simulated device's memory
constexpr size_t kGuard = 256;                  // guard bytes checked before (and, in the slack, after) each allocation
constexpr unsigned char kGuardByte = 0xCB;

void fillNan(void* p, size_t bytes);
// The allocation holding [p, p + bytes); an empty range may sit at the end. Null if none.
Alloc* findAlloc(uintptr_t p, size_t bytes);
bool inHostAlloc(uintptr_t p);
std::string describeAlloc(const Alloc& a);
// Where address p is, for a message: "allocation #3 (...) + 12", "8 bytes past the end of allocation #3 (...)", ...
std::string describeAddress(uintptr_t p);
// Makes a device allocation of bytes (CUresult; the detail through fail()).
int allocateDevice(size_t bytes, uint64_t* dptr);
void releaseAlloc(Alloc& a);
// Empty when the guard bytes around a are intact, else what is damaged.
std::string guardDamage(const Alloc& a);
// Checks every allocation's guard bytes; damage becomes a sticky ILLEGAL_ADDRESS naming the last work that ran.
void checkAllGuards();
// Keeps the address ranges of the last freed allocations, to name a use after free.
void rememberFreed(const Alloc& a);
std::string describeFreed(uintptr_t p);
// Shadow words of a (made on first use).
void ensureShadow(Alloc& a);
// writer shadow of [p, p + bytes) := value, for every allocation it touches (host-side writes).
void markRange(uintptr_t p, size_t bytes, uint32_t value);
// The first byte of [p, p + bytes) whose shadow is kPendingWrite, or UINTPTR_MAX.
uintptr_t firstPending(uintptr_t p, size_t bytes);
// dst's writer shadow := "written" where src's is, for a device-to-device copy.
void copyWrittenState(uintptr_t dst, uintptr_t src, size_t bytes);
// Forgets every shadow (when the block serials wrap around).
void clearAllShadows();
// Installs the SIGSEGV/SIGBUS handler that turns a kernel's fault on a no-access page into ILLEGAL_ADDRESS.
void installFaultHandler();

// ---- streams (driver.cpp) ---------------------------------------------------------------------------------

// Device ranges [base, base + bytes) a piece of work reads or writes (bytes 0: only that base lies in an allocation);
// a graph replay checks them again, as the memory may have been freed since the capture.
using Uses = std::vector<std::pair<uintptr_t, size_t>>;

struct Work
{
    uint64_t seq;
    std::string what;
    std::function<void()> run;   // may run more than once when the work was captured into a graph
    std::function<void()> drop;  // releases resources when the work never runs
    Uses uses;
};

struct Capture;  // graph.cpp

struct Stream
{
    bool nonBlocking = false;
    std::deque<Work> queue;
    Capture* capture = nullptr;  // while capturing, work is recorded into it instead of queued
};

extern Stream g_legacy;  // stream handle 0 (also CU_STREAM_LEGACY and CU_STREAM_PER_THREAD)
extern std::unordered_set<Stream*> g_streams;
extern uint64_t g_seq;
extern std::string g_lastWork;

Stream* lookupStream(void* h);
// Queues work on s, or records it into s's capture.
void enqueue(Stream* s, std::string what, std::function<void()> run, std::function<void()> drop = nullptr, Uses uses = {});
// Runs the queued work of s (up to and including sequence number limit) in order; blocking streams run merged
// with the legacy stream by sequence number.
void flushStream(Stream* s, uint64_t limit = UINT64_MAX);
void flushAll();
bool anyPending();
void dropAllWork();

// ---- stream capture and graphs (graph.cpp) ------------------------------------------------------------------
// Whether s is capturing (its work is recorded, not queued).
bool capturing(const Stream* s);
// SUCCESS, or STREAM_CAPTURE_INVALIDATED when s captures and its capture was invalidated (work is then refused).
int captureStatus(Stream* s, const char* what);
// The operation cannot be captured on s: invalidates the capture, returns STREAM_CAPTURE_UNSUPPORTED with why.
int refuseInCapture(Stream* s, const std::string& what, const std::string& why);
// A potentially unsafe call (one that synchronises, or cuMemFree) while a capture forbids it (global mode, or
// thread-local mode on this thread): invalidates that capture and returns STREAM_CAPTURE_UNSUPPORTED; else SUCCESS.
int unsafeDuringCapture(const std::string& what);
// Records work into s's capture.
void recordWork(Stream* s, Work w);
// A stream goes away: its capture (if any) with it.
void endCaptureOf(Stream* s);
// Context teardown: every graph and executable graph goes.
void destroyGraphs();
// ---- kernels and modules ----------------------------------------------------------------------------------

struct Kernel
{
    std::string name;
    DdpmSimKernelInfo plain{};
    DdpmSimKernelInfo instrumented{};
    bool hasPlain = false;
    bool hasInstrumented = false;
    size_t staticShared = 0;  // seen while running (the most any block declared)
};

// What a cubin says about one kernel (module.cpp); -1 where the image does not say (PTX).
struct ImageKernel
{
    int registers = -1;
    long staticShared = -1;
};

struct Module
{
    std::unordered_map<std::string, ImageKernel> kernels;
};

struct Function
{
    Module* module;
    Kernel* kernel;
    ImageKernel image;
};

std::unordered_map<std::string, Kernel*>& registry();
// Reads an ELF cubin (kernels with register counts and static shared memory) or PTX text (kernel names).
int readImage(const void* image, Module& m);

// ---- launches (scheduler.cpp) -----------------------------------------------------------------------------

constexpr unsigned kMaxShared = 48 * 1024;  // static + dynamic shared memory per block without opt-in

struct LaunchRecord
{
    Kernel* kernel = nullptr;
    unsigned grid[3] = {1, 1, 1};
    unsigned block[3] = {1, 1, 1};
    unsigned dynamicShared = 0;
    void* args = nullptr;       // the argument tuple (packed by the kernel's signature)
    size_t argsAlign = 8;
    std::vector<uintptr_t> pointers;  // the pointer arguments' values
    uint64_t serial = 0;        // launch number, for the schedule's random stream
    ~LaunchRecord();
};

// Runs a launch under the current options; a failure becomes the sticky error.
void runLaunch(LaunchRecord& r);

// The running launch, as the checks see it (scheduler.cpp keeps it current).
struct RunState
{
    unsigned thread = 0;      // linear index of the running thread in its block
    uintptr_t stackTop = 0;   // top of its fiber stack (the stack is the kFiberStack bytes below)
    uintptr_t sharedBase = 0; // the block's shared memory
    size_t sharedUsed = 0;    // bytes of it the block has declared (dynamic and static)
};
extern RunState g_run;
constexpr size_t kFiberStack = 64 * 1024;

// checks.cpp, called by the scheduler: a launch starts (instrumented or not) with blocks blocks; the block at
// position i of the launch's order starts; a barrier interval starts (blockStart: the block's first); it ends.
void beginLaunch(const LaunchRecord& r, const DdpmSimKernelInfo& info, bool instrumented, uint64_t blocks);
void beginBlock(uint64_t position);
void beginInterval(bool blockStart);
void endLaunch();

// scheduler.cpp, for messages: the block at a position of the running launch's order; a thread's coordinates
// by its linear index; the name of a shared memory offset ("scratch+12").
uint3 blockOfPosition(uint64_t position);
uint3 threadOfIndex(unsigned index);
std::string sharedName(size_t offset);

// For code that runs inside a kernel's thread (checks, the fault handler):
// whether this host thread is running a kernel's fiber now (async-signal-safe);
bool inKernel();
// "kernel K: thread (x,y,z) of block (a,b,c)";
std::string whereInKernel();
// ends the thread's launch with code and detail (never returns to the kernel).
[[noreturn]] void faultInFiber(int code, const std::string& detail);
}  // namespace sim
