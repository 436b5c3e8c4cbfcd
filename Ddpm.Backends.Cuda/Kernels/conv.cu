// im2col / col2im for convolutions computed as GEMMs by cuBLAS.
#include "common.cuh"

// The geometry of Ddpm.Tensors.ConvGeometry plus the output size.
struct ConvDims
{
    int N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW;
};
static_assert(sizeof(ConvDims) == 52, "ConvDims layout changed: update KernelArgs.cs");

// x: [N, C, H, W] from sample n0; the column matrices of samples n0 .. n0+nb-1 (zero where the window falls
// in the padding). Row r of a sample's matrix is (c, kh, kw); column p is (oh, ow).
// sampleMajor != 0: col is [nb, C*KH*KW, OH*OW], one matrix per sample (for the batched forward GEMM).
// sampleMajor == 0: col is [C*KH*KW, nb, OH*OW], the samples side by side along the columns, so the weight
// gradient of the whole chunk is one GEMM with k = nb*OH*OW.
extern "C" __global__ void im2col(const float* x, float* col, int n0, int nb, int sampleMajor, ConvDims g)
{
    int ohw = g.OH * g.OW, kk = g.KH * g.KW, rows = g.C * kk;
    int total = nb * rows * ohw;
    GRID_STRIDE(t, total)
    {
        int p = (int)(t % (u32)ohw);
        int rest = (int)(t / (u32)ohw);
        int r = sampleMajor ? rest % rows : rest / nb;
        int b = sampleMajor ? rest / rows : rest % nb;
        int c = r / kk, kh = (r % kk) / g.KW, kw = r % g.KW;
        int oh = p / g.OW, ow = p % g.OW;
        int h = oh * g.SH - g.PH + kh, w = ow * g.SW - g.PW + kw;
        float v = 0.0f;
        if (h >= 0 && h < g.H && w >= 0 && w < g.W)
            v = x[(((long long)(n0 + b) * g.C + c) * g.H + h) * g.W + w];
        col[t] = v;
    }
}

// The adjoint of im2col (sample-major layout): dx: [N, C, H, W] for samples n0 .. n0+nb-1 gets the sum of every col entry that
// im2col read from it. One thread per dx element gathers (no atomics, fixed order).
extern "C" __global__ void col2im(const float* col, float* dx, int n0, int nb, ConvDims g)
{
    int ohw = g.OH * g.OW, kk = g.KH * g.KW;
    int total = nb * g.C * g.H * g.W;
    GRID_STRIDE(t, total)
    {
        int w = (int)(t % (u32)g.W);
        int rest = (int)(t / (u32)g.W);
        int h = rest % g.H;
        rest /= g.H;
        int c = rest % g.C;
        int b = rest / g.C;
        float s = 0.0f;
        for (int kh = 0; kh < g.KH; kh++)
        {
            int hs = h + g.PH - kh;
            if (hs < 0 || hs % g.SH != 0) continue;
            int oh = hs / g.SH;
            if (oh >= g.OH) continue;
            for (int kw = 0; kw < g.KW; kw++)
            {
                int ws = w + g.PW - kw;
                if (ws < 0 || ws % g.SW != 0) continue;
                int ow = ws / g.SW;
                if (ow >= g.OW) continue;
                s += col[((long long)b * g.C * kk + (c * kk + kh * g.KW + kw)) * ohw + oh * g.OW + ow];
            }
        }
        dx[((long long)(n0 + b) * g.C + c) * g.H * g.W + h * g.W + w] = s;
    }
}
