// manifest.json of a prepared token folder: which shard files hold which split, how many tokens
// each holds, and the vocabulary they were encoded with. Written last by `prepare`, so a folder
// without a manifest is an unfinished one.
using System.Text.Json;
using System.Text.Json.Serialization;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Data;

/// <summary>One shard file: raw little-endian uint16 token ids, no header.</summary>
public sealed record ShardInfo(
    [property: JsonPropertyName("file")] string File,
    [property: JsonPropertyName("split")] string Split,
    [property: JsonPropertyName("tokens")] long Tokens);

/// <summary>The manifest of a prepared token folder (<c>manifest.json</c>).</summary>
public sealed record ShardManifest
{
    public const string FileName = "manifest.json";
    public const string FormatName = "palm-shards";

    [JsonPropertyName("format")] public string Format { get; init; } = FormatName;
    [JsonPropertyName("version")] public int Version { get; init; } = 1;
    [JsonPropertyName("dtype")] public string DType { get; init; } = "uint16";
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    /// <summary>The tokenizer file, relative to the folder.</summary>
    [JsonPropertyName("tokenizer")] public string Tokenizer { get; init; } = "tokenizer.json";
    [JsonPropertyName("val_fraction")] public double ValFraction { get; init; }
    [JsonPropertyName("sources")] public IReadOnlyList<string> Sources { get; init; } = [];
    [JsonPropertyName("source_bytes")] public long SourceBytes { get; init; }
    [JsonPropertyName("train_tokens")] public long TrainTokens { get; init; }
    [JsonPropertyName("val_tokens")] public long ValTokens { get; init; }
    [JsonPropertyName("shards")] public IReadOnlyList<ShardInfo> Shards { get; init; } = [];

    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        RespectRequiredConstructorParameters = true,
    };

    public void Save(string folder) =>
        AtomicFile.WriteAllText(Path.Combine(folder, FileName), JsonSerializer.Serialize(this, Json) + "\n");

    /// <summary>Loads and checks <c>folder/manifest.json</c>.</summary>
    /// <exception cref="UserError">Missing or invalid manifest; the message names the file and field.</exception>
    public static ShardManifest Load(string folder)
    {
        string path = Path.Combine(folder, FileName);
        if (!Directory.Exists(folder)) throw new UserError($"data folder '{folder}' not found (make it with `Palm.Trainer prepare` or scripts/prepare-corpus.sh)");
        if (!System.IO.File.Exists(path)) throw new UserError($"data folder '{folder}' has no {FileName} (make it with `Palm.Trainer prepare`; an interrupted prepare leaves none)");
        ShardManifest m;
        try { m = JsonSerializer.Deserialize<ShardManifest>(System.IO.File.ReadAllText(path), Json) ?? throw new UserError($"{path}: empty manifest"); }
        catch (JsonException e) { throw new UserError($"{path}: invalid manifest at {e.Path}: {e.Message}"); }
        if (m.Format != FormatName) throw new UserError($"{path}: format must be \"{FormatName}\", got \"{m.Format}\"");
        if (m.Version != 1) throw new UserError($"{path}: version {m.Version} is not supported (expected 1)");
        if (m.DType != "uint16") throw new UserError($"{path}: dtype must be \"uint16\", got \"{m.DType}\"");
        if (m.VocabSize is <= 0 or > ShardWriter.MaxVocab) throw new UserError($"{path}: vocab_size must be in 1..{ShardWriter.MaxVocab}, got {m.VocabSize}");
        foreach (var s in m.Shards)
        {
            if (s.Split is not ("train" or "val")) throw new UserError($"{path}: shard '{s.File}' has split \"{s.Split}\" (expected train or val)");
            if (s.File.Contains('/') || s.File.Contains('\\') || s.File.StartsWith('.')) throw new UserError($"{path}: shard file '{s.File}' must be a plain file name in the folder");
            if (s.Tokens < 0) throw new UserError($"{path}: shard '{s.File}' has a negative token count");
        }
        return m;
    }
}
