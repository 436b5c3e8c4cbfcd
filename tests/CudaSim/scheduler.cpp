// The block scheduler of the simulated driver: every thread of a block is a fiber on the host thread that runs
// the launch. Blocks run one after another in the schedule's order (DDPM_CUDA_SIM_SCHEDULE: ordered, reverse, or
// a seeded random permutation); inside a block the unit is the warp: a warp's lanes run (in the schedule's
// lane order) until each waits at a barrier or a shuffle or exits, then the schedule picks the next warp. A
// shuffle resolves as soon as the lanes its mask names have arrived, so warps drift apart between barriers as
// they do on a GPU, and code that needs a barrier between warps shows it. The order check runs a launch twice,
// in two orders, from the same starting memory, and compares what it wrote.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sim_internal.h"

extern "C" {
uint3 ddpmsim_threadIdx __attribute__((visibility("default")));
uint3 ddpmsim_blockIdx __attribute__((visibility("default")));
dim3 ddpmsim_blockDim __attribute__((visibility("default")));
dim3 ddpmsim_gridDim __attribute__((visibility("default")));
void ddpmsim_fiber_switch(void** save, void* target) __attribute__((visibility("hidden")));
void ddpmsim_fiber_start(void) __attribute__((visibility("hidden")));
[[noreturn]] void ddpmsim_fiber_main(void) __attribute__((visibility("hidden")));
}

namespace sim
{
RunState g_run;

namespace
{

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

struct Warp
{
    unsigned first;
    unsigned count;
    unsigned order[32];  // lane run order of the current step
};

struct SharedSlot
{
    const void* key;
    size_t offset;
    size_t bytes;
    const char* name;
};

// splitmix64: the schedule's random stream.
struct Rng
{
    uint64_t s;
    uint64_t next()
    {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    unsigned below(unsigned n) { return (unsigned)((next() >> 32) * n >> 32); }
};

uint64_t mix(uint64_t a, uint64_t b) { return Rng{a ^ (b * 0xd1342543de82ef95ull)}.next(); }

// The order blocks run in: position i of the launch runs block at(i) (linear index). Random orders are a
// keyed Feistel permutation of [0, n) with cycle walking, so no table of n entries is needed.
struct BlockOrder
{
    Schedule schedule;
    uint64_t n;
    uint64_t key;
    unsigned halfBits;

    BlockOrder(Schedule s, uint64_t count, uint64_t k) : schedule(s), n(count), key(k), halfBits(1)
    {
        while ((1ull << (2 * halfBits)) < n) halfBits++;
    }

    uint64_t feistel(uint64_t v) const
    {
        uint64_t mask = (1ull << halfBits) - 1;
        uint64_t l = v >> halfBits, r = v & mask;
        for (int round = 0; round < 4; round++)
        {
            uint64_t f = mix(key + (uint64_t)round, r) & mask;
            uint64_t t = l ^ f;
            l = r;
            r = t;
        }
        return (l << halfBits) | r;
    }

    uint64_t at(uint64_t i) const
    {
        switch (schedule)
        {
            case Schedule::Ordered: return i;
            case Schedule::Reverse: return n - 1 - i;
            default:
            {
                uint64_t v = i;
                do v = feistel(v);
                while (v >= n);
                return v;
            }
        }
    }
};

std::vector<Fiber> g_fibers;
std::vector<Warp> g_warps;
std::vector<char*> g_stackPool;
void* g_schedulerSp;
Fiber* g_current;
Warp* g_warp;            // the warp whose step is running
unsigned g_cursor;       // position in g_warp->order of the running lane
size_t g_blockThreads;
size_t g_done, g_atBarrier;
int g_faultCode;
std::string g_faultDetail;
alignas(64) unsigned char g_sharedArena[kMaxShared];
size_t g_sharedUsed;
std::vector<SharedSlot> g_sharedSlots;
const LaunchRecord* g_launch;
const DdpmSimKernelInfo* g_info;
const BlockOrder* g_order;
uint64_t g_firstSerialOfLaunch;

// Whether this host thread runs a kernel fiber now; read by the fault handler, so no thread_local.
volatile bool g_inKernelFlag = false;
pthread_t g_kernelThread;

char* takeStack()
{
    if (!g_stackPool.empty())
    {
        char* s = g_stackPool.back();
        g_stackPool.pop_back();
        return s;
    }
    // Tops are staggered across the 4 KiB page so the live frames of a block's fibers do not all fall into the
    // same cache sets.
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

void setThread(const Fiber* f)
{
    ddpmsim_threadIdx = f->tid;
    g_run.thread = (unsigned)(f - g_fibers.data());
    g_run.stackTop = (uintptr_t)f->stack;
}

void yieldToScheduler() { ddpmsim_fiber_switch(&g_current->sp, g_schedulerSp); }

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

std::string shuffleError(size_t first, unsigned lane, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
std::string shuffleError(size_t first, unsigned lane, const char* fmt, ...)
{
    const Fiber& f = g_fibers[first + lane];
    std::string where = format("kernel %s: %s(mask 0x%08x) by lane %u of warp %zu of block %s: ", g_launch->kernel->name.c_str(),
        shuffleName(f.shMode), f.shMask, lane, first / 32, blockName().c_str());
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return where + buf;
}

bool sameShuffle(const Fiber& a, const Fiber& b)
{
    return a.state == F_SHUFFLE && b.state == F_SHUFFLE && a.shMask == b.shMask && a.shMode == b.shMode && a.shSize == b.shSize;
}

// Resolves the shuffles of one warp whose lanes are all waiting or exited: every group of lanes whose mask is
// complete gets its values. Returns the error when nothing can resolve (a lane named in a mask never arrives),
// else "" with *resolved set when some lanes can run again.
std::string resolveWarp(const Warp& w, bool* resolved)
{
    *resolved = false;
    size_t first = w.first, count = w.count;
    unsigned waiting = 0;
    for (size_t i = first; i < first + count; i++)
        if (g_fibers[i].state == F_SHUFFLE) waiting |= 1u << (i - first);
    if (waiting == 0) return "";
    unsigned ready = 0;
    std::string firstError;
    for (unsigned m = waiting; m != 0; m &= m - 1)
    {
        unsigned lane = (unsigned)__builtin_ctz(m);
        if (ready >> lane & 1) continue;
        const Fiber& f = g_fibers[first + lane];
        if (f.shWidth != 32) return shuffleError(first, lane, "width %d is not simulated (only 32)", f.shWidth);
        if (!(f.shMask >> lane & 1)) return shuffleError(first, lane, "the calling lane is not in the mask");
        bool complete = true;
        for (unsigned j = 0; j < 32 && complete; j++)
        {
            if (!(f.shMask >> j & 1)) continue;
            if (j >= count)
                return shuffleError(first, lane, "the mask names lane %u, but the warp has only %zu lanes (block of %u threads)", j, count,
                    ddpmsim_blockDim.x * ddpmsim_blockDim.y * ddpmsim_blockDim.z);
            const Fiber& o = g_fibers[first + j];
            if (sameShuffle(f, o)) continue;
            complete = false;
            // A lane that has exited or waits at the barrier never comes; one at another shuffle may, later.
            if (o.state != F_SHUFFLE) return shuffleError(first, lane, "lane %u named in the mask %s", j, stateName(o.state));
            if (firstError.empty()) firstError = shuffleError(first, lane, "lane %u named in the mask waits at a different shuffle", j);
        }
        if (complete) ready |= f.shMask;
    }
    if (ready == 0) return firstError;
    for (unsigned m = ready; m != 0; m &= m - 1)
    {
        unsigned lane = (unsigned)__builtin_ctz(m);
        Fiber& f = g_fibers[first + lane];
        int src;
        switch (f.shMode)
        {
            case 0: src = (int)lane ^ f.shOperand; break;
            case 1: src = f.shOperand & 31; break;
            case 2: src = (int)lane + f.shOperand < 32 ? (int)lane + f.shOperand : (int)lane; break;
            default: src = (int)lane - f.shOperand >= 0 ? (int)lane - f.shOperand : (int)lane; break;
        }
        if (src < 0 || src > 31 || !(f.shMask >> src & 1))
            return format("kernel %s: %s(mask 0x%08x) by lane %u of warp %zu of block %s reads lane %d, which the mask leaves out",
                g_launch->kernel->name.c_str(), shuffleName(f.shMode), f.shMask, lane, first / 32, blockName().c_str(), src);
        f.shResult = g_fibers[first + src].shValue;
    }
    for (unsigned m = ready; m != 0; m &= m - 1) g_fibers[first + __builtin_ctz(m)].state = F_RUN;
    *resolved = true;
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

bool blockFails(int code, std::string detail)
{
    g_faultCode = code;
    g_faultDetail = std::move(detail);
    releaseFiberStacks(g_blockThreads);
    return false;
}

// The lane order of a warp's next step.
void orderLanes(Warp& w, Schedule s, Rng& rng)
{
    for (unsigned i = 0; i < w.count; i++) w.order[i] = s == Schedule::Reverse ? w.count - 1 - i : i;
    if (s == Schedule::Random)
        for (unsigned i = w.count; i > 1; i--)
        {
            unsigned j = rng.below(i);
            unsigned t = w.order[i - 1];
            w.order[i - 1] = w.order[j];
            w.order[j] = t;
        }
}

// Runs each lane of w that can run until it waits or exits; false on a fault.
bool stepWarp(Warp& w)
{
    g_warp = &w;
    for (g_cursor = 0; g_cursor < w.count; g_cursor++)
    {
        Fiber& f = g_fibers[w.first + w.order[g_cursor]];
        if (f.state == F_NEW)
        {
            f.stack = takeStack();
            f.sp = initialFrame(f.stack);
            f.state = F_RUN;
        }
        else if (f.state != F_RUN)
            continue;
        g_current = &f;
        setThread(&f);
        g_inKernelFlag = true;
        ddpmsim_fiber_switch(&g_schedulerSp, f.sp);
        g_inKernelFlag = false;
        // The stack may have run later lanes too: g_current is the one that switched back.
        Fiber& c = *g_current;
        if (c.state == F_DONE)
        {
            g_stackPool.push_back(c.stack);
            c.stack = nullptr;
        }
        else if (c.state == F_FAULT)
            return false;
    }
    return true;
}

// Runs one block to completion; false (with g_faultCode/g_faultDetail) when it fails.
bool runBlock(size_t n, Schedule schedule, Rng rng)
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
    unsigned warps = (unsigned)((n + 31) / 32);
    g_warps.resize(warps);
    for (unsigned w = 0; w < warps; w++)
    {
        g_warps[w].first = w * 32;
        g_warps[w].count = (unsigned)(n - w * 32 < 32 ? n - w * 32 : 32);
    }
    g_blockThreads = n;
    g_done = g_atBarrier = 0;
    g_sharedSlots.clear();
    g_sharedUsed = (g_launch->dynamicShared + 15) & ~15u;
    fillNan(g_sharedArena, g_launch->dynamicShared);
    g_run.sharedUsed = g_sharedUsed;
    g_run.sharedBase = (uintptr_t)g_sharedArena;
    beginInterval(true);
    // How long a random schedule keeps running the warp it picked: never, half the time, mostly, or until the
    // warp waits at a barrier. The last lets one warp run far ahead of the others.
    static const unsigned kStickiness[] = {0, 128, 230, 256};
    unsigned sticky = schedule == Schedule::Random ? kStickiness[rng.below(4)] : 0;
    uint32_t runnable = warps == 32 ? 0xffffffffu : (1u << warps) - 1;
    int last = schedule == Schedule::Reverse ? (int)warps : -1;
    for (;;)
    {
        int w = -1;
        if (runnable != 0)
        {
            if (schedule == Schedule::Ordered)
            {
                // Round robin upwards from the last warp.
                uint32_t above = last + 1 >= 32 ? 0 : runnable & (0xffffffffu << (last + 1));
                w = __builtin_ctz(above ? above : runnable);
            }
            else if (schedule == Schedule::Reverse)
            {
                uint32_t below = last <= 0 ? 0 : last >= 32 ? runnable : runnable & ((1u << last) - 1);
                w = 31 - __builtin_clz(below ? below : runnable);
            }
            else if (last >= 0 && (runnable >> last & 1) && rng.below(256) < sticky)
                w = last;
            else
            {
                unsigned k = rng.below((unsigned)__builtin_popcount(runnable));
                uint32_t m = runnable;
                while (k-- > 0) m &= m - 1;
                w = __builtin_ctz(m);
            }
        }
        if (w < 0)
        {
            if (g_done == n) return true;
            if (g_atBarrier + g_done == n && g_done == 0)
            {
                for (size_t i = 0; i < n; i++) g_fibers[i].state = F_RUN;
                g_atBarrier = 0;
                runnable = warps == 32 ? 0xffffffffu : (1u << warps) - 1;
                beginInterval(false);
                continue;
            }
            if (g_atBarrier + g_done == n)
                return blockFails(LAUNCH_FAILED, format("kernel %s: __syncthreads reached by %zu of %zu threads of block %s (the others had exited)",
                                                     g_launch->kernel->name.c_str(), g_atBarrier, n, blockName().c_str()));
            return blockFails(LAUNCH_FAILED, format("kernel %s: block %s cannot go on: %zu threads wait at __syncthreads, %zu at shuffles",
                                                 g_launch->kernel->name.c_str(), blockName().c_str(), g_atBarrier, n - g_done - g_atBarrier));
        }
        last = w;
        Warp& warp = g_warps[(size_t)w];
        orderLanes(warp, schedule, rng);
        if (!stepWarp(warp))
        {
            releaseFiberStacks(n);
            return false;
        }
        runnable &= ~(1u << w);
        bool resolved = false;
        std::string err = resolveWarp(warp, &resolved);
        if (!err.empty()) return blockFails(LAUNCH_FAILED, err);
        if (resolved) runnable |= 1u << w;
    }
}

// Runs r once with the given schedule; false (the error made sticky) when it fails.
bool runOnce(LaunchRecord& r, Schedule schedule, uint64_t key)
{
    bool instrumented = checking(kInstrumentedChecks) && r.kernel->hasInstrumented;
    g_info = instrumented || !r.kernel->hasPlain ? &r.kernel->instrumented : &r.kernel->plain;
    instrumented = g_info->instrumented != 0;
    g_launch = &r;
    ddpmsim_gridDim = dim3{r.grid[0], r.grid[1], r.grid[2]};
    ddpmsim_blockDim = dim3{r.block[0], r.block[1], r.block[2]};
    size_t n = (size_t)r.block[0] * r.block[1] * r.block[2];
    if (g_fibers.size() < n) g_fibers.resize(n);
    uint64_t blocks = (uint64_t)r.grid[0] * r.grid[1] * r.grid[2];
    BlockOrder order(schedule, blocks, key);
    g_order = &order;
    beginLaunch(r, *g_info, instrumented, blocks);
    g_kernelThread = pthread_self();
    bool ok = true;
    for (uint64_t i = 0; i < blocks && ok; i++)
    {
        uint64_t b = order.at(i);
        ddpmsim_blockIdx = uint3{(unsigned)(b % r.grid[0]), (unsigned)(b / r.grid[0] % r.grid[1]), (unsigned)(b / r.grid[0] / r.grid[1])};
        beginBlock(i);
        ok = runBlock(n, schedule, Rng{mix(key, i + 1)});
    }
    endLaunch();
    g_order = nullptr;
    g_launch = nullptr;
    if (!ok) setSticky(g_faultCode, g_faultDetail);
    return ok;
}

struct Snapshot
{
    Alloc* alloc;
    std::vector<unsigned char> bytes;
};

std::string orderCheck(LaunchRecord& r, uint64_t key)
{
    // The allocations the launch can reach through its pointer arguments, as they are before it runs.
    std::vector<Snapshot> saved;
    for (uintptr_t p : r.pointers)
    {
        Alloc* a = findAlloc(p, 0);
        if (!a) continue;
        bool seen = false;
        for (auto& s : saved) seen = seen || s.alloc == a;
        if (seen) continue;
        const unsigned char* data = reinterpret_cast<const unsigned char*>(a->base);
        saved.push_back(Snapshot{a, std::vector<unsigned char>(data, data + a->size)});
    }
    Schedule first = g_opt.schedule;
    Schedule second = first == Schedule::Ordered ? Schedule::Reverse : first == Schedule::Reverse ? Schedule::Ordered : Schedule::Random;
    uint64_t secondKey = mix(key, 0x6f72646572ull);
    if (!runOnce(r, first, key)) return "";
    std::vector<std::vector<unsigned char>> results;
    for (auto& s : saved)
    {
        const unsigned char* data = reinterpret_cast<const unsigned char*>(s.alloc->base);
        results.emplace_back(data, data + s.alloc->size);
        memcpy(reinterpret_cast<void*>(s.alloc->base), s.bytes.data(), s.bytes.size());
    }
    if (!runOnce(r, second, secondKey)) return "";
    g_count.orderChecks++;
    for (size_t k = 0; k < saved.size(); k++)
    {
        const unsigned char* now = reinterpret_cast<const unsigned char*>(saved[k].alloc->base);
        const std::vector<unsigned char>& before = results[k];
        for (size_t i = 0; i < before.size(); i++)
            if (now[i] != before[i])
            {
                size_t w = i & ~(size_t)3;
                uint32_t a = 0, b = 0;
                float fa, fb;
                memcpy(&a, before.data() + w, before.size() - w < 4 ? before.size() - w : 4);
                memcpy(&b, now + w, before.size() - w < 4 ? before.size() - w : 4);
                memcpy(&fa, &a, 4);
                memcpy(&fb, &b, 4);
                return format("order check: kernel %s wrote different results when its blocks and warps ran in another order (%s): "
                              "byte %zu of %s holds 0x%08x (%g) after the first order and 0x%08x (%g) after the second; "
                              "the kernel depends on the order its threads run in (a race, or atomics summing floats)",
                    r.kernel->name.c_str(),
                    first == Schedule::Random ? "two random orders" : first == Schedule::Ordered ? "ordered, then reverse" : "reverse, then ordered",
                    w, describeAlloc(*saved[k].alloc).c_str(), a, (double)fa, b, (double)fb);
            }
    }
    return "";
}
}  // namespace

LaunchRecord::~LaunchRecord()
{
    if (args) ::operator delete(args, std::align_val_t(argsAlign));
}

void runLaunch(LaunchRecord& r)
{
    uint64_t key = mix(g_opt.seed, r.serial);
    if (!checking(DDPMSIM_CHECK_ORDER))
    {
        runOnce(r, g_opt.schedule, key);
        return;
    }
    std::string diff = orderCheck(r, key);
    if (!diff.empty()) setSticky(LAUNCH_FAILED, diff);
}

bool inKernel() { return g_inKernelFlag && pthread_equal(pthread_self(), g_kernelThread); }

std::string whereInKernel()
{
    const uint3& t = g_current ? g_current->tid : uint3{0, 0, 0};
    return format("kernel %s: thread (%u,%u,%u) of block %s", g_launch ? g_launch->kernel->name.c_str() : "?", t.x, t.y, t.z,
        blockName().c_str());
}

[[noreturn]] void faultInFiber(int code, const std::string& detail)
{
    g_faultCode = code;
    g_faultDetail = detail;
    g_current->state = F_FAULT;
    yieldToScheduler();
    __builtin_unreachable();
}

uint3 blockOfPosition(uint64_t position)
{
    uint64_t b = g_order ? g_order->at(position) : position;
    return uint3{(unsigned)(b % ddpmsim_gridDim.x), (unsigned)(b / ddpmsim_gridDim.x % ddpmsim_gridDim.y),
        (unsigned)(b / ddpmsim_gridDim.x / ddpmsim_gridDim.y)};
}

uint3 threadOfIndex(unsigned index)
{
    return index < g_blockThreads ? g_fibers[index].tid : uint3{0, 0, 0};
}

std::string sharedName(size_t offset)
{
    for (const SharedSlot& s : g_sharedSlots)
        if (offset - s.offset < s.bytes) return format("%s+%zu", s.name, offset - s.offset);
    size_t dyn = g_launch ? g_launch->dynamicShared : 0;
    if (offset < dyn) return format("dynamic shared memory+%zu", offset);
    return format("shared memory offset %zu", offset);
}


}  // namespace sim

using namespace sim;

// ---- kernel-side entry points (called from fibers) --------------------------------------------------------

extern "C" {

// A fiber stack runs lanes one after another: when a lane returns without having waited, the next lane of the
// warp's step not yet started runs on the same stack without a switch, so kernels without barriers cost about a
// call per thread. A lane that waits keeps the stack; the scheduler starts a new stack for the lanes after it.
[[noreturn]] void ddpmsim_fiber_main(void)
{
    const DdpmSimKernelInfo& k = *g_info;
    for (;;)
    {
        k.invoke(k.fn, g_launch->args);
        Fiber* f = g_current;
        f->state = F_DONE;
        g_done++;
        unsigned p = g_cursor + 1;
        if (p >= g_warp->count) break;
        Fiber* next = &g_fibers[g_warp->first + g_warp->order[p]];
        if (next->state != F_NEW) break;
        g_cursor = p;
        next->stack = f->stack;
        f->stack = nullptr;
        next->state = F_RUN;
        g_current = next;
        setThread(next);
    }
    yieldToScheduler();
    __builtin_unreachable();
}

API void ddpmsim_syncthreads(void)
{
    Fiber* f = g_current;
    f->state = F_BARRIER;
    g_atBarrier++;
    yieldToScheduler();
    setThread(f);
}

API uint64_t ddpmsim_shfl(uint64_t bits, unsigned size, unsigned mask, int operand, int width, int mode)
{
    Fiber* f = g_current;
    f->state = F_SHUFFLE;
    f->shValue = bits;
    f->shSize = (uint8_t)size;
    f->shMask = mask;
    f->shOperand = operand;
    f->shWidth = width;
    f->shMode = (uint8_t)mode;
    yieldToScheduler();
    setThread(f);
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
        if (s.key == key) return g_sharedArena + s.offset;
    size_t off = (g_sharedUsed + align - 1) & ~(align - 1);
    if (off + bytes > kMaxShared)
        faultInFiber(LAUNCH_OUT_OF_RESOURCES,
            format("kernel %s: shared memory %s (%zu bytes) exceeds the %u bytes per block (%u of them dynamic)",
                g_launch->kernel->name.c_str(), name, bytes, kMaxShared, g_launch->dynamicShared));
    void* p = g_sharedArena + off;
    fillNan(p, bytes);
    g_sharedUsed = off + bytes;
    g_run.sharedUsed = g_sharedUsed;
    g_sharedSlots.push_back(SharedSlot{key, off, bytes, name});
    size_t staticBytes = g_sharedUsed - ((g_launch->dynamicShared + 15) & ~15u);
    if (staticBytes > g_launch->kernel->staticShared) g_launch->kernel->staticShared = staticBytes;
    return p;
}

API void* ddpmsim_shared_dynamic(void) { return g_sharedArena; }

API int ddpmsim_register_kernel(const DdpmSimKernelInfo* info)
{
    auto& r = registry();
    Kernel*& k = r[info->name];
    if (!k)
    {
        k = new Kernel();
        k->name = info->name;
    }
    bool& has = info->instrumented ? k->hasInstrumented : k->hasPlain;
    if (has)
    {
        fprintf(stderr, "cuda simulator: kernel %s is registered twice\n", info->name);
        abort();
    }
    has = true;
    DdpmSimKernelInfo& slot = info->instrumented ? k->instrumented : k->plain;
    slot = *info;
    slot.name = k->name.c_str();
    return 1;
}
}
