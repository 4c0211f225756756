// Owns the tests of StreamingDecoder: piecewise output equals whole decoding, and no piece ever
// carries part of a character.
using Palm.Inference.Tokenizer;
using static Palm.Tests.Tokenizer.TokenizerTestData;

namespace Palm.Tests.Tokenizer;

public class StreamingDecoderTests
{
    [Fact]
    public void RandomIdSequencesMatchWholeDecode()
    {
        var t = Trained;
        var rng = new Random(Seed + 11);
        var dec = new StreamingDecoder(t);
        for (int c = 0; c < 3000; c++)
        {
            // Half the cases are raw random ids (mostly invalid UTF-8), half encode real text.
            int[] ids = c % 2 == 0
                ? Enumerable.Range(0, rng.Next(0, 20)).Select(_ => rng.Next(3) == 0 ? rng.Next(0x80, 0x100) : rng.Next(t.VocabSize)).ToArray()
                : t.Encode(RandomText(rng, 12), allowSpecialTokens: true);
            var pieces = new List<string>();
            int pos = 0;
            while (pos < ids.Length)
            {
                int take = rng.Next(1, 4);
                take = Math.Min(take, ids.Length - pos);
                pieces.Add(take == 1 ? dec.Append(ids[pos]) : dec.Append(ids.AsSpan(pos, take)));
                pos += take;
            }
            pieces.Add(dec.Flush());
            Assert.False(dec.HasPending);
            string whole = t.Decode(ids);
            Assert.True(string.Concat(pieces) == whole,
                $"seed {Seed + 11} case {c}: ids [{string.Join(",", ids)}] streamed '{Show(string.Concat(pieces))}' vs '{Show(whole)}'");
            foreach (var p in pieces)
            {
                Assert.True(p.Length == 0 || (!char.IsHighSurrogate(p[^1]) && !char.IsLowSurrogate(p[0])),
                    $"seed {Seed + 11} case {c}: piece '{Show(p)}' splits a surrogate pair");
            }
        }
    }

    [Fact]
    public void HoldsBackPartialCharacterUntilComplete()
    {
        var dec = new StreamingDecoder(BpeTokenizer.FromMerges([]));
        // U+1F600 = F0 9F 98 80
        Assert.Equal("", dec.Append(0xF0));
        Assert.True(dec.HasPending);
        Assert.Equal("", dec.Append(0x9F));
        Assert.Equal("", dec.Append(0x98));
        Assert.Equal("😀", dec.Append(0x80));
        Assert.False(dec.HasPending);
        Assert.Equal("a", dec.Append('a'));
        Assert.Equal("", dec.Append(0xC3));
        Assert.Equal("é", dec.Append(0xA9));
        Assert.Equal("", dec.Flush());
    }

    [Fact]
    public void ReleasesReplacementAsSoonAsSequenceCannotComplete()
    {
        var dec = new StreamingDecoder(BpeTokenizer.FromMerges([]));
        Assert.Equal("", dec.Append(0xE2));
        Assert.Equal("", dec.Append(0x82));
        Assert.Equal("\uFFFDa", dec.Append('a')); // E2 82 can no longer complete
        Assert.Equal("\uFFFD", dec.Append(0xFF)); // never valid: released at once
        Assert.False(dec.HasPending);
        Assert.Equal("", dec.Append(0xF0));
        Assert.Equal("\uFFFD", dec.Flush()); // end of stream with a dangling lead byte
        Assert.Equal("b", dec.Append('b')); // flush resets
    }

    [Fact]
    public void SpecialTokensStreamAsText()
    {
        var t = Trained;
        var dec = new StreamingDecoder(t);
        Assert.Equal("<|eot|>", dec.Append(t.EotId));
        Assert.Throws<ArgumentOutOfRangeException>(() => dec.Append(t.VocabSize));
    }
}
