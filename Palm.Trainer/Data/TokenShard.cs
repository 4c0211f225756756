// Reading token shards: a shard file is opened once, checked end to end (whole uint16 count,
// count as the manifest says, every id < vocab_size) in bounded memory, then read window by window
// with positional reads, so training never holds the corpus in memory.
using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Data;

/// <summary>A contiguous run of token ids that windows are cut from.</summary>
public interface ITokenSegment
{
    /// <summary>Number of tokens.</summary>
    long Length { get; }
    /// <summary>Copies tokens [offset, offset + dst.Length) into <paramref name="dst"/>.</summary>
    void Read(long offset, Span<int> dst);
}

/// <summary>Tokens held in memory (the demo's single encoded text).</summary>
public sealed class ArraySegmentTokens(int[] tokens) : ITokenSegment
{
    public long Length => tokens.Length;
    public void Read(long offset, Span<int> dst) => tokens.AsSpan(checked((int)offset), dst.Length).CopyTo(dst);
}

/// <summary>One shard file of raw little-endian uint16 ids, validated on open.</summary>
public sealed class TokenShard : ITokenSegment, IDisposable
{
    private readonly SafeFileHandle _handle;

    public string Path { get; }
    public long Length { get; }

    private TokenShard(string path, SafeFileHandle handle, long length) { Path = path; _handle = handle; Length = length; }

    /// <summary>Opens and checks a shard.</summary>
    /// <param name="path">The shard file.</param>
    /// <param name="vocabSize">Every id must be below this.</param>
    /// <param name="expectedTokens">The manifest's count, or null when the file stands alone.</param>
    /// <exception cref="UserError">Missing file, odd byte length, wrong count or an id &gt;= vocab_size; the message names the file.</exception>
    public static TokenShard Open(string path, int vocabSize, long? expectedTokens = null)
    {
        if (!File.Exists(path)) throw new UserError($"shard '{path}' not found");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            long bytes = RandomAccess.GetLength(handle);
            if (bytes % 2 != 0) throw new UserError($"shard '{path}': {bytes} bytes is an odd length, not a whole number of uint16 tokens (truncated or not a shard)");
            long n = bytes / 2;
            if (expectedTokens is long e && e != n) throw new UserError($"shard '{path}': holds {n} tokens but the manifest says {e}");
            var buf = new byte[1 << 20];
            for (long pos = 0; pos < bytes;)
            {
                int got = RandomAccess.Read(handle, buf.AsSpan(0, (int)Math.Min(buf.Length, bytes - pos)), pos);
                if (got <= 0) throw new UserError($"shard '{path}': unexpected end of file at byte {pos}");
                for (int i = 0; i + 1 < got; i += 2)
                {
                    int id = BinaryPrimitives.ReadUInt16LittleEndian(buf.AsSpan(i));
                    if (id >= vocabSize) throw new UserError($"shard '{path}': token id {id} at index {(pos + i) / 2} is >= vocab_size {vocabSize}");
                }
                pos += got;
            }
            return new TokenShard(path, handle, n);
        }
        catch { handle.Dispose(); throw; }
    }

    public void Read(long offset, Span<int> dst)
    {
        var bytes = new byte[2 * dst.Length];
        int got = RandomAccess.Read(_handle, bytes, 2 * offset);
        if (got != bytes.Length) throw new UserError($"shard '{Path}': short read at token {offset} (file changed while training?)");
        for (int i = 0; i < dst.Length; i++) dst[i] = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(2 * i));
    }

    public void Dispose() => _handle.Dispose();
}

/// <summary>The segments of one split; windows never cross a segment boundary.</summary>
public sealed class TokenSplit(IReadOnlyList<ITokenSegment> segments) : IDisposable
{
    public IReadOnlyList<ITokenSegment> Segments { get; } = segments;
    public long Tokens => Segments.Sum(s => s.Length);

    /// <summary>Number of distinct (T+1)-token windows (start positions) over all segments.</summary>
    public long WindowStarts(int t) => Segments.Sum(s => Math.Max(0, s.Length - t));

    /// <summary>Window number <paramref name="index"/> in [0, <see cref="WindowStarts"/>): inputs and next-token targets.</summary>
    public void Window(long index, int t, Span<int> x, Span<int> y)
    {
        Span<int> w = t + 1 <= 4096 ? stackalloc int[t + 1] : new int[t + 1];
        foreach (var s in Segments)
        {
            long starts = Math.Max(0, s.Length - t);
            if (index < starts)
            {
                s.Read(index, w);
                w[..t].CopyTo(x);
                w[1..].CopyTo(y);
                return;
            }
            index -= starts;
        }
        throw new ArgumentOutOfRangeException(nameof(index));
    }

    /// <summary>Opens the shards of <paramref name="split"/> listed in a prepared folder's manifest.</summary>
    /// <exception cref="UserError">Missing or corrupt manifest or shard.</exception>
    public static TokenSplit OpenPrepared(string folder, string split, out ShardManifest manifest)
    {
        manifest = ShardManifest.Load(folder);
        var shards = new List<ITokenSegment>();
        try
        {
            foreach (var s in manifest.Shards.Where(s => s.Split == split))
                shards.Add(TokenShard.Open(System.IO.Path.Combine(folder, s.File), manifest.VocabSize, s.Tokens));
        }
        catch { foreach (var s in shards) ((IDisposable)s).Dispose(); throw; }
        return new TokenSplit(shards);
    }

    public void Dispose()
    {
        foreach (var s in Segments) (s as IDisposable)?.Dispose();
    }
}
