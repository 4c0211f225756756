// Builds a TrainConfig from layers, later ones winning: record defaults (and the model preset),
// a JSON file, then `--set key=value` overrides (dotted keys reach into `model`). Every key is
// checked against the record before deserialising, so a typo is an error naming the key instead
// of a silently ignored setting.
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Training;

public static class ConfigLoader
{
    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.Strict,
    };

    /// <summary>Loads <paramref name="file"/> (optional), applies <paramref name="sets"/> in order, validates.</summary>
    /// <exception cref="UserError">Unreadable file, bad JSON, unknown key, wrong type or invalid value; the message names the key.</exception>
    public static TrainConfig Load(string? file, IEnumerable<string> sets)
    {
        var root = new JsonObject();
        if (file is not null)
        {
            if (!File.Exists(file)) throw new UserError($"config file '{file}' not found");
            try
            {
                root = JsonNode.Parse(File.ReadAllText(file), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject
                       ?? throw new UserError($"config file '{file}': expected a JSON object");
            }
            catch (JsonException e) { throw new UserError($"config file '{file}': invalid JSON: {e.Message}"); }
            CheckKeys(root, typeof(TrainConfig), "", $"config file '{file}'");
        }
        foreach (var s in sets) Apply(root, s);
        return FromJson(root, file is null ? "config" : $"config file '{file}'");
    }

    /// <summary>Applies one <c>key=value</c>; the value is read as JSON when it parses (numbers, true, "text"), else as a string.</summary>
    public static void Apply(JsonObject root, string assignment)
    {
        int eq = assignment.IndexOf('=');
        if (eq <= 0) throw new UserError($"--set '{assignment}': expected key=value");
        string key = assignment[..eq].Trim(), text = assignment[(eq + 1)..];
        JsonNode? value;
        try { value = JsonNode.Parse(text); }
        catch (JsonException) { value = JsonValue.Create(text); }
        var parts = key.Split('.');
        JsonObject obj = root;
        var type = typeof(TrainConfig);
        for (int i = 0; i < parts.Length; i++)
        {
            string path = string.Join('.', parts[..(i + 1)]);
            var prop = FindProperty(type, parts[i]) ?? throw UnknownKey(path, type, "--set");
            if (i == parts.Length - 1) { obj[parts[i]] = value; break; }
            if (!IsSection(prop.PropertyType)) throw new UserError($"--set {key}: '{path}' is a value, not a section");
            if (obj[parts[i]] is not JsonObject child) obj[parts[i]] = child = new JsonObject();
            obj = child;
            type = prop.PropertyType;
        }
    }

    /// <summary>Deserialises a checked JSON object into a validated config.</summary>
    public static TrainConfig FromJson(JsonObject root, string source)
    {
        CheckKeys(root, typeof(TrainConfig), "", source);
        TrainConfig cfg;
        try { cfg = root.Deserialize<TrainConfig>(Json) ?? new TrainConfig(); }
        catch (JsonException e)
        {
            string key = (e.Path ?? "$").TrimStart('$', '.');
            throw new UserError($"{source}: invalid value for '{key}': {FirstSentence(e.Message)}");
        }
        if (cfg.Model is null) throw new UserError($"{source}: 'model' must be an object, not null");
        cfg.Validate();
        return cfg;
    }

    /// <summary>The config as indented JSON (what a run prints and saves as config.json).</summary>
    public static string ToJson(TrainConfig cfg) => JsonSerializer.Serialize(cfg, Json);

    private static void CheckKeys(JsonObject obj, Type type, string prefix, string source)
    {
        foreach (var (name, node) in obj)
        {
            string path = prefix + name;
            var prop = FindProperty(type, name) ?? throw UnknownKey(path, type, source);
            if (IsSection(prop.PropertyType) && node is JsonObject child) CheckKeys(child, prop.PropertyType, path + ".", source);
        }
    }

    private static bool IsSection(Type t) => t == typeof(ModelSection);

    private static PropertyInfo? FindProperty(Type type, string jsonName) =>
        type.GetProperties().FirstOrDefault(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name == jsonName);

    private static UserError UnknownKey(string path, Type type, string source)
    {
        var known = type.GetProperties().Select(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name).OfType<string>();
        return new UserError($"{source}: unknown key '{path}' (known{(type == typeof(ModelSection) ? " in model" : "")}: {string.Join(", ", known)})");
    }

    private static string FirstSentence(string m)
    {
        int i = m.IndexOf(". Path:", StringComparison.Ordinal);
        return i > 0 ? m[..i] : m;
    }
}
