// The C ABI libcuda.so.1 (the simulated driver) exports for libcublas.so.12 and for tests, besides the cu*
// entry points. Both libraries share the driver's one state: streams, allocations, counters, errors.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

struct DdpmSimCounters
{
    uint64_t launches;    // cuLaunchKernel calls accepted
    uint64_t host_syncs;  // cuStreamSynchronize, cuEventSynchronize, cuCtxSynchronize, and queries that had to wait
    uint64_t bytes_htod;  // bytes queued by accepted host-to-device copies
    uint64_t bytes_dtoh;  // bytes queued by accepted device-to-host copies
    uint64_t bytes_dtod;  // bytes queued by accepted device-to-device copies
    uint64_t memsets;     // cuMemsetD32Async calls accepted
    uint64_t gemms;       // cuBLAS GEMM calls accepted (one per call, whatever the batch count)
    uint64_t allocations; // cuMemAlloc_v2 calls that succeeded
};

void ddpmsim_get_counters(DdpmSimCounters* out);
void ddpmsim_reset_counters(void);
const char* ddpmsim_version(void);

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
}
