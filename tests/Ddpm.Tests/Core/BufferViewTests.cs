using Ddpm.Backends.Cpu;
using Ddpm.Tensors;
using Ddpm.Tests.Cuda;
using Ddpm.Tests.Parity;
using Xunit;

namespace Ddpm.Tests.Core;

/// <summary>
/// A backend whose every buffer is a view (<see cref="IBackend.Slice"/>) at an odd non-zero offset into a larger
/// buffer, with guard values on both sides. Running the parity cases on it checks that each op honours a
/// view's offset (a kernel that ignored it would read the guards or another buffer's data) and its end (a
/// CPU guard that changes fails the next download).
/// </summary>
public sealed class ViewBackend(IBackend inner) : ForwardingBackend(inner)
{
    public const int Pad = 37;
    private const float Guard = -12345.5f;
    private readonly List<DeviceBuffer> _live = new();

    public override DeviceBuffer Allocate(int length)
    {
        var whole = Inner.Allocate(length + 2 * Pad);
        var guard = Enumerable.Repeat(Guard, Pad).ToArray();
        Inner.Upload(guard, whole, 0);
        Inner.Upload(guard, whole, Pad + length);
        var view = Inner.Slice(whole, Pad, length);
        whole.Release();
        _live.RemoveAll(b => b.IsReleased);
        _live.Add(view);
        return view;
    }

    public override void Download(DeviceBuffer src, int srcOffset, Span<float> dst)
    {
        CheckGuards();
        base.Download(src, srcOffset, dst);
    }

    /// <summary>Fails if an op wrote outside a live CPU view.</summary>
    public void CheckGuards()
    {
        _live.RemoveAll(b => b.IsReleased);
        foreach (var b in _live)
        {
            if (b is not CpuBuffer cb) continue;
            for (int i = 1; i <= Pad; i++)
            {
                Assert.True(cb.Array[cb.Offset - i] == Guard, $"An op wrote {cb.Array[cb.Offset - i]} at element {-i} before a view of {cb.Length}.");
                Assert.True(cb.Array[cb.Offset + cb.Length + i - 1] == Guard, $"An op wrote past the end of a view of {cb.Length}.");
            }
        }
    }

    // The inner backend belongs to the test class.
    public override void Dispose() { }
}

public sealed class BufferViewTests : IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly CpuReferenceBackend _ref = new();
    private readonly CpuReferenceBackend _refUnderTest = new();

    public static IEnumerable<object[]> Cases => ParityCases.Names;

    [Theory]
    [MemberData(nameof(Cases))]
    public void FastCpuOpsOnViewsMatchTheReferenceOnPlainBuffers(string op) => ParityCases.Run(op, new ViewBackend(_cpu), _ref);

    [Theory]
    [MemberData(nameof(Cases))]
    public void ReferenceOpsOnViewsMatchTheReferenceOnPlainBuffers(string op) => ParityCases.Run(op, new ViewBackend(_refUnderTest), _ref);

    public static IEnumerable<object[]> Backends => [["cpu"], ["cpu-reference"]];

    private IBackend Get(string name) => name == "cpu" ? _cpu : _refUnderTest;

    [Theory]
    [MemberData(nameof(Backends))]
    public void AViewSharesItsParentsMemoryAndKeepsItAlive(string name)
    {
        var be = Get(name);
        var parent = be.Allocate(100);
        be.Upload(Enumerable.Range(0, 100).Select(i => (float)i).ToArray(), parent, 0);
        var view = be.Slice(parent, 10, 30);
        var inner = be.Slice(view, 5, 7);
        Assert.Equal(30, view.Length);
        Assert.Equal(7, inner.Length);
        var got = new float[7];
        be.Download(inner, 0, got);
        Assert.Equal(Enumerable.Range(15, 7).Select(i => (float)i), got);

        // Writes through a view land in the parent.
        be.Fill(-1f, inner, 7);
        var all = new float[100];
        be.Download(parent, 0, all);
        for (int i = 0; i < 100; i++) Assert.Equal(i is >= 15 and < 22 ? -1f : i, all[i]);

        // The parent's memory outlives its own reference while a view holds it.
        parent.Release();
        Assert.False(parent.IsReleased);
        view.Release();
        Assert.False(parent.IsReleased);
        be.Download(inner, 0, got);
        Assert.All(got, v => Assert.Equal(-1f, v));
        inner.Release();
        Assert.True(parent.IsReleased);
        Assert.Throws<ObjectDisposedException>(() => be.Slice(parent, 0, 1));
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void SlicesOutsideTheParentAreRefusedWithTheRange(string name)
    {
        var be = Get(name);
        var parent = be.Allocate(10);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => be.Slice(parent, 8, 3));
        Assert.Contains("[8, 11)", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => be.Slice(parent, -1, 2));
        var empty = be.Slice(parent, 10, 0);
        Assert.Equal(0, empty.Length);
        empty.Release();
        // A view is checked against its own length, not its parent's.
        var view = be.Slice(parent, 2, 4);
        Assert.ThrowsAny<ArgumentException>(() => be.Fill(0f, view, 5));
        view.Release();
        parent.Release();
    }

    [Theory]
    [InlineData("cpu", 100_000, 1)]
    [InlineData("cpu", 100_000, -1)]
    [InlineData("cpu-reference", 1000, 3)]
    [InlineData("cpu-reference", 1000, -3)]
    public void CopyBetweenOverlappingViewsIsAMemmove(string name, int n, int shift)
    {
        var be = Get(name);
        int total = n + Math.Abs(shift);
        var parent = be.Allocate(total);
        var init = Enumerable.Range(0, total).Select(i => (float)i).ToArray();
        be.Upload(init, parent, 0);
        int from = shift > 0 ? 0 : -shift, to = shift > 0 ? shift : 0;
        var src = be.Slice(parent, from, n);
        var dst = be.Slice(parent, to, n);
        be.Copy(src, 0, n, dst, 0);
        var got = new float[total];
        be.Download(parent, 0, got);
        var expected = (float[])init.Clone();
        Array.Copy(init, from, expected, to, n);
        Assert.Equal(expected, got);
        src.Release();
        dst.Release();
        parent.Release();
    }

    public void Dispose()
    {
        _cpu.Dispose();
        _ref.Dispose();
        _refUnderTest.Dispose();
    }
}

/// <summary>The parity cases on views of <c>cuda</c> buffers (pointer + 4 * offset); skipped without a GPU.</summary>
[Collection(CudaTestEnvironment.Collection)]
public sealed class CudaBufferViewTests : IDisposable
{
    private readonly CpuReferenceBackend _ref = new();

    public static IEnumerable<object[]> Cases => ParityCases.Names;

    [CudaTheory]
    [MemberData(nameof(Cases))]
    public void CudaOpsOnViewsMatchTheReferenceOnPlainBuffers(string op) => ParityCases.Run(op, new ViewBackend(CudaTestEnvironment.Backend), _ref);

    public void Dispose() => _ref.Dispose();
}
