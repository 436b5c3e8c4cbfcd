// Adam(W) with torch.optim.Adam's arithmetic order: decoupled decay first, moments, then
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
#include "common.cuh"

// param, grad, m, v: [n]; bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (from the host, in double, rounded).
__device__ __forceinline__ void adam_update(float* param, const float* grad, float* m, float* v, int n, float lr,
    float beta1, float beta2, float eps, float weightDecay, float bc1, float bc2)
{
    float stepSize = lr / bc1;
    float bc2Sqrt = sqrtf(bc2);
    GRID_STRIDE(i, n)
    {
        float p = param[i], g = grad[i];
        if (weightDecay != 0.0f) p *= 1.0f - lr * weightDecay;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - stepSize * (mi / (sqrtf(vi) / bc2Sqrt + eps));
    }
}

extern "C" __global__ void adam_step(float* param, const float* grad, float* m, float* v, int n, float lr,
    float beta1, float beta2, float eps, float weightDecay, float bc1, float bc2)
{
    adam_update(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, bc1, bc2);
}

// The same step with its scalars read from device memory (a replayed step writes them before each replay):
// s = { lr, beta1, beta2, eps, weightDecay, bc1, bc2 }.
extern "C" __global__ void adam_step_at(float* param, const float* grad, float* m, float* v, int n, const float* s)
{
    adam_update(param, grad, m, v, n, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
}
