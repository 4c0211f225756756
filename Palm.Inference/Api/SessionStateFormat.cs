// The saved form of a session (PalmSession.SaveState), little-endian, format version 1:
//   "PALMSESS" | u32 version | 32-byte model id | i64 position | i32 n | n f32 AoD state
//   | 4 u64 RNG | i32 carried token (-1 none) | i32 window capacity | i32 count | capacity i32 ids
//   | i32 held count | 3 i32 held ids (HeldText) | SHA-256 of everything before it
// The window is written at full capacity so the length never depends on the conversation.
// Reading checks every field before touching the session: bad bytes give a typed error.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Palm.Inference.Backends;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Inference;

internal static class SessionStateFormat
{
    public const int Version = 1;
    private static ReadOnlySpan<byte> Magic => "PALMSESS"u8;
    private const int HashBytes = 32;

    public static int Length(PalmConfig c, int window) =>
        8 + 4 + HashBytes + 8 + 4 + SequenceState.FloatCount(c) * 4 + 32 + 4 + 4 + 4 + window * 4 + 4 + HeldText.MaxIds * 4 + HashBytes;

    public static byte[] Write(PalmModel model, SequenceState state, Rng rng, int pending, RecentTokens recent, IReadOnlyList<int> held)
    {
        var buf = new byte[Length(model.Config, recent.Capacity)];
        var w = new Writer(buf);
        w.Bytes(Magic);
        w.I32(Version);
        w.Bytes(model.Hash);
        w.I64(state.Position);
        var floats = new float[state.Length];
        state.CopyTo(floats);
        w.I32(floats.Length);
        w.Bytes(MemoryMarshal.AsBytes(floats.AsSpan()));
        foreach (var x in rng.GetState()) w.U64(x);
        w.I32(pending);
        w.I32(recent.Capacity);
        w.I32(recent.Count);
        var ids = new int[recent.Capacity];
        recent.ToArray().CopyTo(ids, 0);
        w.Bytes(MemoryMarshal.AsBytes(ids.AsSpan()));
        w.I32(held.Count);
        for (int i = 0; i < HeldText.MaxIds; i++) w.I32(i < held.Count ? held[i] : 0);
        SHA256.HashData(buf.AsSpan(0, w.Offset), buf.AsSpan(w.Offset, HashBytes));
        return buf;
    }

    public readonly record struct Parsed(SequenceState State, Rng Rng, int Pending, RecentTokens Recent, int[] HeldIds);

    public static Parsed Read(PalmModel model, ReadOnlySpan<byte> b)
    {
        static SessionStateException Corrupt(string why) => new(SessionStateError.Corrupt, "session state is corrupt: " + why);
        var c = model.Config;
        if (b.Length < 8 + 4 || !b[..8].SequenceEqual(Magic)) throw Corrupt("it does not start with the PALMSESS magic (not a Palm session state)");
        int version = BinaryPrimitives.ReadInt32LittleEndian(b[8..]);
        if (version != Version)
            throw new SessionStateException(SessionStateError.UnsupportedVersion, $"session state format version {version} is not supported (this library reads version {Version})");
        if (b.Length < 8 + 4 + HashBytes + 8 + 4 + HashBytes) throw Corrupt($"{b.Length} bytes is too short");
        Span<byte> sum = stackalloc byte[HashBytes];
        SHA256.HashData(b[..^HashBytes], sum);
        if (!sum.SequenceEqual(b[^HashBytes..])) throw Corrupt("checksum mismatch (truncated or damaged bytes)");
        var r = new Reader(b[..^HashBytes]);
        r.Skip(12);
        if (!r.Bytes(HashBytes).SequenceEqual(model.Hash))
            throw new SessionStateException(SessionStateError.WrongModel,
                $"session state was saved from another model (id {Convert.ToHexStringLower(b.Slice(12, HashBytes))[..16]}..., this model is {model.Id[..16]}...)");
        long pos = r.I64();
        if (pos < 0) throw Corrupt($"negative position {pos}");
        int n = r.I32();
        if (n != SequenceState.FloatCount(c)) throw Corrupt($"state holds {n} floats, the model needs {SequenceState.FloatCount(c)}");
        var floats = MemoryMarshal.Cast<byte, float>(r.Bytes(checked(n * 4))).ToArray();
        foreach (var f in floats) if (!float.IsFinite(f)) throw Corrupt("non-finite value in the recurrent state");
        Span<ulong> words = stackalloc ulong[4];
        for (int i = 0; i < 4; i++) words[i] = r.U64();
        if ((words[0] | words[1] | words[2] | words[3]) == 0) throw Corrupt("all-zero RNG state");
        int pending = r.I32();
        if (pending < -1 || pending >= c.VocabSize) throw Corrupt($"carried token {pending} outside [-1, {c.VocabSize})");
        int cap = r.I32(), count = r.I32();
        if (cap < 0 || cap > SessionOptions.MaxPenaltyWindow || count < 0 || count > cap) throw Corrupt($"window count {count} / capacity {cap} out of range");
        if (r.Remaining != cap * 4 + 4 + HeldText.MaxIds * 4) throw Corrupt($"{r.Remaining} bytes where the window and held ids need {cap * 4 + 4 + HeldText.MaxIds * 4}");
        var ids = MemoryMarshal.Cast<byte, int>(r.Bytes(cap * 4));
        var recent = new RecentTokens(cap);
        for (int i = 0; i < count; i++)
        {
            if ((uint)ids[i] >= (uint)c.VocabSize) throw Corrupt($"window token {ids[i]} outside [0, {c.VocabSize})");
            recent.Add(ids[i]);
        }
        int heldCount = r.I32();
        if (heldCount is < 0 or > HeldText.MaxIds) throw Corrupt($"{heldCount} held ids, at most {HeldText.MaxIds}");
        var held = new int[heldCount];
        for (int i = 0; i < HeldText.MaxIds; i++)
        {
            int id = r.I32();
            if (i >= heldCount) continue;
            if ((uint)id >= (uint)c.VocabSize) throw Corrupt($"held token {id} outside [0, {c.VocabSize})");
            held[i] = id;
        }
        var state = model.BackendImpl.CreateState();
        state.CopyFrom(floats);
        state.Position = pos;
        return new Parsed(state, new Rng(words), pending, recent, held);
    }

    private ref struct Writer(Span<byte> buf)
    {
        private readonly Span<byte> _buf = buf;
        public int Offset { get; private set; }
        public void Bytes(ReadOnlySpan<byte> s) { s.CopyTo(_buf[Offset..]); Offset += s.Length; }
        public void I32(int v) { BinaryPrimitives.WriteInt32LittleEndian(_buf[Offset..], v); Offset += 4; }
        public void I64(long v) { BinaryPrimitives.WriteInt64LittleEndian(_buf[Offset..], v); Offset += 8; }
        public void U64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(_buf[Offset..], v); Offset += 8; }
    }

    private ref struct Reader(ReadOnlySpan<byte> buf)
    {
        private readonly ReadOnlySpan<byte> _buf = buf;
        private int _o;
        public readonly int Remaining => _buf.Length - _o;
        private ReadOnlySpan<byte> Take(int n)
        {
            if (n < 0 || n > Remaining) throw new SessionStateException(SessionStateError.Corrupt, "session state is corrupt: truncated");
            var s = _buf.Slice(_o, n);
            _o += n;
            return s;
        }
        public void Skip(int n) => Take(n);
        public ReadOnlySpan<byte> Bytes(int n) => Take(n);
        public int I32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));
        public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
    }
}
