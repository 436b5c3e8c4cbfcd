using Ddpm.Tensors;
using Ddpm.Tensors.Distributed;

namespace Ddpm.Tests.Distributed;

/// <summary>
/// A test-only job of N ranks inside one process: one thread per rank, collectives through shared arrays and
/// a barrier. The sum is taken in rank order on every rank, as a deterministic MPI reduction would.
/// </summary>
internal sealed class InProcessRanks
{
    private readonly Barrier _barrier;
    private readonly object?[] _slots;

    public InProcessRanks(int size)
    {
        Size = size;
        _barrier = new Barrier(size);
        _slots = new object?[size];
    }

    public int Size { get; }

    /// <summary>Runs <paramref name="body"/> once per rank on its own thread and returns the results by rank.</summary>
    public T[] Run<T>(Func<ICollective, T> body)
    {
        var results = new T[Size];
        var errors = new Exception?[Size];
        var threads = Enumerable.Range(0, Size).Select(r => new Thread(() =>
        {
            try { results[r] = body(new RankCollective(this, r)); }
            catch (Exception e)
            {
                errors[r] = e;
                // A failing rank must not leave the others waiting in a collective.
                _barrier.RemoveParticipant();
            }
        }, 16 << 20)).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        var failed = errors.Where(e => e is not null).ToList();
        if (failed.Count > 0) throw new AggregateException(failed!);
        return results;
    }

    private sealed class RankCollective(InProcessRanks job, int rank) : ICollective
    {
        public string Name => "in-process";
        public int Rank => rank;
        public int Size => job.Size;

        public void AllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
        {
            Collective.CheckRange(buffer, offset, count);
            var host = new float[count];
            buffer.Backend.Download(buffer, offset, host);
            AllReduce(host, op);
            buffer.Backend.Upload(host, buffer, offset);
        }

        /// <summary>
        /// Copies the range now and reduces it at <see cref="IPendingReduce.Wait"/>, as an engine that sends the
        /// values it found at the start would: a range started before its values were final shows in the result.
        /// </summary>
        public IPendingReduce StartAllReduce(DeviceBuffer buffer, int offset, int count, ReduceOp op)
        {
            Collective.CheckRange(buffer, offset, count);
            var host = new float[count];
            buffer.Backend.Download(buffer, offset, host);
            return new Deferred(this, buffer, offset, host, op);
        }

        private sealed class Deferred(RankCollective rank, DeviceBuffer buffer, int offset, float[] host, ReduceOp op) : IPendingReduce
        {
            private bool _done;

            public bool Test() => _done;

            public void Wait()
            {
                if (_done) return;
                _done = true;
                rank.AllReduce(host, op);
                buffer.Backend.Upload(host, buffer, offset);
            }
        }

        public void AllReduce(Span<float> data, ReduceOp op)
        {
            var sum = Exchange(data.ToArray());
            for (int i = 0; i < data.Length; i++)
            {
                float s = 0f;
                foreach (var o in sum) s += ((float[])o!)[i];
                data[i] = op == ReduceOp.Average ? s / Size : s;
            }
            job._barrier.SignalAndWait();
        }

        public void AllReduce(Span<double> data, ReduceOp op)
        {
            var all = Exchange(data.ToArray());
            for (int i = 0; i < data.Length; i++)
            {
                double s = 0;
                foreach (var o in all) s += ((double[])o!)[i];
                data[i] = op == ReduceOp.Average ? s / Size : s;
            }
            job._barrier.SignalAndWait();
        }

        public void Broadcast(Span<byte> data, int root)
        {
            var all = Exchange(data.ToArray());
            ((byte[])all[root]!).CopyTo(data);
            job._barrier.SignalAndWait();
        }

        public void Broadcast(Span<float> data, int root)
        {
            var all = Exchange(data.ToArray());
            ((float[])all[root]!).CopyTo(data);
            job._barrier.SignalAndWait();
        }

        public void Barrier() => job._barrier.SignalAndWait();

        public void Abort(int exitCode) => throw new InvalidOperationException($"rank {rank} aborted the job with {exitCode}");

        public void Dispose() { }

        /// <summary>Posts this rank's data and returns every rank's once all have posted.</summary>
        private object?[] Exchange(object data)
        {
            job._slots[rank] = data;
            job._barrier.SignalAndWait();
            return job._slots;
        }
    }
}
