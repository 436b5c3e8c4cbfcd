// Layout kernels: permute, slice copies (concat / split and their gradients), row gather and scatter-add.
// All buffers are contiguous float32.
#include "common.cuh"

// y: [n] with shape d.size; x is read through d.strideA (x's stride of the dimension that lands at each
// position of y). d.strideB is unused.
extern "C" __global__ void permute(const float* x, float* y, int n, BroadcastDims d)
{
    GRID_STRIDE(i, n)
    {
        u32 rem = i;
        int off = 0;
        for (int k = d.rank - 1; k >= 0; k--)
        {
            int c = (int)(rem % (u32)d.size[k]);
            rem /= (u32)d.size[k];
            off += c * d.strideA[k];
        }
        y[i] = x[off];
    }
}

// src: [outer, srcDim, inner], dst: [outer, dstDim, inner]; total = outer * count * inner.
// dst[o, dstStart + c, i] (+)= src[o, srcStart + c, i] for c in [0, count).
extern "C" __global__ void copy_slice(const float* src, int srcDim, int srcStart, float* dst, int dstDim, int dstStart,
    int count, int inner, int total, int accumulate)
{
    GRID_STRIDE(t, total)
    {
        int i = (int)(t % (u32)inner);
        int rest = (int)(t / (u32)inner);
        int c = rest % count;
        int o = rest / count;
        long long s = ((long long)o * srcDim + srcStart + c) * inner + i;
        long long d = ((long long)o * dstDim + dstStart + c) * inner + i;
        dst[d] = accumulate ? dst[d] + src[s] : src[s];
    }
}

// src: [rows, rowSize], idx: [count] (checked on the host), dst: [count, rowSize].
extern "C" __global__ void index_select(const float* src, int rowSize, const int* idx, int count, float* dst)
{
    GRID_STRIDE(t, count * rowSize)
    {
        int r = (int)(t / (u32)rowSize), j = (int)(t % (u32)rowSize);
        dst[t] = src[(long long)idx[r] * rowSize + j];
    }
}

// dst[idx[r], :] += src[r, :] when idx has no repeats: every element has one writer.
// src: [count, rowSize], dst: [rows, rowSize].
extern "C" __global__ void index_add_unique(const float* src, int rowSize, const int* idx, int count, float* dst)
{
    GRID_STRIDE(t, count * rowSize)
    {
        int r = (int)(t / (u32)rowSize), j = (int)(t % (u32)rowSize);
        dst[(long long)idx[r] * rowSize + j] += src[t];
    }
}

// The same with repeated indices: one thread per column walks the rows in order, so the sums are
// deterministic and match a sequential loop, without atomics.
extern "C" __global__ void index_add_ordered(const float* src, int rowSize, const int* idx, int count, float* dst)
{
    GRID_STRIDE(j, rowSize)
    {
        for (int r = 0; r < count; r++)
            dst[(long long)idx[r] * rowSize + j] += src[(long long)r * rowSize + j];
    }
}
