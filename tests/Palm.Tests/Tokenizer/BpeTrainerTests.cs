// Owns the tests of BpeTrainer: determinism, compression, agreement with a naive trainer,
// folder input with progress, and early stop when pairs run out.
using System.Text;
using Palm.Inference.Tokenizer;
using static Palm.Tests.Tokenizer.TokenizerTestData;

namespace Palm.Tests.Tokenizer;

public class BpeTrainerTests
{
    [Fact]
    public void TrainingIsDeterministic()
    {
        var a = BpeTrainer.Train(Corpus, 256 + 300 + 4);
        var b = BpeTrainer.Train(Corpus, 256 + 300 + 4);
        Assert.Equal(a.Merges, b.Merges);
        // Chunk order must not matter either: train on the lines in reverse order.
        var t = new BpeTrainer();
        foreach (var line in Corpus.Split('\n').Reverse()) t.AddText(line + "\n");
        var forward = new BpeTrainer();
        foreach (var line in Corpus.Split('\n')) forward.AddText(line + "\n");
        Assert.Equal(forward.Train(560).Merges, t.Train(560).Merges);
    }

    [Fact]
    public void TrainedTokenizerCompressesItsTrainingText()
    {
        var t = Trained;
        int bytes = Encoding.UTF8.GetByteCount(Corpus);
        var ids = t.Encode(Corpus);
        Assert.True(ids.Length * 2 < bytes, $"{ids.Length} tokens for {bytes} bytes");
        Assert.Equal(Corpus, t.Decode(ids));
    }

    [Fact]
    public void MatchesNaiveTrainer()
    {
        // A from-scratch O(merges * text) trainer with the same tie rule (highest count, then lowest pair).
        string text = Corpus[..4000];
        var words = SplitPattern.Gpt4Regex().Matches(text)
            .Select(m => Encoding.UTF8.GetBytes(m.Value).Select(b => (int)b).ToList()).ToList();
        var expected = new List<(int, int)>();
        for (int k = 0; k < 120; k++)
        {
            var counts = new Dictionary<(int, int), int>();
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++)
                    counts[(w[i], w[i + 1])] = counts.GetValueOrDefault((w[i], w[i + 1])) + 1;
            if (counts.Count == 0) break;
            var best = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key.Item1).ThenBy(kv => kv.Key.Item2).First().Key;
            expected.Add(best);
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++)
                    if (w[i] == best.Item1 && w[i + 1] == best.Item2) { w[i] = 256 + k; w.RemoveAt(i + 1); }
        }
        var actual = BpeTrainer.Train(text, 256 + expected.Count + 4).Merges;
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void OverlappingRunsCountCorrectly()
    {
        // "aaaaa" style runs exercise pairs that survive their own merge inside one chunk.
        var t = BpeTrainer.Train("aaaaa aaaaaaa bbbb aaa", 256 + 10 + 4);
        foreach (var s in new[] { "aaaaa", "aaaaaaaaaaaaaaaaaaa", " aaa", "aaaa bbbb" })
            Assert.Equal(s, t.Decode(t.Encode(s)));
        Assert.Equal(97, t.Merges[0].Left);
    }

    [Fact]
    public void StopsWhenNoPairsRemain()
    {
        var t = BpeTrainer.Train("ab ab", 1000);
        Assert.Equal(2, t.Merges.Count); // (a,b) then (' ', ab)
        Assert.Equal(256 + 2 + 4, t.VocabSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => BpeTrainer.Train("ab", 259));
    }

    [Fact]
    public void TrainsOnFolderRecursively()
    {
        string dir = Path.Combine(Path.GetTempPath(), "palm-tok-" + Guid.NewGuid().ToString("N"));
        try
        {
            var lines = Corpus.Split('\n');
            Directory.CreateDirectory(Path.Combine(dir, "sub", "deeper"));
            string[] files = [Path.Combine(dir, "a.txt"), Path.Combine(dir, "sub", "b.md"), Path.Combine(dir, "sub", "deeper", "c")];
            for (int i = 0; i < files.Length; i++)
                File.WriteAllText(files[i], string.Join('\n', lines.Where((_, j) => j % 3 == i)), new UTF8Encoding(false));
            File.WriteAllBytes(Path.Combine(dir, "sub", "blob.bin"), [1, 0, 2, 0, 0xFF]);

            var reports = new List<BpeTrainingProgress>();
            var progress = new SyncProgress(reports.Add);
            var fromFolder = BpeTrainer.TrainOnPaths([dir], 256 + 200 + 4, progress: progress);

            var manual = new BpeTrainer();
            foreach (var f in files) manual.AddText(File.ReadAllText(f));
            Assert.Equal(manual.Train(256 + 200 + 4).Merges, fromFolder.Merges);
            Assert.Contains(reports, r => r.Stage == "reading" && r.Detail != null && r.Detail.EndsWith("b.md"));
            Assert.Contains(reports, r => r.Stage == "merging");
            Assert.Equal("done", reports[^1].Stage);

            var counter = new BpeTrainer();
            Assert.Equal(3, counter.AddPaths([dir])); // the binary file is skipped
            Assert.Throws<FileNotFoundException>(() => counter.AddPaths([Path.Combine(dir, "missing")]));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // Progress<T> posts to the thread pool; tests need the reports synchronously.
    private sealed class SyncProgress(Action<BpeTrainingProgress> report) : IProgress<BpeTrainingProgress>
    {
        public void Report(BpeTrainingProgress value) => report(value);
    }
}
