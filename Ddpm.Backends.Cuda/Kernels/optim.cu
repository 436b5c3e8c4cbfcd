// Whole-model optimiser helpers: the gradient norm left on the device and the clip applied from it, so a
// training step needs no host round trip between the backward pass and the optimiser.
#include "common.cuh"

// result: [2] = the sum of partial: [count] (one block, fixed order) as hi = (float)s, lo = (float)(s - hi).
// partial comes from sum_squares_partial (elementwise.cu).
extern "C" __global__ void sum_partials_split(const double* partial, int count, float* result)
{
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0)
    {
        float hi = (float)s;
        result[0] = hi;
        result[1] = (float)(s - (double)hi);
    }
}

// x: [n] *= (float)coef with coef = maxNorm / (sqrt(hi + lo) + 1e-6) in double, when coef < 1
// (torch.nn.utils.clip_grad_norm_); sumSq: [2], the hi/lo pair of sum_partials_split.
extern "C" __global__ void clip_scale(const float* sumSq, double maxNorm, float* x, int n)
{
    double norm = sqrt((double)sumSq[0] + (double)sumSq[1]);
    double coef = maxNorm / (norm + 1e-6);
    if (coef >= 1.0) return;
    float c = (float)coef;
    GRID_STRIDE(i, n) x[i] = x[i] * c;
}
