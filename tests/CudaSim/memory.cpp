// Device memory of the simulated driver: host memory laid out so that bad accesses show. With the fence check
// every allocation ends at a no-access page (its end rounded down to cuMemAlloc's 256-byte alignment, the
// bytes between filled with guard bytes), so a kernel that reads or writes past it faults; the fault becomes
// CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel and thread. With the poison check every allocation reads as NaN
// until written, whatever its size: large ones map a shared file of NaN copy-on-write, so untouched pages
// cost no memory. Also the shadow words of the init check and the race detector (see checks.cpp).
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sim_internal.h"

namespace sim
{
std::map<uintptr_t, Alloc> g_allocs;
std::map<uintptr_t, size_t> g_hostAllocs;
uint64_t g_used = 0;

namespace
{
uint64_t g_allocSerial = 0;
constexpr size_t kNanChunk = 16u << 20;    // the NaN file; larger allocations map it several times
constexpr size_t kEagerNanLimit = 4u << 20;  // smaller allocations are filled with NaN at once
constexpr size_t kUnpoisonedNanLimit = 256u << 20;  // without the poison check, larger ones stay zero
int g_nanFile = -2;  // -2 not tried yet, -1 unavailable

size_t pageSize()
{
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

// A memfd of kNanChunk bytes of NaN, made once; -1 where the system has no memfd.
int nanFile()
{
    if (g_nanFile != -2) return g_nanFile;
    g_nanFile = -1;
    int fd = memfd_create("ddpmsim-nan", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)kNanChunk) != 0)
    {
        close(fd);
        return -1;
    }
    void* m = mmap(nullptr, kNanChunk, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
    {
        close(fd);
        return -1;
    }
    fillNan(m, kNanChunk);
    munmap(m, kNanChunk);
    g_nanFile = fd;
    return fd;
}

// Maps the NaN file copy-on-write over [from, to) (page aligned); false when that is not possible.
bool mapNan(char* from, char* to)
{
    int fd = nanFile();
    if (fd < 0) return false;
    for (char* p = from; p < to; p += kNanChunk)
    {
        size_t n = (size_t)(to - p) < kNanChunk ? (size_t)(to - p) : kNanChunk;
        if (mmap(p, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) return false;
    }
    return true;
}

// The last freed allocations, to name a use after free.
struct Freed
{
    uintptr_t base;
    size_t size;
    uint64_t serial;
};
constexpr size_t kFreedKept = 4096;
std::vector<Freed> g_freed;
size_t g_freedNext = 0;

void releaseShadow(Alloc& a)
{
    if (a.writer) munmap(a.writer, a.words * 8);
    a.writer = a.reader = nullptr;
}

// ---- faults -------------------------------------------------------------------------------------------

struct sigaction g_oldSegv, g_oldBus;
bool g_handlerInstalled = false;
char* g_faultStack = nullptr;
constexpr size_t kFaultStack = 256 * 1024;
uintptr_t g_faultAddress = 0;

[[noreturn]] void faultTrampoline()
{
    uintptr_t a = g_faultAddress;
    faultInFiber(ILLEGAL_ADDRESS, format("%s: access to 0x%llx, %s", whereInKernel().c_str(), (unsigned long long)a,
                                      describeAddress(a).c_str()));
}

void chain(const struct sigaction& old, int sig, siginfo_t* info, void* ctx)
{
    if (old.sa_flags & SA_SIGINFO)
    {
        if (old.sa_sigaction) old.sa_sigaction(sig, info, ctx);
        return;
    }
    if (old.sa_handler == SIG_IGN) return;
    if (old.sa_handler == SIG_DFL)
    {
        // Returning re-runs the faulting instruction, which now gets the default action.
        signal(sig, SIG_DFL);
        return;
    }
    old.sa_handler(sig);
}

void onFault(int sig, siginfo_t* info, void* ctx)
{
    // A fault inside a kernel's thread (this host thread holds g_mu and runs the fiber): resume the fiber in the
    // trampoline, on a stack of its own (the fiber's may be what overflowed), which reports it and never returns.
    if (inKernel() && g_faultStack)
    {
        g_faultAddress = (uintptr_t)info->si_addr;
        auto* uc = static_cast<ucontext_t*>(ctx);
        uintptr_t top = ((uintptr_t)g_faultStack + kFaultStack) & ~(uintptr_t)15;
        uc->uc_mcontext.gregs[REG_RSP] = (greg_t)(top - 8);  // as if called: the return address slot
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)&faultTrampoline;
        return;
    }
    chain(sig == SIGBUS ? g_oldBus : g_oldSegv, sig, info, ctx);
}
}  // namespace

void fillNan(void* p, size_t bytes)
{
    uint32_t* w = static_cast<uint32_t*>(p);
    size_t n = bytes / 4;
    for (size_t i = 0; i < n; i++) w[i] = 0x7fc00000u;
    memset(static_cast<char*>(p) + n * 4, 0x7f, bytes - n * 4);
}

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

std::string describeAddress(uintptr_t p)
{
    auto it = g_allocs.upper_bound(p);
    const Alloc* before = nullptr;
    if (it != g_allocs.begin()) before = &std::prev(it)->second;
    const Alloc* after = it != g_allocs.end() ? &it->second : nullptr;
    if (before && p - before->base < before->size)
        return format("byte %llu of %s", (unsigned long long)(p - before->base), describeAlloc(*before).c_str());
    // Past the end of the allocation below or before the start of the one above, where p lies in that
    // allocation's own guard bytes or fence page; then a freed allocation that held p; then the nearer live
    // allocation within 1 MiB. (Which neighbour the host's allocator puts next to a freed block is its choice, so
    // a distance alone cannot tell an overrun from a stale pointer.)
    uint64_t pastEnd = before ? p - (before->base + before->size) : UINT64_MAX;
    uint64_t beforeStart = after ? after->base - p : UINT64_MAX;
    auto nearest = [&](uint64_t limit) -> std::string {
        if (pastEnd <= beforeStart && pastEnd < limit)
            return format("%llu bytes past the end of %s", (unsigned long long)pastEnd, describeAlloc(*before).c_str());
        if (beforeStart < limit) return format("%llu bytes before the start of %s", (unsigned long long)beforeStart, describeAlloc(*after).c_str());
        return "";
    };
    if (before && p < reinterpret_cast<uintptr_t>(before->raw) + before->rawSize)
        return format("%llu bytes past the end of %s", (unsigned long long)pastEnd, describeAlloc(*before).c_str());
    if (after && p >= reinterpret_cast<uintptr_t>(after->raw))
        return format("%llu bytes before the start of %s", (unsigned long long)beforeStart, describeAlloc(*after).c_str());
    std::string near;
    std::string freed = describeFreed(p);
    if (!freed.empty()) return freed;
    near = nearest(1u << 20);
    return near.empty() ? "outside every device allocation" : near;
}

void rememberFreed(const Alloc& a)
{
    if (g_freed.size() < kFreedKept) g_freed.push_back(Freed{a.base, a.size, a.serial});
    else g_freed[g_freedNext] = Freed{a.base, a.size, a.serial};
    g_freedNext = (g_freedNext + 1) % kFreedKept;
}

std::string describeFreed(uintptr_t p)
{
    // The latest free that covered p (addresses are reused, so look newest first).
    for (size_t k = 0; k < g_freed.size(); k++)
    {
        size_t i = (g_freedNext + g_freed.size() - 1 - k) % g_freed.size();
        const Freed& f = g_freed[i];
        if (p - f.base < f.size)
            return format("byte %llu of allocation #%llu (%zu bytes at 0x%llx), which was freed", (unsigned long long)(p - f.base),
                (unsigned long long)f.serial, f.size, (unsigned long long)f.base);
    }
    return "";
}

int allocateDevice(size_t bytes, uint64_t* dptr)
{
    size_t accounted = (bytes + 511) & ~(size_t)511;
    if (accounted < bytes || g_used + accounted > kTotalMemory)
        return fail(OUT_OF_MEMORY, format("cuMemAlloc: %zu bytes asked, %llu of %llu free", bytes,
                                        (unsigned long long)(kTotalMemory - g_used), (unsigned long long)kTotalMemory));
    Alloc a;
    a.size = bytes;
    a.accounted = accounted;
    bool poison = checking(DDPMSIM_CHECK_POISON);
    size_t page = pageSize();
    if (checking(DDPMSIM_CHECK_FENCE))
    {
        // [guard bytes][data, 256-aligned start][< 256 guard bytes][no-access page]
        size_t span = (bytes + kGuard + 255 + page - 1) / page * page;
        if (span < bytes) return fail(OUT_OF_MEMORY, format("cuMemAlloc: %zu bytes do not fit the host's address space", bytes));
        a.rawSize = span + page;
        void* m = mmap(nullptr, a.rawSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return fail(OUT_OF_MEMORY, format("cuMemAlloc: the host could not map %zu bytes", a.rawSize));
        a.raw = static_cast<char*>(m);
        a.mapped = true;
        a.fenced = true;
        char* tail = a.raw + span;
        if (mprotect(tail, page, PROT_NONE) != 0)
        {
            munmap(m, a.rawSize);
            return fail(OUT_OF_MEMORY, "cuMemAlloc: the host could not protect the fence page");
        }
        a.base = ((uintptr_t)tail - bytes) & ~(uintptr_t)255;
        char* data = reinterpret_cast<char*>(a.base);
        bool lazy = false;
        if (poison && bytes >= kEagerNanLimit)
            lazy = mapNan(reinterpret_cast<char*>(a.base & ~(uintptr_t)(page - 1)), tail);
        if (!lazy && (poison || bytes <= kUnpoisonedNanLimit)) fillNan(data, bytes);
        memset(data - kGuard, kGuardByte, kGuard);
        memset(data + bytes, kGuardByte, (size_t)(tail - (data + bytes)));
    }
    else
    {
        // [guard bytes][data][guard bytes], no page protection.
        a.rawSize = kGuard + bytes + kGuard;
        if (a.rawSize >= (1u << 20))
        {
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
        bool lazy = poison && bytes >= kEagerNanLimit &&
                    a.mapped && mapNan(a.raw, a.raw + a.rawSize);
        if (!lazy && (poison || bytes <= kUnpoisonedNanLimit)) fillNan(a.raw + kGuard, bytes);
        memset(a.raw, kGuardByte, kGuard);
        memset(a.raw + kGuard + bytes, kGuardByte, kGuard);
    }
    a.serial = ++g_allocSerial;
    g_allocs[a.base] = a;
    g_used += accounted;
    g_count.allocs++;
    *dptr = a.base;
    return SUCCESS;
}

void releaseAlloc(Alloc& a)
{
    releaseShadow(a);
    if (a.mapped) munmap(a.raw, a.rawSize);
    else free(a.raw);
    g_used -= a.accounted;
}

std::string guardDamage(const Alloc& a)
{
    const unsigned char* head = reinterpret_cast<const unsigned char*>(a.base) - kGuard;
    const unsigned char* tail = reinterpret_cast<const unsigned char*>(a.base) + a.size;
    size_t tailBytes = a.fenced ? (size_t)((a.raw + a.rawSize - pageSize()) - (const char*)tail) : kGuard;
    for (size_t i = kGuard; i-- > 0;)
        if (head[i] != kGuardByte)
            return format("the guard zone before %s was overwritten (byte %zu before its start)", describeAlloc(a).c_str(), kGuard - i);
    for (size_t i = 0; i < tailBytes; i++)
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

void ensureShadow(Alloc& a)
{
    if (a.writer) return;
    a.words = (a.size + 3) / 4;
    // Zero pages on demand: a large allocation nobody touches costs no memory.
    void* m = mmap(nullptr, a.words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
    {
        fprintf(stderr, "cuda simulator: cannot map %zu bytes of shadow memory\n", a.words * 8);
        abort();
    }
    a.writer = static_cast<uint32_t*>(m);
    a.reader = a.writer + a.words;
}

void markRange(uintptr_t p, size_t bytes, uint32_t value)
{
    if (bytes == 0) return;
    uintptr_t end = p + bytes;
    auto it = g_allocs.upper_bound(p);
    if (it != g_allocs.begin()) --it;
    for (; it != g_allocs.end() && it->second.base < end; ++it)
    {
        Alloc& a = it->second;
        uintptr_t lo = p > a.base ? p : a.base, hi = end < a.base + a.size ? end : a.base + a.size;
        if (lo >= hi) continue;
        ensureShadow(a);
        size_t first = (lo - a.base) / 4, last = (hi - a.base + 3) / 4;
        for (size_t i = first; i < last; i++) a.writer[i] = value;
    }
}

uintptr_t firstPending(uintptr_t p, size_t bytes)
{
    uintptr_t end = p + bytes;
    auto it = g_allocs.upper_bound(p);
    if (it != g_allocs.begin()) --it;
    for (; it != g_allocs.end() && it->second.base < end; ++it)
    {
        const Alloc& a = it->second;
        if (!a.writer || a.pendingWhat.empty()) continue;
        uintptr_t lo = p > a.base ? p : a.base, hi = end < a.base + a.size ? end : a.base + a.size;
        for (uintptr_t q = lo & ~(uintptr_t)3; q < hi; q += 4)
            if (a.writer[(q - a.base) / 4] == kPendingWrite) return q < lo ? lo : q;
    }
    return UINTPTR_MAX;
}

void copyWrittenState(uintptr_t dst, uintptr_t src, size_t bytes)
{
    Alloc* s = findAlloc(src, bytes);
    Alloc* d = findAlloc(dst, bytes);
    if (!s || !d) return;
    if (!s->writer && !d->writer) return;  // nothing tracked on either side yet
    ensureShadow(*s);
    ensureShadow(*d);
    // Word by word where both ranges are word aligned; otherwise the destination counts as written.
    if ((src - s->base) % 4 != 0 || (dst - d->base) % 4 != 0)
    {
        markRange(dst, bytes, kHostWrite);
        return;
    }
    size_t si = (src - s->base) / 4, di = (dst - d->base) / 4, n = (bytes + 3) / 4;
    for (size_t i = 0; i < n; i++)
    {
        uint32_t w = s->writer[si + i];
        d->writer[di + i] = w == 0 ? 0 : w == kPendingWrite ? kPendingWrite : kHostWrite;
    }
    if (!s->pendingWhat.empty()) d->pendingWhat = s->pendingWhat;
}

void clearAllShadows()
{
    for (auto& [base, a] : g_allocs)
        if (a.writer)
        {
            // Forget who wrote what, but not that it was written (the init check must not start over).
            for (size_t i = 0; i < a.words; i++)
            {
                uint32_t w = a.writer[i];
                if (w >= kFirstBlockSerial) a.writer[i] = kHostWrite;
                a.reader[i] = 0;
            }
        }
}

void installFaultHandler()
{
    if (g_handlerInstalled) return;
    g_handlerInstalled = true;
    void* m = mmap(nullptr, kFaultStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) g_faultStack = static_cast<char*>(m);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = onFault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_oldSegv);
    sigaction(SIGBUS, &sa, &g_oldBus);
}
}  // namespace sim
