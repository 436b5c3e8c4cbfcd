using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Quality;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;
using Ddpm.Tests.Data;
using Xunit;

namespace Ddpm.Tests.Quality;

/// <summary>A classifier weights file whose tensors are not finite floats is refused naming the file and tensor.</summary>
public sealed class ClassifierFileTests
{
    [Theory]
    [InlineData("nan")]
    [InlineData("integers")]
    public void BadTensorsAreRefusedByName(string defect)
    {
        using var dir = new TempDir();
        using var be = new CpuReferenceBackend();
        string good = dir.File("good.safetensors"), bad = dir.File("bad.safetensors");
        using (var model = new FeatureClassifier(be, new ClassifierConfig(), new PhiloxGenerator(0))) model.Save(good);
        var file = SafeTensorsFile.Read(good);
        var first = file.Entries[0];
        var entries = file.Entries.Select(e => e.Name != first.Name ? e
            : defect == "nan" ? SafeTensorEntry.F32(e.Name, e.Shape, e.AsFloats().Select((v, i) => i == 3 ? float.NaN : v).ToArray())
            : SafeTensorEntry.I64(e.Name, e.Shape, new long[e.Count])).ToList();
        SafeTensorsFile.Write(bad, entries, file.Metadata);

        FeatureClassifier.Load(good, be).Model.Dispose();
        var ex = Assert.Throws<InvalidDataException>(() => FeatureClassifier.Load(bad, be));
        Assert.Contains(bad, ex.Message);
        Assert.Contains(first.Name, ex.Message);
    }

    [Fact]
    public void AClassifierWithWeightsThatAreNotFiniteIsNotWritten()
    {
        using var dir = new TempDir();
        using var be = new CpuReferenceBackend();
        using var model = new FeatureClassifier(be, new ClassifierConfig(), new PhiloxGenerator(0));
        var (name, p) = model.NamedParameters().Last();
        var w = p.ToArray();
        w[1] = float.PositiveInfinity;
        p.CopyFrom(w);
        string path = dir.File("c.safetensors");
        var ex = Assert.Throws<NonFiniteOutputException>(() => model.Save(path));
        Assert.Equal($"{path}: value 1 of tensor '{name}' {p.Shape.ToString().Replace(" ", "")} is Infinity; nothing was written.", ex.Message);
        Assert.False(File.Exists(path));
    }
}
