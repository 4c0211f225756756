// Parses .palm bytes defensively. Every length is checked against the bytes that remain before
// anything is allocated, nesting is bounded, and every failure becomes a PalmFormatException that
// says where in the document it happened.
using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using MessagePack;
using Palm.Inference.Model;
using Palm.Inference.Quantization;

namespace Palm.Inference.Checkpoint;

internal static class CheckpointReader
{
    private const int MaxKeyBytes = FormatLimits.MaxKeyBytes;
    private const int MaxNameBytes = FormatLimits.MaxNameBytes;
    private const int MaxPatternBytes = FormatLimits.MaxPatternBytes;
    private const int MaxSpecialTokenBytes = FormatLimits.MaxSpecialTokenBytes;
    private const int MaxRank = FormatLimits.MaxRank;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Parses and validates a whole checkpoint.</summary>
    public static PalmCheckpoint Read(ReadOnlySequence<byte> bytes)
    {
        if (bytes.Length == 0) throw new PalmFormatException("not a Palm checkpoint: the file is empty");
        var r = new MessagePackReader(bytes);
        try
        {
            return ReadRoot(ref r);
        }
        catch (PalmFormatException) { throw; }
        catch (EndOfStreamException e)
        {
            throw new PalmFormatException($"checkpoint is truncated or corrupt: data ends early (near byte {r.Consumed} of {bytes.Length})", e);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // MessagePackSerializationException (bad codes, wrong types), OverflowException (integers out
            // of range), DecoderFallbackException (invalid UTF-8) and anything unforeseen: the caller
            // gets one exception type; the original stays as InnerException for diagnosis.
            throw new PalmFormatException($"checkpoint is corrupt near byte {r.Consumed}: {e.Message}", e);
        }
    }

    private static PalmCheckpoint ReadRoot(ref MessagePackReader r)
    {
        if (r.NextMessagePackType != MessagePackType.Map)
            throw new PalmFormatException($"not a Palm checkpoint: the document is a {r.NextMessagePackType}, not a map");
        int n = ReadMapHeader(ref r, "checkpoint");
        if (n < 2) throw new PalmFormatException("not a Palm checkpoint: the root map lacks 'magic' and 'format_version'");
        string key = ReadString(ref r, "checkpoint key", MaxKeyBytes);
        if (key != "magic") throw new PalmFormatException($"not a Palm checkpoint: first key is '{Trim(key)}', expected 'magic'");
        string magic = ReadString(ref r, "magic", MaxKeyBytes);
        if (magic != PalmCheckpoint.Magic) throw new PalmFormatException($"not a Palm checkpoint: magic is '{Trim(magic)}', expected '{PalmCheckpoint.Magic}'");
        key = ReadString(ref r, "checkpoint key", MaxKeyBytes);
        if (key != "format_version") throw new PalmFormatException($"second key is '{Trim(key)}', expected 'format_version'");
        long version = ReadInt(ref r, "format_version", long.MinValue, long.MaxValue);
        if (version != PalmCheckpoint.FormatVersion)
            throw new PalmFormatException($"unsupported format_version {version} (this version reads {PalmCheckpoint.FormatVersion})");

        PalmConfig? config = null;
        TokenizerBlob? tokenizer = null;
        List<CheckpointTensor>? tensors = null;
        ParsedTraining? training = null;
        var seen = new HashSet<string>(StringComparer.Ordinal) { "magic", "format_version" };
        for (int i = 2; i < n; i++)
        {
            key = ReadString(ref r, "checkpoint key", MaxKeyBytes);
            if (!seen.Add(key)) throw new PalmFormatException($"duplicate key '{Trim(key)}' in the checkpoint map");
            switch (key)
            {
                case "config": config = ReadConfig(ref r); break;
                case "tokenizer": tokenizer = ReadTokenizer(ref r); break;
                case "tensors": tensors = ReadTensors(ref r); break;
                case "training": training = ReadTraining(ref r); break;
                // Unknown top-level entries are ignored so that version-1 files may gain optional metadata.
                default: SkipValue(ref r, $"'{Trim(key)}'"); break;
            }
        }
        if (!r.End) throw new PalmFormatException($"unexpected data after the checkpoint map (byte {r.Consumed} of {r.Sequence.Length})");
        if (config is null) throw new PalmFormatException("missing 'config'");
        if (tensors is null) throw new PalmFormatException("missing 'tensors'");

        var c = new PalmCheckpoint { Config = config, Tokenizer = tokenizer, Tensors = tensors, Training = training?.State };
        c.Validate();
        if (training is not null)
        {
            // Moment shapes must equal their parameter's shape (Validate has checked names and element
            // counts); checked here because the in-memory state keeps only the data.
            foreach (var (param, moments) in training.MomentShapes)
            {
                var t = c.FindTensor(param)!;
                foreach (var (moment, shape) in moments)
                    if (!t.ShapeEquals(shape))
                        throw new PalmFormatException($"training.optimizer '{Trim(param)}'.{Trim(moment)}: shape [{string.Join(", ", shape)}] differs from the tensor's {t.ShapeText}");
            }
        }
        return c;
    }

    private static PalmConfig ReadConfig(ref MessagePackReader r)
    {
        int n = ReadMapHeader(ref r, "config");
        var ints = new Dictionary<string, int>(StringComparer.Ordinal);
        string? share = null, mix = null;
        for (int i = 0; i < n; i++)
        {
            string key = ReadString(ref r, "config key", MaxKeyBytes);
            string ctx = $"config.{Trim(key)}";
            switch (key)
            {
                case "vocab_size" or "block_size" or "n_embd" or "n_head" or "d_qkv" or "d_rank" or "n_layer" or "n_recur" or "d_ffn":
                    if (!ints.TryAdd(key, (int)ReadInt(ref r, ctx, int.MinValue, int.MaxValue))) throw Duplicate(ctx);
                    break;
                case "share":
                    if (share is not null) throw Duplicate(ctx);
                    share = ReadString(ref r, ctx, MaxKeyBytes);
                    break;
                case "aod_mix":
                    if (mix is not null) throw Duplicate(ctx);
                    mix = ReadString(ref r, ctx, MaxKeyBytes);
                    break;
                // A config field this version does not know may change the model: refuse to guess.
                default: throw new PalmFormatException($"{ctx}: unknown config field");
            }
        }
        int Get(string f) => ints.TryGetValue(f, out int v) ? v : throw new PalmFormatException($"config.{f}: missing");
        PalmConfig config;
        try
        {
            config = new PalmConfig
            {
                VocabSize = Get("vocab_size"), BlockSize = Get("block_size"), NEmbd = Get("n_embd"),
                NHead = Get("n_head"), DQkv = Get("d_qkv"), DRank = Get("d_rank"), NLayer = Get("n_layer"),
                NRecur = Get("n_recur"), DFfn = Get("d_ffn"),
                Share = PalmConfig.ParseShare(share ?? throw new PalmFormatException("config.share: missing")),
                Mix = PalmConfig.ParseMix(mix ?? throw new PalmFormatException("config.aod_mix: missing")),
            };
            config.Validate();
        }
        catch (PalmConfigException e)
        {
            throw new PalmFormatException($"invalid {e.Message}", e);
        }
        return config;
    }

    private static TokenizerBlob ReadTokenizer(ref MessagePackReader r)
    {
        int n = ReadMapHeader(ref r, "tokenizer");
        string? pattern = null;
        List<(int, int)>? merges = null;
        List<string>? specials = null;
        for (int i = 0; i < n; i++)
        {
            string key = ReadString(ref r, "tokenizer key", MaxKeyBytes);
            string ctx = $"tokenizer.{Trim(key)}";
            switch (key)
            {
                case "pattern":
                    if (pattern is not null) throw Duplicate(ctx);
                    pattern = ReadString(ref r, ctx, MaxPatternBytes);
                    break;
                case "merges":
                {
                    if (merges is not null) throw Duplicate(ctx);
                    int count = ReadArrayHeader(ref r, ctx);
                    if (count % 2 != 0) throw new PalmFormatException($"{ctx}: flat pair array has odd length {count}");
                    merges = [];
                    for (int j = 0; j < count; j += 2)
                    {
                        int left = (int)ReadInt(ref r, $"{ctx}[{j}]", 0, int.MaxValue);
                        int right = (int)ReadInt(ref r, $"{ctx}[{j + 1}]", 0, int.MaxValue);
                        merges.Add((left, right));
                    }
                    break;
                }
                case "special_tokens":
                {
                    if (specials is not null) throw Duplicate(ctx);
                    int count = ReadArrayHeader(ref r, ctx);
                    specials = [];
                    for (int j = 0; j < count; j++) specials.Add(ReadString(ref r, $"{ctx}[{j}]", MaxSpecialTokenBytes));
                    break;
                }
                default: throw new PalmFormatException($"{ctx}: unknown tokenizer field");
            }
        }
        return new TokenizerBlob(
            pattern ?? throw new PalmFormatException("tokenizer.pattern: missing"),
            merges ?? throw new PalmFormatException("tokenizer.merges: missing"),
            specials ?? throw new PalmFormatException("tokenizer.special_tokens: missing"));
    }

    private static List<CheckpointTensor> ReadTensors(ref MessagePackReader r)
    {
        int n = ReadArrayHeader(ref r, "tensors");
        var list = new List<CheckpointTensor>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            var t = ReadTensor(ref r, $"tensors[{i}]", requireName: true);
            if (!names.Add(t.Name)) throw new PalmFormatException($"tensors[{i}]: duplicate tensor name '{Trim(t.Name)}'");
            list.Add(t);
        }
        return list;
    }

    /// <summary>Reads a tensor map; optimizer moments (<paramref name="requireName"/> false) have no <c>name</c> entry.</summary>
    private static CheckpointTensor ReadTensor(ref MessagePackReader r, string ctx, bool requireName)
    {
        int n = ReadMapHeader(ref r, ctx);
        string? name = null, dtypeName = null;
        int[]? shape = null;
        ReadOnlySequence<byte>? data = null, scales = null;
        long? groupSize = null;
        for (int i = 0; i < n; i++)
        {
            string key = ReadString(ref r, $"{ctx} key", MaxKeyBytes);
            string kctx = $"{ctx}.{Trim(key)}";
            switch (key)
            {
                case "name" when requireName:
                    if (name is not null) throw Duplicate(kctx);
                    name = ReadString(ref r, kctx, MaxNameBytes);
                    if (name.Length == 0) throw new PalmFormatException($"{kctx}: empty tensor name");
                    ctx = $"{ctx} '{Trim(name)}'";
                    break;
                case "shape":
                {
                    if (shape is not null) throw Duplicate(kctx);
                    int rank = ReadArrayHeader(ref r, kctx);
                    if (rank < 1 || rank > MaxRank) throw new PalmFormatException($"{kctx}: rank {rank} outside 1..{MaxRank}");
                    shape = new int[rank];
                    for (int j = 0; j < rank; j++) shape[j] = (int)ReadInt(ref r, $"{kctx}[{j}]", 1, int.MaxValue);
                    break;
                }
                case "dtype":
                    if (dtypeName is not null) throw Duplicate(kctx);
                    dtypeName = ReadString(ref r, kctx, MaxKeyBytes);
                    break;
                case "data":
                    if (data is not null) throw Duplicate(kctx);
                    data = ReadBin(ref r, kctx);
                    break;
                case "scales":
                    if (scales is not null) throw Duplicate(kctx);
                    scales = ReadBin(ref r, kctx);
                    break;
                case "group_size":
                    if (groupSize is not null) throw Duplicate(kctx);
                    groupSize = ReadInt(ref r, kctx, 1, int.MaxValue);
                    break;
                // Unknown tensor fields could change how data is interpreted: refuse them.
                default: throw new PalmFormatException($"{kctx}: unknown tensor field");
            }
        }
        if (requireName && name is null) throw new PalmFormatException($"{ctx}: missing 'name'");
        if (shape is null) throw new PalmFormatException($"{ctx}: missing 'shape'");
        if (dtypeName is null) throw new PalmFormatException($"{ctx}: missing 'dtype'");
        if (data is null) throw new PalmFormatException($"{ctx}: missing 'data'");
        if (!TensorDTypes.TryParse(dtypeName, out var dtype))
            throw new PalmFormatException($"{ctx}: unknown dtype '{Trim(dtypeName)}' (known: f32, f16, bf16, q8, q4)");
        if (!dtype.IsQuantized() && (scales is not null || groupSize is not null))
            throw new PalmFormatException($"{ctx}: 'scales' and 'group_size' are only allowed with quantized dtypes, not {dtype.SpecName()}");

        long elements = 1;
        foreach (int d in shape)
        {
            elements *= d;
            if (elements > Array.MaxLength) throw new PalmFormatException($"{ctx}: shape [{string.Join(", ", shape)}] is too large");
        }
        // The decisive guard: the data must be exactly as long as shape and dtype say, and it is
        // already known to lie inside the file, so the allocation below is justified by file bytes.
        long expected = dtype.DataByteLength(elements);
        var bytes = data.Value;
        if (bytes.Length != expected)
            throw new PalmFormatException($"{ctx}: data holds {bytes.Length} bytes but shape [{string.Join(", ", shape)}] with dtype {dtype.SpecName()} needs {expected}");
        if (dtype.IsQuantized()) return ReadQuantized(ctx, name ?? "moment", shape, (int)elements, dtype, bytes, scales, groupSize);
        var values = Decode(bytes, (int)elements, dtype);
        return new CheckpointTensor(name ?? "moment", shape, values, dtype);
    }

    // q8/q4: kept as the stored bytes (QuantizedTensor), after the layout checks.
    private static CheckpointTensor ReadQuantized(string ctx, string name, int[] shape, int elements, TensorDType dtype,
        ReadOnlySequence<byte> data, ReadOnlySequence<byte>? scales, long? groupSize)
    {
        if (scales is null) throw new PalmFormatException($"{ctx}: missing 'scales' (required for {dtype.SpecName()})");
        int lastDim = shape[^1];
        int group = (int)(groupSize ?? (dtype == TensorDType.Q8 ? lastDim : TensorDTypes.DefaultQ4GroupSize));
        if (lastDim % group != 0)
            throw new PalmFormatException($"{ctx}: group_size {group} does not divide the last dimension {lastDim}");
        long expectedScales = dtype.ScaleByteLength(elements, group);
        if (scales.Value.Length != expectedScales)
            throw new PalmFormatException($"{ctx}: scales holds {scales.Value.Length} bytes but {elements / group} groups of {group} with dtype {dtype.SpecName()} need {expectedScales}");
        try
        {
            var q = QuantizedTensor.FromBytes(dtype, elements, group, data.ToArray(), scales.Value.ToArray());
            return new CheckpointTensor(name, shape, q);
        }
        // Only the scale values are left to check; say which, without the ArgumentException wrapper.
        catch (ArgumentException e) { throw new PalmFormatException($"{ctx}: {e.Message.Replace($" (Parameter '{e.ParamName}')", "")}"); }
    }

    private static float[] Decode(ReadOnlySequence<byte> bytes, int elements, TensorDType dtype)
    {
        var values = new float[elements];
        var raw = MemoryMarshal.AsBytes(values.AsSpan());
        bytes.CopyTo(raw);
        if (dtype == TensorDType.F32)
        {
            if (!BitConverter.IsLittleEndian)
            {
                var ints = MemoryMarshal.Cast<float, int>(values.AsSpan());
                for (int i = 0; i < ints.Length; i++) ints[i] = BinaryPrimitives.ReverseEndianness(ints[i]);
            }
            return values;
        }
        // The 2-byte values sit in the first half of the array; widen in place from the end, so each
        // 4-byte write only covers 2-byte slots that were already read (slot 2i >= i, and slot i is read
        // before element i is written).
        Func<ushort, float> widen = dtype == TensorDType.F16 ? FloatBits.FromHalf : FloatBits.FromBFloat16;
        for (int i = elements - 1; i >= 0; i--)
        {
            ushort h = BinaryPrimitives.ReadUInt16LittleEndian(raw.Slice(2 * i, 2));
            values[i] = widen(h);
        }
        return values;
    }

    private sealed class ParsedTraining
    {
        public required TrainingState State { get; init; }
        public required List<(string Param, List<(string Moment, int[] Shape)> Moments)> MomentShapes { get; init; }
    }

    private static ParsedTraining ReadTraining(ref MessagePackReader r)
    {
        int n = ReadMapHeader(ref r, "training");
        long? step = null, position = null;
        ulong[]? rng = null;
        float[]? loss = null;
        Dictionary<string, IReadOnlyDictionary<string, float[]>>? optimizer = null;
        var shapes = new List<(string, List<(string, int[])>)>();
        Dictionary<string, double>? extra = null;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            string key = ReadString(ref r, "training key", MaxKeyBytes);
            string ctx = $"training.{Trim(key)}";
            if (!seen.Add(key)) throw Duplicate(ctx);
            switch (key)
            {
                case "step": step = ReadInt(ref r, ctx, 0, long.MaxValue); break;
                case "data_position": position = ReadInt(ref r, ctx, 0, long.MaxValue); break;
                case "rng":
                {
                    int count = ReadArrayHeader(ref r, ctx);
                    if (count != 4) throw new PalmFormatException($"{ctx}: expected 4 state words, got {count}");
                    rng = new ulong[4];
                    for (int j = 0; j < 4; j++) rng[j] = ReadUInt64(ref r, $"{ctx}[{j}]");
                    break;
                }
                case "loss_history": loss = ReadFloats(ref r, ctx); break;
                case "optimizer":
                {
                    int count = ReadMapHeader(ref r, ctx);
                    optimizer = new Dictionary<string, IReadOnlyDictionary<string, float[]>>(StringComparer.Ordinal);
                    for (int j = 0; j < count; j++)
                    {
                        string param = ReadString(ref r, $"{ctx} key", MaxNameBytes);
                        string pctx = $"{ctx} '{Trim(param)}'";
                        int mcount = ReadMapHeader(ref r, pctx);
                        var moments = new Dictionary<string, float[]>(StringComparer.Ordinal);
                        var momentShapes = new List<(string, int[])>();
                        for (int k = 0; k < mcount; k++)
                        {
                            string moment = ReadString(ref r, $"{pctx} key", MaxKeyBytes);
                            string mctx = $"{pctx}.{Trim(moment)}";
                            if (moment.Length == 0) throw new PalmFormatException($"{mctx}: empty moment name");
                            var t = ReadTensor(ref r, mctx, requireName: false);
                            if (t.Storage != TensorDType.F32) throw new PalmFormatException($"{mctx}: optimizer moments must be f32, got {t.Storage.SpecName()}");
                            if (!moments.TryAdd(moment, t.Data)) throw Duplicate(mctx);
                            momentShapes.Add((moment, [.. t.Shape]));
                        }
                        if (!optimizer.TryAdd(param, moments)) throw Duplicate(pctx);
                        shapes.Add((param, momentShapes));
                    }
                    break;
                }
                case "extra":
                {
                    int count = ReadMapHeader(ref r, ctx);
                    extra = new Dictionary<string, double>(StringComparer.Ordinal);
                    for (int j = 0; j < count; j++)
                    {
                        string k = ReadString(ref r, $"{ctx} key", MaxKeyBytes);
                        if (!extra.TryAdd(k, ReadNumber(ref r, $"{ctx}.{Trim(k)}"))) throw Duplicate($"{ctx}.{Trim(k)}");
                    }
                    break;
                }
                // Unknown training entries are ignored: optional additions within version 1.
                default: SkipValue(ref r, ctx); break;
            }
        }
        var state = new TrainingState
        {
            Step = step ?? throw new PalmFormatException("training.step: missing"),
            RngState = rng ?? throw new PalmFormatException("training.rng: missing"),
            DataPosition = position ?? throw new PalmFormatException("training.data_position: missing"),
            LossHistory = loss ?? [],
            Optimizer = optimizer ?? new Dictionary<string, IReadOnlyDictionary<string, float[]>>(),
            Extra = extra ?? new Dictionary<string, double>(),
        };
        return new ParsedTraining { State = state, MomentShapes = shapes };
    }

    // loss_history: a bin of little-endian float32, or an array of numbers.
    private static float[] ReadFloats(ref MessagePackReader r, string ctx)
    {
        if (r.NextMessagePackType == MessagePackType.Binary)
        {
            var bytes = ReadBin(ref r, ctx);
            if (bytes.Length % 4 != 0) throw new PalmFormatException($"{ctx}: {bytes.Length} bytes is not a whole number of float32 values");
            return Decode(bytes, (int)(bytes.Length / 4), TensorDType.F32);
        }
        int count = ReadArrayHeader(ref r, ctx);
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)ReadNumber(ref r, $"{ctx}[{i}]");
        return values;
    }

    // ---- primitive readers: type-check first so that errors name the expected type ----

    private static PalmFormatException Duplicate(string ctx) => new($"{ctx}: duplicate entry");

    // MessagePackReader reports a declared length beyond the data as EndOfStreamException, and one
    // beyond int.MaxValue (str32/bin32/map32 near 4 GiB) as ArgumentOutOfRange or Overflow.
    private static bool IsPastEnd(Exception e) => e is EndOfStreamException or ArgumentOutOfRangeException or OverflowException;

    private static PalmFormatException PastEnd(string ctx, string what, Exception e) =>
        new($"{ctx}: {what} runs past the end of the data (truncated or corrupt)", e);

    private static PalmFormatException WrongType(ref MessagePackReader r, string ctx, string expected) =>
        new($"{ctx}: expected {expected}, got {Describe(r.NextMessagePackType)}");

    private static string Describe(MessagePackType t) => t switch
    {
        MessagePackType.Integer => "an integer",
        MessagePackType.Nil => "nil",
        MessagePackType.Boolean => "a boolean",
        MessagePackType.Float => "a float",
        MessagePackType.String => "a string",
        MessagePackType.Binary => "binary data",
        MessagePackType.Array => "an array",
        MessagePackType.Map => "a map",
        MessagePackType.Extension => "an extension value",
        _ => "an unknown value",
    };

    private static long Remaining(ref MessagePackReader r) => r.Sequence.Length - r.Consumed;

    private static int ReadMapHeader(ref MessagePackReader r, string ctx)
    {
        if (r.NextMessagePackType != MessagePackType.Map) throw WrongType(ref r, ctx, "a map");
        int n;
        try { n = r.ReadMapHeader(); }
        catch (Exception e) when (IsPastEnd(e)) { throw PastEnd(ctx, "map", e); }
        // Each entry needs at least two bytes; bounds every loop (and any list growth) by the file size.
        if (n < 0 || 2L * n > Remaining(ref r)) throw new PalmFormatException($"{ctx}: map declares {n} entries but only {Remaining(ref r)} bytes remain (truncated or corrupt)");
        return n;
    }

    private static int ReadArrayHeader(ref MessagePackReader r, string ctx)
    {
        if (r.NextMessagePackType != MessagePackType.Array) throw WrongType(ref r, ctx, "an array");
        int n;
        try { n = r.ReadArrayHeader(); }
        catch (Exception e) when (IsPastEnd(e)) { throw PastEnd(ctx, "array", e); }
        if (n < 0 || n > Remaining(ref r)) throw new PalmFormatException($"{ctx}: array declares {n} elements but only {Remaining(ref r)} bytes remain (truncated or corrupt)");
        return n;
    }

    private static string ReadString(ref MessagePackReader r, string ctx, int maxBytes)
    {
        if (r.NextMessagePackType != MessagePackType.String) throw WrongType(ref r, ctx, "a string");
        var peek = r.CreatePeekReader();
        ReadOnlySequence<byte>? seq;
        try { seq = peek.ReadStringSequence(); }
        catch (Exception e) when (IsPastEnd(e)) { throw PastEnd(ctx, "string", e); }
        long len = seq?.Length ?? 0;
        if (len > maxBytes) throw new PalmFormatException($"{ctx}: string of {len} bytes exceeds the limit of {maxBytes}");
        var bytes = r.ReadStringSequence()!.Value;
        try { return StrictUtf8.GetString(bytes); }
        catch (DecoderFallbackException e) { throw new PalmFormatException($"{ctx}: invalid UTF-8", e); }
    }

    private static ReadOnlySequence<byte> ReadBin(ref MessagePackReader r, string ctx)
    {
        if (r.NextMessagePackType != MessagePackType.Binary) throw WrongType(ref r, ctx, "binary data");
        // A slice of the file; the reader checks that the declared length lies inside it.
        try { return r.ReadBytes()!.Value; }
        catch (Exception e) when (IsPastEnd(e)) { throw PastEnd(ctx, "binary data", e); }
    }

    private static long ReadInt(ref MessagePackReader r, string ctx, long min, long max)
    {
        if (r.NextMessagePackType != MessagePackType.Integer) throw WrongType(ref r, ctx, "an integer");
        long v;
        try { v = r.ReadInt64(); }
        catch (OverflowException e) { throw new PalmFormatException($"{ctx}: integer out of range", e); }
        if (v < min || v > max) throw new PalmFormatException($"{ctx}: {v} is outside {min}..{max}");
        return v;
    }

    private static ulong ReadUInt64(ref MessagePackReader r, string ctx)
    {
        if (r.NextMessagePackType != MessagePackType.Integer) throw WrongType(ref r, ctx, "an integer");
        try { return r.ReadUInt64(); }
        catch (OverflowException e) { throw new PalmFormatException($"{ctx}: must be an unsigned 64-bit integer", e); }
    }

    private static double ReadNumber(ref MessagePackReader r, string ctx)
    {
        var t = r.NextMessagePackType;
        if (t == MessagePackType.Float) return r.ReadDouble();
        if (t == MessagePackType.Integer)
        {
            // uint64 values above long.MaxValue are numbers too.
            return r.NextCode == MessagePackCode.UInt64 ? r.ReadUInt64() : r.ReadInt64();
        }
        throw WrongType(ref r, ctx, "a number");
    }

    /// <summary>Skips one value with <see cref="MessagePackSecurity.UntrustedData"/>'s depth limit.</summary>
    private static void SkipValue(ref MessagePackReader r, string ctx)
    {
        // MessagePackReader.Skip recurses without a depth limit; deeply nested input would overflow
        // the stack, which no catch can handle. DepthStep enforces MaximumObjectGraphDepth.
        try { MessagePackSecurity.UntrustedData.DepthStep(ref r); }
        catch (Exception e) when (e is MessagePackSerializationException or InsufficientExecutionStackException)
        {
            throw new PalmFormatException($"{ctx}: nested more than {MessagePackSecurity.UntrustedData.MaximumObjectGraphDepth} levels deep", e);
        }
        try
        {
            switch (r.NextMessagePackType)
            {
                case MessagePackType.Map:
                {
                    int n = ReadMapHeader(ref r, ctx);
                    for (int i = 0; i < 2 * n; i++) SkipValue(ref r, ctx);
                    break;
                }
                case MessagePackType.Array:
                {
                    int n = ReadArrayHeader(ref r, ctx);
                    for (int i = 0; i < n; i++) SkipValue(ref r, ctx);
                    break;
                }
                default:
                    try { r.Skip(); }
                    catch (Exception e) when (IsPastEnd(e)) { throw PastEnd(ctx, "value", e); }
                    break;
            }
        }
        finally { r.Depth--; }
    }

    // Keys and names from a corrupt file can be long or contain control characters; keep messages readable.
    internal static string Trim(string s)
    {
        var sb = new StringBuilder(Math.Min(s.Length, 64));
        foreach (char ch in s.Length > 64 ? s[..64] : s) sb.Append(char.IsControl(ch) ? '?' : ch);
        if (s.Length > 64) sb.Append('…');
        return sb.ToString();
    }
}
