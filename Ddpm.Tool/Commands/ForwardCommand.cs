using CommandLine;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tensors.IO;

namespace Ddpm.Tool.Commands;

[Verb("forward", HelpText = "Run eps_theta(x, t) in eval mode on the tensors x, t of a safetensors file (cross-checks against PyTorch).")]
public sealed class ForwardOptions : ModelOptions
{
    [Option("weights", Required = true, HelpText = "Weights under labml's state_dict names (a training checkpoint works too).")]
    public string Weights { get; set; } = "";

    [Option("inputs", Required = true, HelpText = "safetensors with x (F32 [N,C,H,W]) and t (I64 [N]).")]
    public string Inputs { get; set; } = "";

    [Option("out", Required = true, HelpText = "safetensors to write: eps, and with --grads L, grad.x and grad.<param>.")]
    public string Out { get; set; } = "";

    [Option("grads", Default = false, HelpText = "Also back-propagate L = mean(eps^2) to x and every parameter.")]
    public bool Grads { get; set; }
}

public static class ForwardCommand
{
    public static int Run(ForwardOptions o, ToolConsole con)
    {
        var ckpt = ModelLoading.OpenCheckpoint(o.Weights);
        SafeTensorsFile io;
        try { io = SafeTensorsFile.Read(o.Inputs); }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new UserError(e is DataFormatException ? e.Message : $"{o.Inputs}: {e.Message}", e);
        }
        if (!io.TryGet("x", out var xe) || xe.Shape.Length != 4)
            throw new UserError($"{o.Inputs} needs a tensor 'x' of F32 [N, C, H, W].");
        if (!xe.IsFloat)
            throw new UserError($"{o.Inputs}: tensor 'x' is {xe.DType}; it must be floating-point (F32).");
        if (!io.TryGet("t", out var te) || te.Shape.Length != 1 || te.Shape[0] != xe.Shape[0])
            throw new UserError($"{o.Inputs} needs a tensor 't' of shape [{xe.Shape[0]}] (I64 timesteps).");
        if (te.IsFloat)
            throw new UserError($"{o.Inputs}: tensor 't' is {te.DType}; timesteps are integers (I64).");
        long bad = xe.FirstNonFinite();
        if (bad >= 0) throw new UserError($"{o.Inputs}: value {bad} of tensor 'x' {xe.ShapeText} is {xe.Floats![bad]}; x must be finite.");

        if (ckpt.Model is not null && o.HasModelOverrides) throw new UsageError($"{o.Weights} describes its own model; drop the model options.");
        var config = ckpt.Model ?? o.ResolveModel(ModelOptions.PresetNamed("small").Model with { ImageChannels = xe.Shape[1], ImageSize = xe.Shape[2] });
        if (xe.Shape[1] != config.ImageChannels || xe.Shape[2] != config.ImageSize || xe.Shape[3] != config.ImageSize)
            throw new UserError($"{o.Inputs}: tensor 'x' is {xe.ShapeText}; the model takes [N, {config.ImageChannels}, {config.ImageSize}, {config.ImageSize}].");
        if (xe.Shape[0] <= 0) throw new UserError($"{o.Inputs}: tensor 'x' {xe.ShapeText} holds no images.");
        if (ToolBackends.IsHostMemory(o.Backend))
            MemoryEstimate.Require(o.Grads ? MemoryEstimate.TrainingBytes(config, xe.Shape[0])
                : 4 * (config.ParameterCount() + (long)xe.Shape[0] * MemoryEstimate.SamplingValuesPerImage(config)),
                $"the forward pass of {xe.Shape[0]:N0} images");
        var t = te.AsLongs().Select(v => v is < 0 or > int.MaxValue ? throw new UserError($"{o.Inputs}: timestep {v} is out of range.") : (int)v).ToArray();
        using var be = ToolBackends.Create(o);
        using var model = new UNet(be, config, new PhiloxGenerator(0));
        try { ckpt.LoadWeightsInto(model); }
        catch (InvalidDataException e) { throw new UserError(e.Message, e); }
        model.Eval();

        var outputs = new List<SafeTensorEntry>();
        using (var scope = new TensorScope())
        using (o.Grads ? GradMode.Enable() : GradMode.NoGrad())
        {
            var x = Tensor.FromArray(be, xe.AsFloats(), xe.Shape);
            x.RequiresGrad = o.Grads;
            Tensor eps;
            try { eps = model.Forward(x, t); }
            catch (ArgumentException e) { throw new UserError($"{o.Inputs}: {e.Message}", e); }
            outputs.Add(SafeTensorEntry.F32("eps", eps.Shape.ToArray(), eps.ToArray()));
            if (o.Grads)
            {
                var l = Ops.Mean(Ops.Square(eps));
                l.Backward();
                outputs.Add(SafeTensorEntry.F32("L", [1], l.ToArray()));
                outputs.Add(SafeTensorEntry.F32("grad.x", x.Shape.ToArray(), x.Grad!.ToArray()));
                foreach (var (name, p) in model.NamedParameters())
                    outputs.Add(SafeTensorEntry.F32("grad." + name, p.Shape.ToArray(), p.Grad?.ToArray() ?? new float[p.Size]));
            }
        }
        NonFiniteOutputException.ThrowIfAny(outputs, o.Out);
        SafeTensorsFile.Write(o.Out, outputs, new Dictionary<string, string> { ["backend"] = be.Name, ["model"] = config.ToString() });
        con.Out.WriteLine($"wrote {o.Out}: {string.Join(", ", outputs.Take(4).Select(e => e.Name))}{(outputs.Count > 4 ? $" and {outputs.Count - 4} more" : "")} ({be.Name})");
        return 0;
    }
}
