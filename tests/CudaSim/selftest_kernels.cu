// Kernels for the simulator's self-test, compiled like the engine's kernels (the same forced-include header
// and __shared__ rewrite) into libcuda.so.1. block_sum comes from the engine's common.cuh.
#include "common.cuh"

// Threads 224.. of each block skip the barrier and exit: a divergent __syncthreads.
extern "C" __global__ void selftest_divergent_barrier(float* out)
{
    if (threadIdx.x < 224) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// A full-mask shuffle; launched with a block that is not a multiple of 32 threads.
extern "C" __global__ void selftest_full_mask_shuffle(float* out)
{
    float v = (float)threadIdx.x;
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// out[b] = block_sum of x over block b's blockDim.x elements; outd the same through block_sum_d.
extern "C" __global__ void selftest_block_sum(const float* x, float* out, double* outd)
{
    __shared__ float scratch[32];
    __shared__ double scratchd[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    float s = block_sum(v, scratch);
    double sd = block_sum_d((double)v, scratchd);
    if (threadIdx.x == 0)
    {
        out[blockIdx.x] = s;
        outd[blockIdx.x] = sd;
    }
}

// Each block fills its shared array with its own values and reads it back reversed; fresh[b] records
// whether the block's shared memory was NaN (never written) when the block started.
extern "C" __global__ void selftest_shared_per_block(float* out, float* fresh)
{
    __shared__ float tile[256];
    __shared__ float first;
    if (threadIdx.x == 0)
    {
        fresh[blockIdx.x] = (first != first && tile[0] != tile[0]) ? 1.0f : 0.0f;
        first = (float)blockIdx.x;
    }
    __syncthreads();
    tile[threadIdx.x] = first * 1000.0f + (float)threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

// p[index] = value: writes outside an allocation when index is past its end.
extern "C" __global__ void selftest_store(float* p, int index, float value)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) p[index] = value;
}

extern "C" __global__ void selftest_trap(float* p)
{
    if (blockIdx.x == 1 && threadIdx.x == 5) __trap();
    p[blockIdx.x * blockDim.x + threadIdx.x] = 2.0f;
}

// order[b] = the position at which block b started, counted by thread 0 of each block.
extern "C" __global__ void selftest_block_order(int* order, int* counter)
{
    if (threadIdx.x == 0) order[blockIdx.x] = atomicAdd(counter, 1);
}

// A block's warps hand a value round through shared memory with barriers between: lane 0 of warp w writes
// slot[w], and after the barrier lane 0 of warp w reads slot[(w + 1) % warps]. Correct in every order.
extern "C" __global__ void selftest_warp_ring(float* out)
{
    __shared__ float slot[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float v = (float)(blockIdx.x * 100 + warp);
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    if (lane == 0) slot[warp] = v;
    __syncthreads();
    if (lane == 0) out[blockIdx.x * warps + warp] = slot[(warp + 1) % warps];
}

// Each half of a warp shuffles within itself (masks 0x0000ffff and 0xffff0000): the halves resolve separately.
extern "C" __global__ void selftest_half_warp_shuffle(float* out)
{
    float v = (float)threadIdx.x;
    unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
    v += __shfl_xor_sync(mask, v, 2);
    out[threadIdx.x] = v;
}

// Parameters of mixed sizes and alignments: a 64-bit value after a 32-bit one, a struct by value.
struct SelftestDims
{
    int n;
    float scale;
    int extra[3];
};
extern "C" __global__ void selftest_params(double* out, int a, unsigned long long b, float c, SelftestDims d, long long e)
{
    if (threadIdx.x == 0)
    {
        out[0] = a;
        out[1] = (double)b;
        out[2] = c;
        out[3] = d.n;
        out[4] = d.scale;
        out[5] = d.extra[2];
        out[6] = (double)e;
    }
}
