// Serializes a validated PalmCheckpoint as MessagePack, streaming: tensor data goes out in
// bounded chunks, so saving never needs a second copy of the weights in memory.
using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MessagePack;
using Palm.Inference.Model;
using Palm.Inference.Quantization;

namespace Palm.Inference.Checkpoint;

internal static class CheckpointWriter
{
    // Elements encoded per GetSpan/Advance round; keeps the writer's buffer small.
    private const int ChunkElements = 16 * 1024;

    /// <summary>Writes <paramref name="c"/> (already validated) to <paramref name="stream"/>.</summary>
    public static void Write(PalmCheckpoint c, Stream stream)
    {
        var sink = new StreamBufferWriter(stream);
        var w = new MessagePackWriter(sink);
        int entries = 4 + (c.Tokenizer is null ? 0 : 1) + (c.Training is null ? 0 : 1);
        w.WriteMapHeader(entries);
        // magic and format_version come first: readers identify the file before parsing the rest.
        w.Write("magic"); w.Write(PalmCheckpoint.Magic);
        w.Write("format_version"); w.Write(PalmCheckpoint.FormatVersion);
        w.Write("config"); WriteConfig(ref w, c.Config);
        if (c.Tokenizer is { } tok) { w.Write("tokenizer"); WriteTokenizer(ref w, tok); }
        w.Write("tensors");
        w.WriteArrayHeader(c.Tensors.Count);
        foreach (var t in c.Tensors)
        {
            if (t.Quantized is { } q)
            {
                w.WriteMapHeader(6);
                w.Write("name"); w.Write(t.Name);
                WriteQuantizedBody(ref w, t.Shape, q);
                continue;
            }
            w.WriteMapHeader(4);
            w.Write("name"); w.Write(t.Name);
            WriteTensorBody(ref w, t.Shape, t.Data, t.Storage);
        }
        if (c.Training is { } tr) { w.Write("training"); WriteTraining(ref w, c, tr); }
        w.Flush();
        sink.Drain();
    }

    private static void WriteConfig(ref MessagePackWriter w, PalmConfig cfg)
    {
        w.WriteMapHeader(11);
        w.Write("vocab_size"); w.Write(cfg.VocabSize);
        w.Write("block_size"); w.Write(cfg.BlockSize);
        w.Write("n_embd"); w.Write(cfg.NEmbd);
        w.Write("n_head"); w.Write(cfg.NHead);
        w.Write("d_qkv"); w.Write(cfg.DQkv);
        w.Write("d_rank"); w.Write(cfg.DRank);
        w.Write("n_layer"); w.Write(cfg.NLayer);
        w.Write("n_recur"); w.Write(cfg.NRecur);
        w.Write("share"); w.Write(PalmConfig.ShareName(cfg.Share));
        w.Write("d_ffn"); w.Write(cfg.DFfn);
        w.Write("aod_mix"); w.Write(PalmConfig.MixName(cfg.Mix));
    }

    private static void WriteTokenizer(ref MessagePackWriter w, TokenizerBlob tok)
    {
        w.WriteMapHeader(3);
        w.Write("pattern"); w.Write(tok.Pattern);
        w.Write("merges");
        w.WriteArrayHeader(checked(2 * tok.Merges.Count));
        foreach (var (l, r) in tok.Merges) { w.Write(l); w.Write(r); }
        w.Write("special_tokens");
        w.WriteArrayHeader(tok.SpecialTokens.Count);
        foreach (var s in tok.SpecialTokens) w.Write(s);
    }

    private static void WriteTraining(ref MessagePackWriter w, PalmCheckpoint c, TrainingState tr)
    {
        w.WriteMapHeader(6);
        w.Write("step"); w.Write(tr.Step);
        w.Write("rng");
        w.WriteArrayHeader(tr.RngState.Length);
        foreach (ulong s in tr.RngState) w.Write(s);
        w.Write("data_position"); w.Write(tr.DataPosition);
        w.Write("loss_history"); WriteF32Bin(ref w, tr.LossHistory);
        // Deterministic order (tensor order, then moment names ordinal) so equal states give equal bytes.
        w.Write("optimizer");
        w.WriteMapHeader(tr.Optimizer.Count);
        foreach (var t in c.Tensors)
        {
            if (!tr.Optimizer.TryGetValue(t.Name, out var moments)) continue;
            w.Write(t.Name);
            w.WriteMapHeader(moments.Count);
            foreach (var (name, data) in moments.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                w.Write(name);
                w.WriteMapHeader(3);
                WriteTensorBody(ref w, t.Shape, data, TensorDType.F32);
            }
        }
        w.Write("extra");
        w.WriteMapHeader(tr.Extra.Count);
        foreach (var (k, v) in tr.Extra.OrderBy(kv => kv.Key, StringComparer.Ordinal)) { w.Write(k); w.Write(v); }
    }

    // The shape, dtype and data entries shared by parameter and moment tensors (3 map entries).
    private static void WriteTensorBody(ref MessagePackWriter w, IReadOnlyList<int> shape, float[] data, TensorDType dtype)
    {
        w.Write("shape");
        w.WriteArrayHeader(shape.Count);
        foreach (int d in shape) w.Write(d);
        w.Write("dtype"); w.Write(dtype.SpecName());
        w.Write("data");
        switch (dtype)
        {
            case TensorDType.F32: WriteF32Bin(ref w, data); break;
            case TensorDType.F16: WriteHalfBin(ref w, data, static f => BitConverter.HalfToUInt16Bits((Half)f)); break;
            case TensorDType.BF16: WriteHalfBin(ref w, data, FloatBits.ToBFloat16); break;
            default: throw new NotSupportedException($"dtype {dtype.SpecName()} not supported by this version");
        }
    }

    // shape, dtype, data, scales and group_size (5 map entries): the stored bytes go out as they are.
    private static void WriteQuantizedBody(ref MessagePackWriter w, IReadOnlyList<int> shape, QuantizedTensor q)
    {
        w.Write("shape");
        w.WriteArrayHeader(shape.Count);
        foreach (int d in shape) w.Write(d);
        w.Write("dtype"); w.Write(q.DType.SpecName());
        w.Write("data"); WriteRawBin(ref w, q.Data.Span);
        w.Write("scales"); WriteRawBin(ref w, q.Scales.Span);
        w.Write("group_size"); w.Write(q.GroupSize);
    }

    private static void WriteRawBin(ref MessagePackWriter w, ReadOnlySpan<byte> bytes)
    {
        w.WriteBinHeader(bytes.Length);
        for (int start = 0; start < bytes.Length; start += 4 * ChunkElements)
        {
            int n = Math.Min(4 * ChunkElements, bytes.Length - start);
            bytes.Slice(start, n).CopyTo(w.GetSpan(n));
            w.Advance(n);
        }
    }

    private static void WriteF32Bin(ref MessagePackWriter w, float[] data)
    {
        w.WriteBinHeader(checked(4 * data.Length));
        for (int start = 0; start < data.Length; start += ChunkElements)
        {
            int n = Math.Min(ChunkElements, data.Length - start);
            var src = data.AsSpan(start, n);
            var dst = w.GetSpan(4 * n)[..(4 * n)];
            if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(src).CopyTo(dst);
            else for (int i = 0; i < n; i++) BinaryPrimitives.WriteInt32LittleEndian(dst[(4 * i)..], BitConverter.SingleToInt32Bits(src[i]));
            w.Advance(4 * n);
        }
    }

    private static void WriteHalfBin(ref MessagePackWriter w, float[] data, Func<float, ushort> encode)
    {
        w.WriteBinHeader(checked(2 * data.Length));
        for (int start = 0; start < data.Length; start += ChunkElements)
        {
            int n = Math.Min(ChunkElements, data.Length - start);
            var dst = w.GetSpan(2 * n);
            for (int i = 0; i < n; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], encode(data[start + i]));
            w.Advance(2 * n);
        }
    }

    /// <summary>
    /// An <see cref="IBufferWriter{T}"/> over a stream with one reusable buffer: whenever the writer asks
    /// for more memory, everything committed so far is written out first.
    /// </summary>
    private sealed class StreamBufferWriter(Stream stream) : IBufferWriter<byte>
    {
        private byte[] _buffer = new byte[64 * 1024];
        private int _used;

        public void Advance(int count)
        {
            if (count < 0 || _used + count > _buffer.Length) throw new ArgumentOutOfRangeException(nameof(count));
            _used += count;
        }

        public Memory<byte> GetMemory(int sizeHint = 0)
        {
            sizeHint = Math.Max(sizeHint, 1);
            if (_buffer.Length - _used < sizeHint)
            {
                Drain();
                if (_buffer.Length < sizeHint) _buffer = new byte[Math.Max(sizeHint, 2 * _buffer.Length)];
            }
            return _buffer.AsMemory(_used);
        }

        public Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

        /// <summary>Writes the committed bytes to the stream.</summary>
        public void Drain()
        {
            if (_used == 0) return;
            stream.Write(_buffer, 0, _used);
            _used = 0;
        }
    }
}

/// <summary>Bit-level conversions between float32 and the 16-bit storage types.</summary>
internal static class FloatBits
{
    /// <summary>
    /// float32 to bfloat16, round to nearest even. A NaN keeps its sign and the top of its payload, so
    /// that bfloat16 -> float32 -> bfloat16 is the identity; only a NaN whose kept payload would be
    /// zero (which would read as infinity) gets the quiet bit.
    /// </summary>
    public static ushort ToBFloat16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f))
        {
            ushort h = (ushort)(bits >> 16);
            return (h & 0x7F) == 0 ? (ushort)(h | 0x40) : h;
        }
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>bfloat16 to float32 (exact).</summary>
    public static float FromBFloat16(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>float16 to float32 (exact).</summary>
    public static float FromHalf(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);
}
