// Glue between the tokenizer and its checkpoint form, kept here so the tokenizer knows nothing
// of the file format.
using Palm.Inference.Tokenizer;

namespace Palm.Inference.Checkpoint;

/// <summary>Conversions between <see cref="BpeTokenizer"/> and <see cref="TokenizerBlob"/>.</summary>
public static class TokenizerBlobs
{
    /// <summary>The checkpoint form of a tokenizer.</summary>
    public static TokenizerBlob ToBlob(this BpeTokenizer tokenizer) =>
        new(tokenizer.Pattern, tokenizer.Merges.ToArray(), tokenizer.SpecialTokens.ToArray());

    /// <summary>Rebuilds the tokenizer of a checkpoint.</summary>
    /// <exception cref="PalmFormatException">Unknown split pattern or invalid merges.</exception>
    public static BpeTokenizer ToTokenizer(this TokenizerBlob blob)
    {
        if (blob.Pattern != SplitPattern.Gpt4)
            throw new PalmFormatException("tokenizer.pattern: only the GPT-4 split pattern is supported by this version");
        try { return BpeTokenizer.FromMerges(blob.Merges, blob.SpecialTokens); }
        catch (ArgumentException e) { throw new PalmFormatException($"tokenizer: {e.Message}", e); }
    }
}
