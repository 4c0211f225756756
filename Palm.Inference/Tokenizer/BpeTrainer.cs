// Owns BPE training: counting split chunks in text, files or folders, then learning merges with
// incremental pair counts so each merge only revisits the chunks that contain the merged pair.
using System.Runtime.InteropServices;
using System.Text;

namespace Palm.Inference.Tokenizer;

/// <summary>A training progress report.</summary>
/// <param name="Stage">"reading" (Done/Total count files), "merging" (Done/Total count merges) or "done".</param>
/// <param name="Done">Units finished in this stage.</param>
/// <param name="Total">Units in this stage.</param>
/// <param name="Detail">The current file while reading; otherwise null.</param>
public readonly record struct BpeTrainingProgress(string Stage, int Done, int Total, string? Detail = null);

/// <summary>
/// Trains byte-level BPE merges compatible with <see cref="BpeTokenizer"/>.
/// </summary>
/// <remarks>
/// Text is split with <see cref="SplitPattern"/> and unique chunks are counted once with their frequency. Pair
/// counts are kept incrementally together with, per pair, the set of chunks containing it, and the best pair comes
/// from a lazy max-heap (stale entries are skipped on pop). Ties are broken by the lowest left id, then the lowest
/// right id, so training is deterministic and independent of file and chunk order. Training stops early when no
/// pair is left, giving a smaller vocabulary than requested.
/// </remarks>
public sealed class BpeTrainer
{
    private readonly Dictionary<string, long> _chunkCounts = new(StringComparer.Ordinal);
    private long _bytesSeen;

    /// <summary>Total UTF-8 bytes of text added so far (text only, not files skipped).</summary>
    public long BytesSeen => _bytesSeen;

    /// <summary>Number of distinct chunks counted so far.</summary>
    public int DistinctChunks => _chunkCounts.Count;

    /// <summary>Counts the chunks of <paramref name="text"/>.</summary>
    public void AddText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        _bytesSeen += Encoding.UTF8.GetByteCount(text);
        var lookup = _chunkCounts.GetAlternateLookup<ReadOnlySpan<char>>();
        var span = text.AsSpan();
        foreach (var m in SplitPattern.Gpt4Regex().EnumerateMatches(span))
        {
            // The span lookup avoids allocating a string for chunks already seen (the vast majority).
            CollectionsMarshal.GetValueRefOrAddDefault(lookup, span.Slice(m.Index, m.Length), out _)++;
        }
    }

    /// <summary>
    /// Counts UTF-8 text files; a folder is read recursively in ordinal path order. Files that contain a NUL
    /// character are taken to be binary and skipped. Each file is read whole, so it must fit in memory.
    /// </summary>
    /// <returns>The number of files read.</returns>
    public int AddPaths(IEnumerable<string> paths, IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var files = new List<string>();
        foreach (var p in paths)
        {
            if (Directory.Exists(p))
            {
                var found = Directory.GetFiles(p, "*", SearchOption.AllDirectories);
                Array.Sort(found, StringComparer.Ordinal);
                files.AddRange(found);
            }
            else if (File.Exists(p)) files.Add(p);
            else throw new FileNotFoundException($"Training path '{p}' is neither a file nor a folder.", p);
        }
        int read = 0;
        for (int i = 0; i < files.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report(new BpeTrainingProgress("reading", i, files.Count, files[i]));
            var text = File.ReadAllText(files[i], Encoding.UTF8);
            if (text.Contains('\0')) continue;
            AddText(text);
            read++;
        }
        progress?.Report(new BpeTrainingProgress("reading", files.Count, files.Count));
        return read;
    }

    /// <summary>Trains on one text (convenience for tests and small corpora).</summary>
    public static BpeTokenizer Train(string text, int vocabSize, IReadOnlyList<string>? specialTokens = null)
    {
        var t = new BpeTrainer();
        t.AddText(text);
        return t.Train(vocabSize, specialTokens);
    }

    /// <summary>Trains on files and/or folders (see <see cref="AddPaths"/>).</summary>
    public static BpeTokenizer TrainOnPaths(IEnumerable<string> paths, int vocabSize, IReadOnlyList<string>? specialTokens = null,
        IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var t = new BpeTrainer();
        t.AddPaths(paths, progress, cancellationToken);
        return t.Train(vocabSize, specialTokens, progress, cancellationToken);
    }

    /// <summary>
    /// Learns merges from the counted chunks until the vocabulary (256 bytes + merges + special tokens) reaches
    /// <paramref name="vocabSize"/>, or no pair is left.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The vocabulary cannot even hold the bytes and special tokens.</exception>
    public BpeTokenizer Train(int vocabSize, IReadOnlyList<string>? specialTokens = null,
        IProgress<BpeTrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var specials = specialTokens ?? BpeTokenizer.DefaultSpecialTokens;
        int numMerges = vocabSize - 256 - specials.Count;
        if (numMerges < 0)
            throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize,
                $"The vocabulary must hold 256 byte tokens and {specials.Count} special tokens.");
        var merges = LearnMerges(numMerges, progress, cancellationToken);
        progress?.Report(new BpeTrainingProgress("done", merges.Count, numMerges));
        return BpeTokenizer.FromMerges(merges, specials);
    }

    // A chunk as a mutable token sequence with its corpus frequency.
    private sealed class Word(int[] tokens, long freq)
    {
        public int[] Tokens = tokens;
        public int Length = tokens.Length;
        public readonly long Freq = freq;
    }

    private sealed class HeapOrder : IComparer<(long Count, long Key)>
    {
        public static readonly HeapOrder Instance = new();
        // Min-heap order: higher count first, then lower pair key (lower left id, then lower right id).
        public int Compare((long Count, long Key) x, (long Count, long Key) y) =>
            x.Count != y.Count ? y.Count.CompareTo(x.Count) : x.Key.CompareTo(y.Key);
    }

    private List<(int, int)> LearnMerges(int numMerges, IProgress<BpeTrainingProgress>? progress, CancellationToken ct)
    {
        var words = new Word[_chunkCounts.Count];
        int wi = 0;
        foreach (var (chunk, freq) in _chunkCounts)
        {
            var bytes = Encoding.UTF8.GetBytes(chunk);
            var toks = new int[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) toks[i] = bytes[i];
            words[wi++] = new Word(toks, freq);
        }

        var counts = new Dictionary<long, long>();
        var where = new Dictionary<long, HashSet<int>>();
        for (int w = 0; w < words.Length; w++)
        {
            var t = words[w].Tokens;
            for (int i = 0; i + 1 < t.Length; i++)
            {
                long key = BpeTokenizer.PairKey(t[i], t[i + 1]);
                CollectionsMarshal.GetValueRefOrAddDefault(counts, key, out _) += words[w].Freq;
                ref var set = ref CollectionsMarshal.GetValueRefOrAddDefault(where, key, out _);
                (set ??= []).Add(w);
            }
        }
        var heap = new PriorityQueue<long, (long, long)>(HeapOrder.Instance);
        foreach (var (key, c) in counts) heap.Enqueue(key, (c, key));

        var merges = new List<(int, int)>(numMerges);
        var delta = new Dictionary<long, long>();
        int[] scratch = new int[16];
        while (merges.Count < numMerges && heap.TryDequeue(out long best, out var pri))
        {
            // Lazy heap: every count change enqueues a fresh entry, so an entry whose count is not current is stale.
            if (!counts.TryGetValue(best, out long current) || current != pri.Item1 || current <= 0) continue;
            ct.ThrowIfCancellationRequested();

            int left = (int)(best >> 32), right = (int)(uint)best, newId = 256 + merges.Count;
            merges.Add((left, right));
            var affected = where[best].ToArray();
            where.Remove(best);
            delta.Clear();
            foreach (int w in affected)
            {
                var word = words[w];
                var t = word.Tokens;
                int n = word.Length;
                if (scratch.Length < n) scratch = new int[n * 2];
                int m = 0;
                for (int i = 0; i < n; i++)
                {
                    if (i + 1 < n && t[i] == left && t[i + 1] == right) { scratch[m++] = newId; i++; }
                    else scratch[m++] = t[i];
                }
                if (m == n)
                {
                    continue; // stale membership: the pair was merged away from this chunk earlier
                }
                for (int i = 0; i + 1 < n; i++)
                    CollectionsMarshal.GetValueRefOrAddDefault(delta, BpeTokenizer.PairKey(t[i], t[i + 1]), out _) -= word.Freq;
                for (int i = 0; i + 1 < m; i++)
                {
                    long key = BpeTokenizer.PairKey(scratch[i], scratch[i + 1]);
                    CollectionsMarshal.GetValueRefOrAddDefault(delta, key, out _) += word.Freq;
                    // Sets are only added to; chunks that lost a pair are skipped above when it comes up.
                    ref var set = ref CollectionsMarshal.GetValueRefOrAddDefault(where, key, out _);
                    (set ??= []).Add(w);
                }
                Array.Copy(scratch, t, m);
                word.Length = m;
            }
            foreach (var (key, d) in delta)
            {
                if (d == 0) continue;
                ref long c = ref CollectionsMarshal.GetValueRefOrAddDefault(counts, key, out _);
                c += d;
                if (c > 0) heap.Enqueue(key, (c, key));
                else counts.Remove(key);
            }
            if (progress != null && (merges.Count % 256 == 0 || merges.Count == numMerges))
                progress.Report(new BpeTrainingProgress("merging", merges.Count, numMerges));
        }
        return merges;
    }
}
