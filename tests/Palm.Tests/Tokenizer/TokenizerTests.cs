// Owns the behavioural tests of BpeTokenizer: split pattern, round-trips on arbitrary strings,
// lone surrogates, special tokens, vocabulary layout, FromMerges validation and decode errors.
using System.Text;
using Palm.Inference.Tokenizer;
using static Palm.Tests.Tokenizer.TokenizerTestData;

namespace Palm.Tests.Tokenizer;

public class TokenizerTests
{
    // Expected splits produced by Python's `regex` module with the upstream (possessive) pattern.
    [Theory]
    [InlineData("Hello world's 12345 tests!!\n\n  indented\tTAB", new[] { "Hello", " world", "'s", " ", "123", "45", " tests", "!!\n\n", " ", " indented", "\tTAB" })]
    [InlineData("I'M you'll WE'VE they're", new[] { "I", "'M", " you", "'ll", " WE", "'VE", " they", "'re" })]
    [InlineData("x   = 1234567;\r\n\r\n", new[] { "x", "  ", " =", " ", "123", "456", "7", ";\r\n\r\n" })]
    [InlineData("日本語のテキスト、句読点。 Привет, мир!", new[] { "日本語のテキスト", "、句読点", "。", " Привет", ",", " мир", "!" })]
    [InlineData("e\u0301t\u00e9 caf\u00e9", new[] { "e", "\u0301t\u00e9", " caf\u00e9" })]
    [InlineData("a\u00a0b  \u3000c", new[] { "a", "\u00a0b", "  ", "\u3000c" })]
    [InlineData("foo()\n    bar--baz...?!  ", new[] { "foo", "()\n", "   ", " bar", "--", "baz", "...?!", "  " })]
    [InlineData("👍🏽 ok 👨‍👩‍👧", new[] { "👍🏽", " ok", " 👨‍👩‍👧" })]
    [InlineData("  \n\n \n x", new[] { "  \n\n \n", " x" })]
    public void SplitPatternMatchesUpstream(string text, string[] expected)
    {
        var actual = SplitPattern.Gpt4Regex().Matches(text).Select(m => m.Value).ToArray();
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void VocabularyLayout()
    {
        var t = Trained;
        Assert.Equal(600, t.Merges.Count);
        Assert.Equal(256 + 600 + 4, t.VocabSize);
        Assert.Equal(BpeTokenizer.DefaultSpecialTokens, t.SpecialTokens);
        Assert.Equal(856, t.SotId);
        Assert.Equal(857, t.EotId);
        Assert.Equal(858, t.PadId);
        Assert.Equal(859, t.SepId);
        Assert.Equal(t.EotId, t.SpecialTokenId("<|eot|>"));
        Assert.Throws<ArgumentException>(() => t.SpecialTokenId("<|nope|>"));
        Assert.Equal(SplitPattern.Gpt4, t.Pattern);
        for (int i = 0; i < t.Merges.Count; i++)
        {
            var (l, r) = t.Merges[i];
            Assert.Equal([.. t.TokenBytes(l).ToArray(), .. t.TokenBytes(r).ToArray()], t.TokenBytes(256 + i).ToArray());
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void RandomStringsRoundTrip(int which)
    {
        var tok = which == 0 ? Trained : BpeTokenizer.FromMerges([]);
        var rng = new Random(Seed + which);
        for (int i = 0; i < 2000; i++)
        {
            string s = RandomText(rng);
            var ids = tok.Encode(s);
            string back = tok.Decode(ids);
            Assert.True(back == s, $"seed {Seed + which} case {i}: '{Show(s)}' decoded as '{Show(back)}'");
            Assert.True(ids.All(id => !tok.IsSpecial(id)), $"seed {Seed + which} case {i}: special id from plain encode of '{Show(s)}'");
        }
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("\0\u0001\u001f\u007f")]
    [InlineData("                                        \n\n\n\t\t")]
    [InlineData("0123456789012345678901234567890")]
    [InlineData("ZWJ 👩‍💻 flag 🇯🇵 skin 🤝🏿")]
    [InlineData("Zalgo: z̷̢̛̛a̶l̷g̶o̸")]
    [InlineData("mixed: abc日本語абв١٢٣ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")]
    public void EdgeCasesRoundTrip(string s)
    {
        Assert.Equal(s, Trained.Decode(Trained.Encode(s)));
        Assert.Equal(s, Trained.Decode(Trained.Encode(s, allowSpecialTokens: true)));
    }

    [Fact]
    public void EmptyStringHasNoTokens()
    {
        Assert.Empty(Trained.Encode(""));
        Assert.Equal("", Trained.Decode(Array.Empty<int>()));
    }

    [Fact]
    public void LoneSurrogatesDecodeAsReplacementCharacter()
    {
        var rng = new Random(Seed + 7);
        for (int i = 0; i < 1000; i++)
        {
            var sb = new StringBuilder(RandomText(rng, 8));
            int k = rng.Next(1, 4);
            for (int j = 0; j < k; j++)
            {
                char lone = (char)(rng.Next(2) == 0 ? rng.Next(0xD800, 0xDC00) : rng.Next(0xDC00, 0xE000));
                sb.Insert(rng.Next(sb.Length + 1), lone);
            }
            string s = sb.ToString();
            string expected = ReplaceLoneSurrogates(s);
            string back = Trained.Decode(Trained.Encode(s));
            Assert.True(back == expected, $"seed {Seed + 7} case {i}: '{Show(s)}' decoded as '{Show(back)}', expected '{Show(expected)}'");
        }
        Assert.Equal("a\uFFFDb\uFFFD", Trained.Decode(Trained.Encode("a\uD800b\uDFFF")));
        Assert.Equal("\uFFFD\uFFFD", Trained.Decode(Trained.Encode("\uDC00\uD800"))); // reversed pair is two lone halves
    }

    [Fact]
    public void SpecialTokensAllowedOrPlain()
    {
        var t = Trained;
        string text = "Hi<|sot|>there<|eot|><|eot|> end<|sep|>x<|pad|>";
        var allowed = t.Encode(text, allowSpecialTokens: true);
        Assert.Equal(4 + 1, allowed.Count(t.IsSpecial));
        Assert.Equal(2, allowed.Count(id => id == t.EotId));
        Assert.Contains(t.SotId, allowed);
        Assert.Equal(t.PadId, allowed[^1]);
        Assert.Equal(text, t.Decode(allowed));

        var plain = t.Encode(text);
        Assert.DoesNotContain(plain, t.IsSpecial);
        Assert.True(plain.Length > allowed.Length);
        Assert.Equal(text, t.Decode(plain));

        Assert.Equal([t.EotId], t.Encode("<|eot|>", allowSpecialTokens: true));
        var eotPlain = t.Encode("<|eot|>");
        Assert.True(eotPlain.Length > 1, "a special token treated as text must take several ordinary ids");
        Assert.Equal("<|eot|>", t.Decode(eotPlain));
        // Ordinary text around specials encodes as it would alone.
        Assert.Equal([.. t.Encode("Hello"), t.SepId, .. t.Encode(" world")], t.Encode("Hello<|sep|> world", true));
    }

    [Fact]
    public void OverlappingSpecialTokensPreferTheLongest()
    {
        var t = BpeTokenizer.FromMerges([], ["<|a|>", "<|a|>b"]);
        Assert.Equal([257], t.Encode("<|a|>b", true));
        Assert.Equal([256, 'c'], t.Encode("<|a|>c", true));
    }

    [Fact]
    public void FromMergesRoundTripsTrainedTokenizer()
    {
        var t = Trained;
        var copy = BpeTokenizer.FromMerges(t.Merges, t.SpecialTokens);
        Assert.Equal(t.VocabSize, copy.VocabSize);
        var rng = new Random(Seed + 3);
        for (int i = 0; i < 200; i++)
        {
            string s = RandomText(rng);
            Assert.True(t.Encode(s, true).SequenceEqual(copy.Encode(s, true)), $"seed {Seed + 3} case {i}");
        }
    }

    [Fact]
    public void FromMergesValidates()
    {
        var e = Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([(97, 98), (256, 257)]));
        Assert.Contains("Merge 1", e.Message);
        Assert.Contains("257", e.Message);
        Assert.Contains("0..256", e.Message);
        e = Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([(-1, 98)]));
        Assert.Contains("Merge 0", e.Message);
        e = Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([(97, 98), (99, 256), (97, 98)]));
        Assert.Contains("Merge 2", e.Message);
        Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([(256, 97)]));
        Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([], ["<|a|>", ""]));
        Assert.Throws<ArgumentException>(() => BpeTokenizer.FromMerges([], ["<|a|>", "<|a|>"]));
        // Ids created by earlier merges are fine.
        Assert.Equal(256 + 2 + 4, BpeTokenizer.FromMerges([(97, 98), (256, 99)]).VocabSize);
    }

    [Fact]
    public void MergesApplyByRank()
    {
        // (b,c) ranks before (a,b): "abc" must become [a, bc], never [ab, c].
        var t = BpeTokenizer.FromMerges([(98, 99), (97, 98), (256, 256)]);
        Assert.Equal(['a', 256], t.Encode("abc"));
        Assert.Equal([257, 'd'], t.Encode("abd"));
        Assert.Equal([258, 'b'], t.Encode("bcbcb")); // (b,c) twice, then the rank-2 merge of the two bc's
        // A token reachable by another merge path is not used: pair ranks, not byte-sequence ranks (unlike tiktoken).
        Assert.Equal(['a', 256], BpeTokenizer.FromMerges([(98, 99), (97, 98), (257, 99)]).Encode("abc"));
    }

    [Fact]
    public void DecodeUnknownIdThrowsNamingTheId()
    {
        var t = Trained;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => t.Decode([1, t.VocabSize]));
        Assert.Contains(t.VocabSize.ToString(), e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => t.Decode([-5]));
        Assert.Contains("-5", e.Message);
    }

    [Fact]
    public void InvalidUtf8DecodesLikePythonReplace()
    {
        var t = BpeTokenizer.FromMerges([]);
        // Expected values from Python: bytes(...).decode("utf-8", errors="replace").
        Assert.Equal("\uFFFDa", t.Decode([0xE2, 0x82, 'a']));
        Assert.Equal("\uFFFD\uFFFD\uFFFD", t.Decode([0xF0, 0x80, 0x80]));
        Assert.Equal("\uFFFD\uFFFD\uFFFD", t.Decode([0xED, 0xA0, 0x80]));
        Assert.Equal("\uFFFD\uFFFD", t.Decode([0xC0, 0xAF]));
        Assert.Equal("€\uFFFD", t.Decode([0xE2, 0x82, 0xAC, 0xFF]));
    }

    [Fact]
    public void ChunkCacheStaysCorrectPastItsBound()
    {
        var t = BpeTokenizer.FromMerges(Trained.Merges);
        var sb = new StringBuilder();
        for (int i = 0; i < 70_000; i++) sb.Append(" w").Append(i.ToString("x"));
        string s = sb.ToString();
        Assert.Equal(s, t.Decode(t.Encode(s)));
        Assert.Equal(Trained.Encode(s), t.Encode(s));
    }
}
