// Shared fixtures for the trainer tests: a temp folder, a random corpus with the awkward parts of
// real text (blank lines, indentation, punctuation, non-ASCII, CRLF), a tokenizer trained on it,
// and a prepared data folder for a very small model.
using System.Text;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Data;
using Palm.Trainer.Training;

namespace Palm.Tests.Trainer;

internal sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("palm-trainer-test-").FullName;
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

internal static class TrainerTestData
{
    private static readonly string[] Words =
        ["the", "and", "of", "LORD", "said", "unto", "him", "them", "land", "God", "children", "Israel", "shall", "king",
         "café", "naïve", "日本", "3", "42", "1999", "don't", "it's"];

    public static string RandomText(Random rnd, int lines)
    {
        var sb = new StringBuilder();
        for (int l = 0; l < lines; l++)
        {
            switch (rnd.Next(12))
            {
                case 0: sb.Append('\n'); continue;                  // blank line
                case 1: sb.Append("  "); break;                     // indented line
                case 2: sb.Append('\t'); break;
            }
            int n = 1 + rnd.Next(12);
            for (int w = 0; w < n; w++)
            {
                if (w > 0) sb.Append(rnd.Next(8) == 0 ? "  " : " ");
                sb.Append(Words[rnd.Next(Words.Length)]);
                if (rnd.Next(6) == 0) sb.Append(",.;:!?"[rnd.Next(6)]);
            }
            if (rnd.Next(10) == 0) sb.Append("  ");                 // trailing spaces
            sb.Append(rnd.Next(15) == 0 ? "\r\n" : "\n");
        }
        return sb.ToString();
    }

    /// <summary>A model small enough for a few training steps in well under a second.</summary>
    public static ModelSection MicroModel => new() { Preset = "tiny", BlockSize = 16, NEmbd = 16, NHead = 2, DQkv = 16, DRank = 4, NLayer = 1, NRecur = 2 };

    /// <summary>Writes a random corpus, trains a 300-token tokenizer and prepares shards in <c>dir/data</c>.</summary>
    public static (string DataDir, BpeTokenizer Tokenizer) Prepare(TempDir dir, Random rnd, int lines = 1500, long shardTokens = 2000)
    {
        File.WriteAllText(dir["corpus.txt"], RandomText(rnd, lines));
        var tok = BpeTrainer.Train(File.ReadAllText(dir["corpus.txt"]), 300);
        TokenizerFile.Save(tok, dir["tokenizer.json"]);
        ShardWriter.Prepare(tok, dir["tokenizer.json"], [dir["corpus.txt"]], dir["data"], new PrepareOptions { ShardTokens = shardTokens, ValFraction = 0.2 });
        return (dir["data"], tok);
    }

    public static TrainConfig MicroConfig(string dataDir) => new()
    {
        Model = MicroModel, Data = dataDir, Steps = 6, Batch = 3, GradAccum = 2, Warmup = 2, EvalInterval = 3, EvalIters = 2,
        CheckpointInterval = 2, Seed = 7,
    };

    /// <summary>All token ids of a split's shards, in manifest order.</summary>
    public static List<int> ReadSplit(string dataDir, string split)
    {
        var m = ShardManifest.Load(dataDir);
        var ids = new List<int>();
        foreach (var s in m.Shards.Where(s => s.Split == split))
        {
            var b = File.ReadAllBytes(System.IO.Path.Combine(dataDir, s.File));
            for (int i = 0; i < b.Length; i += 2) ids.Add(b[i] | b[i + 1] << 8);
        }
        return ids;
    }
}
