// Decodes a session's generated ids across calls. Bytes of a character cut by the end of a call
// (max tokens, cancellation) wait for the next call instead of becoming U+FFFD, and the ids that
// hold them (at most 3: each holds at least one of at most 3 pending bytes) are saved with the
// state, so a restored session completes the character the same way.
using Palm.Inference.Tokenizer;

namespace Palm.Inference;

internal sealed class HeldText(BpeTokenizer tokenizer)
{
    public const int MaxIds = 3;
    private readonly StreamingDecoder _decoder = new(tokenizer);
    private readonly List<int> _ids = new(MaxIds);

    /// <summary>The ids whose bytes are still held (replaying them rebuilds the decoder).</summary>
    public IReadOnlyList<int> Ids => _ids;

    public string Append(int id)
    {
        var text = _decoder.Append(id);
        // Once anything comes out, every earlier byte is resolved: what is still held came from this id.
        if (!_decoder.HasPending) _ids.Clear();
        else if (text.Length > 0) { _ids.Clear(); _ids.Add(id); }
        else _ids.Add(id);
        return text;
    }

    /// <summary>Ends the text: held bytes become U+FFFD.</summary>
    public string Flush()
    {
        _ids.Clear();
        return _decoder.Flush();
    }

    /// <summary>Drops held bytes unseen (new prompt text comes between them and what follows).</summary>
    public void Reset()
    {
        _ids.Clear();
        _decoder.Reset();
    }

    /// <summary>Rebuilds the held state from <see cref="Ids"/> of another decoder.</summary>
    public void Load(IEnumerable<int> ids)
    {
        Reset();
        foreach (int id in ids.ToArray()) Append(id);
    }
}
