// Kernels with planted bugs, one per check of the simulator: each is wrong on a GPU, and each gives the
// "expected" result when threads and blocks run in index order with the check off, which is what a simulator
// without the check shows. The self-test (selftest.cpp) and tests/Ddpm.Tests/Cuda/PlantedBugTests.cs run
// each with its check off (it passes) and on (the simulator names it). Compiled for the host into the simulator
// and by NVRTC (the register count of planted_many_registers comes from the real cubin).
#include "common.cuh"

// block_sum of common.cuh without its trailing barrier, called twice on the same scratch: a warp that runs
// ahead writes its second partial sum over a value another warp has not read yet. (race detector; a random
// schedule gives wrong sums.)
__device__ float planted_block_sum_no_trailing_barrier(float v, float* scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

// sums: [2 * gridDim.x]: the sum and the sum of squares of each block's blockDim.x values of x.
extern "C" __global__ void planted_missing_barrier(const float* x, float* sums)
{
    __shared__ float scratch[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    float s = planted_block_sum_no_trailing_barrier(v, scratch);
    float q = planted_block_sum_no_trailing_barrier(v * v, scratch);
    if (threadIdx.x == 0)
    {
        sums[2 * blockIdx.x] = s;
        sums[2 * blockIdx.x + 1] = q;
    }
}

// y[i] = x[i] + x[i - 1] through shared memory with no barrier between the write and the neighbour's read: a
// higher thread reads what a lower one wrote. (race detector; a reverse or random schedule gives wrong values.)
extern "C" __global__ void planted_neighbour_read(const float* x, float* y)
{
    __shared__ float tile[1024];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    tile[t] = x[i];
    float left = t > 0 ? tile[t - 1] : 0.0f;
    y[i] = tile[t] + left;
}

// y[b * (blockDim.x - 1) + t] = x[i]: an off-by-one in the output stride makes the last thread of block b and the
// first of block b + 1 write the same element. (race detector between blocks; the order check.)
extern "C" __global__ void planted_block_overlap(const float* x, float* y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[blockIdx.x * (blockDim.x - 1) + threadIdx.x] = x[i];
}

// total[0] += x[i] by atomics from every block: the float sum's rounding depends on the order the blocks run in.
// (the order check; atomics are not a race.)
extern "C" __global__ void planted_atomic_sum(const float* x, int n, float* total)
{
    GRID_STRIDE(i, n) atomicAdd(total, x[i]);
}

// y[i] = x[i] + x[i + 1] for i < n: the last thread reads x[n], one past the end. (bounds; the fence page.)
extern "C" __global__ void planted_off_by_one_read(const float* x, float* y, int n)
{
    GRID_STRIDE(i, n) y[i] = x[i] + x[i + 1];
}

// y[i] = max(x[i], floor[i]) where floor was never written: NaN poison does not show, as fmaxf drops a NaN
// operand. (init check.)
extern "C" __global__ void planted_unwritten_max(const float* x, const float* floor, float* y, int n)
{
    GRID_STRIDE(i, n) y[i] = fmaxf(x[i], floor[i]);
}

// total[b] = the sum of x over block b's grid-stride share, read whole: with x never written it is the poison.
// (the poison of large allocations; the init check.)
extern "C" __global__ void planted_sum(const float* x, int n, float* total)
{
    __shared__ float scratch[32];
    float s = 0.0f;
    GRID_STRIDE(i, n) s += x[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) total[blockIdx.x] = s;
}

// 96 values per thread kept live across an unrolled loop: NVRTC gives it about 128 registers, so a block of
// 1024 threads needs twice the 65536 registers an sm_90 block can have. (resources: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES.)
extern "C" __global__ void planted_many_registers(const float* x, float* y, int n)
{
    float a[96];
    int t = blockIdx.x * blockDim.x + threadIdx.x;
#pragma unroll
    for (int i = 0; i < 96; i++) a[i] = x[t + i * n];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 96; i++)
#pragma unroll
        for (int j = 0; j < 96; j += 7) s += a[i] * a[(i + j) % 96];
    y[t] = s;
}
