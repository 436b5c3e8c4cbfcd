using Ddpm.Tensors;

namespace Ddpm.Backends.Cuda;

/// <summary>
/// bfloat16 copies of the weight buffers (<see cref="IBackend.HoldsWeights"/>) in <see cref="Precision.Bf16"/>: a GEMM or
/// convolution operand that lies inside a weight buffer is read from its copy, at the same element offset, instead of
/// being cast anew; the copy is cast whole (<c>cast_f32_to_bf16</c>, the rounding of the per-use casts) on the first
/// such read after the buffer was written, so a weight is cast once per optimiser step rather than once per use.
///
/// The copy cannot go stale: every call that queues a device write goes through one of a few places here, and each
/// marks a copy stale when what it may write meets the weight buffer. Kernels (<see cref="Launch"/>): what a kernel may
/// write is read from its signature (<see cref="KernelSources.WritesOf"/>: its pointers to non-const data), so a new
/// kernel is covered with no list to keep; one whose parameters could hide a pointer marks every copy stale. Fills and
/// device copies (<see cref="MemsetAsync"/>, <see cref="CopyAsync"/>, which recorded uploads and poisoning use too),
/// uploads, cuBLAS's C, cuDNN's outputs, and any range handed out as a raw pointer (the NCCL collectives, which may
/// write it) do the same.
///
/// Recorded steps (CUDA Graphs) make the same calls every run: inside a recorded or replayed run a copy counts as
/// current only if it was cast earlier in that same run, so each run casts on its first use whatever came before it,
/// and the cast is part of the recording.
/// </summary>
public sealed partial class CudaBackend
{
    private readonly List<WeightCopy> _weightCopies = [];
    private long _castKernels, _castElements;

    /// <summary>
    /// Casts every operand anew, weights included (no copies): the arithmetic is the same, so this only serves to check that
    /// the copies change no bit. Set before <see cref="HoldsWeights"/> is called.
    /// </summary>
    internal bool CastWeightsPerUse { get; init; }

    /// <summary>A weight buffer [Base, Base + 4 Floats) and its bfloat16 copy [Copy, Copy + 2 Floats).</summary>
    private sealed class WeightCopy(ulong weights, long floats, ulong copy, long copyBlock)
    {
        public ulong Base => weights;
        public long Floats => floats;
        public ulong Copy => copy;
        public long CopyBlock => copyBlock;

        /// <summary>Whether the copy holds the weights as they are now (false after a write).</summary>
        public bool Current { get; set; }

        /// <summary>The recorded step, and its run, in which the copy was last cast (null: outside one).</summary>
        public (CudaStepGraph? Step, long Run) CastIn { get; set; }

        public bool Holds(ulong p, long bytes) => p >= weights && bytes >= 0 && p + (ulong)bytes <= weights + 4UL * (ulong)floats;

        public bool Meets(ulong p, long bytes) => bytes > 0 && p < weights + 4UL * (ulong)floats && weights < p + (ulong)bytes;
    }

    public void HoldsWeights(DeviceBuffer weights)
    {
        Enter();
        ulong p = Ptr(weights, weights.Length, "HoldsWeights weights");
        if (!UsesBf16 || CastWeightsPerUse || weights.Length == 0) return;
        foreach (var w in _weightCopies)
            if (w.Holds(p, 4L * weights.Length)) return;
        if (_recording is { } g)
            throw new InvalidOperationException($"The recorded step '{g.Name}' declares a weight buffer: declare it before the step (it allocates device memory).");
        var (copy, block) = _allocator!.Rent(2L * weights.Length);
        _peakBytes = Math.Max(_peakBytes, _allocator.InUseBytes + StepGraphBytes);
        _weightCopies.Add(new WeightCopy(p, weights.Length, copy, block));
    }

    /// <summary>Drops the copies of weights in [<paramref name="p"/>, + <paramref name="bytes"/>), memory being freed.</summary>
    internal void ForgetWeights(ulong p, long bytes)
    {
        for (int i = _weightCopies.Count - 1; i >= 0; i--)
        {
            var w = _weightCopies[i];
            if (!w.Meets(p, bytes)) continue;
            _weightCopies.RemoveAt(i);
            _allocator?.Return(w.Copy, w.CopyBlock);
        }
    }

    /// <summary>Bytes of bfloat16 weight copies held (for tests).</summary>
    internal long WeightCopyBytes => _weightCopies.Sum(w => 2 * w.Floats);

    /// <summary>The device may write [<paramref name="p"/>, + <paramref name="bytes"/>): a copy of weights there is stale.</summary>
    private void Writes(ulong p, long bytes)
    {
        foreach (var w in _weightCopies)
            if (w.Meets(p, bytes)) w.Current = false;
    }

    /// <summary>A kernel is about to be queued: marks stale the copies of the weights its writable pointers point into.</summary>
    private void KernelWrites(string kernel, ReadOnlySpan<KernelArg> args)
    {
        if (_weightCopies.Count == 0) return;
        if (!_kernelWrites.TryGetValue(kernel, out var writes) || writes.Anywhere)
        {
            foreach (var w in _weightCopies) w.Current = false;
            return;
        }
        // A kernel writes only into the buffer a pointer it is given lies in: one element at the pointer tells which.
        foreach (int i in writes.Pointers)
            if (i < args.Length && args[i].Size == 8) Writes(args[i].Bits, 1);
    }

    /// <summary>
    /// The bfloat16 copy of the <paramref name="n"/> floats at <paramref name="src"/> where they lie in a weight buffer
    /// (cast now if stale), else 0.
    /// </summary>
    private ulong WeightCopyOf(ulong src, long n)
    {
        foreach (var w in _weightCopies)
        {
            if (!w.Holds(src, 4 * n)) continue;
            bool current = w.Current && (_recording is not { } g || (w.CastIn.Step == g && w.CastIn.Run == g.Replays));
            if (!current)
            {
                CastToBf16(w.Base, w.Floats, w.Copy);
                w.Current = true;
                w.CastIn = (_recording, _recording?.Replays ?? 0);
            }
            return w.Copy + 2 * ((src - w.Base) / 4);
        }
        return 0;
    }
}
