using System.Text.Json.Serialization;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Diffusion.Training;
using Ddpm.Tensors;
using Ddpm.Tool.Commands;

namespace Ddpm.Tool.Serve;

/// <summary>What the page is told of the model it draws from.</summary>
public sealed record ModelInfo(string Source, string File, long Step, bool Ema, bool Conditional, string[] Classes, int T,
    int ImageSize, int ImageChannels, [property: JsonIgnore] UNetConfig Config);

/// <summary>
/// A model loaded for drawing: the UNet, its diffusion, what the page is told of it, and the sampling steps recorded
/// for it (kept from drawing to drawing while the model is held).
/// </summary>
internal sealed class LoadedModel(UNet model, DenoiseDiffusion diffusion, string path, ModelInfo info) : IDisposable
{
    public UNet Model { get; } = model;
    public DenoiseDiffusion Diffusion { get; } = diffusion;
    public string Path { get; } = path;
    public ModelInfo Info { get; } = info;
    public SamplingRecordings Recordings { get; } = new();

    public void Dispose()
    {
        Recordings.Dispose();
        Model.Dispose();
    }
}

/// <summary>
/// The model the Sample view draws from: a checkpoint or weights file, loaded once, or a run folder, whose latest
/// checkpoint is loaded again when training writes a newer one, and whose other checkpoints (<see cref="Choices"/>)
/// a drawing may name. One model is held at a time. Loading and drawing happen on one thread (the queue's worker,
/// or the caller of <see cref="Start"/> before it runs); <see cref="Info"/>, <see cref="Problem"/> and
/// <see cref="Choices"/> may be read from any thread.
/// </summary>
internal sealed class ModelSource : IDisposable
{
    /// <summary>Where the model came from: --checkpoint, the --run folder, or the bundled model.</summary>
    public const string Given = "--checkpoint", OfRun = "--run", Bundled = "bundled";

    private readonly string _path;
    private readonly string _option;
    private readonly SamplingOptions _options;
    private readonly IBackend _backend;
    private readonly bool _folder;
    private LoadedModel? _current;
    private string? _latest;
    private volatile ModelInfo? _info;
    private volatile string? _problem;

    /// <param name="path">A checkpoint or weights file, or a run folder.</param>
    /// <param name="option">Where it came from (<see cref="Given"/>, <see cref="OfRun"/>, <see cref="Bundled"/>), for messages.</param>
    /// <param name="options">The model and diffusion overrides and the EMA choice, as <c>sample</c> takes them.</param>
    public ModelSource(string path, string option, SamplingOptions options, IBackend backend)
    {
        _path = path;
        _option = option;
        _options = options;
        _backend = backend;
        _folder = Directory.Exists(path);
    }

    /// <summary>The model now loaded (null before the first, or while a run folder has no checkpoint).</summary>
    public ModelInfo? Info => _info;

    /// <summary>Why there is no model to draw from, or why the newest checkpoint could not be loaded; null when none.</summary>
    public string? Problem => _problem;

    public string Describe() => _info is { } i ? i.Source : $"{_path} (no checkpoint yet)";

    /// <summary>
    /// Loads the model at the start: a file that cannot be loaded is an error of the command (as for
    /// <c>sample</c>); a run folder may have no checkpoint yet.
    /// </summary>
    public void Start()
    {
        if (!_folder)
        {
            Replace(Load(_path));
            return;
        }
        Refresh();
    }

    /// <summary>
    /// The files of a run folder a drawing may name: its step-numbered checkpoints, newest first, then
    /// best.safetensors and model.safetensors when it has them; empty for a single file.
    /// </summary>
    public string[] Choices()
    {
        if (!_folder) return [];
        var names = RunFolder.Checkpoints(_path).Reverse().Select(c => System.IO.Path.GetFileName(c.Path)).ToList();
        foreach (var name in new[] { RunFolder.BestName, RunFolder.ModelName })
            if (File.Exists(System.IO.Path.Combine(_path, name))) names.Add(name);
        return [.. names];
    }

    /// <summary>
    /// Refuses, as a 400 naming the field, a <paramref name="choice"/> (a file name) that is not one of
    /// <see cref="Choices"/> now; null (the latest) is always allowed.
    /// </summary>
    public void CheckChoice(string? choice)
    {
        if (choice is null) return;
        if (!_folder)
            throw ApiException.BadRequest($"checkpoint: this server draws from {_info?.File ?? _path} alone (serve --run DIR offers a run's checkpoints); leave checkpoint out.");
        var choices = Choices();
        if (Array.IndexOf(choices, choice) < 0)
            throw ApiException.BadRequest($"checkpoint '{ApiException.Shown(choice)}' is not a checkpoint of the run folder; it has {(choices.Length == 0 ? "none yet" : string.Join(", ", choices))}.");
    }

    /// <summary>
    /// The model to draw from now: <paramref name="choice"/> (one of <see cref="Choices"/>, checked again here), or
    /// for null the latest (for a run folder, loaded when it is newer than the one held). Throws
    /// <see cref="UserError"/> when there is none and <see cref="ApiException"/> for a choice the folder no longer has.
    /// </summary>
    public LoadedModel Current(string? choice = null)
    {
        if (choice is null) Refresh();
        else
        {
            CheckChoice(choice);
            // The name is one of the folder's listing: it is looked up there, never taken as a path.
            string path = System.IO.Path.Combine(_path, choice);
            if (_current?.Path != path) Replace(Load(path), latest: false);
            return _current!;
        }
        if (_latest is not null && _current?.Path != _latest) Replace(Load(_latest));
        return _current ?? throw new UserError(_problem ?? $"{_path} has no model");
    }

    /// <summary>
    /// For a run folder: loads its latest checkpoint when it differs from the latest loaded before (the model
    /// <see cref="Info"/> describes); a problem is kept in <see cref="Problem"/>.
    /// </summary>
    public void Refresh()
    {
        if (!_folder) return;
        string? latest = ModelLoading.FolderModel(_path);
        if (latest is null)
        {
            if (_current is null) _problem = $"{_path} has no checkpoint yet; the Sample view draws once train writes one (checkpoint-NNNNNNN.safetensors).";
            return;
        }
        if (latest == _latest) return;
        try
        {
            Replace(Load(latest));
        }
        catch (Exception e) when (e is UserError or UsageError or IOException or InvalidDataException or UnauthorizedAccessException)
        {
            // A checkpoint pruned or replaced while it was read, or a bad file: the model held stays, the page is told.
            _problem = $"{System.IO.Path.GetFileName(latest)} could not be loaded ({e.Message}){(_current is null ? "" : $"; drawing from {_current.Info.File}")}.";
        }
    }

    private LoadedModel Load(string path)
    {
        var ckpt = ModelLoading.OpenCheckpoint(path);
        var (model, diffusion, ema) = ModelLoading.Load(ckpt, _options, _options, _backend, _options.EmaChoice);
        var mc = model.Config;
        string file = System.IO.Path.GetFileName(ckpt.Path);
        string source = _folder ? $"{_path} ({file}{(ckpt.IsTrainingCheckpoint ? $", step {ckpt.Step}" : "")})"
            : _option == Bundled ? $"the bundled model ({ckpt.Path})" : ckpt.Path;
        var classes = Enumerable.Range(0, mc.NumClasses).Select(mc.ClassName).ToArray();
        return new LoadedModel(model, diffusion, ckpt.Path,
            new ModelInfo(source, file, ckpt.Step, ema, mc.IsConditional, classes, diffusion.Steps, mc.ImageSize, mc.ImageChannels, mc));
    }

    /// <summary>Holds <paramref name="next"/> in place of the model held; the latest is also what <see cref="Info"/> describes.</summary>
    private void Replace(LoadedModel next, bool latest = true)
    {
        var old = _current;
        _current = next;
        if (latest)
        {
            _latest = next.Path;
            _info = next.Info;
            _problem = null;
        }
        old?.Dispose();
    }

    public void Dispose() => _current?.Dispose();
}
