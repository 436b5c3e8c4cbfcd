// Elementwise kernels: unary ops and their derivatives, affine, axpby, clamp, broadcast binary ops,
// broadcast-reverse sums and the sum of squares. All buffers are contiguous float32.
#include "common.cuh"
#include "ops.cuh"

// Op codes: ops.cuh, generated from Ddpm.Tensors.UnaryOp. An unknown code traps rather than computing some
// other op. NaN stays NaN through every op and derivative, as in PyTorch, so a diverging run shows its NaN.

__device__ __forceinline__ float unary_value(int op, float x)
{
    switch (op)
    {
        case DDPM_UNARY_NEG: return -x;
        case DDPM_UNARY_EXP: return expf(x);
        case DDPM_UNARY_LOG: return logf(x);
        case DDPM_UNARY_SIN: return sinf(x);
        case DDPM_UNARY_COS: return cosf(x);
        case DDPM_UNARY_SQRT: return sqrtf(x);
        case DDPM_UNARY_SQUARE: return x * x;
        case DDPM_UNARY_SIGMOID: return sigmoidf(x);
        case DDPM_UNARY_SILU: return x * sigmoidf(x);
        case DDPM_UNARY_TANH: return tanhf(x);
        case DDPM_UNARY_RELU: return x > 0.0f ? x : (x <= 0.0f ? 0.0f : x);
        case DDPM_UNARY_ABS: return fabsf(x);
        default: __trap(); return x;
    }
}

// dy * op'(x), with y = op(x) where the derivative is cheaper from it. At NaN x, relu and abs give NaN.
__device__ __forceinline__ float unary_grad(int op, float x, float y, float dy)
{
    switch (op)
    {
        case DDPM_UNARY_NEG: return -dy;
        case DDPM_UNARY_EXP: return dy * y;
        case DDPM_UNARY_LOG: return dy / x;
        case DDPM_UNARY_SIN: return dy * cosf(x);
        case DDPM_UNARY_COS: return -dy * sinf(x);
        case DDPM_UNARY_SQRT: return dy * 0.5f / y;
        case DDPM_UNARY_SQUARE: return dy * 2.0f * x;
        case DDPM_UNARY_SIGMOID: return dy * y * (1.0f - y);
        case DDPM_UNARY_SILU: { float s = sigmoidf(x); return dy * (s * (1.0f + x * (1.0f - s))); }
        case DDPM_UNARY_TANH: return dy * (1.0f - y * y);
        case DDPM_UNARY_RELU: return x > 0.0f ? dy : (x <= 0.0f ? 0.0f : x);
        case DDPM_UNARY_ABS: return x > 0.0f ? dy : (x < 0.0f ? -dy : (x == 0.0f ? 0.0f : x));
        default: __trap(); return x;
    }
}

// x, y: [n]
extern "C" __global__ void unary_forward(const float* x, float* y, int n, int op)
{
    GRID_STRIDE(i, n) y[i] = unary_value(op, x[i]);
}

// x, y, dy, dx: [n]
extern "C" __global__ void unary_backward(const float* x, const float* y, const float* dy, float* dx, int n, int op)
{
    GRID_STRIDE(i, n) dx[i] = unary_grad(op, x[i], y[i], dy[i]);
}

// y = x * scale + shift; x and y may be the same buffer.
extern "C" __global__ void affine(const float* x, float* y, int n, float scale, float shift)
{
    GRID_STRIDE(i, n) y[i] = x[i] * scale + shift;
}

// y = a * x + b * y
extern "C" __global__ void axpby(const float* x, float* y, int n, float a, float b)
{
    GRID_STRIDE(i, n) y[i] = a * x[i] + b * y[i];
}

// y = clamp(x, lo, hi); NaN stays NaN as in Math.Clamp.
extern "C" __global__ void clamp_values(const float* x, float* y, int n, float lo, float hi)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

// Op codes: ops.cuh, generated from Ddpm.Tensors.BinaryOp; an unknown code traps.
__device__ __forceinline__ float binary_value(int op, float a, float b)
{
    switch (op)
    {
        case DDPM_BINARY_ADD: return a + b;
        case DDPM_BINARY_SUB: return a - b;
        case DDPM_BINARY_MUL: return a * b;
        case DDPM_BINARY_DIV: return a / b;
        default: __trap(); return a;
    }
}

// a, b, y: [n], same shape. y may alias a or b (each element is read before it is written).
extern "C" __global__ void binary_same(const float* a, const float* b, float* y, int n, int op)
{
    GRID_STRIDE(i, n) y[i] = binary_value(op, a[i], b[i]);
}

// y: [n] = d.size (row-major); a and b are read through their strides (0 where broadcast).
extern "C" __global__ void binary_broadcast(const float* a, const float* b, float* y, int n, int op, BroadcastDims d)
{
    GRID_STRIDE(i, n)
    {
        u32 rem = i;
        int offA = 0, offB = 0;
        for (int k = d.rank - 1; k >= 0; k--)
        {
            int c = (int)(rem % (u32)d.size[k]);
            rem /= (u32)d.size[k];
            offA += c * d.strideA[k];
            offB += c * d.strideB[k];
        }
        y[i] = binary_value(op, a[offA], b[offB]);
    }
}

// The first pass of a sum over the reduced dimensions: partial: [segments, nOut], element (s, o) the sum of x
// over the reduced positions [s * segLen, min((s + 1) * segLen, nRed)) of output o (kept dimensions). One warp
// per (segment, output), lanes striding the segment, then a fixed shuffle tree: so many warps reduce a few
// outputs at once (a bias gradient [N, O, HW] -> [O]), and every partial has one fixed summation order.
extern "C" __global__ void sum_to_shape_partial(const float* x, float* partial, int nOut, int nRed, int segments, int segLen,
    ReduceDims d)
{
    int lane = threadIdx.x & 31;
    int warpsPerBlock = blockDim.x >> 5;
    long long items = (long long)nOut * segments;
    for (long long w = (long long)blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); w < items; w += (long long)gridDim.x * warpsPerBlock)
    {
        int o = (int)(w % nOut), seg = (int)(w / nOut);
        int base = 0;
        int rem = o;
        for (int k = d.keptRank - 1; k >= 0; k--)
        {
            base += (rem % d.keptSize[k]) * d.keptStride[k];
            rem /= d.keptSize[k];
        }
        int begin = seg * segLen;
        int end = nRed - begin < segLen ? nRed : begin + segLen;
        float s = 0.0f;
        for (int r = begin + lane; r < end; r += 32)
        {
            int off = base, rr = r;
            for (int k = d.redRank - 1; k >= 0; k--)
            {
                off += (rr % d.redSize[k]) * d.redStride[k];
                rr /= d.redSize[k];
            }
            s += x[off];
        }
        s = warp_sum(s);
        if (lane == 0) partial[w] = s;
    }
}

// The second pass: y[o] = sum over s of partial[s, o], in segment order. partial: [segments, nOut].
extern "C" __global__ void sum_segments(const float* partial, float* y, int nOut, int segments)
{
    GRID_STRIDE(o, nOut)
    {
        float s = 0.0f;
        for (int seg = 0; seg < segments; seg++) s += partial[(long long)seg * nOut + o];
        y[o] = s;
    }
}

// partial: [gridDim.x] doubles, the sum of x^2 over each block's grid-stride share of x: [n].
extern "C" __global__ void sum_squares_partial(const float* x, int n, double* partial)
{
    __shared__ double scratch[32];
    double s = 0.0;
    GRID_STRIDE(i, n)
    {
        double v = x[i];
        s += v * v;
    }
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// result: [1] = sum of partial: [count]; one block.
extern "C" __global__ void sum_partials(const double* partial, int count, double* result)
{
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) result[0] = s;
}

// affine with scale and shift read from device memory (ss = { scale, shift }), for steps replayed from a graph;
// the same expression as affine, so the same bits.
extern "C" __global__ void affine_at(const float* x, float* y, int n, const float* ss)
{
    float scale = ss[0], shift = ss[1];
    GRID_STRIDE(i, n) y[i] = x[i] * scale + shift;
}

// axpby with a and b read from device memory (ab = { a, b }), for steps replayed from a graph.
extern "C" __global__ void axpby_at(const float* x, float* y, int n, const float* ab)
{
    float a = ab[0], b = ab[1];
    GRID_STRIDE(i, n) y[i] = a * x[i] + b * y[i];
}
