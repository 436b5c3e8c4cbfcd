using System.Globalization;
using System.Text.Json;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Tool.Commands;
using Microsoft.AspNetCore.Http;

namespace Ddpm.Tool.Serve;

/// <summary>A request the server refuses: its HTTP status and one line saying why (sent as <c>{"error": "..."}</c>).</summary>
public sealed class ApiException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;

    public static ApiException BadRequest(string message) => new(StatusCodes.Status400BadRequest, message);

    /// <summary>A value from a request, for a message: control characters as spaces, at most <paramref name="max"/> characters.</summary>
    public static string Shown(string? s, int max = 40)
    {
        s = OneLine(s ?? "");
        return s.Length <= max ? s : s[..max] + "...";
    }

    /// <summary>The text with control characters (line breaks among them) as spaces: a message is one line.</summary>
    public static string OneLine(string s) => string.Concat(s.Select(ch => char.IsControl(ch) ? ' ' : ch));
}

/// <summary>The page's starting values: the sampler options <c>serve</c> was given.</summary>
public sealed record SampleDefaults(string Sampler, int Steps, float Eta, ulong Seed, float Guidance, int N)
{
    public static SampleDefaults From(SamplerOptions o, ServeLimits limits) =>
        new(SamplerName(o.Sampler), Math.Min(o.Steps, limits.MaxSteps), o.Eta, o.Seed, ClassCondition.DefaultGuidance, Math.Min(16, limits.MaxImages));

    /// <summary>The name the page and the command line use for a sampler.</summary>
    public static string SamplerName(SamplerKind kind) => kind switch
    {
        SamplerKind.Ddpm => "ddpm",
        SamplerKind.DpmSolver => "dpm++",
        _ => "ddim",
    };
}

/// <summary>
/// A drawing the page asks for: a JSON object with any of <see cref="Fields"/> (the others take
/// <see cref="SampleDefaults"/>). <see cref="Parse"/> checks the form and <see cref="Check"/> the values against the
/// model and the server's limits; each refusal is one line naming the field. <see cref="Checkpoint"/> names one of
/// the run folder's checkpoints by its file name (null: the latest); the server looks the name up in the folder's
/// listing and never takes it as a path.
/// </summary>
public sealed record SampleRequest(int N, string? Class, float? Guidance, string Sampler, int Steps, float Eta, ulong Seed, string? Checkpoint = null)
{
    public static readonly string[] Fields = ["n", "class", "guidance", "sampler", "steps", "eta", "seed", "checkpoint"];

    /// <summary>The largest body accepted: a request is a few short fields.</summary>
    public const int MaxBodyBytes = 4096;

    /// <summary>The largest seed: the largest integer a page's JavaScript number holds exactly.</summary>
    public const ulong MaxSeed = (1UL << 53) - 1;

    public SamplerKind Kind => SamplerOptions.ParseSampler(Sampler);

    /// <summary>Whether <see cref="Class"/> asks for one row per class.</summary>
    public bool AllClasses => Class is not null && string.Equals(Class.Trim(), "all", StringComparison.OrdinalIgnoreCase);

    public static SampleRequest Parse(ReadOnlySpan<byte> body, SampleDefaults defaults)
    {
        if (body.IsEmpty) throw ApiException.BadRequest("the body is empty; send a JSON object such as {\"n\": 16, \"seed\": 0}.");
        JsonDocument doc;
        try
        {
            var reader = new Utf8JsonReader(body, new JsonReaderOptions { MaxDepth = 4 });
            doc = JsonDocument.ParseValue(ref reader);
            if (reader.BytesConsumed != body.Length && body[(int)reader.BytesConsumed..].Trim(" \t\r\n"u8).Length > 0)
                throw ApiException.BadRequest("the body holds more than one JSON value.");
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the body is not JSON ({ApiException.OneLine(e.Message)}).");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw ApiException.BadRequest($"the body must be a JSON object of {string.Join(", ", Fields)}, not {Sent(root)}.");
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in root.EnumerateObject())
            {
                if (Array.IndexOf(Fields, p.Name) < 0)
                    throw ApiException.BadRequest($"unknown field '{ApiException.Shown(p.Name)}'; the fields are {string.Join(", ", Fields)}.");
                if (!seen.Add(p.Name)) throw ApiException.BadRequest($"field {p.Name} is given twice.");
            }
            return new SampleRequest(
                Int(root, "n", defaults.N),
                ClassOf(root),
                Number(root, "guidance", MaxGuidance),
                root.TryGetProperty("sampler", out var s) && s.ValueKind != JsonValueKind.Null
                    ? s.ValueKind == JsonValueKind.String ? s.GetString()! : throw ApiException.BadRequest($"sampler must be a string (ddim, dpm++ or ddpm), not {Sent(s)}.")
                    : defaults.Sampler,
                Int(root, "steps", defaults.Steps),
                Number(root, "eta", MaxEta) ?? defaults.Eta,
                SeedOf(root, defaults.Seed),
                CheckpointOf(root));
        }
    }

    /// <summary>
    /// The values against the model (its classes, T) and the server's limits; returns the number of images the
    /// drawing makes.
    /// </summary>
    public int Check(ModelInfo model, ServeLimits limits)
    {
        if (N < 1 || N > limits.MaxImages)
            throw ApiException.BadRequest($"n must be between 1 and {limits.MaxImages} (this server's --max-images), got {N}.");
        int count = N;
        if (Class is not null)
        {
            if (!model.Conditional)
                throw ApiException.BadRequest($"class: {model.File} is an unconditional model (trained without classes); leave class out.");
            if (AllClasses)
            {
                count = N * model.Classes.Length;
                if (count > limits.MaxImages)
                    throw ApiException.BadRequest($"class all draws n = {N} images for each of {model.Classes.Length} classes, {count} in all; this server draws at most {limits.MaxImages} at once (--max-images).");
            }
            else
            {
                try { ModelLoading.ResolveClass(model.Config, Class, model.File, "class"); }
                catch (UsageError e) { throw ApiException.BadRequest(e.Message); }
            }
        }
        if (Guidance is not null && Class is null) throw ApiException.BadRequest("guidance needs a class (the class to guide toward).");
        SamplerKind kind;
        try { kind = Kind; }
        catch (UsageError) { throw ApiException.BadRequest($"sampler must be ddim, dpm++ or ddpm, got '{ApiException.Shown(Sampler)}'."); }
        if (kind == SamplerKind.Ddpm)
        {
            if (model.T > limits.MaxSteps)
                throw ApiException.BadRequest($"sampler ddpm takes all T = {model.T} steps of this model; this server allows at most {limits.MaxSteps} (--max-steps): choose ddim or dpm++.");
        }
        else if (Steps < 1 || Steps > Math.Min(model.T, limits.MaxSteps))
            throw ApiException.BadRequest($"steps must be between 1 and {Math.Min(model.T, limits.MaxSteps)} ({(model.T <= limits.MaxSteps ? $"T of this model" : "this server's --max-steps")}), got {Steps}.");
        if (kind == SamplerKind.DpmSolver && Eta != 0) throw ApiException.BadRequest($"eta {Show(Eta)} is DDIM's noise; sampler dpm++ is deterministic (leave eta 0).");
        return count;
    }

    /// <summary>Guidance weights beyond this only saturate the images.</summary>
    public const float MaxGuidance = 100;

    /// <summary>DDIM's eta: 0 deterministic, 1 like DDPM; more only adds noise.</summary>
    public const float MaxEta = 10;

    /// <summary>The options <c>sample</c> would be given for this drawing (the sampler's part).</summary>
    public SampleOptions AsOptions() => new() { SamplerText = Sampler, Steps = Steps, Eta = Eta, Seed = Seed, N = N, Class = Class, Guidance = Guidance };

    /// <summary>"8 images of class 7 (Sneaker), guidance 3, DDIM (20 steps, eta 0), seed 3" and the like (after <see cref="Check"/>).</summary>
    public string Describe(ModelInfo model)
    {
        string what = $"{N} images";
        if (AllClasses) what += " per class";
        else if (Class is not null)
        {
            int c = ModelLoading.ResolveClass(model.Config, Class, model.File);
            what += $" of class {c} ({model.Classes[c]})";
        }
        string guided = Class is null ? "" : $", guidance {Show(Guidance ?? ClassCondition.DefaultGuidance)}";
        return $"{what}{guided}, {AsOptions().Describe(model.T)}, seed {Seed}";
    }

    private static string? ClassOf(JsonElement root)
    {
        if (!root.TryGetProperty("class", out var c) || c.ValueKind == JsonValueKind.Null) return null;
        if (c.ValueKind == JsonValueKind.Number && c.TryGetInt32(out int index) && index >= 0) return index.ToString(CultureInfo.InvariantCulture);
        if (c.ValueKind != JsonValueKind.String)
            throw ApiException.BadRequest($"class must be a class name, an index or \"all\", not {Sent(c)}.");
        string text = c.GetString()!.Trim();
        if (text.Length > 100) throw ApiException.BadRequest($"class must be a class name, an index or \"all\"; got {text.Length} characters.");
        return text.Length == 0 ? null : text;
    }

    private static string? CheckpointOf(JsonElement root)
    {
        if (!root.TryGetProperty("checkpoint", out var c) || c.ValueKind == JsonValueKind.Null) return null;
        if (c.ValueKind != JsonValueKind.String)
            throw ApiException.BadRequest($"checkpoint must be the file name of one of the run's checkpoints, not {Sent(c)}.");
        string name = c.GetString()!;
        return name.Length == 0 ? null : name;
    }

    private static int Int(JsonElement root, string name, int fallback)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && Math.Floor(d) == d)
            throw ApiException.BadRequest($"{name} is far too large: {Sent(v)}.");
        throw ApiException.BadRequest($"{name} must be a whole number, not {Sent(v)}.");
    }

    private static float? Number(JsonElement root, string name, float max)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d >= 0 && d <= max) return (float)d;
        throw ApiException.BadRequest($"{name} must be a number between 0 and {max}, not {Sent(v)}.");
    }

    private static ulong SeedOf(JsonElement root, ulong fallback)
    {
        if (!root.TryGetProperty("seed", out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetUInt64(out ulong s) && s <= MaxSeed) return s;
        throw ApiException.BadRequest($"seed must be a whole number between 0 and {MaxSeed}, not {Sent(v)}.");
    }

    /// <summary>How a JSON value is named in a message: its type, and a short number or string as it was sent.</summary>
    private static string Sent(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => $"the string \"{ApiException.Shown(v.GetString()!)}\"",
        JsonValueKind.Number => ApiException.Shown(v.GetRawText()),
        JsonValueKind.True or JsonValueKind.False => v.GetRawText(),
        _ => "null",
    };

    private static string Show(float v) => v.ToString("G6", CultureInfo.InvariantCulture);
}
