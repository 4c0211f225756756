// `prepare`: encode text files into shards of raw little-endian uint16 token ids, streaming the
// input chunk by chunk (TextChunks) and writing each shard as it fills, so a corpus larger than
// memory works. The last val_fraction of the input bytes goes to the val split, as in nanoGPT.
using System.Buffers.Binary;
using System.Text;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Data;

/// <summary>Settings of <see cref="ShardWriter.Prepare"/>.</summary>
public sealed record PrepareOptions
{
    /// <summary>Tokens per shard file (the last shard of a split may hold fewer).</summary>
    public long ShardTokens { get; init; } = 1 << 24;
    /// <summary>Fraction of the input bytes (the tail) that goes to the val split.</summary>
    public double ValFraction { get; init; } = 0.1;
    /// <summary>Append the end-of-text token after each input file (a document boundary).</summary>
    public bool EotBetweenFiles { get; init; } = true;
    /// <summary>Characters per encoded chunk (memory bound); tests make it tiny to exercise chunk boundaries.</summary>
    public int ChunkChars { get; init; } = TextChunks.TargetChars;
}

/// <summary>Writes the shards and manifest of a prepared token folder.</summary>
public static class ShardWriter
{
    /// <summary>Token ids are stored as uint16.</summary>
    public const int MaxVocab = 65536;

    /// <exception cref="UserError">Vocabulary too large for uint16, bad options or missing input.</exception>
    public static void CheckVocab(int vocabSize)
    {
        if (vocabSize > MaxVocab)
            throw new UserError($"vocab_size {vocabSize} does not fit uint16 shards (at most {MaxVocab} tokens); train a smaller tokenizer");
    }

    public static ShardManifest Prepare(BpeTokenizer tokenizer, string tokenizerPath, IReadOnlyList<string> inputs, string outDir,
        PrepareOptions options, Action<string>? log = null)
    {
        CheckVocab(tokenizer.VocabSize);
        if (options.ValFraction is < 0 or >= 1) throw new UserError($"val fraction must be in [0, 1), got {options.ValFraction}");
        if (options.ShardTokens <= 0) throw new UserError($"shard tokens must be > 0, got {options.ShardTokens}");
        var files = TextChunks.ExpandPaths(inputs);
        long totalBytes = files.Sum(f => new FileInfo(f).Length);
        long valStart = (long)Math.Ceiling(totalBytes * (1 - options.ValFraction));

        Directory.CreateDirectory(outDir);
        // A stale manifest or shards from an earlier prepare must not mix with this one.
        File.Delete(Path.Combine(outDir, ShardManifest.FileName));
        foreach (var old in Directory.EnumerateFiles(outDir, "*.bin").Where(f => Path.GetFileName(f).StartsWith("train_") || Path.GetFileName(f).StartsWith("val_")).ToList())
            File.Delete(old);

        string tokName = "tokenizer.json";
        string tokDest = Path.Combine(outDir, tokName);
        if (!string.Equals(Path.GetFullPath(tokenizerPath), Path.GetFullPath(tokDest), StringComparison.Ordinal))
            TokenizerFile.Save(tokenizer, tokDest);

        var shards = new List<ShardInfo>();
        using var train = new SplitWriter(outDir, "train", options.ShardTokens, shards);
        using var val = new SplitWriter(outDir, "val", options.ShardTokens, shards);
        long bytesDone = 0, nextReport = 64L << 20;
        foreach (var f in files)
        {
            foreach (var chunk in TextChunks.Read(f, options.ChunkChars))
            {
                int chunkBytes = Encoding.UTF8.GetByteCount(chunk);
                // The chunk that holds the split point is cut there too (at the next safe cut), so
                // the val split is the input's tail to within a line, not to within a chunk.
                int cut = bytesDone < valStart && valStart < bytesDone + chunkBytes
                    ? TextChunks.SafeCutAtOrAfter(chunk, (int)((double)(valStart - bytesDone) / chunkBytes * chunk.Length))
                    : 0;
                if (cut > 0)
                {
                    train.Write(tokenizer.Encode(chunk[..cut]));
                    val.Write(tokenizer.Encode(chunk[cut..]));
                }
                else (bytesDone >= valStart ? val : train).Write(tokenizer.Encode(chunk));
                bytesDone += chunkBytes;
                if (bytesDone >= nextReport) { log?.Invoke($"prepare   {bytesDone / 1048576.0:F0} / {totalBytes / 1048576.0:F0} MiB"); nextReport += 64L << 20; }
            }
            if (options.EotBetweenFiles) (bytesDone >= valStart ? val : train).Write([tokenizer.EotId]);
        }
        train.Dispose();
        val.Dispose();

        var manifest = new ShardManifest
        {
            VocabSize = tokenizer.VocabSize,
            Tokenizer = tokName,
            ValFraction = options.ValFraction,
            Sources = files,
            SourceBytes = totalBytes,
            TrainTokens = train.Total,
            ValTokens = val.Total,
            Shards = shards,
        };
        manifest.Save(outDir);
        return manifest;
    }

    // Fills shard files of one split in turn; a shard is registered when it is closed.
    private sealed class SplitWriter(string dir, string split, long shardTokens, List<ShardInfo> shards) : IDisposable
    {
        private FileStream? _file;
        private string _name = "";
        private long _inShard;
        private readonly byte[] _buf = new byte[2 * 8192];
        public long Total { get; private set; }

        public void Write(ReadOnlySpan<int> ids)
        {
            while (!ids.IsEmpty)
            {
                if (_file is null)
                {
                    _name = $"{split}_{shards.Count(s => s.Split == split):D4}.bin";
                    _file = new FileStream(Path.Combine(dir, _name), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
                    _inShard = 0;
                }
                int n = (int)Math.Min(Math.Min(ids.Length, shardTokens - _inShard), _buf.Length / 2);
                for (int i = 0; i < n; i++) BinaryPrimitives.WriteUInt16LittleEndian(_buf.AsSpan(2 * i), checked((ushort)ids[i]));
                _file.Write(_buf, 0, 2 * n);
                _inShard += n; Total += n;
                ids = ids[n..];
                if (_inShard == shardTokens) Close();
            }
        }

        private void Close()
        {
            if (_file is null) return;
            _file.Dispose();
            _file = null;
            shards.Add(new ShardInfo(_name, split, _inShard));
        }

        public void Dispose() => Close();
    }
}
