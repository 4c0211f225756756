// Shared builders for the checkpoint tests: random small configs and weights full of awkward float
// bit patterns, and a tiny MessagePack document builder for hand-made (and broken) files.
using System.Buffers;
using MessagePack;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;

namespace Palm.Tests.Checkpoint;

internal static class CheckpointTestData
{
    // Bit patterns that a float round trip through arithmetic would not preserve.
    private static readonly uint[] Awkward =
    [
        0x7FC01234, // quiet NaN with payload
        0xFFA00001, // negative signalling NaN with payload
        0x7F800001, // signalling NaN, smallest payload
        0x80000000, // -0.0
        0x00000001, // smallest denormal
        0x807FFFFF, // largest negative denormal
        0x7F800000, // +inf
        0xFF800000, // -inf
        0x7F7FFFFF, // max finite
    ];

    public static PalmConfig RandomConfig(Random rnd)
    {
        int nHead = rnd.Next(1, 4);
        int headDim = 4 * rnd.Next(1, 3);
        return new PalmConfig
        {
            VocabSize = rnd.Next(3, 40), BlockSize = rnd.Next(1, 64), NEmbd = rnd.Next(1, 12),
            NHead = nHead, DQkv = nHead * headDim, DRank = rnd.Next(0, 2) == 0 ? 0 : rnd.Next(1, 6),
            NLayer = rnd.Next(1, 4), NRecur = rnd.Next(1, 4), DFfn = rnd.Next(0, 2) == 0 ? 0 : rnd.Next(1, 6),
            Share = rnd.Next(2) == 0 ? ShareMode.Cycle : ShareMode.Sequence,
            Mix = rnd.Next(2) == 0 ? AodMix.Sum : AodMix.Mean,
        }.Validated();
    }

    public static void FillAwkward(Random rnd, float[] data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            uint bits = rnd.Next(4) == 0 ? Awkward[rnd.Next(Awkward.Length)] : (uint)rnd.NextInt64(0, 1L << 32);
            data[i] = BitConverter.UInt32BitsToSingle(bits);
        }
        // Make sure every awkward pattern occurs at least once in larger tensors.
        for (int i = 0; i < Math.Min(Awkward.Length, data.Length); i++) data[i] = BitConverter.UInt32BitsToSingle(Awkward[i]);
    }

    public static PalmParameters RandomParameters(Random rnd, PalmConfig config)
    {
        var p = new PalmParameters(config);
        foreach (var t in p.All) FillAwkward(rnd, t.Data);
        return p;
    }

    public static TokenizerBlob RandomTokenizer(Random rnd, PalmConfig config) => new(
        @"'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+",
        Enumerable.Range(0, rnd.Next(0, 20)).Select(_ => (rnd.Next(config.VocabSize), rnd.Next(config.VocabSize))).ToList(),
        ["<|endoftext|>", "<|user|>", "é✓"]);

    public static TrainingState RandomTraining(Random rnd, PalmParameters p)
    {
        var opt = new Dictionary<string, IReadOnlyDictionary<string, float[]>>();
        foreach (var t in p.All)
        {
            if (rnd.Next(3) == 0) continue; // some tensors without moments
            var m = new float[t.Length];
            FillAwkward(rnd, m);
            var moments = new Dictionary<string, float[]> { ["m"] = m };
            if (!t.IsMuon)
            {
                var v = new float[t.Length];
                FillAwkward(rnd, v);
                moments["v"] = v;
            }
            opt[t.Name] = moments;
        }
        var loss = new float[rnd.Next(0, 30)];
        FillAwkward(rnd, loss);
        return new TrainingState
        {
            Step = rnd.NextInt64(0, long.MaxValue),
            RngState = new Rng((ulong)rnd.NextInt64()).GetState(),
            DataPosition = rnd.NextInt64(0, long.MaxValue),
            LossHistory = loss,
            Optimizer = opt,
            Extra = new Dictionary<string, double> { ["lr"] = 3e-4, ["beta1"] = 0.9, ["weird"] = double.NaN, ["neg0"] = -0.0 },
        };
    }

    public static PalmCheckpoint RandomCheckpoint(int seed, bool withTraining = true, bool withTokenizer = true)
    {
        var rnd = new Random(seed);
        var config = RandomConfig(rnd);
        var p = RandomParameters(rnd, config);
        return PalmCheckpoint.FromParameters(p,
            withTokenizer ? RandomTokenizer(rnd, config) : null,
            withTraining ? RandomTraining(rnd, p) : null);
    }

    /// <summary>A fixed small checkpoint (a few KiB) with every section present.</summary>
    public static PalmCheckpoint Small()
    {
        var config = new PalmConfig { VocabSize = 10, BlockSize = 8, NEmbd = 4, NHead = 1, DQkv = 4, DRank = 2, NLayer = 1, NRecur = 2, DFfn = 2 }.Validated();
        var rnd = new Random(7);
        var p = RandomParameters(rnd, config);
        return PalmCheckpoint.FromParameters(p, RandomTokenizer(rnd, config), RandomTraining(rnd, p));
    }

    public static byte[] ToBytes(PalmCheckpoint c)
    {
        var ms = new MemoryStream();
        c.Save(ms);
        return ms.ToArray();
    }

    public static void AssertBitsEqual(float[] expected, float[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: length {actual.Length}, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            uint e = BitConverter.SingleToUInt32Bits(expected[i]), a = BitConverter.SingleToUInt32Bits(actual[i]);
            Assert.True(e == a, $"{what}[{i}]: bits 0x{a:X8}, expected 0x{e:X8}");
        }
    }

    public static void AssertSame(PalmCheckpoint expected, PalmCheckpoint actual)
    {
        Assert.Equal(expected.Config, actual.Config);
        Assert.Equal(expected.Tensors.Count, actual.Tensors.Count);
        for (int i = 0; i < expected.Tensors.Count; i++)
        {
            var (e, a) = (expected.Tensors[i], actual.Tensors[i]);
            Assert.Equal(e.Name, a.Name);
            Assert.Equal(e.Shape, a.Shape);
            Assert.Equal(e.Storage, a.Storage);
            if (e.Quantized is { } eq)
            {
                var aq = a.Quantized!;
                Assert.Equal(eq.GroupSize, aq.GroupSize);
                Assert.True(eq.Data.Span.SequenceEqual(aq.Data.Span), $"{e.Name}: quantized data differs");
                Assert.True(eq.Scales.Span.SequenceEqual(aq.Scales.Span), $"{e.Name}: scales differ");
            }
            else AssertBitsEqual(e.Data, a.Data, e.Name);
        }
        if (expected.Tokenizer is null) Assert.Null(actual.Tokenizer);
        else
        {
            Assert.NotNull(actual.Tokenizer);
            Assert.Equal(expected.Tokenizer.Pattern, actual.Tokenizer.Pattern);
            Assert.Equal(expected.Tokenizer.Merges, actual.Tokenizer.Merges);
            Assert.Equal(expected.Tokenizer.SpecialTokens, actual.Tokenizer.SpecialTokens);
        }
        if (expected.Training is null) { Assert.Null(actual.Training); return; }
        var (et, at) = (expected.Training, actual.Training!);
        Assert.NotNull(at);
        Assert.Equal(et.Step, at.Step);
        Assert.Equal(et.RngState, at.RngState);
        Assert.Equal(et.DataPosition, at.DataPosition);
        AssertBitsEqual(et.LossHistory, at.LossHistory, "loss_history");
        Assert.Equal(et.Optimizer.Keys.Order(StringComparer.Ordinal), at.Optimizer.Keys.Order(StringComparer.Ordinal));
        foreach (var (param, moments) in et.Optimizer)
        {
            Assert.Equal(moments.Keys.Order(StringComparer.Ordinal), at.Optimizer[param].Keys.Order(StringComparer.Ordinal));
            foreach (var (m, data) in moments) AssertBitsEqual(data, at.Optimizer[param][m], $"{param}.{m}");
        }
        Assert.Equal(et.Extra.Count, at.Extra.Count);
        foreach (var (k, v) in et.Extra)
            Assert.Equal(BitConverter.DoubleToInt64Bits(v), BitConverter.DoubleToInt64Bits(at.Extra[k]));
    }
}

/// <summary>An ordered MessagePack map that allows duplicate keys, for hand-made documents.</summary>
internal sealed class MsgMap : List<KeyValuePair<object, object?>>
{
    public void Add(object key, object? value) => Add(new KeyValuePair<object, object?>(key, value));

    /// <summary>Replaces the value of the first entry with <paramref name="key"/>.</summary>
    public object? this[string key]
    {
        get => this.First(kv => Equals(kv.Key, key)).Value;
        set => this[FindIndex(kv => Equals(kv.Key, key))] = new KeyValuePair<object, object?>(key, value);
    }

    public void Remove(string key) => RemoveAt(FindIndex(kv => Equals(kv.Key, key)));
}

/// <summary>Bytes written verbatim into a document.</summary>
internal sealed record MsgRaw(byte[] Bytes);

/// <summary>Encodes a tree of null, bool, string, int, long, ulong, double, byte[] (bin), lists (arrays), <see cref="MsgMap"/> and <see cref="MsgRaw"/>.</summary>
internal static class Msg
{
    public static byte[] Encode(object? value)
    {
        var buffer = new ArrayBufferWriter<byte>();
        var w = new MessagePackWriter(buffer);
        Write(ref w, value);
        w.Flush();
        return buffer.WrittenSpan.ToArray();
    }

    private static void Write(ref MessagePackWriter w, object? v)
    {
        switch (v)
        {
            case null: w.WriteNil(); break;
            case bool b: w.Write(b); break;
            case string s: w.Write(s); break;
            case int i: w.Write(i); break;
            case long l: w.Write(l); break;
            case ulong u: w.Write(u); break;
            case double d: w.Write(d); break;
            case float f: w.Write(f); break;
            case byte[] bytes: w.Write(bytes); break;
            case MsgRaw raw: w.WriteRaw(raw.Bytes); break;
            case MsgMap map:
                w.WriteMapHeader(map.Count);
                foreach (var (k, val) in map) { Write(ref w, k); Write(ref w, val); }
                break;
            case System.Collections.IEnumerable list:
            {
                var items = list.Cast<object?>().ToList();
                w.WriteArrayHeader(items.Count);
                foreach (var item in items) Write(ref w, item);
                break;
            }
            default: throw new ArgumentException($"cannot encode {v.GetType()}");
        }
    }

    public static byte[] F32(float[] values)
    {
        var bytes = new byte[4 * values.Length];
        for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(4 * i), values[i]);
        return bytes;
    }

    public static MsgMap Tensor(string name, int[] shape, string dtype, byte[] data) => new()
    {
        { "name", name }, { "shape", shape.Cast<object?>().ToList() }, { "dtype", dtype }, { "data", data },
    };

    /// <summary>The document tree of a checkpoint (f32 tensors), mirroring what Save writes.</summary>
    public static MsgMap Tree(PalmCheckpoint c)
    {
        var cfg = c.Config;
        var root = new MsgMap
        {
            { "magic", "PALM" }, { "format_version", 1 },
            { "config", new MsgMap
            {
                { "vocab_size", cfg.VocabSize }, { "block_size", cfg.BlockSize }, { "n_embd", cfg.NEmbd },
                { "n_head", cfg.NHead }, { "d_qkv", cfg.DQkv }, { "d_rank", cfg.DRank }, { "n_layer", cfg.NLayer },
                { "n_recur", cfg.NRecur }, { "share", PalmConfig.ShareName(cfg.Share) }, { "d_ffn", cfg.DFfn },
                { "aod_mix", PalmConfig.MixName(cfg.Mix) },
            } },
        };
        if (c.Tokenizer is { } tok)
            root.Add("tokenizer", new MsgMap
            {
                { "pattern", tok.Pattern },
                { "merges", tok.Merges.SelectMany(m => new object?[] { m.Left, m.Right }).ToList() },
                { "special_tokens", tok.SpecialTokens.Cast<object?>().ToList() },
            });
        root.Add("tensors", c.Tensors.Select(t => (object?)Tensor(t.Name, [.. t.Shape], "f32", F32(t.Data))).ToList());
        if (c.Training is { } tr)
        {
            var opt = new MsgMap();
            foreach (var t in c.Tensors)
            {
                if (!tr.Optimizer.TryGetValue(t.Name, out var moments)) continue;
                string param = t.Name;
                var shape = t.Shape.Cast<object?>().ToList();
                var mm = new MsgMap();
                foreach (var (name, data) in moments.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    mm.Add(name, new MsgMap { { "shape", shape }, { "dtype", "f32" }, { "data", F32(data) } });
                opt.Add(param, mm);
            }
            var extra = new MsgMap();
            foreach (var (k, v) in tr.Extra.OrderBy(kv => kv.Key, StringComparer.Ordinal)) extra.Add(k, v);
            root.Add("training", new MsgMap
            {
                { "step", tr.Step }, { "rng", tr.RngState.Cast<object?>().ToList() }, { "data_position", tr.DataPosition },
                { "loss_history", F32(tr.LossHistory) }, { "optimizer", opt }, { "extra", extra },
            });
        }
        return root;
    }
}
