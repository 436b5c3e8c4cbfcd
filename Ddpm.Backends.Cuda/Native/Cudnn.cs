using System.Runtime.InteropServices;

namespace Ddpm.Backends.Cuda.Native;

/// <summary>cudnnDataType_t (cudnn_graph.h): the element types a descriptor may name.</summary>
internal enum CudnnDataType
{
    Float = 0,
    Double = 1,
    Half = 2,
    BFloat16 = 9,
}

/// <summary>cudnnTensorFormat_t.</summary>
internal enum CudnnTensorFormat
{
    Nchw = 0,
    Nhwc = 1,
}

/// <summary>cudnnConvolutionMode_t: PyTorch's (and our) convolution is CUDNN_CROSS_CORRELATION.</summary>
internal enum CudnnConvolutionMode
{
    Convolution = 0,
    CrossCorrelation = 1,
}

/// <summary>cudnnMathType_t. FMA: float32 only; TensorOp: tensor cores, TF32 products for float32 data.</summary>
internal enum CudnnMathType
{
    Default = 0,
    TensorOp = 1,
    TensorOpAllowConversion = 2,
    Fma = 3,
}

/// <summary>
/// cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionBwdDataAlgoPerf_t and cudnnConvolutionBwdFilterAlgoPerf_t,
/// which share this layout (cudnn_cnn.h): algo, status, time, memory (size_t), determinism, mathType, reserved[3].
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CudnnAlgoPerf
{
    public int Algo;
    public int Status;
    public float Time;
    public nuint Memory;
    public int Determinism;
    public CudnnMathType MathType;
    public int Reserved0, Reserved1, Reserved2;

    /// <summary>cudnnDeterminism_t CUDNN_DETERMINISTIC.</summary>
    public const int Deterministic = 1;
}

/// <summary>
/// cuDNN 9 (libcudnn.so.9), the convolution entry points of its legacy API (cudnn_ops.h, cudnn_cnn.h): handles,
/// tensor / filter / convolution descriptors, heuristic algorithm queries, workspace sizes, the three passes,
/// the bias add and the bias gradient. Device pointers are ulong; alpha and beta point at host floats (the
/// scaling type of float32 and bfloat16 data). Statuses are cudnnStatus_t as cuDNN 9 numbers them.
/// </summary>
internal static unsafe partial class Cudnn
{
    private const string Lib = CudaLibraries.CudnnName;

    internal const int Success = 0;

    /// <summary>CUDNN_CONVOLUTION_FWD_ALGO_COUNT, _BWD_DATA_ALGO_COUNT, _BWD_FILTER_ALGO_COUNT: the most results a query gives.</summary>
    internal const int ForwardAlgorithms = 8, BackwardDataAlgorithms = 6, BackwardFilterAlgorithms = 7;

    [LibraryImport(Lib)] internal static partial nuint cudnnGetVersion();
    [LibraryImport(Lib)] internal static partial nint cudnnGetErrorString(int status);
    [LibraryImport(Lib)] internal static partial void cudnnGetLastErrorString(byte* message, nuint maxSize);

    [LibraryImport(Lib)] internal static partial int cudnnCreate(out nint handle);
    [LibraryImport(Lib)] internal static partial int cudnnDestroy(nint handle);
    [LibraryImport(Lib)] internal static partial int cudnnSetStream(nint handle, nint stream);

    [LibraryImport(Lib)] internal static partial int cudnnCreateTensorDescriptor(out nint desc);
    [LibraryImport(Lib)]
    internal static partial int cudnnSetTensor4dDescriptor(nint desc, CudnnTensorFormat format, CudnnDataType dataType, int n, int c, int h, int w);
    [LibraryImport(Lib)] internal static partial int cudnnDestroyTensorDescriptor(nint desc);

    [LibraryImport(Lib)] internal static partial int cudnnCreateFilterDescriptor(out nint desc);
    [LibraryImport(Lib)]
    internal static partial int cudnnSetFilter4dDescriptor(nint desc, CudnnDataType dataType, CudnnTensorFormat format, int k, int c, int h, int w);
    [LibraryImport(Lib)] internal static partial int cudnnDestroyFilterDescriptor(nint desc);

    [LibraryImport(Lib)] internal static partial int cudnnCreateConvolutionDescriptor(out nint desc);
    [LibraryImport(Lib)]
    internal static partial int cudnnSetConvolution2dDescriptor(nint desc, int padH, int padW, int strideH, int strideW, int dilationH, int dilationW,
        CudnnConvolutionMode mode, CudnnDataType computeType);
    [LibraryImport(Lib)] internal static partial int cudnnSetConvolutionMathType(nint desc, CudnnMathType mathType);
    [LibraryImport(Lib)] internal static partial int cudnnDestroyConvolutionDescriptor(nint desc);

    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolution2dForwardOutputDim(nint convDesc, nint xDesc, nint wDesc, out int n, out int c, out int h, out int w);

    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionForwardAlgorithm_v7(nint handle, nint xDesc, nint wDesc, nint convDesc, nint yDesc,
        int requested, out int returned, CudnnAlgoPerf* results);
    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionForwardWorkspaceSize(nint handle, nint xDesc, nint wDesc, nint convDesc, nint yDesc, int algo,
        out nuint bytes);
    [LibraryImport(Lib)]
    internal static partial int cudnnConvolutionForward(nint handle, float* alpha, nint xDesc, ulong x, nint wDesc, ulong w, nint convDesc, int algo,
        ulong workspace, nuint workspaceBytes, float* beta, nint yDesc, ulong y);

    [LibraryImport(Lib)]
    internal static partial int cudnnAddTensor(nint handle, float* alpha, nint aDesc, ulong a, float* beta, nint cDesc, ulong c);

    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionBackwardDataAlgorithm_v7(nint handle, nint wDesc, nint dyDesc, nint convDesc, nint dxDesc,
        int requested, out int returned, CudnnAlgoPerf* results);
    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionBackwardDataWorkspaceSize(nint handle, nint wDesc, nint dyDesc, nint convDesc, nint dxDesc,
        int algo, out nuint bytes);
    [LibraryImport(Lib)]
    internal static partial int cudnnConvolutionBackwardData(nint handle, float* alpha, nint wDesc, ulong w, nint dyDesc, ulong dy, nint convDesc,
        int algo, ulong workspace, nuint workspaceBytes, float* beta, nint dxDesc, ulong dx);

    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionBackwardFilterAlgorithm_v7(nint handle, nint xDesc, nint dyDesc, nint convDesc, nint dwDesc,
        int requested, out int returned, CudnnAlgoPerf* results);
    [LibraryImport(Lib)]
    internal static partial int cudnnGetConvolutionBackwardFilterWorkspaceSize(nint handle, nint xDesc, nint dyDesc, nint convDesc, nint dwDesc,
        int algo, out nuint bytes);
    [LibraryImport(Lib)]
    internal static partial int cudnnConvolutionBackwardFilter(nint handle, float* alpha, nint xDesc, ulong x, nint dyDesc, ulong dy, nint convDesc,
        int algo, ulong workspace, nuint workspaceBytes, float* beta, nint dwDesc, ulong dw);

    [LibraryImport(Lib)]
    internal static partial int cudnnConvolutionBackwardBias(nint handle, float* alpha, nint dyDesc, ulong dy, float* beta, nint dbDesc, ulong db);

    internal static void Check(int status, string call)
    {
        if (status != Success) throw new CudaException($"{call} failed: {Describe(status)}");
    }

    /// <summary>"CUDNN_STATUS_X" from the library, plus its last error message when it has one.</summary>
    internal static string Describe(int status)
    {
        string name = $"cudnnStatus_t {status}";
        try
        {
            nint p = cudnnGetErrorString(status);
            if (p != 0) name = Marshal.PtrToStringUTF8(p) ?? name;
            byte* buf = stackalloc byte[512];
            buf[0] = 0;
            cudnnGetLastErrorString(buf, 512);
            string last = Marshal.PtrToStringUTF8((nint)buf)?.Trim() ?? "";
            if (last.Length > 0) name += $" ({last})";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // The number alone still identifies the status.
        }
        return name;
    }
}
