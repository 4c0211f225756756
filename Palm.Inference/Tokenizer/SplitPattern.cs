// Owns the pre-tokenization split pattern (GPT-4 / cl100k) shared by the trainer and the encoder,
// in both its upstream (possessive) spelling and the .NET spelling that actually runs.
using System.Text.RegularExpressions;

namespace Palm.Inference.Tokenizer;

/// <summary>The GPT-4 (cl100k) split pattern used to cut text into chunks before byte-level BPE.</summary>
public static partial class SplitPattern
{
    /// <summary>
    /// The pattern as the upstream Palm encoder writes it (Python <c>regex</c> syntax with possessive
    /// quantifiers). This is the string stored in checkpoints so the two implementations can be compared.
    /// </summary>
    public const string Gpt4 =
        @"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

    /// <summary>
    /// The same pattern for .NET, which has no possessive quantifiers: <c>x?+</c> and <c>x++</c> are
    /// written as atomic groups, which match identically (no backtracking into the group).
    /// </summary>
    /// <remarks>
    /// .NET matches UTF-16 code units, so a letter outside the BMP (e.g. U+1D400) is not <c>\p{L}</c> here
    /// as it is for Python; such characters land in the punctuation alternative instead. Surrogate pairs are
    /// never split across chunks (both halves are category Cs and are consumed by the same run).
    /// </remarks>
    public const string Gpt4DotNet =
        @"'(?i:[sdmt]|ll|ve|re)|(?>[^\r\n\p{L}\p{N}]?)\p{L}+|\p{N}{1,3}| ?(?>[^\s\p{L}\p{N}]+)[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

    /// <summary>The compiled (source-generated) regex for <see cref="Gpt4DotNet"/>.</summary>
    [GeneratedRegex(Gpt4DotNet, RegexOptions.CultureInvariant)]
    public static partial Regex Gpt4Regex();
}
