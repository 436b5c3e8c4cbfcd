using System.Runtime.InteropServices;
using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// One kernel argument by value: a 4- or 8-byte scalar, a device pointer (ulong), or a small struct copied
/// as bytes. <see cref="CudaBackend"/> lays them out in stack memory for cuLaunchKernel's void** array.
/// </summary>
internal readonly struct KernelArg
{
    private KernelArg(ulong bits, int size, byte[]? blob)
    {
        Bits = bits;
        Size = size;
        Blob = blob;
    }

    internal ulong Bits { get; }
    internal int Size { get; }
    internal byte[]? Blob { get; }

    public static implicit operator KernelArg(int v) => new((uint)v, 4, null);
    public static implicit operator KernelArg(float v) => new(BitConverter.SingleToUInt32Bits(v), 4, null);
    public static implicit operator KernelArg(ulong v) => new(v, 8, null);

    // Without these, C# would convert a long or a uint silently to float or ulong, and the kernel would read
    // a parameter of another type or size. Each is a compile error: cast to the kernel's parameter type.
    [Obsolete("A long kernel argument would become a float: cast to int or ulong, as the kernel declares it.", error: true)]
    public static implicit operator KernelArg(long v) => throw new NotSupportedException();

    [Obsolete("A uint kernel argument would become an 8-byte ulong: cast to int, or to ulong if the kernel takes u64.", error: true)]
    public static implicit operator KernelArg(uint v) => throw new NotSupportedException();

    [Obsolete("A double kernel argument has no implicit form: cast to float, or pass a struct.", error: true)]
    public static implicit operator KernelArg(double v) => throw new NotSupportedException();

    internal static KernelArg Struct<T>(in T value) where T : unmanaged
    {
        var bytes = MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();
        return new KernelArg(0, bytes.Length, bytes);
    }
}

/// <summary>Dimensions of a broadcast elementwise op or a permute; the layout of BroadcastDims in common.cuh.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct BroadcastDims
{
    internal const int MaxDims = Shape.MaxRank;
    public int Rank;
    public fixed int Size[MaxDims];
    public fixed int StrideA[MaxDims];
    public fixed int StrideB[MaxDims];
}

/// <summary>Kept and reduced dimensions of a sum; the layout of ReduceDims in common.cuh.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ReduceDims
{
    public int KeptRank;
    public fixed int KeptSize[BroadcastDims.MaxDims];
    public fixed int KeptStride[BroadcastDims.MaxDims];
    public int RedRank;
    public fixed int RedSize[BroadcastDims.MaxDims];
    public fixed int RedStride[BroadcastDims.MaxDims];
}

/// <summary>Convolution geometry plus output size; the layout of ConvDims in conv.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct ConvDims
{
    public int N, C, H, W, O, KH, KW, SH, SW, PH, PW, OH, OW;
}
