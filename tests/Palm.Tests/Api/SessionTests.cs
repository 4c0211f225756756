// The session API on the CPU backend: greedy text against the reference model, seeds, stop
// reasons, cancellation, continuation across calls, save/restore/fork and their errors, the
// fixed state size, and one-call-at-a-time.
using System.Text;
using Palm.Inference;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Sampling;
using Palm.Inference.Tokenizer;

namespace Palm.Tests.Api;

public sealed class SessionTests
{
    private static readonly TinyModel M = TinyModel.Shared;

    internal static async Task<string> Collect(PalmSession s, string prompt, GenerationOptions o, CancellationToken ct = default)
    {
        var sb = new StringBuilder();
        await foreach (var piece in s.GenerateAsync(prompt, o, ct))
        {
            // Pieces hold whole characters: never an empty piece, never half a surrogate pair.
            Assert.False(piece.Length == 0 || char.IsHighSurrogate(piece[^1]) || char.IsLowSurrogate(piece[0]), $"bad piece '{piece}'");
            sb.Append(piece);
        }
        return sb.ToString();
    }

    private GenerationOptions Greedy(int n) => new() { Temperature = 0, MaxTokens = n, LogitBias = M.AsciiOnly };

    [Fact]
    public async Task Greedy_text_matches_the_reference_model_step_by_step()
    {
        using var model = M.Load();
        using var session = model.CreateSession();
        const string prompt = "And the model said";
        var got = await Collect(session, prompt, new GenerationOptions { Temperature = 0, MaxTokens = 20 });

        // Independent path: parallel forward of the prompt, then argmax + Step, decoded at once.
        var refModel = new CpuReferenceModel(M.Parameters);
        int V = M.Parameters.Config.VocabSize;
        var ids = M.Tokenizer.Encode(prompt);
        var state = new AodStateSet(M.Parameters.Config, 1);
        var logits = refModel.Forward(ids, 1, ids.Length, state).AsSpan((ids.Length - 1) * V, V).ToArray();
        var outIds = new List<int>();
        for (int i = 0; i < 20; i++)
        {
            int next = Sampler.ArgMax(logits);
            if (next == M.Tokenizer.EotId) break;
            outIds.Add(next);
            refModel.Step([next], state, logits);
        }
        // The session streams whole characters and, at max tokens, holds back the bytes of a
        // character the last token left unfinished (a continuation completes it); at end of
        // text it flushes them. The reference text follows the same rule.
        var dec = new StreamingDecoder(M.Tokenizer);
        string expected = string.Concat(outIds.Select(dec.Append)) + (outIds.Count < 20 ? dec.Flush() : "");
        Assert.True(expected == got, $"session text differs from the reference {M.Describe}:\n  session:   {got}\n  reference: {expected}");
        Assert.Equal(outIds.Count == 20 ? StopReason.MaxTokens : StopReason.EndOfText, session.LastResult!.StopReason);
        Assert.Equal(outIds.Count + (outIds.Count < 20 ? 1 : 0), session.LastResult.GeneratedTokens);
        Assert.Equal(ids.Length, session.LastResult.PromptTokens);
    }

    [Fact]
    public async Task Same_seed_gives_the_same_text_and_other_seeds_differ()
    {
        using var model = M.Load();
        var o = new GenerationOptions { Temperature = 1.2f, TopK = 0, TopP = 1, MaxTokens = 24, Seed = 7, LogitBias = M.AsciiOnly };
        var texts = new List<string>();
        foreach (var seed in new ulong[] { 7, 7, 8, 9 })
        {
            using var s = model.CreateSession();
            texts.Add(await Collect(s, "The tokens", o with { Seed = seed }));
        }
        Assert.Equal(texts[0], texts[1]);
        Assert.False(texts[0] == texts[2] && texts[0] == texts[3], $"three seeds gave the same text {M.Describe}: {texts[0]}");

        // The session seed works the same way when the call gives none.
        string a, b;
        using (var s = model.CreateSession(new SessionOptions { Seed = 99 })) a = await Collect(s, "The tokens", o with { Seed = null });
        using (var s = model.CreateSession(new SessionOptions { Seed = 99 })) b = await Collect(s, "The tokens", o with { Seed = null });
        Assert.Equal(a, b);
    }

    [Fact]
    public async Task Two_calls_continue_exactly_like_one()
    {
        using var model = M.Load();
        var o = new GenerationOptions { Temperature = 0.9f, MaxTokens = 30, Seed = 5, LogitBias = M.AsciiOnly };
        using var one = model.CreateSession();
        var whole = await Collect(one, "Then it wrote", o);
        using var two = model.CreateSession();
        var first = await Collect(two, "Then it wrote", o with { MaxTokens = 12 });
        var second = await Collect(two, "", o with { MaxTokens = 18, Seed = null });
        Assert.True(whole == first + second, $"split generation differs {M.Describe}:\n  one call:  {whole}\n  two calls: {first}|{second}");
        Assert.Equal(one.TokenCount, two.TokenCount);

        // MaxTokens = 0 only feeds the prompt; generating afterwards continues exactly as one call would.
        using var fed = model.CreateSession();
        Assert.Equal("", await Collect(fed, "Then it wrote", o with { MaxTokens = 0 }));
        Assert.Equal(0, fed.LastResult!.GeneratedTokens);
        Assert.Equal(M.Tokenizer.Encode("Then it wrote").Length, fed.TokenCount);
        Assert.Equal(whole, await Collect(fed, "", o));
    }

    [Fact]
    public async Task Stop_string_ends_the_text_before_it()
    {
        using var model = M.Load();
        var o = new GenerationOptions { Temperature = 0.7f, MaxTokens = 40, Seed = 11, LogitBias = M.AsciiOnly };
        string full;
        using (var s = model.CreateSession()) full = await Collect(s, "In the beginning", o);
        Assert.True(full.Length >= 8, $"need a longer text to cut {M.Describe}: '{full}'");
        var stop = full.Substring(full.Length / 2, 3);
        using var t = model.CreateSession();
        var cut = await Collect(t, "In the beginning", o with { StopStrings = ["\u0001never", stop] });
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], cut);
        Assert.Equal(StopReason.StopString, t.LastResult!.StopReason);
    }

    [Fact]
    public void Stop_matcher_holds_back_possible_prefixes_only()
    {
        var m = new StopStringMatcher(["abc", "xy"]);
        Assert.Equal(("12", false), m.Push("12a"));
        Assert.Equal(("", false), m.Push("b"));
        Assert.Equal(("abd", false), m.Push("d"));
        Assert.Equal(("", false), m.Push("x"));
        Assert.Equal(("xq", true), m.Push("qxy tail"));
        var n = new StopStringMatcher(["abc"]);
        Assert.Equal(("", false), n.Push("ab"));
        Assert.Equal("ab", n.Flush());
    }

    [Fact]
    public async Task Max_tokens_and_end_of_text_are_reported()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        var ban = new Dictionary<int, float>(M.AsciiOnly) { [M.Tokenizer.EotId] = float.NegativeInfinity };
        await Collect(s, "The", new GenerationOptions { MaxTokens = 9, Temperature = 1, LogitBias = ban, Seed = 1 });
        Assert.Equal(StopReason.MaxTokens, s.LastResult!.StopReason);
        Assert.Equal(9, s.LastResult.GeneratedTokens);
        Assert.True(s.LastResult.TokensPerSecond > 0);

        var force = new Dictionary<int, float> { [M.Tokenizer.EotId] = 1e4f };
        var text = await Collect(s, "", new GenerationOptions { MaxTokens = 9, Temperature = 0, LogitBias = force });
        Assert.Equal("", text);
        Assert.Equal(StopReason.EndOfText, s.LastResult!.StopReason);
        Assert.Equal(1, s.LastResult.GeneratedTokens);
    }

    [Fact]
    public async Task Cancellation_stops_at_a_token_and_before_prefill_leaves_the_session_unchanged()
    {
        using var model = M.Load();
        using var s = model.CreateSession(new SessionOptions { Seed = 3 });
        await Collect(s, "The model", Greedy(4));
        var saved = s.SaveState();

        using (var pre = new CancellationTokenSource())
        {
            pre.Cancel();
            var text = await Collect(s, "a long prompt that will never be read " + new string('x', 300), Greedy(50), pre.Token);
            Assert.Equal("", text);
            Assert.Equal(StopReason.Cancelled, s.LastResult!.StopReason);
            Assert.Equal(saved, s.SaveState());
        }

        using var cts = new CancellationTokenSource();
        int pieces = 0;
        var ban = new Dictionary<int, float>(M.AsciiOnly) { [M.Tokenizer.EotId] = float.NegativeInfinity };
        await foreach (var _ in s.GenerateAsync("x", new GenerationOptions { MaxTokens = 200, Temperature = 1, LogitBias = ban }, cts.Token))
            if (++pieces == 3) cts.Cancel();
        Assert.Equal(StopReason.Cancelled, s.LastResult!.StopReason);
        Assert.InRange(s.LastResult.GeneratedTokens, 3, 4);
    }

    [Fact]
    public async Task A_character_cut_between_calls_completes_in_the_next_call_even_after_restore()
    {
        using var model = M.Load();
        const int C3 = 0xC3, A9 = 0xA9; // "é" is C3 A9 in UTF-8
        Assert.Equal([(byte)C3], M.Tokenizer.TokenBytes(C3).ToArray());
        GenerationOptions Force(int id) => new() { MaxTokens = 1, Temperature = 0, LogitBias = new Dictionary<int, float> { [id] = 1e4f } };
        using var s = model.CreateSession();
        Assert.Equal("", await Collect(s, "The", Force(C3)));
        Assert.Equal(StopReason.MaxTokens, s.LastResult!.StopReason);
        var saved = s.SaveState();
        Assert.Equal("\u00e9", await Collect(s, "", Force(A9)));

        using var r = model.CreateSession();
        r.RestoreState(saved);
        Assert.Equal("\u00e9", await Collect(r, "", Force(A9)));
        using (var f = model.CreateSession())
        {
            f.RestoreState(saved);
            using var fork = f.Fork();
            Assert.Equal("\u00e9", await Collect(fork, "", Force(A9)));
        }
        // A prompt in between drops the held byte unseen; end of text releases it as U+FFFD.
        r.RestoreState(saved);
        Assert.Equal("A", await Collect(r, " x", Force('A')));
        r.RestoreState(saved);
        Assert.Equal("\ufffd", await Collect(r, "", Force(M.Tokenizer.EotId)));
        Assert.Equal(StopReason.EndOfText, r.LastResult!.StopReason);
    }

    [Fact]
    public async Task Breaking_out_of_the_loop_is_reported_and_the_session_stays_usable()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        await foreach (var _ in s.GenerateAsync("The", Greedy(50))) break;
        Assert.Equal(StopReason.Abandoned, s.LastResult!.StopReason);
        await Collect(s, " more", Greedy(3));
        Assert.NotEqual(StopReason.Abandoned, s.LastResult!.StopReason);
    }

    [Fact]
    public async Task State_size_does_not_grow_with_the_conversation()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        await Collect(s, "a", Greedy(1));
        int small = s.SaveState().Length;
        for (int i = 0; i < 4; i++) await Collect(s, "The tokens were few; the merges were fewer. ", Greedy(40));
        var big = s.SaveState();
        Assert.True(s.TokenCount > 100, $"conversation only {s.TokenCount} tokens");
        Assert.Equal(small, big.Length);
        Assert.Equal(SessionStateFormat.Length(model.Config, new SessionOptions().PenaltyWindow), big.Length);
        Assert.True(big.Length < model.SessionBytes, $"saved {big.Length} bytes, budget says {model.SessionBytes} per session");
        Assert.Equal(M.Parameters.Count * 4L + Palm.Tests.Quantization.QuantizedCpuModelTests.CpuDecoderCopyBytes(PalmCheckpoint.FromParameters(M.Parameters)), model.WeightBytes);
    }

    [Fact]
    public async Task Restore_and_fork_continue_identically()
    {
        using var model = M.Load();
        using var s = model.CreateSession(new SessionOptions { Seed = 21 });
        var o = new GenerationOptions { Temperature = 1, MaxTokens = 20, LogitBias = M.AsciiOnly, RepetitionPenalty = 1.3f, PresencePenalty = 0.5f };
        await Collect(s, "In the beginning", o);
        var saved = s.SaveState();
        using var fork = s.Fork();
        var a = await Collect(s, " and", o);
        var b = await Collect(fork, " and", o);
        Assert.Equal(a, b);

        using var other = model.CreateSession();
        other.RestoreState(saved);
        var c = await Collect(other, " and", o);
        Assert.Equal(a, c);
        s.RestoreState(saved);
        Assert.Equal(a, await Collect(s, " and", o));
    }

    [Fact]
    public async Task Restoring_bad_bytes_or_another_models_state_is_a_typed_error()
    {
        ulong seed = M.Seed + 1;
        var otherModel = new TinyModel(seed);
        using var model = M.Load();
        using var model2 = otherModel.Load();
        using var s = model.CreateSession();
        await Collect(s, "The", Greedy(3));
        var saved = s.SaveState();

        using var t = model2.CreateSession();
        Assert.Equal(SessionStateError.WrongModel, Assert.Throws<SessionStateException>(() => t.RestoreState(saved)).Error);

        var rng = new Rng(TestSeed.Next());
        for (int i = 0; i < 50; i++)
        {
            var bad = (byte[])saved.Clone();
            int at = rng.NextInt(bad.Length);
            bad[at] ^= (byte)(1 + rng.NextInt(255));
            var e = Assert.Throws<SessionStateException>(() => s.RestoreState(bad));
            Assert.True(e.Error != SessionStateError.WrongModel || at is >= 12 and < 44, $"flip at {at} gave {e.Error}");
        }
        Assert.Equal(SessionStateError.Corrupt, Assert.Throws<SessionStateException>(() => s.RestoreState(saved.AsSpan(0, saved.Length - 1))).Error);
        Assert.Equal(SessionStateError.Corrupt, Assert.Throws<SessionStateException>(() => s.RestoreState(Array.Empty<byte>())).Error);
        var v2 = (byte[])saved.Clone();
        v2[8] = 2;
        Assert.Equal(SessionStateError.UnsupportedVersion, Assert.Throws<SessionStateException>(() => s.RestoreState(v2)).Error);
        // The failed restores left the session as it was.
        Assert.Equal(saved, s.SaveState());
    }

    [Fact]
    public async Task A_session_runs_one_call_at_a_time()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        await using var e = s.GenerateAsync("The", Greedy(30)).GetAsyncEnumerator();
        Assert.True(await e.MoveNextAsync());
        var busy = Assert.Throws<InvalidOperationException>(() => s.SaveState());
        Assert.Contains("one call at a time", busy.Message);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await Collect(s, "x", Greedy(2)));
        Assert.Throws<InvalidOperationException>(() => s.Fork());
        await e.DisposeAsync();
        s.SaveState(); // free again
    }

    [Fact]
    public void Bad_options_throw_before_enumerating()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        Assert.Throws<ArgumentOutOfRangeException>(() => s.GenerateAsync("x", new GenerationOptions { TopP = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.GenerateAsync("x", new GenerationOptions { Temperature = -1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.GenerateAsync("x", new GenerationOptions { LogitBias = new Dictionary<int, float> { [model.Config.VocabSize] = 1 } }));
        Assert.Throws<ArgumentException>(() => s.GenerateAsync("x", new GenerationOptions { StopStrings = [""] }));
        Assert.Throws<ArgumentOutOfRangeException>(() => model.CreateSession(new SessionOptions { PenaltyWindow = -1 }));
    }

    [Fact]
    public async Task Generation_does_not_run_on_the_callers_thread()
    {
        using var model = M.Load();
        using var s = model.CreateSession();
        // Tokenizing and prefilling this prompt takes milliseconds: had MoveNextAsync done it on
        // the caller's thread, the returned task would already be complete.
        var e = s.GenerateAsync(string.Concat(Enumerable.Repeat(TinyModel.Corpus, 8)), Greedy(2)).GetAsyncEnumerator();
        var first = e.MoveNextAsync();
        Assert.False(first.IsCompleted, "MoveNextAsync ran the prompt on the caller's thread");
        await first;
        await e.DisposeAsync();
    }
}
