// Train a small DDPM for 100 steps on a folder of images (one sub-folder per class), then load a model (the one
// just trained, or any checkpoint or weights file such as ddpm-tool's bundled model) and sample 16 images into a grid.
//   dotnet run -- IMAGE_FOLDER RUN_FOLDER [MODEL.safetensors]
using Ddpm.Backends.Cpu;
using Ddpm.Diffusion.Data;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Imaging;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;

string images = args[0], runFolder = args[1];
using var backend = new CpuBackend(threads: 0);

// 1. Train: the recipe ddpm-tool train uses (Recipes), here the tiny preset for 100 steps of 4 images.
var data = TrainingData.Open(images, imageSize: 32, channels: 1);
var recipe = new TrainingRecipe()
    .Set("run", "preset", "tiny").Set("run", "steps", 100L).Set("run", "sample_every", 0)
    .Set("training", "batch_size", 4);
var plan = Recipes.Plan(recipe, TrainingData.WithLabels(data) ?? data, images);
using (var folder = RunFolder.Open(runFolder, resuming: false, overwrite: true))
using (var run = new TrainingRun(plan, backend, DataParallel.None, folder))
{
    var outcome = run.Run();
    Console.WriteLine($"trained {outcome.Step} steps in {outcome.Elapsed.TotalSeconds:F0} s, loss {outcome.SmoothedLoss:F4}: {runFolder}");
}

// 2. Sample: the model and diffusion configs travel in the file's header.
var checkpoint = Checkpoint.Load(args.Length > 2 ? args[2] : Path.Combine(runFolder, RunFolder.ModelName));
using var unet = new UNet(backend, checkpoint.Model!, new PhiloxGenerator(0));
checkpoint.LoadWeightsInto(unet);
unet.Eval();
var diffusion = new DenoiseDiffusion(unet, checkpoint.Diffusion!);
var mc = unet.Config;
// A class-conditional model draws the first classes in turn (guidance 3); an unconditional one, 16 images.
var condition = mc.IsConditional ? new ClassCondition(Enumerable.Range(0, 16).Select(i => i % mc.NumClasses).ToArray(), 3f) : null;
using (new TensorScope())
{
    var x = new Sampler(diffusion, condition).Sample(16, SamplerKind.DpmSolver, steps: 20, eta: 0f, seed: 1);
    var (w, h) = ImageGrid.SavePng("samples.png", x.ToArray(), 16, mc.ImageChannels, mc.ImageSize, mc.ImageSize,
        nrow: 4, diffusion.Config.DataRange, scale: ImageGrid.AutoScale);
    Console.WriteLine($"wrote samples.png ({w}x{h}) from {checkpoint.Path}");
}
