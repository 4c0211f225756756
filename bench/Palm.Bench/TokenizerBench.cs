// Owns the tokenizer benchmark: trains an 8,192-token BPE vocabulary on ~10 MB of real text and
// measures training time and encode/decode throughput.
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Palm.Inference.Tokenizer;

namespace Palm.Bench;

/// <summary>Tokenizer training and encoding benchmark.</summary>
public static class TokenizerBench
{
    /// <summary>
    /// Usage: <c>[--corpus PATH]... [--mb 10] [--vocab 8192]</c>. PATH is a text file or a folder (read recursively;
    /// <c>.gz</c> files are decompressed). Without <c>--corpus</c> the text comes from <c>/usr/share/doc</c> and
    /// <c>/usr/share/common-licenses</c>; if those hold too little, deterministic pseudo-text fills the rest.
    /// </summary>
    /// <returns>0 on success, 1 if the round-trip check fails, 2 on bad arguments.</returns>
    public static int Run(string[] args)
    {
        var corpusPaths = new List<string>();
        double mb = 10;
        int vocab = 8192;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--corpus" when i + 1 < args.Length: corpusPaths.Add(args[++i]); break;
                case "--mb" when i + 1 < args.Length: mb = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--vocab" when i + 1 < args.Length: vocab = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"tokenizer bench: unknown argument '{args[i]}'. Usage: [--corpus PATH]... [--mb 10] [--vocab 8192]");
                    return 2;
            }
        }
        if (corpusPaths.Count == 0) corpusPaths.AddRange(["/usr/share/doc", "/usr/share/common-licenses"]);

        long target = (long)(mb * 1024 * 1024);
        var sw = Stopwatch.StartNew();
        var (texts, used) = LoadCorpus(corpusPaths, target);
        long bytes = texts.Sum(t => (long)Encoding.UTF8.GetByteCount(t));
        Console.WriteLine($"corpus: {bytes / 1048576.0:F2} MB from {used} ({texts.Count} documents), loaded in {sw.Elapsed.TotalSeconds:F2} s");

        sw.Restart();
        var trainer = new BpeTrainer();
        foreach (var t in texts) trainer.AddText(t);
        double countS = sw.Elapsed.TotalSeconds;
        var tok = trainer.Train(vocab);
        double totalS = sw.Elapsed.TotalSeconds;
        Console.WriteLine($"train: vocab {tok.VocabSize} ({tok.Merges.Count} merges) from {trainer.BytesSeen / 1048576.0:F2} MB, " +
                          $"{trainer.DistinctChunks} distinct chunks: {totalS:F2} s (counting {countS:F2} s, merging {totalS - countS:F2} s)");

        // Encode twice: the first pass fills the chunk cache, the second shows steady-state speed.
        foreach (string pass in new[] { "cold", "warm" })
        {
            sw.Restart();
            long tokens = 0;
            foreach (var t in texts) tokens += tok.Encode(t).Length;
            double s = sw.Elapsed.TotalSeconds;
            Console.WriteLine($"encode ({pass}): {tokens} tokens, {bytes / (double)tokens:F2} bytes/token, {bytes / 1048576.0 / s:F1} MB/s");
        }

        sw.Restart();
        bool ok = true;
        long decodedChars = 0;
        foreach (var t in texts)
        {
            string back = tok.Decode(tok.Encode(t));
            decodedChars += back.Length;
            // Lone surrogates cannot occur: the corpus was decoded from UTF-8.
            ok &= back == t;
        }
        Console.WriteLine($"round-trip (encode+decode): {(ok ? "ok" : "MISMATCH")}, {bytes / 1048576.0 / sw.Elapsed.TotalSeconds:F1} MB/s");
        return ok ? 0 : 1;
    }

    private static (List<string> Texts, string Used) LoadCorpus(List<string> paths, long target)
    {
        var texts = new List<string>();
        long have = 0;
        var used = new List<string>();
        foreach (var p in paths)
        {
            if (have >= target) break;
            string[] files = Directory.Exists(p) ? Directory.GetFiles(p, "*", SearchOption.AllDirectories) : File.Exists(p) ? [p] : [];
            Array.Sort(files, StringComparer.Ordinal);
            int n = 0;
            foreach (var f in files)
            {
                if (have >= target) break;
                string? text = TryReadText(f);
                if (string.IsNullOrEmpty(text)) continue;
                long b = Encoding.UTF8.GetByteCount(text);
                if (have + b > target)
                {
                    // Trim the last document so the corpus is exactly the requested size (give or take a character).
                    text = text[..(int)Math.Min(text.Length, target - have)];
                    b = Encoding.UTF8.GetByteCount(text);
                }
                texts.Add(text);
                have += b;
                n++;
            }
            if (n > 0) used.Add($"{p} ({n} files)");
        }
        if (have < target)
        {
            var pseudo = PseudoText(target - have);
            texts.Add(pseudo);
            used.Add($"deterministic pseudo-text ({(target - have) / 1048576.0:F2} MB)");
        }
        return (texts, string.Join(", ", used));
    }

    private static string? TryReadText(string path)
    {
        try
        {
            var info = new FileInfo(path);
            if (info.LinkTarget != null || info.Length == 0 || info.Length > 64 << 20) return null;
            using Stream raw = File.OpenRead(path);
            using Stream s = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(raw, CompressionMode.Decompress) : raw;
            using var reader = new StreamReader(s, new UTF8Encoding(false, throwOnInvalidBytes: true));
            string text = reader.ReadToEnd();
            // Binary files and non-UTF-8 text are not "real text" for this bench.
            return text.Contains('\0') ? null : text;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DecoderFallbackException or InvalidDataException)
        {
            return null;
        }
    }

    private static string PseudoText(long bytes)
    {
        string[] words =
        [
            "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
            "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
            "model", "token", "language", "training", "system", "between", "number", "people", "because", "through",
        ];
        var rng = new Random(1);
        var sb = new StringBuilder((int)bytes);
        while (sb.Length < bytes)
        {
            int n = rng.Next(5, 20);
            for (int i = 0; i < n; i++) sb.Append(i == 0 ? "" : " ").Append(words[(int)(Math.Pow(rng.NextDouble(), 2.5) * words.Length)]);
            sb.Append(rng.Next(8) == 0 ? $", {rng.Next(1000, 2100)}.\n" : ".\n");
        }
        return sb.ToString(0, (int)bytes);
    }
}
