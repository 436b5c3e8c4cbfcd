// Group norm and softmax, forward and backward.
#include "common.cuh"

// One block per (sample, group) of x: [n, c, hw]; the group's cpg * hw elements are contiguous.
// Two passes (mean, then centred variance) for accuracy; biased variance as in PyTorch.
// y: like x; mean, rstd: [n, groups].
// Element i of a (sample, group) block: x, plus shift[sample, channel] when there is a shift.
__device__ __forceinline__ float shifted(const float* xg, const float* shiftg, int i, int hw)
{
    return shiftg ? xg[i] + shiftg[i / hw] : xg[i];
}

// With shift (n x c, may be null) the input is x + shift broadcast over hw; with silu != 0, y = silu(z) of the
// normalised z (fused: neither the sum nor z is stored).
extern "C" __global__ void group_norm_forward(const float* x, const float* shift, const float* gamma, const float* beta, int c, int hw,
    int groups, float eps, int silu, float* y, float* mean, float* rstd)
{
    __shared__ float scratch[32];
    int ng = blockIdx.x, g = ng % groups;
    int cpg = c / groups, count = cpg * hw;
    const float* xg = x + (long long)ng * count;
    const float* shiftg = shift ? shift + (long long)ng * cpg : 0;
    float* yg = y + (long long)ng * count;
    float s = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += shifted(xg, shiftg, i, hw);
    float mu = block_sum(s, scratch) / count;
    float q = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
    {
        float d = shifted(xg, shiftg, i, hw) - mu;
        q += d * d;
    }
    float var = block_sum(q, scratch) / count;
    float r = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < count; i += blockDim.x)
    {
        int ch = g * cpg + i / hw;
        float z = (shifted(xg, shiftg, i, hw) - mu) * r * gamma[ch] + beta[ch];
        yg[i] = silu ? z * sigmoidf(z) : z;
    }
    if (threadIdx.x == 0)
    {
        mean[ng] = mu;
        rstd[ng] = r;
    }
}

// The gradient of the normalised z at element i of channel ch (input value xi): dy, or under a fused SiLU dy silu'(z).
__device__ __forceinline__ float norm_grad(const float* dy, float xi, const float* gamma, const float* beta,
    float mu, float r, int ch, long long i, int silu)
{
    float g = dy[i];
    if (silu) g *= silu_grad((xi - mu) * r * gamma[ch] + beta[ch]);
    return g;
}

// dx for one (sample, group) per block: dx = rstd * (dy*gamma - mean(dy*gamma) - xhat * mean(dy*gamma*xhat)).
extern "C" __global__ void group_norm_backward_data(const float* dy, const float* x, const float* shift, const float* gamma,
    const float* beta, const float* mean, const float* rstd, int c, int hw, int groups, int silu, float* dx)
{
    __shared__ float scratch[32];
    int ng = blockIdx.x, g = ng % groups;
    int cpg = c / groups, count = cpg * hw;
    long long base = (long long)ng * count;
    const float* xg = x + base;
    const float* shiftg = shift ? shift + (long long)ng * cpg : 0;
    float mu = mean[ng], r = rstd[ng];
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
    {
        int ch = g * cpg + i / hw;
        float xi = shifted(xg, shiftg, i, hw);
        float dg = norm_grad(dy, xi, gamma, beta, mu, r, ch, base + i, silu) * gamma[ch];
        s1 += dg;
        s2 += dg * (xi - mu) * r;
    }
    float m1 = block_sum(s1, scratch) / count;
    float m2 = block_sum(s2, scratch) / count;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
    {
        int ch = g * cpg + i / hw;
        float xi = shifted(xg, shiftg, i, hw);
        float dg = norm_grad(dy, xi, gamma, beta, mu, r, ch, base + i, silu) * gamma[ch];
        float xhat = (xi - mu) * r;
        dx[base + i] = r * (dg - m1 - xhat * m2);
    }
}

// The first pass of the affine gradients: block (ch, seg) of c * segments blocks sums, over positions
// t = sample * hw + p in [seg * segLen, min((seg + 1) * segLen, n * hw)) of channel ch, dy * xhat (dgamma) and
// dy (dbeta). partial: [2, segments, c], dgamma's partial sums then dbeta's. Fixed order within each block.
extern "C" __global__ void group_norm_backward_affine_partial(const float* dy, const float* x, const float* shift, const float* gamma,
    const float* beta, const float* mean, const float* rstd, int n, int c, int hw, int groups, int silu, int segments, int segLen,
    float* partial)
{
    __shared__ float scratch[32];
    int ch = blockIdx.x % c, seg = blockIdx.x / c, g = ch / (c / groups);
    int total = n * hw, begin = seg * segLen;
    int end = total - begin < segLen ? total : begin + segLen;
    float sg = 0.0f, sb = 0.0f;
    for (int t = begin + threadIdx.x; t < end; t += blockDim.x)
    {
        int s = t / hw, p = t % hw;
        long long i = ((long long)s * c + ch) * hw + p;
        float mu = mean[s * groups + g], r = rstd[s * groups + g];
        float xi = shift ? x[i] + shift[(long long)s * c + ch] : x[i];
        float d = norm_grad(dy, xi, gamma, beta, mu, r, ch, i, silu);
        float xhat = (xi - mu) * r;
        sg += d * xhat;
        sb += d;
    }
    sg = block_sum(sg, scratch);
    sb = block_sum(sb, scratch);
    if (threadIdx.x == 0)
    {
        partial[(long long)seg * c + ch] = sg;
        partial[(long long)(segments + seg) * c + ch] = sb;
    }
}

// The second pass: dgamma[ch], dbeta[ch] = the partial sums of channel ch added in segment order.
extern "C" __global__ void group_norm_backward_affine_finish(const float* partial, int c, int segments, float* dgamma, float* dbeta)
{
    GRID_STRIDE(ch, c)
    {
        float sg = 0.0f, sb = 0.0f;
        for (int seg = 0; seg < segments; seg++)
        {
            sg += partial[(long long)seg * c + ch];
            sb += partial[(long long)(segments + seg) * c + ch];
        }
        dgamma[ch] = sg;
        dbeta[ch] = sb;
    }
}

// Softmax over the last dimension (inner == 1): one warp per row of x, y: [rows, dim].
extern "C" __global__ void softmax_rows(const float* x, float* y, int rows, int dim)
{
    int lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
    for (int row = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); row < rows; row += gridDim.x * warpsPerBlock)
    {
        const float* xr = x + (long long)row * dim;
        float* yr = y + (long long)row * dim;
        float m = -__int_as_float(0x7f800000);
        for (int j = lane; j < dim; j += 32) m = fmaxf(m, xr[j]);
        m = warp_max(m);
        float s = 0.0f;
        for (int j = lane; j < dim; j += 32) s += expf(xr[j] - m);
        s = warp_sum(s);
        float inv = 1.0f / s;
        for (int j = lane; j < dim; j += 32) yr[j] = expf(xr[j] - m) * inv;
    }
}

// Softmax over the middle dimension of x: [outer, dim, inner]: one thread per (outer, inner) column;
// neighbouring threads read neighbouring addresses.
extern "C" __global__ void softmax_cols(const float* x, float* y, int outer, int dim, int inner)
{
    GRID_STRIDE(t, outer * inner)
    {
        int o = (int)(t / (u32)inner), i = (int)(t % (u32)inner);
        long long base = (long long)o * dim * inner + i;
        float m = -__int_as_float(0x7f800000);
        for (int j = 0; j < dim; j++) m = fmaxf(m, x[base + (long long)j * inner]);
        float s = 0.0f;
        for (int j = 0; j < dim; j++) s += expf(x[base + (long long)j * inner] - m);
        float inv = 1.0f / s;
        for (int j = 0; j < dim; j++) y[base + (long long)j * inner] = expf(x[base + (long long)j * inner] - m) * inv;
    }
}

// dx = y * (dy - sum(dy * y)) over rows (inner == 1): one warp per row.
extern "C" __global__ void softmax_backward_rows(const float* y, const float* dy, float* dx, int rows, int dim)
{
    int lane = threadIdx.x & 31, warpsPerBlock = blockDim.x >> 5;
    for (int row = blockIdx.x * warpsPerBlock + (threadIdx.x >> 5); row < rows; row += gridDim.x * warpsPerBlock)
    {
        long long base = (long long)row * dim;
        float s = 0.0f;
        for (int j = lane; j < dim; j += 32) s += dy[base + j] * y[base + j];
        s = warp_sum(s);
        for (int j = lane; j < dim; j += 32) dx[base + j] = y[base + j] * (dy[base + j] - s);
    }
}

// The same over the middle dimension of [outer, dim, inner], one thread per column.
extern "C" __global__ void softmax_backward_cols(const float* y, const float* dy, float* dx, int outer, int dim, int inner)
{
    GRID_STRIDE(t, outer * inner)
    {
        int o = (int)(t / (u32)inner), i = (int)(t % (u32)inner);
        long long base = (long long)o * dim * inner + i;
        float s = 0.0f;
        for (int j = 0; j < dim; j++) s += dy[base + (long long)j * inner] * y[base + (long long)j * inner];
        for (int j = 0; j < dim; j++)
        {
            long long k = base + (long long)j * inner;
            dx[k] = y[k] * (dy[k] - s);
        }
    }
}
