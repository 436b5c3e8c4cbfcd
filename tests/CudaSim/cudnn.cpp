// libcudnn.so.9 of the CUDA simulator: the legacy convolution API of cuDNN 9 that the Ddpm backend calls (handles,
// tensor / filter / convolution descriptors, heuristic algorithm queries, workspace sizes, the forward, backward-data
// and backward-filter passes, the bias add and the bias gradient), computed on the CPU and queued on the handle's
// stream through the simulated driver, so it runs in stream order with the copies, kernels and GEMMs.
//
// Numbers: products summed in float32 in a fixed order (output by output), like the simulated cuBLAS and a GPU (no
// wider accumulator hides a tolerance that is too tight). Under a math type that allows tensor cores (anything but
// CUDNN_FMA_MATH) float32 inputs are first rounded to TF32 (ddpmsim_round_tf32: 10-bit mantissa, nearest, ties away
// from zero, as cvt.rna.tf32.f32), as an Ampere or later GPU does. The algorithms cuDNN documents as
// non-deterministic (backward data ALGO_0, backward filter ALGO_0 and ALGO_3) sum in float in an order that changes
// from call to call, so a caller that picks one gets results that differ run to run, as on a GPU.
//
// Element types: float32, and for the three convolution passes bfloat16 (cuDNN's PSEUDO_BFLOAT16_CONFIG: x, w and y
// all CUDNN_DATA_BFLOAT16, a CUDNN_DATA_FLOAT compute type). bfloat16 inputs are widened exactly (TF32 rounding
// leaves them as they are), the sums are the same float32 sums, and the output is rounded to bfloat16 to nearest
// even (ddpmsim_float_to_bf16) when it is stored. The bias add and the bias gradient take float32 tensors only.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "sim_api.h"

#define API extern "C" __attribute__((visibility("default")))

namespace
{
// cudnnStatus_t as cuDNN 9 numbers it (cudnn_graph.h).
enum : int
{
    SUCCESS = 0,
    NOT_INITIALIZED = 1001,
    BAD_PARAM = 2000,
    BAD_PARAM_NULL_POINTER = 2002,
    BAD_PARAM_NOT_FINALIZED = 2004,
    BAD_PARAM_SIZE_INSUFFICIENT = 2006,
    BAD_PARAM_SHAPE_MISMATCH = 2008,
    NOT_SUPPORTED = 3000,
    NOT_SUPPORTED_DATA_TYPE = 3003,
    NOT_SUPPORTED_LAYOUT = 3004,
    INTERNAL_ERROR = 4000,
    EXECUTION_FAILED = 5000,
};

// cudnnDataType_t, cudnnTensorFormat_t, cudnnConvolutionMode_t, cudnnMathType_t, cudnnDeterminism_t.
enum : int
{
    DATA_FLOAT = 0,
    DATA_BFLOAT16 = 9,
    FORMAT_NCHW = 0,
    MODE_CONVOLUTION = 0,
    MODE_CROSS_CORRELATION = 1,
    MATH_DEFAULT = 0,
    MATH_FMA = 3,
    NON_DETERMINISTIC = 0,
    DETERMINISTIC = 1,
};

// cudnnConvolutionFwdAlgo_t, cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t values used here.
enum : int
{
    FWD_IMPLICIT_GEMM = 0,
    FWD_IMPLICIT_PRECOMP_GEMM = 1,
    FWD_GEMM = 2,
    FWD_FFT = 4,
    BWD_DATA_ALGO_0 = 0,
    BWD_DATA_ALGO_1 = 1,
    BWD_DATA_FFT = 2,
    BWD_FILTER_ALGO_0 = 0,
    BWD_FILTER_ALGO_1 = 1,
    BWD_FILTER_ALGO_3 = 3,
};

struct Handle
{
    void* stream = nullptr;
};

struct TensorDesc
{
    bool set = false;
    int dtype = 0, n = 0, c = 0, h = 0, w = 0;
    size_t count() const { return (size_t)n * c * h * w; }
};

struct FilterDesc
{
    bool set = false;
    int dtype = 0, k = 0, c = 0, h = 0, w = 0;
    size_t count() const { return (size_t)k * c * h * w; }
};

struct ConvDesc
{
    bool set = false;
    int padH = 0, padW = 0, strideH = 1, strideW = 1, dilH = 1, dilW = 1, mode = MODE_CROSS_CORRELATION, computeType = DATA_FLOAT;
    int math = MATH_DEFAULT;
};

// cudnnConvolution*AlgoPerf_t (all three share the layout).
struct AlgoPerf
{
    int algo;
    int status;
    float time;
    size_t memory;
    int determinism;
    int mathType;
    int reserved[3];
};
static_assert(sizeof(AlgoPerf) == 48, "cudnnConvolutionFwdAlgoPerf_t is 48 bytes");

std::mutex g_mu;
std::unordered_set<void*> g_handles, g_tensors, g_filters, g_convs;
uint64_t g_calls = 0, g_queries = 0;
uint64_t g_nondeterministicRuns = 0;
thread_local std::string t_lastError;

int fail(int status, const std::string& detail)
{
    t_lastError = detail;
    return status;
}

template <typename T>
T* live(std::unordered_set<void*>& set, void* p)
{
    std::lock_guard<std::mutex> lock(g_mu);
    return p && set.count(p) ? static_cast<T*>(p) : nullptr;
}

template <typename T>
int create(std::unordered_set<void*>& set, void** out)
{
    if (!out) return fail(BAD_PARAM_NULL_POINTER, "null descriptor pointer");
    T* d = new T();
    std::lock_guard<std::mutex> lock(g_mu);
    set.insert(d);
    *out = d;
    return SUCCESS;
}

template <typename T>
int destroy(std::unordered_set<void*>& set, void* p)
{
    std::lock_guard<std::mutex> lock(g_mu);
    if (!p) return SUCCESS;  // cuDNN accepts destroying a null descriptor
    if (!set.erase(p)) return BAD_PARAM;
    delete static_cast<T*>(p);
    return SUCCESS;
}

// The element types of the convolution passes.
int checkType(int dtype)
{
    if (dtype == DATA_FLOAT || dtype == DATA_BFLOAT16) return SUCCESS;
    return fail(NOT_SUPPORTED_DATA_TYPE, "unsupported data type " + std::to_string(dtype) + " (the simulated cuDNN has float32 and bfloat16 data)");
}

// The element types of cudnnAddTensor and cudnnConvolutionBackwardBias.
int checkFloat(int dtype)
{
    if (dtype == DATA_FLOAT) return SUCCESS;
    return fail(NOT_SUPPORTED_DATA_TYPE, "data type " + std::to_string(dtype) + ": the simulated cuDNN adds and sums float32 tensors only");
}

size_t elementBytes(int dtype) { return dtype == DATA_BFLOAT16 ? 2 : 4; }

// ---- numbers ----------------------------------------------------------------------------------------------

// float32 rounded to TF32 as a tensor core's input conversion does (the shared rounding of sim_api.h).
float tf32(float v) { return ddpmsim_round_tf32(v); }

// Element access by data type: the float an element holds, and a float stored as one (rounded to nearest even for
// bfloat16).
struct Bf16
{
    uint16_t bits;
};

template <typename T>
struct Element;
template <>
struct Element<float>
{
    static float load(const void* p, size_t i) { return static_cast<const float*>(p)[i]; }
    static void store(void* p, size_t i, float v) { static_cast<float*>(p)[i] = v; }
};
template <>
struct Element<Bf16>
{
    static float load(const void* p, size_t i) { return ddpmsim_bf16_to_float(static_cast<const uint16_t*>(p)[i]); }
    static void store(void* p, size_t i, float v) { static_cast<uint16_t*>(p)[i] = ddpmsim_float_to_bf16(v); }
};

float loadAs(int dtype, const void* p, size_t i) { return dtype == DATA_BFLOAT16 ? Element<Bf16>::load(p, i) : Element<float>::load(p, i); }

// The geometry of one convolution: x [n, c, h, w], w [k, c, r, s], y [n, k, oh, ow].
struct Geometry
{
    int n, c, h, w, k, r, s, oh, ow, padH, padW, strideH, strideW, dilH, dilW;
    bool flip;  // CUDNN_CONVOLUTION: the filter is applied mirrored
    int wr(int rr) const { return flip ? r - 1 - rr : rr; }
    int ws(int ss) const { return flip ? s - 1 - ss : ss; }
};

// The outputs o in [lo, hi) whose input position o * stride - pad + k * dil lies in [0, size): the loops below
// run over exactly those, without a test per element.
void validRange(int outputs, int size, int stride, int pad, int k, int dil, int* lo, int* hi)
{
    int offset = k * dil - pad;  // input position of output 0
    int first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    int last = size - 1 - offset < 0 ? -1 : (size - 1 - offset) / stride;  // the last output that stays inside
    *lo = first < outputs ? first : outputs;
    *hi = last + 1 < outputs ? last + 1 : outputs;
    if (*hi < *lo) *hi = *lo;
}

enum class Pass
{
    Forward,
    BackwardData,
    BackwardFilter,
    BackwardBias,
    AddTensor,
};

struct Job
{
    Pass pass;
    Geometry g;
    int dtype;             // of the operands and the output of a convolution pass (float32 for the tensor passes)
    bool tensorOps;        // round inputs to TF32
    bool nondeterministic; // float sums in a call-dependent order
    uint64_t run;          // which non-deterministic call this is
    float alpha, beta;
    const void* a;         // forward: x, backward data: dy, backward filter: x, bias: dy, add: A
    const void* b;         // forward: w, backward data: w, backward filter: dy
    void* out;
    void* workspace;
    size_t workspaceBytes;
    TensorDesc aDesc, cDesc;  // add tensor: A and C; bias gradient: dy and db
};

// The two operands of a pass as the arithmetic sees them: float32 device buffers as they are, or copies widened
// from bfloat16 or rounded to TF32 under tensor-op math (the device buffers are not changed).
struct Operands
{
    const float* a;
    const float* b;
    std::vector<float> ra, rb;

    Operands(const Job& j, size_t aCount, size_t bCount)
        : a(static_cast<const float*>(j.a)), b(static_cast<const float*>(j.b))
    {
        if (j.dtype == DATA_FLOAT && !j.tensorOps) return;
        a = widen(j, j.a, aCount, ra);
        b = widen(j, j.b, bCount, rb);
    }

    static const float* widen(const Job& j, const void* p, size_t count, std::vector<float>& out)
    {
        out.resize(count);
        for (size_t i = 0; i < count; i++)
        {
            float v = loadAs(j.dtype, p, i);
            out[i] = j.tensorOps ? tf32(v) : v;  // a no-op for bfloat16, whose mantissa is shorter than TF32's
        }
        return out.data();
    }
};

// out[i] = alpha * v + beta * out[i], out not read when beta is 0 (cuDNN's blending), stored as the job's type.
void blend(const Job& j, void* out, size_t i, float v)
{
    float r = j.alpha * v + (j.beta != 0.0f ? j.beta * loadAs(j.dtype, out, i) : 0.0f);
    if (j.dtype == DATA_BFLOAT16) Element<Bf16>::store(out, i, r);
    else Element<float>::store(out, i, r);
}

// The output rows and columns that filter tap (rr, ss) reads inside the input.
struct Window
{
    int ohLo, ohHi, owLo, owHi;

    Window(const Geometry& g, int rr, int ss)
    {
        validRange(g.oh, g.h, g.strideH, g.padH, rr, g.dilH, &ohLo, &ohHi);
        validRange(g.ow, g.w, g.strideW, g.padW, ss, g.dilW, &owLo, &owHi);
    }
};

void forward(const Job& j)
{
    const Geometry& g = j.g;
    Operands in(j, (size_t)g.n * g.c * g.h * g.w, (size_t)g.k * g.c * g.r * g.s);
    const float* x = in.a;
    const float* w = in.b;
    std::vector<float> acc((size_t)g.oh * g.ow);
    for (int n = 0; n < g.n; n++)
        for (int k = 0; k < g.k; k++)
        {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int c = 0; c < g.c; c++)
            {
                const float* xc = x + ((size_t)n * g.c + c) * g.h * g.w;
                for (int rr = 0; rr < g.r; rr++)
                    for (int ss = 0; ss < g.s; ss++)
                    {
                        float wv = w[(((size_t)k * g.c + c) * g.r + g.wr(rr)) * g.s + g.ws(ss)];
                        Window win(g, rr, ss);
                        for (int oh = win.ohLo; oh < win.ohHi; oh++)
                        {
                            const float* row = xc + (size_t)(oh * g.strideH - g.padH + rr * g.dilH) * g.w + (ss * g.dilW - g.padW);
                            float* arow = acc.data() + (size_t)oh * g.ow;
                            for (int ow = win.owLo; ow < win.owHi; ow++) arow[ow] += wv * row[ow * g.strideW];
                        }
                    }
            }
            size_t y = ((size_t)n * g.k + k) * g.oh * g.ow;
            for (size_t p = 0; p < acc.size(); p++) blend(j, j.out, y + p, acc[p]);
        }
}

void backwardData(const Job& j)
{
    const Geometry& g = j.g;
    Operands in(j, (size_t)g.n * g.k * g.oh * g.ow, (size_t)g.k * g.c * g.r * g.s);
    const float* dy = in.a;
    const float* w = in.b;
    std::vector<float> acc((size_t)g.h * g.w);
    bool reversed = j.nondeterministic && (j.run & 1);
    for (int n = 0; n < g.n; n++)
        for (int c = 0; c < g.c; c++)
        {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int kk = 0; kk < g.k; kk++)
            {
                int k = reversed ? g.k - 1 - kk : kk;
                const float* dyk = dy + ((size_t)n * g.k + k) * g.oh * g.ow;
                for (int rr = 0; rr < g.r; rr++)
                    for (int ss = 0; ss < g.s; ss++)
                    {
                        float wv = w[(((size_t)k * g.c + c) * g.r + g.wr(rr)) * g.s + g.ws(ss)];
                        Window win(g, rr, ss);
                        for (int oh = win.ohLo; oh < win.ohHi; oh++)
                        {
                            size_t at = (size_t)(oh * g.strideH - g.padH + rr * g.dilH) * g.w + (ss * g.dilW - g.padW);
                            const float* drow = dyk + (size_t)oh * g.ow;
                            for (int ow = win.owLo; ow < win.owHi; ow++) acc[at + (size_t)ow * g.strideW] += wv * drow[ow];
                        }
                    }
            }
            size_t dx = ((size_t)n * g.c + c) * g.h * g.w;
            for (size_t p = 0; p < acc.size(); p++) blend(j, j.out, dx + p, acc[p]);
        }
}

void backwardFilter(const Job& j)
{
    const Geometry& g = j.g;
    Operands in(j, (size_t)g.n * g.c * g.h * g.w, (size_t)g.n * g.k * g.oh * g.ow);
    const float* x = in.a;
    const float* dy = in.b;
    bool reversed = j.nondeterministic && (j.run & 1);
    for (int k = 0; k < g.k; k++)
        for (int c = 0; c < g.c; c++)
            for (int rr = 0; rr < g.r; rr++)
                for (int ss = 0; ss < g.s; ss++)
                {
                    float acc = 0.0f;
                    Window win(g, rr, ss);
                    for (int nn = 0; nn < g.n; nn++)
                    {
                        int n = reversed ? g.n - 1 - nn : nn;
                        const float* dyk = dy + ((size_t)n * g.k + k) * g.oh * g.ow;
                        const float* xc = x + ((size_t)n * g.c + c) * g.h * g.w;
                        for (int oh = win.ohLo; oh < win.ohHi; oh++)
                        {
                            const float* xrow = xc + (size_t)(oh * g.strideH - g.padH + rr * g.dilH) * g.w + (ss * g.dilW - g.padW);
                            const float* drow = dyk + (size_t)oh * g.ow;
                            for (int ow = win.owLo; ow < win.owHi; ow++) acc += drow[ow] * xrow[ow * g.strideW];
                        }
                    }
                    blend(j, j.out, (((size_t)k * g.c + c) * g.r + g.wr(rr)) * g.s + g.ws(ss), acc);
                }
}

// db [1, k, 1, 1] = alpha * dy [n, k, h, w] summed over n, h, w + beta * db.
void backwardBias(const Job& j)
{
    const TensorDesc& d = j.aDesc;
    size_t plane = (size_t)d.h * d.w;
    for (int k = 0; k < d.c; k++)
    {
        float acc = 0.0f;
        for (int n = 0; n < d.n; n++)
        {
            const float* p = static_cast<const float*>(j.a) + ((size_t)n * d.c + k) * plane;
            for (size_t i = 0; i < plane; i++) acc += p[i];
        }
        blend(j, j.out, k, acc);
    }
}

// C = alpha * A + beta * C, A broadcast along its dimensions of size 1.
void addTensor(const Job& j)
{
    const TensorDesc &a = j.aDesc, &c = j.cDesc;
    for (int n = 0; n < c.n; n++)
        for (int ch = 0; ch < c.c; ch++)
            for (int h = 0; h < c.h; h++)
                for (int w = 0; w < c.w; w++)
                {
                    size_t ci = (((size_t)n * c.c + ch) * c.h + h) * c.w + w;
                    size_t ai = (((size_t)(a.n == 1 ? 0 : n) * a.c + (a.c == 1 ? 0 : ch)) * a.h + (a.h == 1 ? 0 : h)) * a.w + (a.w == 1 ? 0 : w);
                    blend(j, j.out, ci, static_cast<const float*>(j.a)[ai]);
                }
}

void runJob(void* p)
{
    Job& j = *static_cast<Job*>(p);
    // The workspace is scratch: whatever it held is overwritten, so a caller that aliases it with data sees NaN.
    if (j.workspace && j.workspaceBytes) std::memset(j.workspace, 0xff, j.workspaceBytes);
    switch (j.pass)
    {
        case Pass::Forward: forward(j); break;
        case Pass::BackwardData: backwardData(j); break;
        case Pass::BackwardFilter: backwardFilter(j); break;
        case Pass::BackwardBias: backwardBias(j); break;
        case Pass::AddTensor: addTensor(j); break;
    }
    // What cuDNN wrote, for the init check: the output tensor and the workspace.
    const Geometry& g = j.g;
    size_t outCount = j.pass == Pass::Forward ? (size_t)g.n * g.k * g.oh * g.ow
        : j.pass == Pass::BackwardData ? (size_t)g.n * g.c * g.h * g.w
        : j.pass == Pass::BackwardFilter ? (size_t)g.k * g.c * g.r * g.s
        : j.cDesc.count();
    ddpmsim_mark_written(j.out, outCount * elementBytes(j.dtype));
    if (j.workspace && j.workspaceBytes) ddpmsim_mark_written(j.workspace, j.workspaceBytes);
}

void freeJob(void* p) { delete static_cast<Job*>(p); }

// ---- validation -------------------------------------------------------------------------------------------

struct Resolved
{
    Handle* handle;
    TensorDesc x, y;
    FilterDesc w;
    ConvDesc conv;
    Geometry g;
};

int outputDims(const ConvDesc& cv, const TensorDesc& x, const FilterDesc& w, int* oh, int* ow)
{
    if (x.c != w.c)
        return fail(BAD_PARAM_SHAPE_MISMATCH, "x has " + std::to_string(x.c) + " channels, the filter " + std::to_string(w.c));
    int effH = (w.h - 1) * cv.dilH + 1, effW = (w.w - 1) * cv.dilW + 1;
    int h = (x.h + 2 * cv.padH - effH) / cv.strideH + 1, wd = (x.w + 2 * cv.padW - effW) / cv.strideW + 1;
    if (x.h + 2 * cv.padH < effH || x.w + 2 * cv.padW < effW || h <= 0 || wd <= 0) return fail(BAD_PARAM, "the filter is larger than the padded input");
    *oh = h;
    *ow = wd;
    return SUCCESS;
}

// Checks the descriptors of a convolution whose x, w and y (y the output of the forward pass) are given.
int resolve(void* handle, void* xDesc, void* wDesc, void* convDesc, void* yDesc, Resolved* r)
{
    r->handle = live<Handle>(g_handles, handle);
    if (!r->handle) return fail(BAD_PARAM, "invalid cuDNN handle");
    auto* x = live<TensorDesc>(g_tensors, xDesc);
    auto* y = live<TensorDesc>(g_tensors, yDesc);
    auto* w = live<FilterDesc>(g_filters, wDesc);
    auto* cv = live<ConvDesc>(g_convs, convDesc);
    if (!x || !y || !w || !cv) return fail(BAD_PARAM, "a tensor, filter or convolution descriptor is not a live descriptor");
    if (!x->set || !y->set || !w->set || !cv->set) return fail(BAD_PARAM_NOT_FINALIZED, "a descriptor was created but never set");
    int st;
    if ((st = checkType(x->dtype)) != SUCCESS || (st = checkType(w->dtype)) != SUCCESS || (st = checkType(y->dtype)) != SUCCESS) return st;
    if (x->dtype != w->dtype || x->dtype != y->dtype) return fail(BAD_PARAM, "x, w and y have different data types");
    // FLOAT_CONFIG and PSEUDO_BFLOAT16_CONFIG: float32 sums either way.
    if (cv->computeType != DATA_FLOAT)
        return fail(NOT_SUPPORTED, std::string(x->dtype == DATA_BFLOAT16 ? "bfloat16" : "float32") + " data needs a float32 compute type, not " +
            std::to_string(cv->computeType));
    int oh, ow;
    if ((st = outputDims(*cv, *x, *w, &oh, &ow)) != SUCCESS) return st;
    if (y->n != x->n || y->c != w->k || y->h != oh || y->w != ow)
        return fail(BAD_PARAM_SHAPE_MISMATCH, "y is [" + std::to_string(y->n) + ", " + std::to_string(y->c) + ", " + std::to_string(y->h) + ", " +
            std::to_string(y->w) + "], the convolution gives [" + std::to_string(x->n) + ", " + std::to_string(w->k) + ", " + std::to_string(oh) +
            ", " + std::to_string(ow) + "]");
    r->x = *x;
    r->y = *y;
    r->w = *w;
    r->conv = *cv;
    r->g = Geometry{x->n, x->c, x->h, x->w, w->k, w->h, w->w, oh, ow, cv->padH, cv->padW, cv->strideH, cv->strideW, cv->dilH, cv->dilW,
        cv->mode == MODE_CONVOLUTION};
    return SUCCESS;
}

// The algorithms the simulator offers for each pass, ranked as heuristics would, with their workspace.
struct Offer
{
    int algo;
    int status;
    int determinism;
    size_t workspace;
};

std::vector<Offer> offers(Pass pass, const Geometry& g)
{
    size_t crs = (size_t)g.c * g.r * g.s, ohw = (size_t)g.oh * g.ow;
    switch (pass)
    {
        case Pass::Forward:
            return {{FWD_IMPLICIT_PRECOMP_GEMM, SUCCESS, DETERMINISTIC, 4 * (crs + 64)},
                {FWD_IMPLICIT_GEMM, SUCCESS, DETERMINISTIC, 0},
                {FWD_GEMM, SUCCESS, DETERMINISTIC, 4 * crs * ohw},
                {FWD_FFT, NOT_SUPPORTED, DETERMINISTIC, 0}};
        case Pass::BackwardData:
            return {{BWD_DATA_ALGO_0, SUCCESS, NON_DETERMINISTIC, 0},
                {BWD_DATA_ALGO_1, SUCCESS, DETERMINISTIC, 4 * ((size_t)g.k * crs + 64)},
                {BWD_DATA_FFT, NOT_SUPPORTED, DETERMINISTIC, 0}};
        default:
            return {{BWD_FILTER_ALGO_0, SUCCESS, NON_DETERMINISTIC, 0},
                {BWD_FILTER_ALGO_3, SUCCESS, NON_DETERMINISTIC, 4 * ((size_t)g.k * crs)},
                {BWD_FILTER_ALGO_1, SUCCESS, DETERMINISTIC, 4 * ((size_t)g.k * crs + ohw)}};
    }
}

const Offer* find(Pass pass, const Geometry& g, int algo, std::vector<Offer>& storage)
{
    storage = offers(pass, g);
    for (auto& o : storage)
        if (o.algo == algo && o.status == SUCCESS) return &o;
    return nullptr;
}

int query(Pass pass, void* handle, void* xDesc, void* wDesc, void* convDesc, void* yDesc, int requested, int* returned, AlgoPerf* results)
{
    Resolved r;
    int st = resolve(handle, xDesc, wDesc, convDesc, yDesc, &r);
    if (st != SUCCESS) return st;
    if (!returned || !results) return fail(BAD_PARAM_NULL_POINTER, "null result pointer");
    if (requested < 1) return fail(BAD_PARAM, "requestedAlgoCount must be at least 1");
    auto list = offers(pass, r.g);
    int n = 0;
    for (auto& o : list)
    {
        if (n == requested) break;
        results[n++] = AlgoPerf{o.algo, o.status, -1.0f, o.workspace, o.determinism, r.conv.math, {0, 0, 0}};
    }
    *returned = n;
    std::lock_guard<std::mutex> lock(g_mu);
    g_queries++;
    return SUCCESS;
}

int workspaceSize(Pass pass, void* handle, void* xDesc, void* wDesc, void* convDesc, void* yDesc, int algo, size_t* bytes)
{
    Resolved r;
    int st = resolve(handle, xDesc, wDesc, convDesc, yDesc, &r);
    if (st != SUCCESS) return st;
    if (!bytes) return fail(BAD_PARAM_NULL_POINTER, "null size pointer");
    std::vector<Offer> storage;
    const Offer* o = find(pass, r.g, algo, storage);
    if (!o) return fail(NOT_SUPPORTED, "algorithm " + std::to_string(algo) + " does not support this convolution");
    *bytes = o->workspace;
    return SUCCESS;
}

bool inDevice(const void* p, size_t bytes) { return bytes == 0 || ddpmsim_check_device_range(p, bytes) == 0; }

int enqueue(Handle* h, Job* job, const char* what, const void* pointers[], const size_t counts[], int n)
{
    size_t eb = elementBytes(job->dtype);
    for (int i = 0; i < n; i++)
        if (!inDevice(pointers[i], counts[i] * eb))
        {
            char msg[256];
            snprintf(msg, sizeof msg, "%s: operand %d (%zu elements of %zu bytes at %p) lies outside the device allocations", what, i, counts[i], eb,
                pointers[i]);
            ddpmsim_set_sticky_error(700, msg);
            delete job;
            return fail(EXECUTION_FAILED, msg);
        }
    if (ddpmsim_enqueue_host_work(h->stream, what, runJob, job, freeJob) != 0)
    {
        delete job;
        return fail(EXECUTION_FAILED, std::string(what) + ": the stream refused the work");
    }
    std::lock_guard<std::mutex> lock(g_mu);
    g_calls++;
    return SUCCESS;
}

// One of the three convolution passes. a, b, out as in Job; x/w/y descriptors as in the forward pass.
int convolution(Pass pass, const char* what, void* handle, const float* alpha, void* xDesc, void* wDesc, void* convDesc, void* yDesc,
    const void* a, const void* b, void* out, int algo, void* workspace, size_t workspaceBytes, const float* beta)
{
    Resolved r;
    int st = resolve(handle, xDesc, wDesc, convDesc, yDesc, &r);
    if (st != SUCCESS) return st;
    if (!alpha || !beta) return fail(BAD_PARAM_NULL_POINTER, std::string(what) + ": null alpha or beta");
    if (ddpmsim_context_status() != 0) return fail(EXECUTION_FAILED, std::string(what) + ": the context has a sticky error");
    std::vector<Offer> storage;
    const Offer* o = find(pass, r.g, algo, storage);
    if (!o) return fail(NOT_SUPPORTED, std::string(what) + ": algorithm " + std::to_string(algo) + " does not support this convolution");
    if (workspaceBytes < o->workspace)
        return fail(BAD_PARAM_SIZE_INSUFFICIENT, std::string(what) + ": algorithm " + std::to_string(algo) + " needs " + std::to_string(o->workspace) +
            " bytes of workspace, " + std::to_string(workspaceBytes) + " were given");
    if (o->workspace > 0 && (!workspace || ddpmsim_check_device_range(workspace, workspaceBytes) != 0))
        return fail(BAD_PARAM, std::string(what) + ": the workspace is not device memory of the given size");
    Job* job = new Job{};
    job->pass = pass;
    job->g = r.g;
    job->dtype = r.x.dtype;
    job->tensorOps = r.conv.math != MATH_FMA;
    job->nondeterministic = o->determinism == NON_DETERMINISTIC;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        job->run = job->nondeterministic ? g_nondeterministicRuns++ : 0;
    }
    job->alpha = *alpha;
    job->beta = *beta;
    job->a = a;
    job->b = b;
    job->out = out;
    job->workspace = o->workspace > 0 ? workspace : nullptr;
    job->workspaceBytes = o->workspace > 0 ? workspaceBytes : 0;
    size_t xs = r.x.count(), ws = r.w.count(), ys = r.y.count();
    const size_t counts[3] = {pass == Pass::BackwardData ? ys : xs, pass == Pass::BackwardFilter ? ys : ws,
        pass == Pass::Forward ? ys : (pass == Pass::BackwardData ? xs : ws)};
    const void* pointers[3] = {a, b, out};
    return enqueue(r.handle, job, what, pointers, counts, 3);
}

// A pass over plain tensors (the bias gradient, the bias add): out (described by c) from a (described by a).
int tensorJob(Pass pass, const char* what, Handle* h, float alpha, float beta, const float* a, const TensorDesc& ad, float* out, const TensorDesc& cd)
{
    if (ddpmsim_context_status() != 0) return fail(EXECUTION_FAILED, std::string(what) + ": the context has a sticky error");
    Job* job = new Job{};
    job->pass = pass;
    job->dtype = DATA_FLOAT;
    job->alpha = alpha;
    job->beta = beta;
    job->a = a;
    job->out = out;
    job->aDesc = ad;
    job->cDesc = cd;
    const void* pointers[2] = {a, out};
    const size_t counts[2] = {ad.count(), cd.count()};
    return enqueue(h, job, what, pointers, counts, 2);
}

int setTensor(void* desc, int format, int dtype, int n, int c, int h, int w)
{
    auto* d = live<TensorDesc>(g_tensors, desc);
    if (!d) return fail(BAD_PARAM, "not a live tensor descriptor");
    if (format != FORMAT_NCHW) return fail(NOT_SUPPORTED_LAYOUT, "the simulated cuDNN has NCHW tensors only");
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return fail(BAD_PARAM, "tensor dimensions must be positive");
    if ((double)n * c * h * w > 2147483647.0) return fail(NOT_SUPPORTED, "more than 2^31 elements");
    *d = TensorDesc{true, dtype, n, c, h, w};
    return SUCCESS;
}
}  // namespace

// ---- the API ----------------------------------------------------------------------------------------------

API size_t cudnnGetVersion(void) { return 90300; }

API const char* cudnnGetErrorString(int status)
{
    switch (status)
    {
        case SUCCESS: return "CUDNN_STATUS_SUCCESS";
        case NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
        case BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
        case BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
        case BAD_PARAM_NOT_FINALIZED: return "CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED";
        case BAD_PARAM_SIZE_INSUFFICIENT: return "CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT";
        case BAD_PARAM_SHAPE_MISMATCH: return "CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH";
        case NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
        case NOT_SUPPORTED_DATA_TYPE: return "CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE";
        case NOT_SUPPORTED_LAYOUT: return "CUDNN_STATUS_NOT_SUPPORTED_LAYOUT";
        case INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
        case EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
        default: return "CUDNN_STATUS_UNKNOWN";
    }
}

API void cudnnGetLastErrorString(char* message, size_t maxSize)
{
    if (!message || maxSize == 0) return;
    std::string m = t_lastError.empty() ? "" : "simulator: " + t_lastError;
    snprintf(message, maxSize, "%s", m.c_str());
    t_lastError.clear();
}

API int cudnnCreate(void** handle)
{
    if (!handle) return fail(BAD_PARAM_NULL_POINTER, "null handle pointer");
    if (ddpmsim_context_status() != 0) return fail(NOT_INITIALIZED, "no current CUDA context (or it has a sticky error)");
    return create<Handle>(g_handles, handle);
}

API int cudnnDestroy(void* handle) { return destroy<Handle>(g_handles, handle); }

API int cudnnSetStream(void* handle, void* stream)
{
    auto* h = live<Handle>(g_handles, handle);
    if (!h) return fail(BAD_PARAM, "invalid cuDNN handle");
    h->stream = stream;
    return SUCCESS;
}

API int cudnnCreateTensorDescriptor(void** desc) { return create<TensorDesc>(g_tensors, desc); }
API int cudnnDestroyTensorDescriptor(void* desc) { return destroy<TensorDesc>(g_tensors, desc); }
API int cudnnSetTensor4dDescriptor(void* desc, int format, int dtype, int n, int c, int h, int w) { return setTensor(desc, format, dtype, n, c, h, w); }

API int cudnnCreateFilterDescriptor(void** desc) { return create<FilterDesc>(g_filters, desc); }
API int cudnnDestroyFilterDescriptor(void* desc) { return destroy<FilterDesc>(g_filters, desc); }

API int cudnnSetFilter4dDescriptor(void* desc, int dtype, int format, int k, int c, int h, int w)
{
    auto* d = live<FilterDesc>(g_filters, desc);
    if (!d) return fail(BAD_PARAM, "not a live filter descriptor");
    if (format != FORMAT_NCHW) return fail(NOT_SUPPORTED_LAYOUT, "the simulated cuDNN has NCHW (KCRS) filters only");
    if (k <= 0 || c <= 0 || h <= 0 || w <= 0) return fail(BAD_PARAM, "filter dimensions must be positive");
    *d = FilterDesc{true, dtype, k, c, h, w};
    return SUCCESS;
}

API int cudnnCreateConvolutionDescriptor(void** desc) { return create<ConvDesc>(g_convs, desc); }
API int cudnnDestroyConvolutionDescriptor(void* desc) { return destroy<ConvDesc>(g_convs, desc); }

API int cudnnSetConvolution2dDescriptor(void* desc, int padH, int padW, int u, int v, int dilH, int dilW, int mode, int computeType)
{
    auto* d = live<ConvDesc>(g_convs, desc);
    if (!d) return fail(BAD_PARAM, "not a live convolution descriptor");
    if (padH < 0 || padW < 0 || u <= 0 || v <= 0 || dilH <= 0 || dilW <= 0) return fail(BAD_PARAM, "negative padding or non-positive stride or dilation");
    if (mode != MODE_CONVOLUTION && mode != MODE_CROSS_CORRELATION) return fail(BAD_PARAM, "unknown convolution mode");
    int math = d->math;
    *d = ConvDesc{true, padH, padW, u, v, dilH, dilW, mode, computeType, math};
    return SUCCESS;
}

API int cudnnSetConvolutionMathType(void* desc, int math)
{
    auto* d = live<ConvDesc>(g_convs, desc);
    if (!d) return fail(BAD_PARAM, "not a live convolution descriptor");
    if (math < 0 || math > MATH_FMA) return fail(BAD_PARAM, "unknown math type");
    d->math = math;
    return SUCCESS;
}

API int cudnnGetConvolution2dForwardOutputDim(void* convDesc, void* xDesc, void* wDesc, int* n, int* c, int* h, int* w)
{
    auto* cv = live<ConvDesc>(g_convs, convDesc);
    auto* x = live<TensorDesc>(g_tensors, xDesc);
    auto* f = live<FilterDesc>(g_filters, wDesc);
    if (!cv || !x || !f) return fail(BAD_PARAM, "a descriptor is not live");
    if (!n || !c || !h || !w) return fail(BAD_PARAM_NULL_POINTER, "null output pointer");
    if (!cv->set || !x->set || !f->set) return fail(BAD_PARAM_NOT_FINALIZED, "a descriptor was created but never set");
    int oh, ow, st = outputDims(*cv, *x, *f, &oh, &ow);
    if (st != SUCCESS) return st;
    *n = x->n;
    *c = f->k;
    *h = oh;
    *w = ow;
    return SUCCESS;
}

API int cudnnGetConvolutionForwardAlgorithm_v7(void* handle, void* xDesc, void* wDesc, void* convDesc, void* yDesc, int requested, int* returned,
    AlgoPerf* results)
{
    return query(Pass::Forward, handle, xDesc, wDesc, convDesc, yDesc, requested, returned, results);
}

API int cudnnGetConvolutionBackwardDataAlgorithm_v7(void* handle, void* wDesc, void* dyDesc, void* convDesc, void* dxDesc, int requested,
    int* returned, AlgoPerf* results)
{
    return query(Pass::BackwardData, handle, dxDesc, wDesc, convDesc, dyDesc, requested, returned, results);
}

API int cudnnGetConvolutionBackwardFilterAlgorithm_v7(void* handle, void* xDesc, void* dyDesc, void* convDesc, void* dwDesc, int requested,
    int* returned, AlgoPerf* results)
{
    return query(Pass::BackwardFilter, handle, xDesc, dwDesc, convDesc, dyDesc, requested, returned, results);
}

API int cudnnGetConvolutionForwardWorkspaceSize(void* handle, void* xDesc, void* wDesc, void* convDesc, void* yDesc, int algo, size_t* bytes)
{
    return workspaceSize(Pass::Forward, handle, xDesc, wDesc, convDesc, yDesc, algo, bytes);
}

API int cudnnGetConvolutionBackwardDataWorkspaceSize(void* handle, void* wDesc, void* dyDesc, void* convDesc, void* dxDesc, int algo, size_t* bytes)
{
    return workspaceSize(Pass::BackwardData, handle, dxDesc, wDesc, convDesc, dyDesc, algo, bytes);
}

API int cudnnGetConvolutionBackwardFilterWorkspaceSize(void* handle, void* xDesc, void* dyDesc, void* convDesc, void* dwDesc, int algo, size_t* bytes)
{
    return workspaceSize(Pass::BackwardFilter, handle, xDesc, dwDesc, convDesc, dyDesc, algo, bytes);
}

API int cudnnConvolutionForward(void* handle, const float* alpha, void* xDesc, const void* x, void* wDesc, const void* w, void* convDesc, int algo,
    void* workspace, size_t workspaceBytes, const float* beta, void* yDesc, void* y)
{
    return convolution(Pass::Forward, "cudnnConvolutionForward", handle, alpha, xDesc, wDesc, convDesc, yDesc, x, w, y, algo, workspace,
        workspaceBytes, beta);
}

API int cudnnConvolutionBackwardData(void* handle, const float* alpha, void* wDesc, const void* w, void* dyDesc, const void* dy, void* convDesc,
    int algo, void* workspace, size_t workspaceBytes, const float* beta, void* dxDesc, void* dx)
{
    return convolution(Pass::BackwardData, "cudnnConvolutionBackwardData", handle, alpha, dxDesc, wDesc, convDesc, dyDesc, dy, w, dx, algo,
        workspace, workspaceBytes, beta);
}

API int cudnnConvolutionBackwardFilter(void* handle, const float* alpha, void* xDesc, const void* x, void* dyDesc, const void* dy, void* convDesc,
    int algo, void* workspace, size_t workspaceBytes, const float* beta, void* dwDesc, void* dw)
{
    return convolution(Pass::BackwardFilter, "cudnnConvolutionBackwardFilter", handle, alpha, xDesc, dwDesc, convDesc, dyDesc, x, dy, dw, algo,
        workspace, workspaceBytes, beta);
}

API int cudnnConvolutionBackwardBias(void* handle, const float* alpha, void* dyDesc, const float* dy, const float* beta, void* dbDesc, float* db)
{
    auto* h = live<Handle>(g_handles, handle);
    auto* d = live<TensorDesc>(g_tensors, dyDesc);
    auto* b = live<TensorDesc>(g_tensors, dbDesc);
    if (!h) return fail(BAD_PARAM, "invalid cuDNN handle");
    if (!d || !b || !d->set || !b->set) return fail(BAD_PARAM, "dy or db is not a set tensor descriptor");
    if (!alpha || !beta) return fail(BAD_PARAM_NULL_POINTER, "null alpha or beta");
    int st;
    if ((st = checkFloat(d->dtype)) != SUCCESS || (st = checkFloat(b->dtype)) != SUCCESS) return st;
    if (b->n != 1 || b->c != d->c || b->h != 1 || b->w != 1) return fail(BAD_PARAM_SHAPE_MISMATCH, "db must be [1, C, 1, 1] for dy [N, C, H, W]");
    return tensorJob(Pass::BackwardBias, "cudnnConvolutionBackwardBias", h, *alpha, *beta, dy, *d, db, *b);
}

API int cudnnAddTensor(void* handle, const float* alpha, void* aDesc, const float* a, const float* beta, void* cDesc, float* c)
{
    auto* h = live<Handle>(g_handles, handle);
    auto* ad = live<TensorDesc>(g_tensors, aDesc);
    auto* cd = live<TensorDesc>(g_tensors, cDesc);
    if (!h) return fail(BAD_PARAM, "invalid cuDNN handle");
    if (!ad || !cd || !ad->set || !cd->set) return fail(BAD_PARAM, "A or C is not a set tensor descriptor");
    if (!alpha || !beta) return fail(BAD_PARAM_NULL_POINTER, "null alpha or beta");
    int st;
    if ((st = checkFloat(ad->dtype)) != SUCCESS || (st = checkFloat(cd->dtype)) != SUCCESS) return st;
    if ((ad->n != 1 && ad->n != cd->n) || (ad->c != 1 && ad->c != cd->c) || (ad->h != 1 && ad->h != cd->h) || (ad->w != 1 && ad->w != cd->w))
        return fail(BAD_PARAM_SHAPE_MISMATCH, "each dimension of A must be 1 or C's");
    return tensorJob(Pass::AddTensor, "cudnnAddTensor", h, *alpha, *beta, a, *ad, c, *cd);
}

// The simulator's own counters: calls that queued work, and heuristic algorithm queries.
struct DdpmSimCudnnCounters
{
    uint64_t calls;
    uint64_t algorithm_queries;
};

API void ddpmsim_cudnn_get_counters(DdpmSimCudnnCounters* out)
{
    if (!out) return;
    std::lock_guard<std::mutex> lock(g_mu);
    out->calls = g_calls;
    out->algorithm_queries = g_queries;
}
