using Ddpm.Backends.Cuda.Native;

namespace Ddpm.Backends.Cuda;

/// <summary>CUDA cannot be used here: a library is missing, no device, a driver too old.</summary>
public sealed class CudaUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A CUDA driver call failed; the message names the call and the CUDA error.</summary>
public sealed class CudaException : Exception
{
    internal CudaException(string call, CUresult result, string? detail = null)
        : base($"{call} failed: {Driver.Describe(result)}{(detail is null ? "" : ". " + detail)}")
    {
        Call = call;
        ErrorCode = (int)result;
    }

    internal CudaException(string message) : base(message)
    {
        Call = "";
    }

    /// <summary>The driver or library function that failed.</summary>
    public string Call { get; }

    /// <summary>The CUresult (or library status) value.</summary>
    public int ErrorCode { get; }

    internal bool IsOutOfMemory => ErrorCode == (int)CUresult.ErrorOutOfMemory;
}
