// Each specific way a .palm file can be broken must give a PalmFormatException whose message says
// what is wrong, never another exception type and never an allocation the file cannot justify.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using static Palm.Tests.Checkpoint.CheckpointTestData;

namespace Palm.Tests.Checkpoint;

public sealed class CheckpointCorruptionTests
{
    private static readonly PalmCheckpoint Base = Small();

    private static PalmFormatException LoadFails(byte[] bytes)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<PalmFormatException>(() => PalmCheckpoint.Load(bytes));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        // Generous constant for exception objects and messages; huge declared sizes would blow far past it.
        Assert.True(allocated < 16L * bytes.Length + (1 << 20), $"load allocated {allocated} bytes for a {bytes.Length}-byte file");
        return e;
    }

    private static PalmFormatException LoadFails(MsgMap tree) => LoadFails(Msg.Encode(tree));

    private static MsgMap Tree() => Msg.Tree(Base);
    private static List<object?> TensorList(MsgMap tree) => (List<object?>)tree["tensors"]!;
    private static MsgMap TensorAt(MsgMap tree, int i) => (MsgMap)TensorList(tree)[i]!;
    private static MsgMap Config(MsgMap tree) => (MsgMap)tree["config"]!;
    private static MsgMap Training(MsgMap tree) => (MsgMap)tree["training"]!;

    [Fact]
    public void HandMadeTreeMatchesSaveAndLoads()
    {
        // Guards the builder used by the other tests: the untouched tree is exactly what Save writes.
        Assert.Equal(ToBytes(Base), Msg.Encode(Tree()));
    }

    [Fact]
    public void TruncationAtEveryPointIsReported()
    {
        byte[] bytes = ToBytes(Base);
        for (int cut = 0; cut < bytes.Length; cut++)
        {
            var e = LoadFails(bytes[..cut]);
            Assert.True(e.Message.Contains("truncated") || (cut == 0 && e.Message.Contains("empty")), $"cut {cut}: {e.Message}");
        }
    }

    [Fact]
    public void WrongMagicOrNotACheckpoint()
    {
        var tree = Tree();
        tree["magic"] = "PALX";
        Assert.Contains("not a Palm checkpoint: magic is 'PALX'", LoadFails(tree).Message);
        Assert.Contains("not a Palm checkpoint", LoadFails("{\"magic\":\"PALM\"}"u8.ToArray()).Message);
        Assert.Contains("first key is 'format_version'", LoadFails(new MsgMap { { "format_version", 1 }, { "magic", "PALM" } }).Message);
        Assert.Contains("expected a string, got an integer", LoadFails(new MsgMap { { "magic", 1 }, { "format_version", 1 } }).Message);
        Assert.Contains("empty", LoadFails(Array.Empty<byte>()).Message);
    }

    [Fact]
    public void OtherFormatVersionIsRejected()
    {
        var tree = Tree();
        tree["format_version"] = 2;
        Assert.Contains("unsupported format_version 2 (this version reads 1)", LoadFails(tree).Message);
        tree["format_version"] = "1";
        Assert.Contains("format_version: expected an integer, got a string", LoadFails(tree).Message);
    }

    [Fact]
    public void ShapeProductMustMatchDataLength()
    {
        var tree = Tree();
        var t = TensorAt(tree, 0); // embed.weight (10, 2)
        t["shape"] = new List<object?> { 10, 3 };
        Assert.Contains("tensors[0] 'embed.weight': data holds 80 bytes but shape [10, 3] with dtype f32 needs 120", LoadFails(tree).Message);
    }

    [Fact]
    public void TensorShapeMustMatchConfig()
    {
        var tree = Tree();
        var t = TensorAt(tree, 0);
        t["shape"] = new List<object?> { 5, 4 }; // same element count, wrong shape
        Assert.Contains("tensor 'embed.weight': shape [5, 4] does not match the config, which implies [10, 2]", LoadFails(tree).Message);
        t["shape"] = new List<object?> { 20 };
        Assert.Contains("shape [20] does not match the config", LoadFails(tree).Message);
    }

    [Fact]
    public void HugeDeclaredSizesAreRejectedBeforeAllocation()
    {
        // A bin32 header claiming ~2 GiB followed by a few bytes.
        var tree = Tree();
        TensorAt(tree, 0)["data"] = new MsgRaw([0xc6, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3]);
        Assert.Contains("tensors[0] 'embed.weight'.data: binary data runs past the end of the data (truncated or corrupt)", LoadFails(tree).Message);

        // A shape claiming 2^32 elements with little data.
        tree = Tree();
        TensorAt(tree, 0)["shape"] = new List<object?> { 32768, 32768 };
        Assert.Contains("needs 4294967296", LoadFails(tree).Message);
        TensorAt(tree, 0)["shape"] = new List<object?> { int.MaxValue, int.MaxValue, int.MaxValue };
        Assert.Contains("is too large", LoadFails(tree).Message);

        // Array and map headers claiming 2^31-1 entries.
        tree = Tree();
        tree["tensors"] = new MsgRaw([0xdd, 0x7f, 0xff, 0xff, 0xff, 0x80]);
        Assert.Contains("tensors: array runs past the end of the data (truncated or corrupt)", LoadFails(tree).Message);
        tree = Tree();
        tree["config"] = new MsgRaw([0xdf, 0x7f, 0xff, 0xff, 0xff, 0x80]);
        Assert.Contains("config: map runs past the end of the data (truncated or corrupt)", LoadFails(tree).Message);

        // A string claiming 4 GiB.
        tree = Tree();
        TensorAt(tree, 0)["name"] = new MsgRaw([0xdb, 0xff, 0xff, 0xff, 0xff, 0x41]);
        Assert.Contains("tensors[0].name: string runs past the end of the data (truncated or corrupt)", LoadFails(tree).Message);

        // A config whose weights would be gigabytes, in a file of a few KiB.
        tree = Tree();
        Config(tree)["n_layer"] = 65536;
        Config(tree)["n_recur"] = 1;
        Config(tree)["vocab_size"] = 1 << 20;
        Assert.Contains("tensor 'embed.weight': shape [10, 2] does not match the config", LoadFails(tree).Message);
    }

    [Fact]
    public void WrongTypesAreNamed()
    {
        var tree = Tree();
        Config(tree)["vocab_size"] = "ten";
        Assert.Contains("config.vocab_size: expected an integer, got a string", LoadFails(tree).Message);

        tree = Tree();
        tree["tensors"] = new MsgMap();
        Assert.Contains("tensors: expected an array, got a map", LoadFails(tree).Message);

        tree = Tree();
        TensorAt(tree, 1)["data"] = "bytes";
        Assert.Contains("tensors[1] 'embed.proj.w'.data: expected binary data, got a string", LoadFails(tree).Message);

        tree = Tree();
        TensorAt(tree, 1)["shape"] = new List<object?> { 4, 2.0 };
        Assert.Contains("tensors[1] 'embed.proj.w'.shape[1]: expected an integer, got a float", LoadFails(tree).Message);

        tree = Tree();
        Training(tree)["rng"] = new List<object?> { 1UL, 2UL, 3UL, -4L };
        Assert.Contains("training.rng[3]: must be an unsigned 64-bit integer", LoadFails(tree).Message);

        tree = Tree();
        Training(tree)["step"] = -1;
        Assert.Contains("training.step: -1 is outside 0..", LoadFails(tree).Message);

        tree = Tree();
        ((MsgMap)Training(tree)["extra"]!)["lr"] = true;
        Assert.Contains("training.extra.lr: expected a number, got a boolean", LoadFails(tree).Message);

        tree = Tree();
        Config(tree)["share"] = "spiral";
        Assert.Contains("config.share: unknown share 'spiral'", LoadFails(tree).Message);
    }

    [Fact]
    public void InvalidConfigNamesTheField()
    {
        var tree = Tree();
        Config(tree)["n_head"] = 3;
        var e = LoadFails(tree);
        Assert.Contains("invalid config.d_qkv", e.Message);
        Assert.IsType<PalmConfigException>(e.InnerException);

        tree = Tree();
        Config(tree).Remove("d_ffn");
        Assert.Contains("config.d_ffn: missing", LoadFails(tree).Message);

        tree = Tree();
        Config(tree).Add("dropout", 0.1);
        Assert.Contains("config.dropout: unknown config field", LoadFails(tree).Message);
    }

    [Fact]
    public void DuplicatesAreRejected()
    {
        var tree = Tree();
        TensorList(tree).Add(TensorAt(tree, 0));
        Assert.Contains($"tensors[{TensorList(tree).Count - 1}]: duplicate tensor name 'embed.weight'", LoadFails(tree).Message);

        tree = Tree();
        tree.Add("config", Config(tree));
        Assert.Contains("duplicate key 'config'", LoadFails(tree).Message);

        tree = Tree();
        TensorAt(tree, 0).Add("dtype", "f32");
        Assert.Contains("tensors[0] 'embed.weight'.dtype: duplicate entry", LoadFails(tree).Message);
    }

    [Fact]
    public void MissingOrUnknownTensorForToParameters()
    {
        var tree = Tree();
        var list = TensorList(tree);
        list.RemoveAt(list.Count - 1); // unembed.w2
        ((MsgMap)Training(tree)["optimizer"]!).RemoveAll(kv => Equals(kv.Key, "unembed.w2"));
        var loaded = PalmCheckpoint.Load(Msg.Encode(tree)); // a partial checkpoint is a valid file
        var e = Assert.Throws<PalmFormatException>(loaded.ToParameters);
        Assert.Contains("missing tensor 'unembed.w2' (shape [10, 2])", e.Message);

        tree = Tree();
        TensorList(tree).Add(Msg.Tensor("blocks.1.qkv.w1", [2, 4], "f32", new byte[32])); // n_layer is 1
        e = Assert.Throws<PalmFormatException>(PalmCheckpoint.Load(Msg.Encode(tree)).ToParameters);
        Assert.Contains("tensor 'blocks.1.qkv.w1' is not a parameter of this config", e.Message);
    }

    [Fact]
    public void UnknownOrUnsupportedDtype()
    {
        var tree = Tree();
        TensorAt(tree, 0)["dtype"] = "f64";
        Assert.Contains("tensors[0] 'embed.weight': unknown dtype 'f64' (known: f32, f16, bf16, q8, q4)", LoadFails(tree).Message);
        // embed.weight is (10, 2): 20 elements.
        var cases = new (string Dtype, byte[] Data, byte[]? Scales, int? Group, string Message)[]
        {
            ("q8", new byte[20], null, null, "missing 'scales' (required for q8)"),
            ("q8", new byte[20], new byte[4], 3, "group_size 3 does not divide the last dimension 2"),
            ("q8", new byte[20], new byte[4], null, "scales holds 4 bytes but 10 groups of 2 with dtype q8 need 40"),
            ("q4", new byte[10], new byte[20], null, "group_size 32 does not divide the last dimension 2"),
            ("q4", new byte[11], new byte[20], 2, "data holds 11 bytes but shape [10, 2] with dtype q4 needs 10"),
            ("q4", new byte[10], [.. new byte[18], 0x00, 0xFC], 2, "scales[9] is -Infinity; scales must be finite and >= 0"),
            ("q8", new byte[20], [.. new byte[36], 0x00, 0x00, 0x80, 0xBF], 2, "scales[9] is -1; scales must be finite and >= 0"),
        };
        foreach (var (dtype, data, scales, group, message) in cases)
        {
            tree = Tree();
            var t = TensorAt(tree, 0);
            t["dtype"] = dtype;
            t["data"] = data;
            if (scales is not null) t.Add("scales", scales);
            if (group is not null) t.Add("group_size", group.Value);
            Assert.Contains($"tensors[0] 'embed.weight': {message}", LoadFails(tree).Message);
        }
        tree = Tree();
        TensorAt(tree, 0).Add("scales", new byte[4]);
        Assert.Contains("'scales' and 'group_size' are only allowed with quantized dtypes, not f32", LoadFails(tree).Message);
    }

    [Fact]
    public void TrainingStateMustMatchTensors()
    {
        var tree = Tree();
        var opt = (MsgMap)Training(tree)["optimizer"]!;
        var moments = (MsgMap)opt[0].Value!;
        var param = Base.FindTensor((string)opt[0].Key)!;
        ((MsgMap)moments[0].Value!)["shape"] = new List<object?> { 1, param.Data.Length };
        Assert.Contains($"training.optimizer '{param.Name}'.m: shape [1, {param.Data.Length}] differs from the tensor's {param.ShapeText}", LoadFails(tree).Message);

        tree = Tree();
        ((MsgMap)Training(tree)["optimizer"]!).Add("nope.w", new MsgMap());
        Assert.Contains("moments for 'nope.w', which is not a tensor", LoadFails(tree).Message);

        tree = Tree();
        Training(tree)["rng"] = new List<object?> { 0UL, 0UL, 0UL, 0UL };
        Assert.Contains("training.rng: state must not be all zero", LoadFails(tree).Message);

        tree = Tree();
        Training(tree)["rng"] = new List<object?> { 1UL, 2UL, 3UL };
        Assert.Contains("training.rng: expected 4 state words, got 3", LoadFails(tree).Message);

        tree = Tree();
        Training(tree)["loss_history"] = new byte[7];
        Assert.Contains("training.loss_history: 7 bytes is not a whole number of float32 values", LoadFails(tree).Message);
    }

    [Fact]
    public void TokenizerIdsMustBeInVocabulary()
    {
        var tree = Tree();
        ((MsgMap)tree["tokenizer"]!)["merges"] = new List<object?> { 1, 2, 3, 10 };
        Assert.Contains("tokenizer.merges: pair 1 (3, 10) has an id outside 0..9", LoadFails(tree).Message);
        ((MsgMap)tree["tokenizer"]!)["merges"] = new List<object?> { 1, 2, 3 };
        Assert.Contains("tokenizer.merges: flat pair array has odd length 3", LoadFails(tree).Message);
    }

    [Fact]
    public void StructuralOddities()
    {
        // Unknown top-level entries are ignored, but nesting depth is bounded (no stack overflow).
        var tree = Tree();
        tree.Add("future_metadata", new MsgMap { { "note", "hi" } });
        Assert.NotNull(PalmCheckpoint.Load(Msg.Encode(tree)));

        var deep = new byte[200_000];
        Array.Fill(deep, (byte)0x91); // [[[[...
        tree = Tree();
        tree.Add("deep", new MsgRaw([.. deep, 0xc0]));
        Assert.Contains("'deep': nested more than 500 levels deep", LoadFails(tree).Message);

        byte[] bytes = ToBytes(Base);
        Assert.Contains("unexpected data after the checkpoint map", LoadFails([.. bytes, 0xc0]).Message);

        tree = Tree();
        TensorAt(tree, 0)["name"] = new MsgRaw([0xa2, 0xff, 0xfe]);
        Assert.Contains("tensors[0].name: invalid UTF-8", LoadFails(tree).Message);

        tree = Tree();
        tree.Remove("tensors");
        Assert.Contains("missing 'tensors'", LoadFails(tree).Message);

        tree = Tree();
        TensorAt(tree, 0).Add("bias", 1);
        Assert.Contains("tensors[0] 'embed.weight'.bias: unknown tensor field", LoadFails(tree).Message);
    }

    [Fact]
    public void OversizedStreamIsRefusedUpFront()
    {
        var e = Assert.Throws<PalmFormatException>(() => PalmCheckpoint.Load(new FakeHugeStream()));
        Assert.Contains("more than the limit", e.Message);
    }

    private sealed class FakeHugeStream : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => true;
        public override bool CanWrite => false;
        public override long Length => 5L << 30;
        public override long Position { get; set; }
        public override int Read(byte[] buffer, int offset, int count) => throw new InvalidOperationException("must not read");
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
