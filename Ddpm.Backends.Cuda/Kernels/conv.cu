// im2col / col2im and the output transpose for convolutions computed as whole-chunk GEMMs by cuBLAS (the path
// without cuDNN).
#include "common.cuh"

// The geometry of Ddpm.Tensors.ConvGeometry plus the output size.
struct ConvDims
{
    int N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW;
};
static_assert(sizeof(ConvDims) == 52, "ConvDims layout changed: update KernelArgs.cs");

// x: [N, C, H, W] from sample n0; col: [C*KH*KW, nb, OH*OW], the column matrices of samples n0 .. n0+nb-1 side
// by side (zero where the window falls in the padding). Row r is (c, kh, kw); column b*OH*OW + p is sample b's
// output position p = (oh, ow). So each pass of a chunk is one GEMM: the forward and backward-data products
// have n = nb*OH*OW, the weight gradient k = nb*OH*OW.
extern "C" __global__ void im2col(const float* x, float* col, int n0, int nb, ConvDims g)
{
    int ohw = g.OH * g.OW, kk = g.KH * g.KW, rows = g.C * kk;
    int total = nb * rows * ohw;
    GRID_STRIDE(t, total)
    {
        int p = (int)(t % (u32)ohw);
        int rest = (int)(t / (u32)ohw);
        int r = rest / nb;
        int b = rest % nb;
        int c = r / kk, kh = (r % kk) / g.KW, kw = r % g.KW;
        int oh = p / g.OW, ow = p % g.OW;
        int h = oh * g.SH - g.PH + kh, w = ow * g.SW - g.PW + kw;
        float v = 0.0f;
        if (h >= 0 && h < g.H && w >= 0 && w < g.W)
            v = x[(((long long)(n0 + b) * g.C + c) * g.H + h) * g.W + w];
        col[t] = v;
    }
}

// The adjoint of im2col: dx: [N, C, H, W] for samples n0 .. n0+nb-1 gets the sum of every col entry that
// im2col read from it, col: [C*KH*KW, nb, OH*OW] as im2col writes it. One thread per dx element gathers (no
// atomics, fixed order).
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
                long long r = c * kk + kh * g.KW + kw;
                s += col[(r * nb + b) * ohw + oh * g.OW + ow];
            }
        }
        dx[((long long)(n0 + b) * g.C + c) * g.H * g.W + h * g.W + w] = s;
    }
}

// The output of a whole-chunk convolution GEMM put in place: yt: [O, nb, OHW] (the GEMM's row-major product,
// samples side by side) to y: [nb, O, OHW] (y already at the chunk's first sample), plus bias: [O] when it is
// not null. One pass: the transpose and the bias add cost one read and one write of the output.
extern "C" __global__ void conv_output(const float* yt, const float* bias, float* y, int nb, int o, int ohw)
{
    int total = nb * o * ohw;
    GRID_STRIDE(t, total)
    {
        int p = (int)(t % (u32)ohw);
        int rest = (int)(t / (u32)ohw);
        int ch = rest % o;
        int b = rest / o;
        float v = yt[((long long)ch * nb + b) * ohw + p];
        y[t] = bias ? v + bias[ch] : v;
    }
}
