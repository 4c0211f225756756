// Owns incremental decoding for generation: ids arrive one at a time and only complete characters
// leave, so a multi-byte UTF-8 character split across tokens is never shown half-formed.
using System.Text;

namespace Palm.Inference.Tokenizer;

/// <summary>
/// Decodes a stream of token ids incrementally. The concatenation of everything returned by
/// <see cref="Append(int)"/> and a final <see cref="Flush"/> equals <see cref="BpeTokenizer.Decode(ReadOnlySpan{int})"/>
/// of the whole sequence.
/// </summary>
/// <remarks>
/// Bytes that may still begin a valid UTF-8 character are held back (at most 3). Once a held sequence can no
/// longer complete, it is released at once as U+FFFD, following the same maximal-subpart rule as whole decoding.
/// A surrogate pair (a character above U+FFFF) is always returned whole. Not thread-safe.
/// </remarks>
public sealed class StreamingDecoder
{
    private readonly BpeTokenizer _tokenizer;
    // System.Text.Decoder keeps exactly the "incomplete but still valid prefix" state we need and applies
    // the same replacement rule as Encoding.UTF8.GetString, so the pieces concatenate to the whole decode.
    private readonly Decoder _decoder = new UTF8Encoding(false, false).GetDecoder();
    private char[] _chars = new char[64];

    /// <summary>Creates a decoder for ids of <paramref name="tokenizer"/>.</summary>
    public StreamingDecoder(BpeTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
    }

    /// <summary>Whether bytes of an incomplete character are being held back.</summary>
    public bool HasPending { get; private set; }

    /// <summary>Adds one id and returns the text it completes (possibly empty).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is not in the vocabulary.</exception>
    public string Append(int id) => Convert(_tokenizer.TokenBytes(id), flush: false);

    /// <summary>Adds several ids and returns the text they complete (possibly empty).</summary>
    public string Append(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(Append(id));
        return sb.ToString();
    }

    /// <summary>Ends the stream: held-back bytes that never completed become U+FFFD. The decoder is then reset.</summary>
    public string Flush() => Convert([], flush: true);

    /// <summary>Drops any held-back bytes without emitting them.</summary>
    public void Reset()
    {
        _decoder.Reset();
        HasPending = false;
    }

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int need = _decoder.GetCharCount(bytes, flush);
        if (need > _chars.Length) _chars = new char[Math.Max(need, _chars.Length * 2)];
        int n = _decoder.GetChars(bytes, _chars, flush);
        // Pending state: bytes went in but the decoder is holding some of them back.
        HasPending = !flush && HasPendingBytes();
        return n == 0 ? string.Empty : new string(_chars, 0, n);
    }

    private bool HasPendingBytes()
    {
        // Asking how many chars an empty flushing call would produce reveals held state without consuming it.
        return _decoder.GetCharCount([], flush: true) > 0;
    }
}
