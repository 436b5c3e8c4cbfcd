// Force-included (g++ -include) before every CUDA C source compiled for the simulator: maps the CUDA
// language extensions the kernels use onto host C++ and the simulator's scheduler (libcuda.so.1).
// Every thread of a block runs as a fiber; barriers and warp shuffles switch back to the scheduler, which
// checks that the whole block (a barrier) or the lanes the mask names (a shuffle) took part before letting
// them go on. Each source is compiled twice: plainly, and with every memory access instrumented
// (DDPMSIM_INSTRUMENTED, see build.sh and checks.cpp) for the race detector and the memory checks.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <new>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

extern "C" {
// The running thread's coordinates; the scheduler rewrites them on every switch between fibers.
extern uint3 ddpmsim_threadIdx;
extern uint3 ddpmsim_blockIdx;
extern dim3 ddpmsim_blockDim;
extern dim3 ddpmsim_gridDim;

void ddpmsim_syncthreads(void);
// mode: 0 xor, 1 index, 2 down, 3 up; bits: the value (size bytes, zero-extended).
uint64_t ddpmsim_shfl(uint64_t bits, unsigned size, unsigned mask, int operand, int width, int mode);
[[noreturn]] void ddpmsim_trap(void);
void* ddpmsim_shared_static(const void* key, size_t bytes, size_t align, const char* name);
void* ddpmsim_shared_dynamic(void);

// One kernel: pack copies the launch's kernelParams into an argument tuple of argsSize bytes, invoke calls
// fn with it. pointerParams has bit i set when parameter i is a pointer (checked against allocations).
struct DdpmSimKernelInfo
{
    const char* name;
    void* fn;
    unsigned paramCount;
    size_t argsSize;
    size_t argsAlign;
    uint64_t pointerParams;
    void (*pack)(void* dst, void* const* params);
    void (*invoke)(void* fn, const void* args);
    int instrumented;  // compiled with every memory access reported to the checks
};
int ddpmsim_register_kernel(const DdpmSimKernelInfo* info);
// An atomic read-modify-write of size bytes at p: checked for bounds and initialisation, never a race.
void ddpmsim_atomic_access(const void* p, unsigned size);
}

#ifndef DDPMSIM_INSTRUMENTED
#define DDPMSIM_INSTRUMENTED 0
#endif
#if DDPMSIM_INSTRUMENTED
// The launchers' templates get names of their own, so the linker never merges an instrumented instantiation
// into the plain build (or the reverse).
#define ddpmsim_detail ddpmsim_detail_instrumented
#endif

#define threadIdx ddpmsim_threadIdx
#define blockIdx ddpmsim_blockIdx
#define blockDim ddpmsim_blockDim
#define gridDim ddpmsim_gridDim
#define warpSize 32

#define __global__ __attribute__((visibility("hidden")))
#define __device__ static inline
#define __host__
#define __forceinline__ __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict

// The build rewrites "__shared__ T name[N];" into DDPMSIM_SHARED_STATIC and "extern __shared__ T name[];"
// into DDPMSIM_SHARED_DYNAMIC, so each block gets its own storage, filled with NaN when the block starts
// (the name is kept for the race detector's messages).
#define DDPMSIM_SHARED_STATIC(T, name, dims)                                                                  \
    typedef T ddpmsim_shared_type_##name dims;                                                                \
    static const char ddpmsim_shared_key_##name = 0;                                                          \
    ddpmsim_shared_type_##name& name = *static_cast<ddpmsim_shared_type_##name*>(ddpmsim_shared_static(      \
        &ddpmsim_shared_key_##name, sizeof(ddpmsim_shared_type_##name), alignof(ddpmsim_shared_type_##name), #name))
#define DDPMSIM_SHARED_DYNAMIC(T, name) T* name = static_cast<T*>(ddpmsim_shared_dynamic())

static inline void __syncthreads() { ddpmsim_syncthreads(); }
[[noreturn]] static inline void __trap() { ddpmsim_trap(); }

namespace ddpmsim_detail
{
template <typename T> static inline T shfl(unsigned mask, T v, int operand, int width, int mode)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move values of at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    b = ddpmsim_shfl(b, sizeof(T), mask, operand, width, mode);
    T r;
    memcpy(&r, &b, sizeof(T));
    return r;
}
}

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32)
{
    return ddpmsim_detail::shfl(mask, v, laneMask, width, 0);
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int srcLane, int width = 32)
{
    return ddpmsim_detail::shfl(mask, v, srcLane, width, 1);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return ddpmsim_detail::shfl(mask, v, (int)delta, width, 2);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return ddpmsim_detail::shfl(mask, v, (int)delta, width, 3);
}

static inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((uint64_t)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b)
{
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

// Fibers of one launch run one at a time on one host thread and switch only at barriers and shuffles,
// so a read-modify-write cannot be interleaved. Its accesses are not instrumented (atomics do not race); the
// checks still see it through ddpmsim_atomic_access. The order in which blocks and warps add is the schedule's,
// so a float sum through atomics differs between schedules (and the order check reports it), as on a GPU.
template <typename T> __attribute__((no_sanitize_address)) static inline T atomicAdd(T* p, T v)
{
    if (DDPMSIM_INSTRUMENTED) ddpmsim_atomic_access(p, sizeof(T));
    T old = *p;
    *p = old + v;
    return old;
}

namespace ddpmsim_detail
{
template <typename F> struct KernelTraits;

template <typename... A> struct KernelTraits<void (*)(A...)>
{
    using Args = std::tuple<std::decay_t<A>...>;
    static_assert((std::is_trivially_copyable<std::decay_t<A>>::value && ...), "kernel parameters are copied as bytes");
    static_assert(sizeof...(A) <= 64, "at most 64 kernel parameters");

    template <typename T> __attribute__((no_sanitize_address)) static T load(const void* p)
    {
        T v;
        memcpy(&v, p, sizeof(T));
        return v;
    }

    // Unpacking the arguments is the launcher's work, not the kernel's: never instrumented.
    template <size_t... I> __attribute__((no_sanitize_address)) static void packImpl(void* dst, void* const* params, std::index_sequence<I...>)
    {
        new (dst) Args(load<std::decay_t<A>>(params[I])...);
    }

    __attribute__((no_sanitize_address)) static void pack(void* dst, void* const* params)
    {
        packImpl(dst, params, std::index_sequence_for<A...>{});
    }

    __attribute__((no_sanitize_address)) static void invoke(void* fn, const void* args)
    {
        std::apply(reinterpret_cast<void (*)(A...)>(fn), *static_cast<const Args*>(args));
    }

    static uint64_t pointers()
    {
        uint64_t bits = 0;
        unsigned i = 0;
        ((bits |= (std::is_pointer<std::decay_t<A>>::value ? 1ull : 0ull) << i++), ...);
        return bits;
    }
};

template <typename F> static int registerKernel(const char* name, F fn)
{
    using T = KernelTraits<F>;
    DdpmSimKernelInfo info;
    info.name = name;
    info.fn = reinterpret_cast<void*>(fn);
    info.paramCount = std::tuple_size<typename T::Args>::value;
    info.argsSize = sizeof(typename T::Args);
    info.argsAlign = alignof(typename T::Args);
    info.pointerParams = T::pointers();
    info.pack = &T::pack;
    info.invoke = &T::invoke;
    info.instrumented = DDPMSIM_INSTRUMENTED;
    return ddpmsim_register_kernel(&info);
}
}

#define DDPMSIM_REGISTER_KERNEL(name) \
    static const int ddpmsim_registered_##name __attribute__((used)) = ddpmsim_detail::registerKernel(#name, &name);
