// Feeds thousands of mutated .palm files to the loader: each must load (and then survive a save and
// reload) or throw PalmFormatException, quickly and without allocating more than the file justifies.
// Set PALM_FUZZ_SEED to replay or vary a run; failures print the seed, iteration and mutation.
using System.Diagnostics;
using System.Text;
using MessagePack;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Xunit.Abstractions;
using static Palm.Tests.Checkpoint.CheckpointTestData;

namespace Palm.Tests.Checkpoint;

public sealed class CheckpointFuzzTests(ITestOutputHelper output)
{
    private const int Iterations = 5000;
    private const int DefaultSeed = 20250611;

    // Exceptions a PalmFormatException may legitimately wrap; anything else would be a reader bug
    // hidden by the catch-all wrapper.
    private static readonly Type[] ExpectedInner =
    [
        typeof(MessagePackSerializationException), typeof(EndOfStreamException), typeof(OverflowException),
        typeof(DecoderFallbackException), typeof(PalmConfigException), typeof(InsufficientExecutionStackException),
        typeof(ArgumentOutOfRangeException), // MessagePackReader's answer to a str32/bin32 length above int.MaxValue
    ];

    private readonly record struct Token(int Offset, byte Code, MessagePackType Type);

    [Fact]
    public void MutatedFilesLoadOrThrowPalmFormatException()
    {
        int master = Environment.GetEnvironmentVariable("PALM_FUZZ_SEED") is { Length: > 0 } s ? int.Parse(s) : DefaultSeed;
        output.WriteLine($"fuzz seed {master} (set PALM_FUZZ_SEED to change)");
        var bases = new[] { ToBytes(Small()), ToBytes(SixteenBitVariant()), ToBytes(QuantizedVariant()) };
        var scans = bases.Select(Scan).ToArray();
        int loaded = 0, rejected = 0;
        var kinds = new Dictionary<string, (int Loaded, int Rejected)>();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < Iterations; i++)
        {
            var rnd = new Random(unchecked(master * 1_000_003 + i));
            int which = rnd.Next(bases.Length);
            byte[] bytes = bases[which];
            var applied = new List<string>();
            int count = rnd.Next(4) == 0 ? rnd.Next(2, 4) : 1;
            for (int m = 0; m < count; m++)
            {
                // Structure-aware mutations need a token map of the current bytes; use the base's map
                // for the first mutation and plain byte mutations after that.
                var (next, kind) = Mutate(rnd, bytes, m == 0 ? scans[which] : null);
                bytes = next;
                applied.Add(kind);
            }
            string what = $"seed {master}, iteration {i}, base {which}, mutations {string.Join("+", applied)}";
            long before = GC.GetAllocatedBytesForCurrentThread();
            bool ok;
            try
            {
                var c = PalmCheckpoint.Load(bytes);
                ok = true;
                loaded++;
                // Whatever loads is a valid checkpoint: it saves, and reloads identically.
                AssertSame(c, PalmCheckpoint.Load(ToBytes(c)));
            }
            catch (PalmFormatException e)
            {
                ok = false;
                rejected++;
                if (e.InnerException is ArgumentOutOfRangeException && !e.Message.Contains("runs past the end"))
                    Assert.Fail($"{what}: ArgumentOutOfRangeException outside a length check: {e}");
                if (e.InnerException is { } inner && !ExpectedInner.Any(t => t.IsInstanceOfType(inner)))
                    Assert.Fail($"{what}: PalmFormatException wraps unexpected {inner.GetType().Name}: {inner}");
                if (string.IsNullOrWhiteSpace(e.Message)) Assert.Fail($"{what}: empty message");
            }
            catch (Exception e)
            {
                Assert.Fail($"{what}: threw {e.GetType().Name} instead of PalmFormatException: {e}");
                throw;
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (!ok && allocated > 16L * bytes.Length + (1 << 20))
                Assert.Fail($"{what}: a rejected load allocated {allocated} bytes for a {bytes.Length}-byte file");
            string k = applied[0];
            var (l, r) = kinds.GetValueOrDefault(k);
            kinds[k] = ok ? (l + 1, r) : (l, r + 1);
        }
        output.WriteLine($"{Iterations} mutated files in {sw.ElapsedMilliseconds} ms: {loaded} loaded, {rejected} rejected");
        foreach (var (k, (l, r)) in kinds.OrderBy(kv => kv.Key)) output.WriteLine($"  {k}: {l} loaded, {r} rejected");
        // Both outcomes must occur, or the fuzzer is not exercising the loader.
        Assert.True(loaded > 0 && rejected > Iterations / 2, $"seed {master}: {loaded} loaded, {rejected} rejected");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"seed {master}: fuzzing took {sw.Elapsed}");
    }

    private static PalmCheckpoint SixteenBitVariant()
    {
        var c = Small();
        var tensors = c.Tensors.Select((t, i) => new CheckpointTensor(t.Name, t.Shape, t.Data, (i % 3) switch
        {
            0 => TensorDType.F32,
            1 => TensorDType.F16,
            _ => TensorDType.BF16,
        })).ToList();
        var extra = new float[24];
        FillAwkward(new Random(1), extra);
        tensors.Add(new CheckpointTensor("extra.rank3", [2, 3, 4], extra, TensorDType.BF16));
        // Round through a save so the in-memory values equal what 16-bit storage can hold.
        return PalmCheckpoint.Load(ToBytes(new PalmCheckpoint { Config = c.Config, Tokenizer = c.Tokenizer, Tensors = tensors }));
    }

    // Every other tensor q8 or q4 (finite weights: quantization needs them), with and without
    // explicit group sizes, so the mutations reach the scales and group_size checks.
    private static PalmCheckpoint QuantizedVariant()
    {
        var c = Small();
        var rnd = new Random(3);
        var tensors = c.Tensors.Select((t, i) =>
        {
            if (i % 2 == 1) return t;
            var w = Enumerable.Range(0, t.Length).Select(_ => (float)(rnd.NextDouble() * 2 - 1)).ToArray();
            var dtype = i % 4 == 0 ? TensorDType.Q8 : TensorDType.Q4;
            return new CheckpointTensor(t.Name, t.Shape, Palm.Inference.Quantization.QuantizedTensor.Quantize(w, dtype, t.Shape[^1]));
        }).ToList();
        return new PalmCheckpoint { Config = c.Config, Tokenizer = c.Tokenizer, Tensors = tensors, Training = c.Training };
    }

    // A flat list of every MessagePack token (headers and scalars) with its offset.
    private static List<Token> Scan(byte[] bytes)
    {
        var tokens = new List<Token>();
        var r = new MessagePackReader(bytes);
        while (!r.End)
        {
            var t = new Token((int)r.Consumed, r.NextCode, r.NextMessagePackType);
            switch (t.Type)
            {
                case MessagePackType.Map: r.ReadMapHeader(); break;
                case MessagePackType.Array: r.ReadArrayHeader(); break;
                default: r.Skip(); break;
            }
            tokens.Add(t);
        }
        return tokens;
    }

    private static readonly byte[] InterestingBytes = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xca, 0xcb, 0xcf, 0xd3, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xc6, 0x90, 0x80, 0xa0];

    private static (byte[] Bytes, string Kind) Mutate(Random rnd, byte[] src, List<Token>? tokens)
    {
        int kind = rnd.Next(tokens is null ? 6 : 10);
        var b = (byte[])src.Clone();
        switch (kind)
        {
            case 0:
                for (int n = rnd.Next(1, 5); n > 0 && b.Length > 0; n--) b[rnd.Next(b.Length)] ^= (byte)(1 << rnd.Next(8));
                return (b, "bitflip");
            case 1:
                for (int n = rnd.Next(1, 5); n > 0 && b.Length > 0; n--)
                    b[rnd.Next(b.Length)] = rnd.Next(2) == 0 ? InterestingBytes[rnd.Next(InterestingBytes.Length)] : (byte)rnd.Next(256);
                return (b, "setbyte");
            case 2:
            {
                int at = rnd.Next(b.Length + 1);
                var ins = new byte[rnd.Next(1, 17)];
                rnd.NextBytes(ins);
                return ([.. b[..at], .. ins, .. b[at..]], "insert");
            }
            case 3:
            {
                if (b.Length == 0) return (b, "delete");
                int at = rnd.Next(b.Length), len = Math.Min(rnd.Next(1, 33), b.Length - at);
                return ([.. b[..at], .. b[(at + len)..]], "delete");
            }
            case 4:
                return (b[..rnd.Next(b.Length + 1)], "truncate");
            case 5:
            {
                // Duplicate a range elsewhere (repeats keys, entries, or tensor bodies).
                if (b.Length == 0) return (b, "duplicate");
                int from = rnd.Next(b.Length), len = Math.Min(rnd.Next(1, 200), b.Length - from), at = rnd.Next(b.Length + 1);
                return ([.. b[..at], .. b.AsSpan(from, len).ToArray(), .. b[at..]], "duplicate");
            }
            case 6 or 7:
                return (MutateLength(rnd, b, tokens!), "length");
            case 8:
            {
                // Replace a token's type byte: the value's type changes while its payload stays.
                var t = tokens![rnd.Next(tokens.Count)];
                b[t.Offset] = InterestingBytes[rnd.Next(InterestingBytes.Length)];
                return (b, "retype");
            }
            default:
                return (MutateInteger(rnd, b, tokens!), "integer");
        }
    }

    // Rewrites the length prefix of a str/bin/array/map header, keeping its width.
    private static byte[] MutateLength(Random rnd, byte[] b, List<Token> tokens)
    {
        var headers = tokens.Where(t => t.Type is MessagePackType.String or MessagePackType.Binary or MessagePackType.Array or MessagePackType.Map).ToList();
        var t = headers[rnd.Next(headers.Count)];
        byte c = t.Code;
        int width = c switch
        {
            0xc4 or 0xd9 => 1,
            0xc5 or 0xda or 0xdc or 0xde => 2,
            0xc6 or 0xdb or 0xdd or 0xdf => 4,
            _ => 0, // fix types: length in the low bits of the code
        };
        if (rnd.Next(3) == 0)
        {
            // Re-encode the header in its 32-bit form with a length near the 4 GiB limits.
            byte wide = t.Type switch
            {
                MessagePackType.String => 0xdb,
                MessagePackType.Binary => 0xc6,
                MessagePackType.Array => 0xdd,
                _ => 0xdf,
            };
            uint[] lens = [uint.MaxValue, int.MaxValue, 0x80000000, (uint)rnd.NextInt64(0, 1L << 32), (uint)rnd.Next(0, 4096)];
            uint len = lens[rnd.Next(lens.Length)];
            byte[] header = [wide, (byte)(len >> 24), (byte)(len >> 16), (byte)(len >> 8), (byte)len];
            return [.. b[..t.Offset], .. header, .. b[(t.Offset + 1 + width)..]];
        }
        if (width == 0)
        {
            int bits = c >= 0xa0 ? 5 : 4;
            int mask = (1 << bits) - 1;
            int old = c & mask;
            int[] choices = [0, 1, old - 1, old + 1, mask, rnd.Next(mask + 1)];
            b[t.Offset] = (byte)((c & ~mask) | (choices[rnd.Next(choices.Length)] & mask));
            return b;
        }
        ulong oldLen = 0;
        for (int i = 0; i < width; i++) oldLen = (oldLen << 8) | b[t.Offset + 1 + i];
        ulong max = width == 4 ? uint.MaxValue : (1UL << (8 * width)) - 1;
        ulong[] options = [0, 1, oldLen - 1, oldLen + 1, oldLen * 2, max, max / 2, (ulong)rnd.NextInt64(0, (long)max + 1)];
        ulong v = options[rnd.Next(options.Length)] & max;
        for (int i = width - 1; i >= 0; i--) { b[t.Offset + 1 + i] = (byte)v; v >>= 8; }
        return b;
    }

    // Changes an integer's value (sizes, dimensions, config fields, version, rng words).
    private static byte[] MutateInteger(Random rnd, byte[] b, List<Token> tokens)
    {
        var ints = tokens.Where(t => t.Type == MessagePackType.Integer).ToList();
        var t = ints[rnd.Next(ints.Count)];
        byte c = t.Code;
        int width = c switch { 0xcc or 0xd0 => 1, 0xcd or 0xd1 => 2, 0xce or 0xd2 => 4, 0xcf or 0xd3 => 8, _ => 0 };
        if (width == 0)
        {
            // A fixint: pick another small positive or negative value.
            b[t.Offset] = rnd.Next(3) switch { 0 => (byte)rnd.Next(0, 0x80), 1 => (byte)rnd.Next(0xe0, 0x100), _ => (byte)(c + (rnd.Next(2) == 0 ? 1 : -1)) };
            return b;
        }
        byte fill = rnd.Next(4) switch { 0 => 0x00, 1 => 0xff, 2 => 0x7f, _ => (byte)rnd.Next(256) };
        for (int i = 0; i < width; i++) b[t.Offset + 1 + i] = rnd.Next(3) == 0 ? (byte)rnd.Next(256) : fill;
        return b;
    }
}
