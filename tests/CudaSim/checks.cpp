// What the instrumented kernels check. build.sh compiles every kernel a second time with GCC's address
// instrumentation in callback mode (-fsanitize=kernel-address, no shadow of GCC's own: the calls below are the
// whole runtime), renaming __asan_load4_noabort and its siblings to ddpmsim_asan_*, so every load and store of a
// kernel reports here first. The instrumented variant runs when DDPM_CUDA_SIM_CHECK has race, bounds or init.
//
// bounds: an access must lie in a live device allocation (not across its end), in the block's declared shared
//   memory, on the thread's own stack, in the launch's arguments, in pinned host memory or in this library's
//   image (constant tables); anything else is CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel, the thread and the
//   address (which allocation it is near, or which freed one it was in).
// init: a kernel read of device memory nothing wrote (no kernel, copy, memset or library call), or of shared
//   memory no thread of the block wrote, fails the launch. So does a read of a collective's result before its
//   completion point in stream order (DDPM_CUDA_SIM_CHECK nccl-async).
// race: shared memory accesses are recorded per barrier interval (thread, read or write, per 4-byte word); a
//   write and another thread's read or write of the same word in one interval fail the launch, naming the
//   kernel, the block, both threads and the shared variable. Global memory: per 4-byte word the block that
//   wrote it last and the blocks that read it in this launch; a write and another block's read or write of the
//   same word in one launch fail it, naming both blocks and the allocation.
// Accesses of 1 or 2 bytes count for their whole word. Atomics are checked for bounds and initialisation, not races.
#include <link.h>

#include <cstring>

#include "sim_internal.h"

namespace sim
{
namespace
{
struct SharedWord
{
    uint32_t wInterval;  // barrier interval of the latest write (0: never)
    uint32_t rInterval;  // of the latest reads
    uint16_t wThread;    // linear index of the writer
    uint16_t rThread;    // of the reader, kManyThreads when several threads read in rInterval
};
constexpr uint16_t kManyThreads = 0xffff;

bool g_active = false;      // an instrumented launch runs
bool g_race = false, g_init = false, g_bounds = false, g_pending = false;
uint32_t g_nextSerial = kFirstBlockSerial;
uint32_t g_firstSerial = 0;  // of this launch's first block
uint32_t g_blockSerial = 0;  // of the running block
uint32_t g_interval = 0, g_blockStartInterval = 0;
uint64_t g_accesses = 0;
uintptr_t g_argsLo = 0, g_argsHi = 0;
uintptr_t g_imageLo = 0, g_imageHi = 0;
Alloc* g_params[8];      // the allocations the launch's pointer arguments point into (the common case)
unsigned g_paramCount = 0;
SharedWord g_shared[kMaxShared / 4];

int findImage(dl_phdr_info* info, size_t, void* data)
{
    uintptr_t self = *static_cast<uintptr_t*>(data);
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++)
    {
        const auto& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        uintptr_t a = info->dlpi_addr + ph.p_vaddr;
        if (a < lo) lo = a;
        if (a + ph.p_memsz > hi) hi = a + ph.p_memsz;
    }
    if (self < lo || self >= hi) return 0;
    g_imageLo = lo;
    g_imageHi = hi;
    return 1;
}

const char* verb(bool write) { return write ? "writes" : "reads"; }

std::string blockText(uint3 b) { return format("(%u,%u,%u)", b.x, b.y, b.z); }

std::string blockOfSerial(uint32_t serial) { return blockText(blockOfPosition(serial - g_firstSerial)); }

std::string threadText(unsigned index)
{
    uint3 t = threadOfIndex(index);
    return format("(%u,%u,%u)", t.x, t.y, t.z);
}

[[noreturn]] __attribute__((noinline, cold)) void outOfBounds(uintptr_t a, size_t n, bool write)
{
    faultInFiber(ILLEGAL_ADDRESS, format("%s %s %zu bytes at 0x%llx, %s", whereInKernel().c_str(), verb(write), n,
                                      (unsigned long long)a, describeAddress(a).c_str()));
}

// What a check found; the messages are built out of the hot path.
enum class Finding
{
    WriteAfterWrite,
    WriteAfterRead,
    ReadAfterWrite,
    Unwritten,
    PendingRead,
    PendingWrite,
    OutOfBounds,
};

[[noreturn]] __attribute__((noinline, cold)) void sharedFinding(Finding f, size_t off, size_t n, size_t word, unsigned other)
{
    std::string var = sharedName(word * 4), where = whereInKernel();
    switch (f)
    {
        case Finding::WriteAfterWrite:
            faultInFiber(LAUNCH_FAILED, format("race detector: %s writes %s, which thread %s wrote since the last __syncthreads "
                                               "(a write-write hazard in shared memory)",
                                            where.c_str(), var.c_str(), threadText(other).c_str()));
        case Finding::WriteAfterRead:
            faultInFiber(LAUNCH_FAILED,
                format("race detector: %s writes %s, which %s read since the last __syncthreads (a read-write hazard in shared memory)",
                    where.c_str(), var.c_str(), other == kManyThreads ? "other threads" : ("thread " + threadText(other)).c_str()));
        case Finding::ReadAfterWrite:
            faultInFiber(LAUNCH_FAILED, format("race detector: %s reads %s, which thread %s wrote since the last __syncthreads "
                                               "(a write-read hazard in shared memory)",
                                            where.c_str(), var.c_str(), threadText(other).c_str()));
        case Finding::Unwritten:
            faultInFiber(LAUNCH_FAILED, format("init check: %s reads %s, which no thread of the block has written", where.c_str(), var.c_str()));
        case Finding::OutOfBounds:
        default:
            faultInFiber(ILLEGAL_ADDRESS, format("%s accesses %zu bytes at shared memory offset %zu, past the %zu bytes the block declared",
                                              where.c_str(), n, off, g_run.sharedUsed));
    }
}

[[noreturn]] __attribute__((noinline, cold)) void deviceFinding(Finding f, const Alloc& al, size_t word, uint32_t other)
{
    std::string where = whereInKernel(), what = format("byte %zu of %s", word * 4, describeAlloc(al).c_str());
    switch (f)
    {
        case Finding::PendingRead:
        case Finding::PendingWrite:
            faultInFiber(LAUNCH_FAILED, format("%s %s %s %s %s (the result lands there at the collective's completion point in stream "
                                               "order: a missing wait or event)",
                                            where.c_str(), f == Finding::PendingRead ? "reads" : "writes", what.c_str(),
                                            f == Finding::PendingRead ? "before" : "while", (al.pendingWhat +
                                                (f == Finding::PendingRead ? " completed" : " is in flight")).c_str()));
        case Finding::Unwritten:
            faultInFiber(LAUNCH_FAILED, format("init check: %s reads %s, which nothing has written (no kernel, copy or memset)",
                                            where.c_str(), what.c_str()));
        case Finding::ReadAfterWrite:
            faultInFiber(LAUNCH_FAILED, format("race detector: %s reads %s, which block %s wrote in the same launch "
                                               "(blocks are not ordered: a write-read hazard in global memory)",
                                            where.c_str(), what.c_str(), blockOfSerial(other).c_str()));
        case Finding::WriteAfterWrite:
            faultInFiber(LAUNCH_FAILED, format("race detector: %s writes %s, which block %s wrote in the same launch "
                                               "(blocks are not ordered: a write-write hazard in global memory)",
                                            where.c_str(), what.c_str(), blockOfSerial(other).c_str()));
        case Finding::WriteAfterRead:
        default:
            faultInFiber(LAUNCH_FAILED, format("race detector: %s writes %s, which %s read in the same launch (blocks are not ordered: "
                                               "a read-write hazard in global memory)",
                                            where.c_str(), what.c_str(),
                                            other != g_blockSerial ? ("block " + blockOfSerial(other)).c_str() : "other blocks"));
    }
}

void sharedAccess(size_t off, size_t n, bool write)
{
    if (off + n > g_run.sharedUsed)
    {
        if (g_bounds) sharedFinding(Finding::OutOfBounds, off, n, 0, 0);
        return;
    }
    if (!g_race && !g_init) return;
    unsigned t = g_run.thread;
    for (size_t i = off / 4; i <= (off + n - 1) / 4; i++)
    {
        SharedWord& s = g_shared[i];
        if (write)
        {
            if (g_race && s.wInterval == g_interval && s.wThread != t) sharedFinding(Finding::WriteAfterWrite, off, n, i, s.wThread);
            if (g_race && s.rInterval == g_interval && s.rThread != t) sharedFinding(Finding::WriteAfterRead, off, n, i, s.rThread);
            s.wInterval = g_interval;
            s.wThread = (uint16_t)t;
        }
        else
        {
            if (g_init && s.wInterval < g_blockStartInterval) sharedFinding(Finding::Unwritten, off, n, i, 0);
            if (g_race && s.wInterval == g_interval && s.wThread != t) sharedFinding(Finding::ReadAfterWrite, off, n, i, s.wThread);
            if (s.rInterval != g_interval)
            {
                s.rInterval = g_interval;
                s.rThread = (uint16_t)t;
            }
            else if (s.rThread != t)
                s.rThread = kManyThreads;
        }
    }
}

void deviceAccess(Alloc& al, uintptr_t a, size_t n, bool write, bool atomic)
{
    if (a + n > al.base + al.size)
    {
        if (g_bounds) outOfBounds(a, n, write);
        return;
    }
    if (!g_race && !g_init && !(g_pending && al.writer && !al.pendingWhat.empty())) return;
    if (!al.writer) ensureShadow(al);
    size_t first = (a - al.base) / 4, last = (a - al.base + n - 1) / 4;
    bool race = g_race && !atomic;
    for (size_t i = first; i <= last; i++)
    {
        uint32_t w = al.writer[i];
        bool otherBlockWrote = w >= g_firstSerial && w != g_blockSerial;
        if (!write || atomic)
        {
            if (w == kPendingWrite && g_pending) deviceFinding(Finding::PendingRead, al, i, 0);
            if (w == 0 && g_init) deviceFinding(Finding::Unwritten, al, i, 0);
            if (race && otherBlockWrote) deviceFinding(Finding::ReadAfterWrite, al, i, w);
            if (race)
            {
                uint32_t r = al.reader[i], rs = r & ~kManyReaders;
                if (rs < g_firstSerial) al.reader[i] = g_blockSerial;
                else if (rs != g_blockSerial && !(r & kManyReaders)) al.reader[i] = r | kManyReaders;
            }
        }
        if (write)
        {
            if (w == kPendingWrite && g_pending) deviceFinding(Finding::PendingWrite, al, i, 0);
            if (race && otherBlockWrote) deviceFinding(Finding::WriteAfterWrite, al, i, w);
            if (race)
            {
                uint32_t r = al.reader[i], rs = r & ~kManyReaders;
                if (rs >= g_firstSerial && (rs != g_blockSerial || (r & kManyReaders))) deviceFinding(Finding::WriteAfterRead, al, i, rs);
            }
            al.writer[i] = g_blockSerial;
        }
    }
}

Alloc* allocationAt(uintptr_t a)
{
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return nullptr;
    Alloc& al = std::prev(it)->second;
    return a - al.base < al.size ? &al : nullptr;
}

// Everything but the thread's own stack.
__attribute__((noinline)) void accessBeyondStack(uintptr_t a, size_t n, bool write, bool atomic)
{
    uintptr_t off = a - g_run.sharedBase;
    if (off < kMaxShared)
    {
        if (atomic && g_race)
        {
            // Atomics on shared memory: bounds and initialisation only.
            g_race = false;
            sharedAccess(off, n, false);
            g_race = true;
            return;
        }
        sharedAccess(off, n, write);
        return;
    }
    for (unsigned k = 0; k < g_paramCount; k++)
        if (a - g_params[k]->base < g_params[k]->size)
        {
            deviceAccess(*g_params[k], a, n, write, atomic);
            return;
        }
    if (a >= g_argsLo && a + n <= g_argsHi) return;
    if (Alloc* al = allocationAt(a))
    {
        deviceAccess(*al, a, n, write, atomic);
        return;
    }
    if (a >= g_imageLo && a + n <= g_imageHi) return;
    if (inHostAlloc(a)) return;
    if (g_bounds) outOfBounds(a, n, write);
}

inline __attribute__((always_inline)) void access(uintptr_t a, size_t n, bool write, bool atomic = false)
{
    if (!g_active) return;
    g_accesses++;
    // The thread's own stack (locals, arguments passed by value) first: the most frequent, never checked further.
    if (g_run.stackTop - a <= kFiberStack) return;
    accessBeyondStack(a, n, write, atomic);
}
}  // namespace

void beginLaunch(const LaunchRecord& r, const DdpmSimKernelInfo& info, bool instrumented, uint64_t blocks)
{
    g_active = instrumented;
    if (!instrumented) return;
    g_count.checkedLaunches++;
    g_race = checking(DDPMSIM_CHECK_RACE);
    g_init = checking(DDPMSIM_CHECK_INIT);
    g_bounds = checking(DDPMSIM_CHECK_BOUNDS);
    g_pending = checking(DDPMSIM_CHECK_NCCL_ASYNC);
    g_paramCount = 0;
    for (uintptr_t p : r.pointers)
    {
        Alloc* al = findAlloc(p, 0);
        if (!al || al->size == 0) continue;
        bool seen = false;
        for (unsigned k = 0; k < g_paramCount; k++) seen = seen || g_params[k] == al;
        if (!seen && g_paramCount < 8) g_params[g_paramCount++] = al;
    }
    if (g_imageHi == 0)
    {
        uintptr_t self = (uintptr_t)&g_active;
        dl_iterate_phdr(findImage, &self);
    }
    g_argsLo = (uintptr_t)r.args;
    g_argsHi = g_argsLo + info.argsSize;
    if (blocks >= kManyReaders - kFirstBlockSerial)
    {
        // More blocks than serials: race detection between blocks is off for this launch.
        g_race = false;
        blocks = 0;
    }
    if ((uint64_t)g_nextSerial + blocks >= kManyReaders)
    {
        clearAllShadows();
        g_nextSerial = kFirstBlockSerial;
    }
    g_firstSerial = g_nextSerial;
    g_nextSerial += (uint32_t)blocks;
}

void beginBlock(uint64_t position)
{
    if (g_active) g_blockSerial = g_firstSerial + (uint32_t)position;
}

void beginInterval(bool blockStart)
{
    if (++g_interval == 0)
    {
        memset(g_shared, 0, sizeof g_shared);
        g_interval = 1;
    }
    if (blockStart) g_blockStartInterval = g_interval;
}

void endLaunch()
{
    g_active = false;
    g_count.checkedAccesses += g_accesses;
    g_accesses = 0;
    g_paramCount = 0;
}
}  // namespace sim

using namespace sim;

// The callbacks GCC's instrumentation calls (as renamed by build.sh), and the atomics' hook.
#define DDPMSIM_ACCESS(size)                                                   \
    extern "C" void ddpmsim_asan_load##size(uintptr_t a) { access(a, size, false); } \
    extern "C" void ddpmsim_asan_store##size(uintptr_t a) { access(a, size, true); }
DDPMSIM_ACCESS(1)
DDPMSIM_ACCESS(2)
DDPMSIM_ACCESS(4)
DDPMSIM_ACCESS(8)
DDPMSIM_ACCESS(16)
extern "C" void ddpmsim_asan_loadN(uintptr_t a, size_t n) { access(a, n, false); }
extern "C" void ddpmsim_asan_storeN(uintptr_t a, size_t n) { access(a, n, true); }
extern "C" void ddpmsim_asan_before_dynamic_init(const void*) {}
extern "C" void ddpmsim_asan_after_dynamic_init(void) {}
extern "C" void ddpmsim_asan_handle_no_return(void) {}

API void ddpmsim_atomic_access(const void* p, unsigned size) { access((uintptr_t)p, size, true, true); }
