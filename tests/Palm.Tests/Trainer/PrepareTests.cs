// prepare → shards: ids preserved exactly across chunk and shard boundaries, split sizes and the
// manifest; corrupt or inconsistent shards are errors naming the file.
using System.Text;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Commands;
using Palm.Trainer.Data;

namespace Palm.Tests.Trainer;

public class PrepareTests
{
    [Fact]
    public void ChunkedReading_ReassemblesTheText_AndEncodesLikeTheWholeFile()
    {
        ulong seed = TestSeed.Next();
        var rnd = new Random((int)seed);
        using var dir = new TempDir();
        string text = TrainerTestData.RandomText(rnd, 400);
        File.WriteAllText(dir["a.txt"], text);
        var tok = BpeTrainer.Train(text, 320);
        foreach (int target in new[] { 1, 7, 64, 1000 })
        {
            var chunks = TextChunks.Read(dir["a.txt"], target).ToList();
            Assert.True(string.Concat(chunks) == text, $"seed {seed}: chunks of {target} do not reassemble the text");
            var ids = chunks.SelectMany(c => tok.Encode(c)).ToArray();
            var whole = tok.Encode(text);
            int first = Enumerable.Range(0, Math.Min(ids.Length, whole.Length)).FirstOrDefault(i => ids[i] != whole[i], -1);
            Assert.True(ids.SequenceEqual(whole), $"seed {seed}, target {target}: {ids.Length} vs {whole.Length} ids, first mismatch at {first}");
        }
    }

    [Fact]
    public void Prepare_RoundTripsIds_SplitsTail_AndWritesManifest()
    {
        ulong seed = TestSeed.Next();
        var rnd = new Random((int)seed);
        using var dir = new TempDir();
        Directory.CreateDirectory(dir["in"]);
        string t1 = TrainerTestData.RandomText(rnd, 300), t2 = TrainerTestData.RandomText(rnd, 200);
        File.WriteAllText(System.IO.Path.Combine(dir["in"], "1.txt"), t1, new UTF8Encoding(false));
        File.WriteAllText(System.IO.Path.Combine(dir["in"], "2.txt"), t2, new UTF8Encoding(false));
        var tok = BpeTrainer.Train(t1 + t2, 300);
        TokenizerFile.Save(tok, dir["tok.json"]);
        const int ShardTokens = 97;   // prime, so shards end mid-chunk
        var m = ShardWriter.Prepare(TokenizerFile.Load(dir["tok.json"]), dir["tok.json"], [dir["in"]], dir["out"],
            new PrepareOptions { ShardTokens = ShardTokens, ValFraction = 0.25, ChunkChars = 50 });

        var expected = tok.Encode(t1).Append(tok.EotId).Concat(tok.Encode(t2)).Append(tok.EotId).ToList();
        var train = TrainerTestData.ReadSplit(dir["out"], "train");
        var val = TrainerTestData.ReadSplit(dir["out"], "val");
        Assert.True(train.Concat(val).SequenceEqual(expected), $"seed {seed}: train+val ({train.Count}+{val.Count}) differ from the encoded input ({expected.Count})");

        Assert.Equal(tok.VocabSize, m.VocabSize);
        Assert.Equal(train.Count, m.TrainTokens);
        Assert.Equal(val.Count, m.ValTokens);
        Assert.Equal(2, m.Sources.Count);
        Assert.Equal(Encoding.UTF8.GetByteCount(t1 + t2), m.SourceBytes);
        double valShare = (double)val.Count / expected.Count;
        Assert.True(valShare is > 0.15 and < 0.35, $"seed {seed}: val holds {valShare:P1} of the tokens, expected about 25%");
        foreach (var split in new[] { "train", "val" })
        {
            var shards = m.Shards.Where(s => s.Split == split).ToList();
            Assert.All(shards.SkipLast(1), s => Assert.Equal(ShardTokens, s.Tokens));
            Assert.All(shards, s => Assert.Equal(2 * s.Tokens, new FileInfo(System.IO.Path.Combine(dir["out"], s.File)).Length));
        }
        // The manifest on disk is what Load returns, and the tokenizer beside it is the same tokenizer.
        Assert.Equal(m.Shards, ShardManifest.Load(dir["out"]).Shards);
        Assert.Equal(tok.Encode(t2), TokenizerFile.Load(System.IO.Path.Combine(dir["out"], m.Tokenizer)).Encode(t2));
    }

    [Fact]
    public void Prepare_RejectsVocabularyBeyondUint16()
    {
        ShardWriter.CheckVocab(65536);
        var e = Assert.Throws<UserError>(() => ShardWriter.CheckVocab(65537));
        Assert.Contains("65537", e.Message);
    }

    [Fact]
    public void Prepare_MissingInput_NamesIt()
    {
        using var dir = new TempDir();
        var tok = BpeTrainer.Train("abc abc", 270);
        var e = Assert.Throws<UserError>(() => ShardWriter.Prepare(tok, dir["t.json"], [dir["nope.txt"]], dir["out"], new PrepareOptions()));
        Assert.Contains("nope.txt", e.Message);
    }

    private static (TempDir Dir, string Data) Prepared()
    {
        var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(1), lines: 200, shardTokens: 500);
        return (dir, data);
    }

    [Fact]
    public void CorruptShard_OddLength_NamesTheFile()
    {
        var (dir, data) = Prepared();
        using var owner = dir;
        string shard = System.IO.Path.Combine(data, "val_0000.bin");
        File.WriteAllBytes(shard, [.. File.ReadAllBytes(shard), 0]);
        var e = Assert.Throws<UserError>(() => TokenShard.Open(shard, 300));
        Assert.Contains("val_0000.bin", e.Message);
        Assert.Contains("odd", e.Message);
    }

    [Fact]
    public void CorruptShard_IdBeyondVocab_NamesFileIdAndIndex()
    {
        var (dir, data) = Prepared();
        using var owner = dir;
        string shard = System.IO.Path.Combine(data, "train_0000.bin");
        var bytes = File.ReadAllBytes(shard);
        bytes[2 * 17] = 0x2C; bytes[2 * 17 + 1] = 0x01;   // id 300 at index 17
        File.WriteAllBytes(shard, bytes);
        var e = Assert.Throws<UserError>(() => TokenSplit.OpenPrepared(data, "train", out _));
        Assert.Contains("train_0000.bin", e.Message);
        Assert.Contains("token id 300 at index 17", e.Message);
    }

    [Fact]
    public void CorruptShard_CountDiffersFromManifest_NamesTheFile()
    {
        var (dir, data) = Prepared();
        using var owner = dir;
        string shard = System.IO.Path.Combine(data, "train_0000.bin");
        File.WriteAllBytes(shard, File.ReadAllBytes(shard)[..^4]);
        var e = Assert.Throws<UserError>(() => TokenSplit.OpenPrepared(data, "train", out _));
        Assert.Contains("train_0000.bin", e.Message);
        Assert.Contains("manifest says 500", e.Message);
    }

    [Theory]
    [InlineData(null, "no manifest.json")]
    [InlineData("""{ "format": "palm-shards", "version": 1, "vocab_size": 300, "extra": 1 }""", "extra")]
    [InlineData("""{ "format": "palm-shards", "version": 2, "vocab_size": 300 }""", "version 2")]
    [InlineData("""{ "format": "palm-shards", "version": 1, "vocab_size": 70000 }""", "vocab_size")]
    [InlineData("""{ "format": "palm-shards", "version": 1, "vocab_size": 300, "shards": [{"file": "../x.bin", "split": "train", "tokens": 1}] }""", "../x.bin")]
    public void BadManifest_IsAnErrorNamingTheFile(string? manifest, string expected)
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir["data"]);
        if (manifest is not null) File.WriteAllText(dir["data/manifest.json"], manifest);
        var e = Assert.Throws<UserError>(() => ShardManifest.Load(dir["data"]));
        Assert.Contains("data", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TokenizerFile_RoundTrips_AndRejectsBadContent()
    {
        using var dir = new TempDir();
        var tok = BpeTrainer.Train(TrainerTestData.RandomText(new Random(3), 100), 290);
        TokenizerFile.Save(tok, dir["t.json"]);
        var back = TokenizerFile.Load(dir["t.json"]);
        Assert.Equal(tok.Merges, back.Merges);
        Assert.Equal(tok.SpecialTokens, back.SpecialTokens);
        File.WriteAllText(dir["bad.json"], File.ReadAllText(dir["t.json"]).Replace("\"vocab_size\":290", "\"vocab_size\":291"));
        Assert.Contains("vocab_size 291", Assert.Throws<UserError>(() => TokenizerFile.Load(dir["bad.json"])).Message);
        File.WriteAllText(dir["bad.json"], "{ \"format\": \"palm-tokenizer\", \"version\": 1 ");
        Assert.Contains("bad.json", Assert.Throws<UserError>(() => TokenizerFile.Load(dir["bad.json"])).Message);
    }
}
