using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;

namespace Ddpm.Tool;

/// <summary>
/// Rough host-memory needs of a run, checked before anything large is allocated so that an option that cannot fit
/// is one line rather than the kernel's out-of-memory killer. The figures are estimates, not measurements:
/// <list type="bullet">
/// <item>Training holds five float32 copies of the parameters (weights, gradients, EMA, Adam's two moments) and,
/// per image of the batch, the activations the backward pass keeps: about 14 tensors of channels x side^2 per
/// residual block (two GroupNorms, two SiLUs, two convolutions, the time-embedding sum, dropout, the skip and the
/// up path's concatenation, and the gradients alive while the block is back-propagated), 2 x heads x side^4 per
/// attention block (scores and softmax) plus 6 of channels x side^2, and one per down/up sampling. For the tiny
/// preset this gives about 10.5 MiB per image; its peak resident memory grows by about 11 MiB per image between
/// batches of 16 and 128 (the runtime's own overhead and garbage not yet collected included).</item>
/// <item>Sampling keeps no graph: about 4 live activations of the largest level per image, plus the weights.</item>
/// </list>
/// The budget is <see cref="GCMemoryInfo.TotalAvailableMemoryBytes"/> (physical memory or the container's limit).
/// </summary>
public static class MemoryEstimate
{
    /// <summary>Float32 values the backward pass keeps per training image.</summary>
    public static long TrainingActivationsPerImage(UNetConfig c)
    {
        long total = 0, nc = c.NChannels, inCh = nc, outCh = nc;
        long side = c.ImageSize;
        long Res(long ch, long s) => 14 * ch * s * s;
        // With attn_norm the normalised input and its permuted copy are kept too.
        long Attn(long ch, long s) => 2L * c.NHeads * s * s * s * s + (c.AttnNorm ? 8 : 6) * ch * s * s;
        total += (c.ImageChannels + 2 * nc) * side * side;
        int levels = c.ChMults.Length;
        for (int i = 0; i < levels; i++)
        {
            outCh = inCh * c.ChMults[i];
            for (int j = 0; j < c.NBlocks; j++) total += Res(outCh, side) + (c.IsAttn[i] ? Attn(outCh, side) : 0);
            inCh = outCh;
            if (i < levels - 1) { total += inCh * side * side; side /= 2; }
        }
        total += 2 * Res(outCh, side) + Attn(outCh, side);
        for (int i = levels - 1; i >= 0; i--)
        {
            // The up path's blocks see the skip concatenated: twice the channels at their input.
            for (int j = 0; j <= c.NBlocks; j++) total += Res(2 * inCh, side) + (c.IsAttn[i] ? Attn(inCh, side) : 0);
            inCh /= c.ChMults[i];
            if (i > 0) { side *= 2; total += 2 * inCh * side * side; }
        }
        return total;
    }

    /// <summary>Bytes a training step of <paramref name="batch"/> images needs.</summary>
    public static long TrainingBytes(UNetConfig c, int batch) =>
        4 * (5 * c.ParameterCount() + batch * TrainingActivationsPerImage(c));

    /// <summary>Float32 values live per image while sampling (no graph): a few activations of the widest level.</summary>
    public static long SamplingValuesPerImage(UNetConfig c)
    {
        long widest = 0, ch = c.NChannels, side = c.ImageSize;
        for (int i = 0; i < c.ChMults.Length; i++)
        {
            ch *= c.ChMults[i];
            widest = Math.Max(widest, 2 * ch * side * side);
            if (c.IsAttn[i]) widest = Math.Max(widest, (long)c.NHeads * side * side * side * side);
            side = Math.Max(1, side / 2);
        }
        return 4 * widest;
    }

    /// <summary>The memory the runtime may use on this machine (physical memory or the container's limit).</summary>
    public static long Available => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    public static string Format(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F1} GiB" : $"{bytes / (double)(1L << 20):F0} MiB";

    /// <summary>Refuses (naming <paramref name="what"/>) when <paramref name="bytes"/> exceed the available memory.</summary>
    public static void Require(long bytes, string what)
    {
        long available = Available;
        if (bytes > available)
            throw new UserError($"{what} needs about {Format(bytes)} of memory (estimated); this machine has {Format(available)} available.");
    }

    /// <summary>
    /// The bytes of the grid PNG's pixels for <paramref name="n"/> images (the same layout as
    /// <see cref="ImageGrid.SavePng"/>: padding 2, <see cref="ImageGrid.AutoScale"/> resolved the same way).
    /// </summary>
    public static long GridBytes(int n, int nrow, int channels, int size, int scale, int padding = 2)
    {
        long cols = Math.Min(nrow, n), rows = (n + cols - 1) / cols;
        long gw = cols * (size + padding) + padding, gh = rows * (size + padding) + padding;
        long s = scale == ImageGrid.AutoScale ? Math.Max(1, (ImageGrid.ReadableWidth + gw - 1) / gw) : scale;
        return gw * s * gh * s * channels;
    }
}
