// Casts between float32 and bfloat16 (the operands of the bf16 precision's GEMMs and convolutions, and the bfloat16
// results of its cuDNN passes). bfloat16 is the upper half of a float32: 8-bit exponent, 7 explicit mantissa bits.
// Elements are 16-bit words of the allocator's buffers.
#include "common.cuh"

// __float2bfloat16_rn: to nearest, ties to even; a finite value that rounds past the largest bfloat16 becomes
// infinity (the carry runs into the exponent); NaN stays NaN, made quiet so the truncation cannot turn it into infinity.
__device__ __forceinline__ unsigned short float_to_bf16_rn(float x)
{
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// x: [n] float32, y: [n] bfloat16
extern "C" __global__ void cast_f32_to_bf16(const float* x, unsigned short* y, int n)
{
    GRID_STRIDE(i, n) y[i] = float_to_bf16_rn(x[i]);
}

// x: [n] bfloat16, y: [n] float32 (exact)
extern "C" __global__ void cast_bf16_to_f32(const unsigned short* x, float* y, int n)
{
    GRID_STRIDE(i, n) y[i] = __uint_as_float((u32)x[i] << 16);
}
