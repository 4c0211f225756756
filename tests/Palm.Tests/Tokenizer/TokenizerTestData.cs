// Owns shared inputs for the tokenizer tests: a small deterministic training corpus, a trained
// tokenizer built once, and a seeded generator of adversarial strings (seed printed on failure).
using System.Text;
using Palm.Inference.Tokenizer;

namespace Palm.Tests.Tokenizer;

internal static class TokenizerTestData
{
    /// <summary>Base seed; override with PALM_TEST_SEED to replay a failure.</summary>
    public static int Seed { get; } =
        int.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out int s) ? s : 20250611;

    private static readonly Lazy<string> s_corpus = new(BuildCorpus);
    private static readonly Lazy<BpeTokenizer> s_trained = new(() => BpeTrainer.Train(Corpus, 256 + 600 + 4));

    public static string Corpus => s_corpus.Value;

    /// <summary>Trained on <see cref="Corpus"/> with 600 merges.</summary>
    public static BpeTokenizer Trained => s_trained.Value;

    private static readonly string[] s_words =
    [
        "the", "model", "token", "palm", "learns", "from", "text", "and", "writes", "it", "back", "quickly",
        "a", "small", "language", "with", "merges", "of", "bytes", "into", "longer", "pieces", "that", "compress",
        "we'll", "it's", "they're", "don't", "Hello", "World", "training", "encoder", "decoder", "vocabulary",
    ];

    private static readonly string[] s_syllables =
    [
        "ka", "lo", "mir", "ten", "sa", "vu", "dre", "po", "lin", "gor", "es", "tha", "qui", "bel", "on", "ar",
        "zu", "fen", "ri", "mol", "cha", "ny", "sto", "wex", "ul", "pra", "di", "nov", "je", "ha",
    ];

    private static string BuildCorpus()
    {
        var rng = new Random(12345);
        var sb = new StringBuilder();
        for (int line = 0; line < 1500; line++)
        {
            int n = rng.Next(4, 14);
            for (int i = 0; i < n; i++)
            {
                if (i > 0) sb.Append(' ');
                if (rng.Next(3) > 0) { sb.Append(s_words[rng.Next(s_words.Length)]); continue; }
                // Pseudo-words give the trainer enough distinct pairs for a few hundred merges.
                for (int k = rng.Next(1, 4); k > 0; k--) sb.Append(s_syllables[rng.Next(s_syllables.Length)]);
            }
            sb.Append(rng.Next(5) switch { 0 => ", 2024 and 31415.", 1 => "!", 2 => " — café, naïve, 東京。", _ => "." });
            sb.Append(rng.Next(4) == 0 ? "\n\n" : "\n");
            if (line % 50 == 0) sb.Append("    for (int i = 0; i < n; i++) { sum += x[i]; }\n");
        }
        return sb.ToString();
    }

    private static readonly string[] s_pieces =
    [
        "hello", " world", "The", " quick", "'s", "'LL", "12345", "3.14159", "0", " ", "  ", "\t", "\n", "\r\n",
        "\n\n\n", "   \n ", "\u00a0", "\u3000", "!", "?!", "...", "()", "{}", "==", "--", "#", "@", "\"", "'",
        "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "𝐀𝐁", "日本語", "中文字符", "한국어", "Привет", "مرحبا", "नमस्ते", "ไทย",
        "e\u0301", "a\u0308\u0304", "\u0301", "\u200d", "\u200b", "\ufeff", "\ufffd", "\uffff", "\u0000", "\u0001",
        "\u001b[0m", "\u007f", "\u0085", "\u2028", "<|eot|>", "<|sot|>", "<|", "|>", "<|pad", "ﬁ", "Ǆ", "ß", "İ",
    ];

    /// <summary>A random well-formed string mixing scripts, emoji, marks, controls, whitespace and numbers.</summary>
    public static string RandomText(Random rng, int maxPieces = 24)
    {
        var sb = new StringBuilder();
        int n = rng.Next(0, maxPieces + 1);
        for (int i = 0; i < n; i++)
        {
            switch (rng.Next(10))
            {
                case 0: // a random BMP scalar (not a surrogate)
                    int c;
                    do c = rng.Next(0, 0x10000); while (c is >= 0xD800 and <= 0xDFFF);
                    sb.Append((char)c);
                    break;
                case 1: // a random supplementary-plane scalar
                    sb.Append(char.ConvertFromUtf32(rng.Next(0x10000, 0x110000)));
                    break;
                case 2: // a whitespace run
                    sb.Append(' ', rng.Next(1, 9));
                    if (rng.Next(2) == 0) sb.Append('\n', rng.Next(1, 4));
                    break;
                case 3:
                    sb.Append(rng.Next(0, 1_000_000_000));
                    break;
                default:
                    sb.Append(s_pieces[rng.Next(s_pieces.Length)]);
                    break;
            }
        }
        return sb.ToString();
    }

    /// <summary>The rule for ill-formed UTF-16: each unpaired surrogate becomes U+FFFD, all else is kept.</summary>
    public static string ReplaceLoneSurrogates(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { sb.Append(c).Append(s[++i]); }
            else if (char.IsSurrogate(c)) sb.Append('\uFFFD');
            else sb.Append(c);
        }
        return sb.ToString();
    }

    public static string Show(string s) =>
        string.Concat(s.Select(ch => ch is >= ' ' and <= '~' ? ch.ToString() : $"\\u{(int)ch:X4}"));
}
