using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>Registers the CUDA backend under the name <c>cuda</c>.</summary>
public static class CudaBackends
{
    public static BackendRegistry RegisterCuda(this BackendRegistry r) =>
        r.Register("cuda", "NVIDIA GPU: CUDA driver API, cuDNN convolutions (im2col + cuBLAS without it), cuBLAS GEMMs, NVRTC-compiled kernels", o => new CudaBackend(o), new BackendTraits
        {
            HostMemory = false,
            VisibleDevices = CudaProbe.VisibleDeviceCount,
            Probe = () => CudaProbe.Run() is { Available: true } p ? p.ToString() : "unavailable: " + CudaProbe.Run().Reason,
            // TF32 by default for training and sampling, as PyTorch does for cuDNN convolutions.
            Precisions = new BackendPrecisions([Precision.Fp32, Precision.Tf32, Precision.Bf16], Precision.Tf32),
        });
}
