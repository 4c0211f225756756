// Save/load fidelity of .palm checkpoints: bit-exact floats, every section, file and stream paths,
// 16-bit storage types, atomic file replacement, and the parameter-name mirror's agreement with
// PalmParameters.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using static Palm.Tests.Checkpoint.CheckpointTestData;

namespace Palm.Tests.Checkpoint;

public sealed class CheckpointRoundTripTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("palm-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void StreamRoundTripIsBitExact(int seed)
    {
        var original = RandomCheckpoint(seed);
        var loaded = PalmCheckpoint.Load(new MemoryStream(ToBytes(original)));
        AssertSame(original, loaded);
        // Saving what was loaded gives the same bytes: nothing is lost or reordered.
        Assert.Equal(ToBytes(original), ToBytes(loaded));
    }

    [Fact]
    public void ParametersRoundTripThroughFile()
    {
        var rnd = new Random(11);
        var config = RandomConfig(rnd);
        var p = RandomParameters(rnd, config);
        var training = RandomTraining(rnd, p);
        var tok = RandomTokenizer(rnd, config);
        string path = Path.Combine(_dir, "model.palm");
        PalmCheckpoint.FromParameters(p, tok, training).Save(path);

        var loaded = PalmCheckpoint.Load(path);
        var q = loaded.ToParameters();
        Assert.Equal(config, q.Config);
        Assert.Equal(p.All.Select(t => t.Name), q.All.Select(t => t.Name));
        foreach (var t in p.All) AssertBitsEqual(t.Data, q[t.Name].Data, t.Name);
        AssertSame(PalmCheckpoint.FromParameters(p, tok, training), loaded);
        Assert.Equal(new Rng(training.RngState).NextU64(), new Rng(loaded.Training!.RngState).NextU64());
    }

    [Fact]
    public void FromParametersCopiesData()
    {
        var p = new PalmParameters(PalmConfig.Tiny with { VocabSize = 16 });
        var c = PalmCheckpoint.FromParameters(p);
        p.Embed.Data[0] = 42;
        Assert.Equal(0f, c.Tensors[0].Data[0]);
    }

    [Fact]
    public void MinimalCheckpointWithoutOptionalSections()
    {
        var original = RandomCheckpoint(21, withTraining: false, withTokenizer: false);
        var loaded = PalmCheckpoint.Load(ToBytes(original));
        Assert.Null(loaded.Training);
        Assert.Null(loaded.Tokenizer);
        AssertSame(original, loaded);
    }

    [Fact]
    public void NonParameterTensorsOfAnyRankRoundTrip()
    {
        var config = PalmConfig.Tiny with { VocabSize = 8, NEmbd = 4, DQkv = 16, DRank = 0, NLayer = 1 };
        var data = new float[2 * 3 * 4];
        FillAwkward(new Random(3), data);
        var c = new PalmCheckpoint
        {
            Config = config,
            Tensors = [new CheckpointTensor("extra.rank3", [2, 3, 4], data), new CheckpointTensor("extra.rank1", [1], [-0f])],
        };
        var loaded = PalmCheckpoint.Load(ToBytes(c));
        AssertSame(c, loaded);
        var e = Assert.Throws<PalmFormatException>(loaded.ToParameters);
        Assert.Contains("'extra.rank3' is not a parameter of this config", e.Message);
    }

    [Fact]
    public void SixteenBitStorageRoundsOnSaveAndWidensOnLoad()
    {
        float[] values = [1f, -0f, 1 + 1f / 256, 1 + 3f / 256, 65504f, 1e-8f, float.NaN, float.NegativeInfinity, 3.14159f];
        var config = PalmConfig.Tiny with { VocabSize = 8 };
        var c = new PalmCheckpoint
        {
            Config = config,
            Tensors =
            [
                new CheckpointTensor("h", [values.Length], values, TensorDType.F16),
                new CheckpointTensor("b", [values.Length], values, TensorDType.BF16),
            ],
        };
        var loaded = PalmCheckpoint.Load(ToBytes(c));
        Assert.Equal(TensorDType.F16, loaded.Tensors[0].Storage);
        Assert.Equal(TensorDType.BF16, loaded.Tensors[1].Storage);
        AssertBitsEqual(values.Select(v => (float)(Half)v).ToArray(), loaded.Tensors[0].Data, "f16");
        // bf16 keeps 7 mantissa bits: 1 + 2^-8 is a tie that rounds to even (1), 1 + 3*2^-8 rounds up to 1 + 2^-6.
        var b = loaded.Tensors[1].Data;
        Assert.Equal(1f, b[0]);
        Assert.Equal(0x80000000u, BitConverter.SingleToUInt32Bits(b[1]));
        Assert.Equal(1f, b[2]);
        Assert.Equal(1 + 1f / 64, b[3]);
        Assert.Equal(65536f, b[4]);
        Assert.True(float.IsNaN(b[6]));
        Assert.Equal(float.NegativeInfinity, b[7]);
        Assert.Equal(3.140625f, b[8]);
        // Saving the widened values again is exact: they are representable.
        AssertSame(loaded, PalmCheckpoint.Load(ToBytes(loaded)));
    }

    [Fact]
    public void SixteenBitCodecsAreStableForEveryValue()
    {
        // Widening then narrowing must give back the stored value, so a loaded 16-bit checkpoint saves
        // back to the same bytes (NaN payloads included for bf16; f16 NaNs are quieted once on load).
        for (int i = 0; i <= ushort.MaxValue; i++)
        {
            ushort b = (ushort)i;
            Assert.Equal(b, FloatBits.ToBFloat16(FloatBits.FromBFloat16(b)));
            float h = FloatBits.FromHalf(b);
            ushort h16 = BitConverter.HalfToUInt16Bits((Half)h);
            if (!float.IsNaN(h)) Assert.Equal(b, h16);
            else Assert.Equal(BitConverter.SingleToUInt32Bits(h), BitConverter.SingleToUInt32Bits(FloatBits.FromHalf(h16)));
        }
        Assert.True(float.IsNaN(FloatBits.FromBFloat16(FloatBits.ToBFloat16(BitConverter.UInt32BitsToSingle(0x7F800001)))));
    }

    [Fact]
    public void LargeFileLoadsFromNonSeekableDribblingStream()
    {
        // Big enough (about 1 MiB) that the reader's chunk chain has several segments and tensors straddle them.
        var config = new PalmConfig { VocabSize = 4000, NEmbd = 32, NHead = 2, DQkv = 16, DRank = 0, NLayer = 1 }.Validated();
        var rnd = new Random(5);
        var p = RandomParameters(rnd, config);
        var c = PalmCheckpoint.FromParameters(p);
        var c16 = new PalmCheckpoint
        {
            Config = config,
            Tensors = c.Tensors.Select(t => new CheckpointTensor(t.Name, t.Shape, t.Data, TensorDType.F16)).ToList(),
        };
        foreach (var original in new[] { c, c16 })
        {
            byte[] bytes = ToBytes(original);
            Assert.True(bytes.Length > 256 * 1024);
            var fromDribble = PalmCheckpoint.Load(new DribbleStream(bytes, 7919));
            AssertSame(PalmCheckpoint.Load(bytes), fromDribble);
        }
    }

    [Fact]
    public void SaveToPathLeavesNoTemporaryFileAndReplaces()
    {
        string path = Path.Combine(_dir, "a.palm");
        var first = RandomCheckpoint(31);
        first.Save(path);
        var second = RandomCheckpoint(32);
        second.Save(path);
        Assert.Equal(new[] { "a.palm" }, Directory.GetFiles(_dir).Select(Path.GetFileName));
        AssertSame(second, PalmCheckpoint.Load(path));
    }

    [Fact]
    public void FailedSaveKeepsPreviousFileIntact()
    {
        string path = Path.Combine(_dir, "b.palm");
        var previous = RandomCheckpoint(41);
        previous.Save(path);
        byte[] before = File.ReadAllBytes(path);

        var next = RandomCheckpoint(42);
        int size = ToBytes(next).Length;
        foreach (int failAt in new[] { 0, 1, size / 3, size - 1 })
        {
            var e = Assert.Throws<IOException>(() => next.Save(path, s => new FailingStream(s, failAt)));
            Assert.Contains("disk full", e.Message);
            Assert.Equal(before, File.ReadAllBytes(path));
            Assert.Equal(new[] { "b.palm" }, Directory.GetFiles(_dir).Select(Path.GetFileName));
        }

        // An invalid checkpoint is refused before any file is touched.
        var invalid = new PalmCheckpoint { Config = previous.Config, Tensors = [previous.Tensors[0], previous.Tensors[0]] };
        Assert.Throws<PalmFormatException>(() => invalid.Save(path));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(new[] { "b.palm" }, Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void ParameterLayoutMatchesPalmParameters()
    {
        var rnd = new Random(99);
        for (int i = 0; i < 200; i++)
        {
            var config = RandomConfig(rnd);
            var p = new PalmParameters(config);
            var expected = ParameterLayout.Expected(config).ToList();
            Assert.Equal(p.All.Select(t => (t.Name, t.Rows, t.Cols)), expected.Select(e => (e.Name, e.Rows, e.Cols)));
            Assert.Equal(p.All.Count, ParameterLayout.ExpectedCount(config));
            foreach (var t in p.All)
            {
                Assert.True(ParameterLayout.TryGetShape(config, t.Name, out int r, out int c), t.Name);
                Assert.Equal((t.Rows, t.Cols), (r, c));
            }
            string wrongFactor = config.DRank > 0 ? "unembed.w" : "unembed.w1";
            foreach (var name in new[] { "blocks.01.qkv.w1", "blocks.+0.qkv.w", $"blocks.{config.NLayer}.qkv.w1", $"blocks.{config.NLayer}.qkv.w",
                         wrongFactor, "embed", "blocks.0.qkv", "blocks.0.ffn.w", "unembed.w3", "" })
                Assert.False(ParameterLayout.TryGetShape(config, name, out _, out _), name);
        }
    }
}

/// <summary>A read-only, non-seekable stream that returns at most a few bytes per read.</summary>
internal sealed class DribbleStream(byte[] data, int maxPerRead) : Stream
{
    private int _pos;
    public override int Read(byte[] buffer, int offset, int count)
    {
        int n = Math.Min(Math.Min(count, maxPerRead), data.Length - _pos);
        Array.Copy(data, _pos, buffer, offset, n);
        _pos += n;
        return n;
    }
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>Passes writes through until <c>failAt</c> bytes, then fails like a full disk.</summary>
internal sealed class FailingStream(Stream inner, long failAt) : Stream
{
    private long _written;
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (_written + buffer.Length > failAt)
        {
            int ok = (int)(failAt - _written);
            inner.Write(buffer[..ok]);
            _written = failAt;
            throw new IOException("disk full (simulated)");
        }
        inner.Write(buffer);
        _written += buffer.Length;
    }
    public override void Flush() => inner.Flush();
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
