// Shared helpers of the Ddpm kernels. Compiled by NVRTC, so no standard headers: the math functions
// (expf, log, ...) and warp intrinsics are NVRTC builtins.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;

// Broadcast, reduce and permute shapes travel by value as kernel arguments. Tensors have at most 16
// dimensions (Ddpm.Tensors.Shape.MaxRank, refused above that on every backend), and merging dimensions
// never adds any, so every shape fits.
#define DDPM_MAX_DIMS 16

// y (and per-operand strides, 0 on broadcast dimensions) of an elementwise op, row-major.
struct BroadcastDims
{
    int rank;
    int size[DDPM_MAX_DIMS];
    int strideA[DDPM_MAX_DIMS];
    int strideB[DDPM_MAX_DIMS];
};

// Kept (output) and reduced dimensions of a sum, each with its stride in the input.
struct ReduceDims
{
    int keptRank;
    int keptSize[DDPM_MAX_DIMS];
    int keptStride[DDPM_MAX_DIMS];
    int redRank;
    int redSize[DDPM_MAX_DIMS];
    int redStride[DDPM_MAX_DIMS];
};

// The C# mirrors (KernelArgs.cs) have these sizes; a layout change on either side fails to compile or
// fails KernelArgumentLayoutMatchesTheKernels.
static_assert(sizeof(BroadcastDims) == 196, "BroadcastDims layout changed: update KernelArgs.cs");
static_assert(sizeof(ReduceDims) == 264, "ReduceDims layout changed: update KernelArgs.cs");

// Grid-stride loop; unsigned so that i + stride cannot overflow for n < 2^31.
#define GRID_STRIDE(i, n) for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (u32)(n); i += blockDim.x * gridDim.x)

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// scratch: 32 floats of shared memory. Ends with a barrier so scratch can be reused at once.
__device__ float block_sum(float v, float* scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

__device__ double block_sum_d(double v, double* scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < warps ? scratch[lane] : 0.0;
    t = warp_sum_d(t);
    __syncthreads();
    return t;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z).
__device__ __forceinline__ float silu_grad(float z) { float s = sigmoidf(z); return s * (1.0f + z * (1.0f - s)); }
