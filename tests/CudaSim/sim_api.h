// The C ABI libcuda.so.1 (the simulated driver) exports for the other simulated libraries (libcublas.so.12,
// libnccl.so.2, and any later one such as a simulated libcudnn) and for tests, besides the cu* entry points. All
// of them share the driver's one state: streams, allocations, checks, counters, errors. See README.md, "Internal
// API", for how a library queues work and reports failures.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern "C" {

// Counters since the last reset. The layout is mirrored by tests/Ddpm.Tests/Cuda/SimulatorCounters.cs: add fields
// at the end only, in both places.
struct DdpmSimCounters
{
    uint64_t launches;        // cuLaunchKernel calls accepted
    uint64_t host_syncs;      // cuStreamSynchronize, cuEventSynchronize, cuCtxSynchronize
    uint64_t bytes_htod;      // bytes queued by accepted host-to-device copies
    uint64_t bytes_dtoh;      // bytes queued by accepted device-to-host copies
    uint64_t bytes_dtod;      // bytes queued by accepted device-to-device copies
    uint64_t memsets;         // cuMemsetD32Async calls accepted
    uint64_t gemms;           // cuBLAS GEMM calls accepted (one per call, whatever the batch count)
    uint64_t allocations;     // cuMemAlloc_v2 calls that succeeded
    uint64_t checked_launches;  // launches that ran instrumented (race, bounds or init check on)
    uint64_t order_checks;      // launches run twice by the order check
    uint64_t checked_accesses;  // device and shared memory accesses the instrumented kernels made
};

void ddpmsim_get_counters(DdpmSimCounters* out);
void ddpmsim_reset_counters(void);
const char* ddpmsim_version(void);

// ---- checks and schedule ------------------------------------------------------------------------------------
// Bits of ddpmsim_checks(). DDPM_CUDA_SIM_CHECK names them (see README.md); the default is every check but order.
enum DdpmSimCheck
{
    DDPMSIM_CHECK_RACE = 1 << 0,        // shared memory per barrier interval, global memory between blocks
    DDPMSIM_CHECK_BOUNDS = 1 << 1,      // every kernel access lies in a live allocation, shared memory or the thread's own stack
    DDPMSIM_CHECK_INIT = 1 << 2,        // kernels read only device (and shared) memory something wrote
    DDPMSIM_CHECK_FENCE = 1 << 3,       // allocations end at a no-access page; a fault is CUDA_ERROR_ILLEGAL_ADDRESS
    DDPMSIM_CHECK_POISON = 1 << 4,      // every allocation reads as NaN until written, whatever its size
    DDPMSIM_CHECK_OVERLAP = 1 << 5,     // overlapping device-to-device copies are refused
    DDPMSIM_CHECK_NCCL_ASYNC = 1 << 6,  // a collective's result lands at its stream's completion point; queries say NOT_READY
    DDPMSIM_CHECK_RESOURCES = 1 << 7,   // registers (from the cubin) and shared memory per block within sm_90's limits
    DDPMSIM_CHECK_ORDER = 1 << 8,       // every launch runs twice, in two block and warp orders, and the results must agree
};
unsigned ddpmsim_checks(void);

// Sets an option as the environment would at cuInit: "schedule" (DDPM_CUDA_SIM_SCHEDULE: ordered, reverse or
// random:SEED) or "check" (DDPM_CUDA_SIM_CHECK: a comma list, see README.md). Returns 0, or 1 (CUDA_ERROR_INVALID_VALUE)
// for an unknown name or value. For tests: the change applies to work that runs after it.
int ddpmsim_set_option(const char* name, const char* value);
// The option's current value as text ("random:42", "race,bounds,..."), or NULL for an unknown name. The pointer
// stays valid until the next call.
const char* ddpmsim_get_option(const char* name);

// For tests that provoke a device fault on purpose: forgets the context's sticky error so later tests can use the
// device (work dropped with the fault stays dropped). A GPU's context would need a reset; this is the simulator's.
void ddpmsim_clear_error(void);

// ---- work and memory, for the other simulated libraries ----------------------------------------------------
// Queues fn(ctx) on a stream (0 = the legacy default stream) in order with its copies and kernels; run when
// the host synchronises. free_ctx(ctx) runs after fn, or when the work is dropped. Returns a CUresult.
int ddpmsim_enqueue_host_work(void* stream, const char* what, void (*fn)(void*), void* ctx, void (*free_ctx)(void*));
// 0 when [p, p + bytes) lies inside one live device allocation.
int ddpmsim_check_device_range(const void* p, size_t bytes);
// Makes the context's error sticky (as a failed kernel would), printing the detail once.
void ddpmsim_set_sticky_error(int code, const char* detail);
// 0 when the calling thread has a current context without a sticky error, else the CUresult a call would get.
int ddpmsim_context_status(void);
void ddpmsim_count_gemm(void);
// Library code that writes device memory outside a kernel (a GEMM's C, a collective's result) calls this from
// its queued work, so the init check knows the bytes were written. Any range; bytes outside allocations are ignored.
void ddpmsim_mark_written(const void* p, size_t bytes);
// Fills [p, p + bytes) with NaN (0x7fc00000) and marks it as the pending result of `what` (a collective in
// flight): a kernel or copy that reads it before ddpmsim_mark_written is reported under that name. From queued work.
void ddpmsim_mark_pending(void* p, size_t bytes, const char* what);

// Rounds a float to TF32 (10 explicit mantissa bits) as a tensor core's input conversion does (cvt.rna.tf32.f32:
// to nearest, ties away from zero). Infinities and NaN pass through.
static inline float ddpmsim_round_tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
    {
        u += 0x1000u;
        u &= 0xffffe000u;
    }
    memcpy(&x, &u, 4);
    return x;
}

// The bfloat16 bits of a float (8-bit exponent, 7 explicit mantissa bits) as __float2bfloat16_rn gives them: to
// nearest, ties to even; a finite value that rounds past the largest bfloat16 becomes infinity; NaN stays a quiet NaN.
static inline uint16_t ddpmsim_float_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// The float a bfloat16 holds (exact: its bits are a float's upper half).
static inline float ddpmsim_bf16_to_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// A float rounded to bfloat16 and widened back: what a tensor core multiplies when given bfloat16 operands.
static inline float ddpmsim_round_bf16(float x) { return ddpmsim_bf16_to_float(ddpmsim_float_to_bf16(x)); }
}
