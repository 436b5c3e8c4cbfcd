// Kernels for the simulator's self-test, compiled like the engine's kernels (the same forced-include header
// and __shared__ rewrite) and registered into the same registry. block_sum comes from the engine's common.cuh.
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
    p[threadIdx.x] = 2.0f;
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
