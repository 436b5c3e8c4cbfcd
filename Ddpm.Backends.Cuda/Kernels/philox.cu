// Philox4x32-10 fills, bit-identical to Ddpm.Tensors.Philox: position p of stream `seed` is word p % 4 of
// the block with counter (p / 4, 0) under key seed. Compiled with --fmad=false so no multiply-add is fused
// and the double-precision Box-Muller rounds exactly as the C# code does.
#include "common.cuh"

__device__ __forceinline__ void philox_block(u32 c[4], u32 k0, u32 k1)
{
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int r = 0; r < 10; r++)
    {
        if (r > 0) { k0 += W0; k1 += W1; }
        u32 hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        u32 hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

__device__ __forceinline__ float to_uniform(u32 x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// Philox.BoxMuller: u1 = (a + 1) / 2^32 in (0, 1], u2 = b / 2^32, all in double, rounded once to float.
__device__ __forceinline__ void box_muller(u32 a, u32 b, float* z0, float* z1)
{
    double u1 = ((double)a + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)b * (1.0 / 4294967296.0);
    double r = sqrt(-2.0 * log(u1));
    double th = 2.0 * 3.141592653589793 * u2;
    *z0 = (float)(r * cos(th));
    *z1 = (float)(r * sin(th));
}

// dst: [n] = value at stream positions offset .. offset + n - 1. One thread per 4-word block.
// mode 0: standard normal, 1: uniform [0, 1), 2: dropout mask (u < keep ? scale : 0), 3: raw words.
__device__ __forceinline__ void philox_fill_range(float* dst, int n, u64 seed, u64 offset, int mode, float keep, float scale)
{
    u64 first = offset >> 2;
    u64 blocks = ((offset + (u64)n - 1) >> 2) - first + 1;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < blocks; t += (u64)blockDim.x * gridDim.x)
    {
        u64 block = first + t;
        u32 c[4] = { (u32)block, (u32)(block >> 32), 0u, 0u };
        philox_block(c, (u32)seed, (u32)(seed >> 32));
        float v[4];
        if (mode == 0)
        {
            box_muller(c[0], c[1], &v[0], &v[1]);
            box_muller(c[2], c[3], &v[2], &v[3]);
        }
        else if (mode == 1)
        {
            for (int j = 0; j < 4; j++) v[j] = to_uniform(c[j]);
        }
        else if (mode == 2)
        {
            for (int j = 0; j < 4; j++) v[j] = to_uniform(c[j]) < keep ? scale : 0.0f;
        }
        else
        {
            for (int j = 0; j < 4; j++) v[j] = __uint_as_float(c[j]);
        }
        for (int j = 0; j < 4; j++)
        {
            u64 pos = block * 4 + j;
            if (pos >= offset && pos < offset + (u64)n) dst[pos - offset] = v[j];
        }
    }
}

extern "C" __global__ void philox_fill(float* dst, int n, u64 seed, u64 offset, int mode, float keep, float scale)
{
    philox_fill_range(dst, n, seed, offset, mode, keep, scale);
}

// The same fill with the step's values read from device memory (a replayed step writes them before each replay):
// args = { seed, offset } as u64, then { keep, scale } as floats. The grid must cover n / 4 + 2 blocks of 4 words.
extern "C" __global__ void philox_fill_at(float* dst, int n, const u64* args, int mode)
{
    const float* f = (const float*)(args + 2);
    philox_fill_range(dst, n, args[0], args[1], mode, f[0], f[1]);
}
