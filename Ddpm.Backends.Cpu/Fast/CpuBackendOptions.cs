using System.Runtime.Intrinsics.X86;

namespace Ddpm.Backends.Cpu;

/// <summary>
/// Settings of one <see cref="CpuBackend"/>, fixed when it is built: its thread count, which SIMD kernels it may
/// use, the SGEMM block sizes and how long its idle workers spin. Two backends with different settings can run
/// in one process (A/B runs, tests of the AVX2 path on an AVX-512 machine); nothing is process-wide.
/// </summary>
public sealed record CpuBackendOptions
{
    /// <summary>Worker threads; 0 means all cores.</summary>
    public int Threads { get; init; }

    /// <summary>Use the AVX-512 SGEMM micro-kernels where the processor has AVX-512; false runs the Vector256 (AVX2) ones.</summary>
    public bool Avx512 { get; init; } = true;

    /// <summary>Let the transposed convolution packer use AVX2 gathers where the processor has them; false packs element by element.</summary>
    public bool Gather { get; init; } = true;

    /// <summary>
    /// Run the 3x3, stride-1, padding-1 convolutions with at least <see cref="WinogradMinChannels"/> input and output
    /// channels as Winograd F(2x2, 3x3) (forward, backward-data and weight gradient); false runs them as implicit GEMMs.
    /// </summary>
    public bool Winograd { get; init; } = true;

    /// <summary>
    /// Outputs per side of a Winograd tile: 4 runs F(4x4, 3x3) (36 products per 4x4 outputs, 4x fewer multiplies than
    /// the direct sums), 2 runs F(2x2, 3x3) (16 products per 2x2 outputs, 2.25x fewer).
    /// </summary>
    public int WinogradTile { get; init; } = 4;

    /// <summary>
    /// Fewest input and output channels of a Winograd convolution: its 16 GEMMs are C deep and O tall, too thin to
    /// pay for the transforms below this (the UNet's 1-channel image projection and output layer).
    /// </summary>
    public int WinogradMinChannels { get; init; } = 16;

    /// <summary>
    /// Fewest output tiles, counted as F(2x2) tiles (N x ceil(OH / 2) x ceil(OW / 2), N the whole batch of a
    /// <see cref="Ddpm.Tensors.IBackend.PartOfBatch"/> where the call is part of one), of a Winograd convolution. The
    /// filter transform is paid per call: on the benchmark machine (one thread, thread CPU time, forward plus both
    /// backward passes, AVX2 code) F(4x4, 3x3) lost to the implicit GEMM at 16 and 32 such tiles of a [N, 128, 8, 8] ->
    /// 128 convolution (0.4x, 0.8x) and at 64 of labml's [16, 1024, 4, 4] -> 1024 (0.9x), and won from 128 on (1.5x to
    /// 2.9x; docs/cpu-backend.md).
    /// </summary>
    public int WinogradMinTiles { get; init; } = 128;

    /// <summary>
    /// Smallest O x C x tiles (F(2x2) tiles, counted as for <see cref="WinogradMinTiles"/>) of a Winograd convolution:
    /// below this the whole convolution takes a few tens of microseconds and its extra passes and parallel regions cost
    /// more than the multiplies saved.
    /// </summary>
    public long WinogradMinWork { get; init; } = 1L << 18;

    /// <summary>
    /// Size of a Winograd work chunk in tile-channels, (C + O) x tiles: its transformed input and products take 64
    /// bytes each, so 16384 is 1 MiB, about one core's L2. Of 8192, 16384 and 32768, 16384 gave the fastest `small`
    /// steps on the benchmark machine (sampling b64 about 1 % ahead of 32768 in 4 alternating rounds, 8192 behind both).
    /// </summary>
    public int WinogradChunk { get; init; } = 16384;

    /// <summary>
    /// Largest depth of an SGEMM k-block. A [768, 32] B strip is 96 KiB, past the 48 KiB L1, but the micro-kernel
    /// streams it from L2 at full rate, and each k-block costs a read-modify-write pass over C: 768 gave the highest
    /// 2-thread GEMM rate of the KC values 256 to 1024 on the benchmark machine (BENCHMARKS.md).
    /// </summary>
    public int GemmKC { get; init; } = 768;

    /// <summary>Rows of an SGEMM A block: [MC, KC] is at most 288 KiB, well inside a 1 MiB L2.</summary>
    public int GemmMC { get; init; } = 96;

    /// <summary>Columns of a packed SGEMM B block: [KC, NC] is at most 12 MiB, shared by the threads in L3.</summary>
    public int GemmNC { get; init; } = 4096;

    /// <summary>
    /// How long an idle worker spins for the next parallel region before it blocks: the back-to-back small ops of
    /// a UNet step then find it awake (a hand-off well under a microsecond instead of a thread wake-up).
    /// </summary>
    public int SpinMicroseconds { get; init; } = 100;

    /// <summary>Whether the AVX-512 kernels run: asked for and supported.</summary>
    internal bool UseAvx512 => Avx512 && Avx512F.IsSupported;

    /// <summary>Whether the gather packer runs: asked for and supported.</summary>
    internal bool UseGather => Gather && Avx2.IsSupported;

    public void Validate()
    {
        if (Threads < 0) throw new ArgumentOutOfRangeException(nameof(Threads), $"Thread count {Threads} is negative.");
        if (GemmKC < 16 || GemmMC < 12 || GemmNC < 32)
            throw new ArgumentOutOfRangeException(nameof(GemmKC), $"SGEMM blocks KC {GemmKC}, MC {GemmMC}, NC {GemmNC} are below 16, 12, 32.");
        if (WinogradTile is not (2 or 4)) throw new ArgumentOutOfRangeException(nameof(WinogradTile), $"Winograd tile {WinogradTile} is not 2 or 4.");
        if (WinogradChunk < 1) throw new ArgumentOutOfRangeException(nameof(WinogradChunk), $"Winograd chunk {WinogradChunk} is below 1.");
        if (WinogradMinTiles < 1 || WinogradMinWork < 0)
            throw new ArgumentOutOfRangeException(nameof(WinogradMinTiles), $"Winograd thresholds {WinogradMinTiles} tiles, {WinogradMinWork} work are out of range.");
        if (WinogradMinChannels < 1) throw new ArgumentOutOfRangeException(nameof(WinogradMinChannels), $"Winograd channel threshold {WinogradMinChannels} is below 1.");
        if (SpinMicroseconds < 0) throw new ArgumentOutOfRangeException(nameof(SpinMicroseconds), $"Spin time {SpinMicroseconds} us is negative.");
    }
}
