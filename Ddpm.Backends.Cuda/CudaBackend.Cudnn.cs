using Ddpm.Backends.Cuda.Native;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>Which library computes the convolutions of a <see cref="CudaBackend"/>.</summary>
public enum ConvolutionEngine
{
    /// <summary>cuDNN where it is found and works, else im2col + cuBLAS; DDPM_CUDNN=0 or 1 decides instead when set.</summary>
    Auto,

    /// <summary>cuDNN 9; the backend refuses to open without it.</summary>
    Cudnn,

    /// <summary>im2col (and col2im) kernels and whole-chunk cuBLAS GEMMs, whether cuDNN is present or not.</summary>
    Im2col,
}

/// <summary>
/// The convolutions on cuDNN 9: descriptors and one algorithm per pass made once per geometry (the first call
/// of each shape) and cached, chosen among cuDNN's heuristic results as the fastest deterministic one that fits
/// <see cref="CudnnWorkspaceLimit"/>, so a run gives the same bits every time; the workspace is a scratch
/// buffer of the backend's allocator. Float32 data, or bfloat16 copies in bf16 (see CudaBackend.Bf16.cs); the math
/// type follows <see cref="BackendOptions.Precision"/> (FMA for fp32, tensor ops for tf32 and bf16).
/// </summary>
public sealed partial class CudaBackend
{
    // An algorithm asking for more workspace than this is passed over for the next deterministic one.
    private const long CudnnWorkspaceLimit = 512L << 20;

    private readonly Dictionary<ConvGeometry, ConvPlan> _convPlans = [];
    private nint _cudnn;

    /// <summary>What runs the convolutions: "cuDNN 9.x.y", or "im2col + cuBLAS" with the reason cuDNN is not used.</summary>
    public string ConvolutionPath { get; private set; } = "";

    /// <summary>Whether the convolutions run on cuDNN.</summary>
    public bool UsesCudnn => _cudnn != 0;

    /// <summary>cudnnGetVersion (90300 for 9.3.0), or 0 without cuDNN.</summary>
    public int CudnnVersion { get; private set; }

    /// <summary>The engine asked for: the constructor's unless Auto, else DDPM_CUDNN (0: im2col, 1: cuDNN required).</summary>
    internal static ConvolutionEngine ResolveEngine(ConvolutionEngine asked, string? environment) => asked != ConvolutionEngine.Auto
        ? asked
        : environment?.Trim() switch
        {
            null or "" or "auto" => ConvolutionEngine.Auto,
            "0" => ConvolutionEngine.Im2col,
            "1" => ConvolutionEngine.Cudnn,
            _ => throw new CudaUnavailableException($"DDPM_CUDNN={environment} is not understood: use 0 (im2col + cuBLAS), 1 (cuDNN, required) or auto."),
        };

    /// <summary>Opens cuDNN on the backend's stream unless the engine is im2col; without it, notes why (or throws when it was required).</summary>
    private void OpenConvolutions(ConvolutionEngine asked)
    {
        var engine = ResolveEngine(asked, Environment.GetEnvironmentVariable("DDPM_CUDNN"));
        if (engine == ConvolutionEngine.Im2col)
        {
            ConvolutionPath = "im2col + cuBLAS (" + (asked == ConvolutionEngine.Im2col ? "asked for" : "DDPM_CUDNN=0") + ")";
            return;
        }
        try
        {
            CudaLibraries.Load(CudaLibrary.Cudnn);
            Cudnn.Check(Cudnn.cudnnCreate(out _cudnn), "cudnnCreate");
            Cudnn.Check(Cudnn.cudnnSetStream(_cudnn, _stream), "cudnnSetStream");
            int version = (int)Cudnn.cudnnGetVersion();
            if (version / 10000 != 9) throw new CudaUnavailableException($"{CudaLibraries.LoadedPath(CudaLibrary.Cudnn)} reports version {version}, not cuDNN 9.");
            CudnnVersion = version;
            ConvolutionPath = $"cuDNN {version / 10000}.{version / 100 % 100}.{version % 100}";
        }
        catch (Exception e) when (e is CudaUnavailableException or CudaException or EntryPointNotFoundException)
        {
            if (_cudnn != 0) Cudnn.cudnnDestroy(_cudnn);
            _cudnn = 0;
            if (engine == ConvolutionEngine.Cudnn)
                throw new CudaUnavailableException($"cuDNN is required (DDPM_CUDNN=1 or ConvolutionEngine.Cudnn) but cannot be used: {e.Message}", e);
            ConvolutionPath = $"im2col + cuBLAS (cuDNN not used: {e.Message})";
        }
    }

    private void CloseConvolutions()
    {
        foreach (var plan in _convPlans.Values) plan.Dispose();
        _convPlans.Clear();
        if (_cudnn != 0) Cudnn.cudnnDestroy(_cudnn);
        _cudnn = 0;
    }

    private enum ConvPass
    {
        Forward,
        BackwardData,
        BackwardFilter,
    }

    // y = conv(x, w) (+ bias): cudnnConvolutionForward, then cudnnAddTensor of the [1, O, 1, 1] bias to the float32 y.
    private unsafe void CudnnForward(in ConvGeometry g, ulong px, ulong pw, ulong pbias, ulong py)
    {
        CheckRecordedCall("cudnn forward", g, [px, pw, pbias, py]);
        Writes(py, 4L * g.OutputSize);
        using var x = DnnInput(px, g.InputSize);
        using var w = DnnInput(pw, g.WeightSize);
        using var y = DnnOutput(py, g.OutputSize);
        var plan = RunPass(g, ConvPass.Forward, "cudnnConvolutionForward", (p, pass, ws, one, zero) => Cudnn.cudnnConvolutionForward(_cudnn, one,
            p.X, x.Pointer, p.W, w.Pointer, pass.Convolution, pass.Algorithm, ws, pass.WorkspaceBytes, zero, p.Y, y.Pointer));
        y.Finish(this);
        float unit = 1f;
        if (pbias != 0 && !FeedingRecording) CudnnCall(Cudnn.cudnnAddTensor(_cudnn, &unit, plan.Bias, pbias, &unit, plan.Output, py), "cudnnAddTensor", g);
    }

    // dx = conv^T(dy, w): cudnnConvolutionBackwardData.
    private unsafe void CudnnBackwardData(in ConvGeometry g, ulong pdy, ulong pw, ulong pdx)
    {
        CheckRecordedCall("cudnn backward data", g, [pdy, pw, pdx]);
        Writes(pdx, 4L * g.InputSize);
        using var dy = DnnInput(pdy, g.OutputSize);
        using var w = DnnInput(pw, g.WeightSize);
        using var dx = DnnOutput(pdx, g.InputSize);
        RunPass(g, ConvPass.BackwardData, "cudnnConvolutionBackwardData", (p, pass, ws, one, zero) => Cudnn.cudnnConvolutionBackwardData(_cudnn,
            one, p.W, w.Pointer, p.Y, dy.Pointer, pass.Convolution, pass.Algorithm, ws, pass.WorkspaceBytes, zero, p.X, dx.Pointer));
        dx.Finish(this);
    }

    // dw = the filter gradient, dbias = dy summed over N, OH, OW (from the float32 dy): cudnnConvolutionBackwardFilter and
    // cudnnConvolutionBackwardBias.
    private unsafe void CudnnBackwardFilter(in ConvGeometry g, ulong px, ulong pdy, ulong pdw, ulong pdb)
    {
        CheckRecordedCall("cudnn backward filter", g, [px, pdy, pdw, pdb]);
        Writes(pdw, 4L * g.WeightSize);
        if (pdb != 0) Writes(pdb, 4L * g.O);
        using var x = DnnInput(px, g.InputSize);
        using var dy = DnnInput(pdy, g.OutputSize);
        using var dw = DnnOutput(pdw, g.WeightSize);
        var plan = RunPass(g, ConvPass.BackwardFilter, "cudnnConvolutionBackwardFilter", (p, pass, ws, one, zero) =>
            Cudnn.cudnnConvolutionBackwardFilter(_cudnn, one, p.X, x.Pointer, p.Y, dy.Pointer, pass.Convolution, pass.Algorithm, ws,
                pass.WorkspaceBytes, zero, p.W, dw.Pointer));
        dw.Finish(this);
        float unit = 1f, none = 0f;
        if (pdb != 0 && !FeedingRecording)
            CudnnCall(Cudnn.cudnnConvolutionBackwardBias(_cudnn, &unit, plan.Output, pdy, &none, plan.Bias, pdb), "cudnnConvolutionBackwardBias", g);
    }

    /// <summary>One pass's call, given the plan, the pass's plan, its workspace and alpha = 1, beta = 0.</summary>
    private unsafe delegate int PassCall(ConvPlan plan, PassPlan pass, ulong workspace, float* one, float* zero);

    /// <summary>Runs <paramref name="kind"/> of convolution <paramref name="g"/> with its cached plan and a workspace from the allocator.</summary>
    private unsafe ConvPlan RunPass(in ConvGeometry g, ConvPass kind, string call, PassCall body)
    {
        var plan = PlanFor(g);
        var pass = plan.Pass(this, g, kind);
        using var ws = new ScratchLease(pass.WorkspaceBytes == 0 ? null : Scratch(((long)pass.WorkspaceBytes + 3) / 4));
        float one = 1f, zero = 0f;
        // A recorded step being replayed makes no library calls (CheckRecordedCall compared the operands).
        if (FeedingRecording) return plan;
        CudnnCall(body(plan, pass, ws.Pointer, &one, &zero), call, g);
        return plan;
    }

    private void CudnnCall(int status, string call, in ConvGeometry g)
    {
        if (status != Cudnn.Success) throw new CudaException($"{call} failed for convolution {g}: {Cudnn.Describe(status)}");
        _dnnCalls++;
        if (_syncEachLaunch) SynchronizeAfter(call);
    }

    private ConvPlan PlanFor(in ConvGeometry g)
    {
        if (_convPlans.TryGetValue(g, out var plan)) return plan;
        plan = ConvPlan.Create(g, DnnDataType);
        _convPlans[g] = plan;
        return plan;
    }

    /// <summary>One pass's convolution descriptor (its math type set), algorithm and workspace.</summary>
    private sealed record PassPlan(nint Convolution, int Algorithm, nuint WorkspaceBytes, CudnnMathType MathType);

    /// <summary>
    /// The descriptors of one convolution geometry (x, w, y of the passes' data type; the float32 y and bias of the bias
    /// add and gradient) and, made on first use, each pass's plan.
    /// </summary>
    private sealed unsafe class ConvPlan : IDisposable
    {
        private readonly PassPlan?[] _passes = new PassPlan?[3];

        private ConvPlan()
        {
        }

        internal nint X { get; private set; }
        internal nint W { get; private set; }
        internal nint Y { get; private set; }
        internal nint Output { get; private set; }
        internal nint Bias { get; private set; }

        internal static ConvPlan Create(in ConvGeometry g, CudnnDataType type)
        {
            var p = new ConvPlan();
            try
            {
                const CudnnDataType f32 = CudnnDataType.Float;
                Cudnn.Check(Cudnn.cudnnCreateTensorDescriptor(out nint x), "cudnnCreateTensorDescriptor");
                p.X = x;
                Cudnn.Check(Cudnn.cudnnSetTensor4dDescriptor(x, CudnnTensorFormat.Nchw, type, g.N, g.C, g.H, g.W), $"cudnnSetTensor4dDescriptor (x of {g})");
                Cudnn.Check(Cudnn.cudnnCreateFilterDescriptor(out nint w), "cudnnCreateFilterDescriptor");
                p.W = w;
                Cudnn.Check(Cudnn.cudnnSetFilter4dDescriptor(w, type, CudnnTensorFormat.Nchw, g.O, g.C, g.KH, g.KW), $"cudnnSetFilter4dDescriptor (w of {g})");
                Cudnn.Check(Cudnn.cudnnCreateTensorDescriptor(out nint y), "cudnnCreateTensorDescriptor");
                p.Y = p.Output = y;
                Cudnn.Check(Cudnn.cudnnSetTensor4dDescriptor(y, CudnnTensorFormat.Nchw, type, g.N, g.O, g.OH, g.OW), $"cudnnSetTensor4dDescriptor (y of {g})");
                if (type != f32)
                {
                    Cudnn.Check(Cudnn.cudnnCreateTensorDescriptor(out nint output), "cudnnCreateTensorDescriptor");
                    p.Output = output;
                    Cudnn.Check(Cudnn.cudnnSetTensor4dDescriptor(output, CudnnTensorFormat.Nchw, f32, g.N, g.O, g.OH, g.OW),
                        $"cudnnSetTensor4dDescriptor (float32 y of {g})");
                }
                Cudnn.Check(Cudnn.cudnnCreateTensorDescriptor(out nint b), "cudnnCreateTensorDescriptor");
                p.Bias = b;
                Cudnn.Check(Cudnn.cudnnSetTensor4dDescriptor(b, CudnnTensorFormat.Nchw, f32, 1, g.O, 1, 1), $"cudnnSetTensor4dDescriptor (bias of {g})");
                return p;
            }
            catch
            {
                p.Dispose();
                throw;
            }
        }

        /// <summary>The plan of <paramref name="pass"/>, chosen on the first call.</summary>
        internal PassPlan Pass(CudaBackend be, in ConvGeometry g, ConvPass pass) => _passes[(int)pass] ??= Choose(be, g, pass);

        private PassPlan Choose(CudaBackend be, in ConvGeometry g, ConvPass pass)
        {
            Cudnn.Check(Cudnn.cudnnCreateConvolutionDescriptor(out nint conv), "cudnnCreateConvolutionDescriptor");
            try
            {
                Cudnn.Check(Cudnn.cudnnSetConvolution2dDescriptor(conv, g.PadH, g.PadW, g.StrideH, g.StrideW, 1, 1,
                    CudnnConvolutionMode.CrossCorrelation, CudnnDataType.Float), $"cudnnSetConvolution2dDescriptor ({g})");
                // tf32 and bf16 run on tensor cores; fp32 never does.
                bool tensorOps = be._options.Precision != Precision.Fp32;
                // The heuristics rank the algorithms of the math type the descriptor allows.
                Cudnn.Check(Cudnn.cudnnSetConvolutionMathType(conv, tensorOps ? CudnnMathType.TensorOp : CudnnMathType.Fma), "cudnnSetConvolutionMathType");
                Cudnn.Check(Cudnn.cudnnGetConvolution2dForwardOutputDim(conv, X, W, out int n, out int o, out int oh, out int ow),
                    "cudnnGetConvolution2dForwardOutputDim");
                if (n != g.N || o != g.O || oh != g.OH || ow != g.OW)
                    throw new CudaException($"cuDNN gives convolution {g} an output of [{n}, {o}, {oh}, {ow}], not [{g.N}, {g.O}, {g.OH}, {g.OW}].");
                var results = stackalloc CudnnAlgoPerf[Cudnn.ForwardAlgorithms];
                int returned;
                int status = pass switch
                {
                    ConvPass.Forward => Cudnn.cudnnGetConvolutionForwardAlgorithm_v7(be._cudnn, X, W, conv, Y, Cudnn.ForwardAlgorithms, out returned, results),
                    ConvPass.BackwardData => Cudnn.cudnnGetConvolutionBackwardDataAlgorithm_v7(be._cudnn, W, Y, conv, X, Cudnn.BackwardDataAlgorithms,
                        out returned, results),
                    _ => Cudnn.cudnnGetConvolutionBackwardFilterAlgorithm_v7(be._cudnn, X, Y, conv, W, Cudnn.BackwardFilterAlgorithms, out returned, results),
                };
                Cudnn.Check(status, $"cudnnGetConvolution{pass}Algorithm_v7");
                for (int i = 0; i < returned; i++)
                {
                    var r = results[i];
                    if (r.Status != Cudnn.Success || r.Determinism != CudnnAlgoPerf.Deterministic || (long)r.Memory > CudnnWorkspaceLimit) continue;
                    // fp32 never runs on tensor cores: TF32 products would break the float32 parity.
                    bool tensorCores = r.MathType is CudnnMathType.TensorOp or CudnnMathType.TensorOpAllowConversion;
                    if (!tensorOps && tensorCores) continue;
                    var math = tensorOps ? r.MathType : CudnnMathType.Fma;
                    if (Cudnn.cudnnSetConvolutionMathType(conv, math) != Cudnn.Success) continue;
                    nuint bytes;
                    status = pass switch
                    {
                        ConvPass.Forward => Cudnn.cudnnGetConvolutionForwardWorkspaceSize(be._cudnn, X, W, conv, Y, r.Algo, out bytes),
                        ConvPass.BackwardData => Cudnn.cudnnGetConvolutionBackwardDataWorkspaceSize(be._cudnn, W, Y, conv, X, r.Algo, out bytes),
                        _ => Cudnn.cudnnGetConvolutionBackwardFilterWorkspaceSize(be._cudnn, X, Y, conv, W, r.Algo, out bytes),
                    };
                    if (status != Cudnn.Success || (long)bytes > CudnnWorkspaceLimit) continue;
                    return new PassPlan(conv, r.Algo, bytes, math);
                }
                throw new CudaException(
                    $"cuDNN offers no deterministic {pass} algorithm for convolution {g} within {CudnnWorkspaceLimit >> 20} MiB of workspace " +
                    $"({returned} candidates); set DDPM_CUDNN=0 to run the convolutions on im2col + cuBLAS.");
            }
            catch
            {
                Cudnn.cudnnDestroyConvolutionDescriptor(conv);
                throw;
            }
        }

        public void Dispose()
        {
            foreach (var p in _passes)
                if (p is not null) Cudnn.cudnnDestroyConvolutionDescriptor(p.Convolution);
            Array.Clear(_passes);
            if (X != 0) Cudnn.cudnnDestroyTensorDescriptor(X);
            if (W != 0) Cudnn.cudnnDestroyFilterDescriptor(W);
            if (Output != 0 && Output != Y) Cudnn.cudnnDestroyTensorDescriptor(Output);
            if (Y != 0) Cudnn.cudnnDestroyTensorDescriptor(Y);
            if (Bias != 0) Cudnn.cudnnDestroyTensorDescriptor(Bias);
            X = W = Y = Output = Bias = 0;
        }
    }
}
