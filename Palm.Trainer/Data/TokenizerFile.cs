// The standalone tokenizer file written by `tokenizer` and read by `prepare` and `train`: a small
// JSON document with the same content as a checkpoint's tokenizer map (pattern, merges in rank
// order, special tokens), readable by people and by any JSON library.
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Inference.Checkpoint;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Data;

/// <summary>
/// Reads and writes <c>tokenizer.json</c>:
/// <c>{"format": "palm-tokenizer", "version": 1, "vocab_size": N, "pattern": "...",
/// "special_tokens": ["&lt;|sot|&gt;", ...], "merges": [[left, right], ...]}</c>.
/// Merge <c>i</c> creates token <c>256 + i</c>; special tokens follow the merges.
/// </summary>
public static class TokenizerFile
{
    public const string Format = "palm-tokenizer";
    public const int Version = 1;

    public static void Save(BpeTokenizer tokenizer, string path)
    {
        var merges = new JsonArray();
        foreach (var (l, r) in tokenizer.Merges) merges.Add(new JsonArray(l, r));
        var doc = new JsonObject
        {
            ["format"] = Format,
            ["version"] = Version,
            ["vocab_size"] = tokenizer.VocabSize,
            ["pattern"] = tokenizer.Pattern,
            ["special_tokens"] = new JsonArray([.. tokenizer.SpecialTokens.Select(s => (JsonNode?)JsonValue.Create(s))]),
            ["merges"] = merges,
        };
        AtomicFile.WriteAllText(path, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = false }) + "\n");
    }

    /// <summary>Loads a tokenizer file, or the tokenizer embedded in a <c>.palm</c> checkpoint.</summary>
    /// <exception cref="UserError">Missing file or invalid content; the message names the file and field.</exception>
    public static BpeTokenizer Load(string path)
    {
        if (!File.Exists(path)) throw new UserError($"tokenizer file '{path}' not found (make one with `Palm.Trainer tokenizer`)");
        if (path.EndsWith(".palm", StringComparison.OrdinalIgnoreCase))
        {
            var ck = PalmCheckpoint.Load(path);
            return (ck.Tokenizer ?? throw new UserError($"checkpoint '{path}' carries no tokenizer")).ToTokenizer();
        }
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new UserError($"tokenizer file '{path}': invalid JSON: {e.Message}"); }
        if (root is not JsonObject o) throw new UserError($"tokenizer file '{path}': expected a JSON object");
        try
        {
            if ((string?)o["format"] != Format) throw new UserError($"tokenizer file '{path}': format must be \"{Format}\"");
            if ((int?)o["version"] != Version) throw new UserError($"tokenizer file '{path}': version must be {Version}");
            string pattern = (string?)o["pattern"] ?? throw new UserError($"tokenizer file '{path}': pattern is missing");
            var specials = (o["special_tokens"] as JsonArray ?? throw new UserError($"tokenizer file '{path}': special_tokens is missing"))
                .Select(n => (string?)n ?? throw new UserError($"tokenizer file '{path}': special_tokens holds a null")).ToList();
            var merges = new List<(int, int)>();
            foreach (var m in o["merges"] as JsonArray ?? throw new UserError($"tokenizer file '{path}': merges is missing"))
            {
                if (m is not JsonArray { Count: 2 } pair) throw new UserError($"tokenizer file '{path}': merges[{merges.Count}] must be a pair [left, right]");
                merges.Add(((int)pair[0]!, (int)pair[1]!));
            }
            var tok = new TokenizerBlob(pattern, merges, specials).ToTokenizer();
            if (o["vocab_size"] is { } vs && (int)vs != tok.VocabSize)
                throw new UserError($"tokenizer file '{path}': vocab_size {(int)vs} does not match the {tok.VocabSize} tokens its merges and special tokens define");
            return tok;
        }
        catch (PalmFormatException e) { throw new UserError($"tokenizer file '{path}': {e.Message}"); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new UserError($"tokenizer file '{path}': wrong value type: {e.Message}");
        }
    }
}
