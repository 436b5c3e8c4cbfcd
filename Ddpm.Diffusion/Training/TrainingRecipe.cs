using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using Ddpm.Diffusion.Diffusion;
using Ddpm.Diffusion.Model;
using Ddpm.Tensors.IO;

namespace Ddpm.Diffusion.Training;

/// <summary>
/// What a run asks for, before the defaults are applied: values by section and key, the keys being those of
/// <c>config.json</c> (the JSON names of <see cref="UNetConfig"/>, <see cref="DiffusionConfig"/>,
/// <see cref="TrainingConfig"/> and <see cref="RunSettings"/>). A config file and the command line each make one;
/// <see cref="Then"/> lays a later one over an earlier one, and <see cref="Recipes"/> fills in what neither sets.
/// Each value remembers where it came from (a file, an option), so a value that cannot work is reported there.
/// </summary>
public sealed class TrainingRecipe
{
    /// <summary>The sections of a configuration, in the order config.json writes them.</summary>
    public static readonly IReadOnlyList<string> Sections = ["model", "diffusion", "training", "run"];

    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = false,
        UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow,
        TypeInfoResolver = new DefaultJsonTypeInfoResolver(),
    };

    private readonly Dictionary<string, JsonObject> _sections = Sections.ToDictionary(s => s, _ => new JsonObject());
    private readonly Dictionary<string, string> _origins = new();

    /// <summary>Sets <paramref name="key"/> of <paramref name="section"/> to <paramref name="value"/> (serialised as config.json writes it).</summary>
    public TrainingRecipe Set<T>(string section, string key, T value, string? origin = null)
    {
        var known = KnownKeys(section);
        if (!known.Contains(key)) throw new ArgumentException($"\"{section}\" has no key \"{key}\"; known: {string.Join(", ", known)}.", nameof(key));
        _sections[section][key] = JsonSerializer.SerializeToNode(value, Json);
        _origins[key] = origin ?? $"{section}.{key}";
        return this;
    }

    /// <summary>Whether the recipe sets <paramref name="key"/> of <paramref name="section"/>.</summary>
    public bool Has(string section, string key) => _sections.TryGetValue(section, out var s) && s.ContainsKey(key);

    /// <summary>The value of <paramref name="key"/> of <paramref name="section"/> as JSON, or null when the recipe does not set it.</summary>
    public JsonNode? Value(string section, string key) => _sections.TryGetValue(section, out var s) && s.TryGetPropertyValue(key, out var v) ? v : null;

    /// <summary>Where the value of <paramref name="key"/> (of any section: keys are unique) came from, or null when the recipe does not set it.</summary>
    public string? OriginOf(string key) => _origins.GetValueOrDefault(key);

    /// <summary>The keys set in <paramref name="section"/>.</summary>
    public IEnumerable<string> Keys(string section) => _sections[section].Select(kv => kv.Key);

    /// <summary>This recipe with <paramref name="later"/>'s values laid over it (a key set in both takes <paramref name="later"/>'s).</summary>
    public TrainingRecipe Then(TrainingRecipe later)
    {
        var r = new TrainingRecipe();
        foreach (var source in new[] { this, later })
            foreach (var (section, values) in source._sections)
                foreach (var (key, value) in values)
                {
                    r._sections[section][key] = value?.DeepClone();
                    r._origins[key] = source._origins[key];
                }
        return r;
    }

    /// <summary>The largest configuration file read (a run's config.json is a few kilobytes).</summary>
    public const int MaxFileBytes = 1 << 20;

    /// <summary>
    /// Reads a configuration (a run's config.json, or a file a person wrote with some of its keys): UTF-8 JSON, an
    /// object whose members are sections, each an object of keys. A file that cannot be read (missing, not a regular
    /// file, over <see cref="MaxFileBytes"/>) is a <see cref="DataFormatException"/>; an unknown section or key, a
    /// key given twice, or a file that is not such an object, an <see cref="InvalidDataException"/>; each names the
    /// file (and the key). Values are checked when the recipe is resolved, and reported with the file's name.
    /// </summary>
    public static TrainingRecipe Load(string path)
    {
        if (!Path.Exists(path)) throw new DataFormatException(path, "no such configuration file.");
        byte[] bytes = BoundedFile.ReadAllBytes(path, MaxFileBytes, "a configuration file may hold");
        string text;
        try { text = Strict.GetString(bytes); }
        catch (DecoderFallbackException e) { throw new DataFormatException(path, "not UTF-8 text.", e.Index >= 0 ? e.Index : null, e); }
        return Parse(text.StartsWith('\uFEFF') ? text[1..] : text, path);
    }

    private static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary><see cref="Load"/> of text; <paramref name="source"/> names it in errors and as the values' origin.</summary>
    public static TrainingRecipe Parse(string json, string source)
    {
        JsonNode? root;
        var options = new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true, AllowDuplicateProperties = false };
        try { root = JsonNode.Parse(json, documentOptions: options); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not JSON ({DataLine(e.Message)})", e); }
        if (root is not JsonObject top) throw new InvalidDataException($"{source}: a configuration is a JSON object with the sections {string.Join(", ", Sections)}.");
        var r = new TrainingRecipe();
        foreach (var (section, node) in top)
        {
            if (section == "format") continue;
            if (!r._sections.ContainsKey(section))
                throw new InvalidDataException($"{source}: unknown section \"{DataFormatException.Quote(section)}\"; a configuration has {string.Join(", ", Sections)}.");
            if (node is not JsonObject values) throw new InvalidDataException($"{source}: \"{section}\" is not an object of keys.");
            var known = KnownKeys(section);
            foreach (var (key, value) in values)
            {
                if (!known.Contains(key))
                    throw new InvalidDataException($"{source}: unknown key \"{section}.{DataFormatException.Quote(key)}\"; \"{section}\" has {string.Join(", ", known)}.");
                r._sections[section][key] = value?.DeepClone();
                r._origins[key] = source;
            }
        }
        return r;
    }

    /// <summary>
    /// <paramref name="defaults"/> with this recipe's values of <paramref name="section"/> laid over it. A value of
    /// the wrong type is a <see cref="ConfigValueException"/> for its key.
    /// </summary>
    public T Apply<T>(string section, T defaults) where T : class
    {
        var values = _sections[section];
        if (values.Count == 0) return defaults;
        var merged = JsonSerializer.SerializeToNode(defaults, Json)!.AsObject();
        foreach (var (key, value) in values)
        {
            merged[key] = value?.DeepClone();
            try
            {
                // Key by key, so that a value that does not fit its type is reported under its own name.
                JsonSerializer.Deserialize<T>(merged.ToJsonString(Json), Json);
            }
            catch (JsonException e)
            {
                throw new ConfigValueException(key, $"{value?.ToJsonString() ?? "null"} is not a valid value ({DataLine(e.Message)}).");
            }
        }
        return JsonSerializer.Deserialize<T>(merged.ToJsonString(Json), Json)
            ?? throw new ConfigValueException(section, "is null.");
    }

    /// <summary>The keys section <paramref name="section"/> may hold: the JSON names of its record's properties.</summary>
    public static IReadOnlyList<string> KnownKeys(string section)
    {
        var type = section switch
        {
            "model" => typeof(UNetConfig),
            "diffusion" => typeof(DiffusionConfig),
            "training" => typeof(TrainingConfig),
            "run" => typeof(RunSettings),
            _ => throw new ArgumentException($"unknown section \"{section}\"; a configuration has {string.Join(", ", Sections)}.", nameof(section)),
        };
        // Computed properties ([JsonIgnore], no setter) are not keys: config.json does not hold them.
        return Json.GetTypeInfo(type).Properties.Where(p => p.Set is not null).Select(p => p.Name).ToArray();
    }

    /// <summary>
    /// The resolved configuration as config.json holds it: one object with the sections, each every key of its record.
    /// </summary>
    public static string Write(UNetConfig model, DiffusionConfig diffusion, TrainingConfig training, RunSettings run)
    {
        var top = new JsonObject
        {
            ["model"] = JsonSerializer.SerializeToNode(model, Json),
            ["diffusion"] = JsonSerializer.SerializeToNode(diffusion, Json),
            ["training"] = JsonSerializer.SerializeToNode(training, Json),
            ["run"] = JsonSerializer.SerializeToNode(run, Json),
        };
        return top.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    private static string DataLine(string message) => DataFormatException.OneLine(message);
}
