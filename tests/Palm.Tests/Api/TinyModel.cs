// A tiny random Palm model with a BPE tokenizer trained on a few lines of text, saved to a temp
// .palm file once per test run: the fixture of every API test. Its weights come from a fresh
// seed (printed in failures through Describe), PALM_TEST_SEED replays one.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Tokenizer;

namespace Palm.Tests.Api;

internal sealed class TinyModel
{
    private static readonly Lazy<TinyModel> s_shared = new(() => new TinyModel(TestSeed.Next()));

    public static TinyModel Shared => s_shared.Value;

    public const string Corpus =
        "In the beginning the model read a little text, and the text was short.\n" +
        "The tokens were few; the merges were fewer. And the model said: let there be words.\n" +
        "Then it wrote them back, one piece at a time, quickly and without a cache.\n";

    public TinyModel(ulong seed, int dFfn = 16)
    {
        Seed = seed;
        Tokenizer = BpeTrainer.Train(Corpus, 256 + 40 + 4);
        var config = new PalmConfig
        {
            VocabSize = Tokenizer.VocabSize, BlockSize = 64, NEmbd = 32, NHead = 2, DQkv = 32, DRank = 8,
            NLayer = 2, NRecur = 2, DFfn = dFfn, Share = ShareMode.Cycle, Mix = AodMix.Mean,
        };
        Parameters = new PalmParameters(config);
        Parameters.InitTraining(new Rng(seed));
        // Scale the unembedding so the logits are peaked enough for greedy/top-k to matter.
        foreach (var t in Parameters.All.Where(t => t.Name.StartsWith("unembed.", StringComparison.Ordinal)))
            for (int i = 0; i < t.Length; i++) t.Data[i] *= 4;
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"palm-api-tests-{Environment.ProcessId}-{seed:x}-{dFfn}.palm");
        PalmCheckpoint.FromParameters(Parameters, Tokenizer.ToBlob()).Save(Path);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { File.Delete(Path); } catch (IOException) { } };
    }

    public ulong Seed { get; }
    public BpeTokenizer Tokenizer { get; }
    public PalmParameters Parameters { get; }
    public string Path { get; }

    public string Describe => $"(tiny model seed {Seed}; replay with PALM_TEST_SEED={Seed})";

    public Palm.Inference.PalmModel Load(Palm.Inference.Backend backend = Palm.Inference.Backend.Cpu) =>
        Palm.Inference.PalmModel.Load(Path, new Palm.Inference.ModelOptions { Backend = backend });

    /// <summary>Bans the non-ASCII byte tokens and end-of-text: every piece is plain ASCII (text compares
    /// across calls) and a generation runs to its token limit, whatever the random weights prefer.</summary>
    public IReadOnlyDictionary<int, float> AsciiOnly => _asciiOnly ??=
        Enumerable.Range(128, 128).Append(Tokenizer.EotId).ToDictionary(i => i, _ => float.NegativeInfinity);

    private IReadOnlyDictionary<int, float>? _asciiOnly;
}
