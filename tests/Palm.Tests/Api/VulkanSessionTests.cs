// The session API on the Vulkan backend with device-resident states (validation layer on):
// sessions at different positions step in one submission each, 32 concurrent sessions equal
// their solo runs, save/restore/fork round trips through the device copy, steps move no state
// over the bus, disposed sessions free their slots, and a state outliving its model is a clear
// ObjectDisposedException.
using Palm.Inference;
using Palm.Inference.Backends;
using Palm.Inference.Sampling;
using Palm.Tests.Gpu;
using Xunit.Abstractions;

namespace Palm.Tests.Api;

public sealed class VulkanSessionTests(ITestOutputHelper output)
{
    private static readonly TinyModel M = TinyModel.Shared;

    private static (PalmModel Model, VulkanBackend Backend) Load(bool hostSampling = false)
    {
        var backend = VulkanBackend.Create(M.Parameters, VulkanFixture.Options("api-sessions") with { HostSampling = hostSampling });
        return (PalmModel.Create(M.Parameters, M.Tokenizer, backend), backend);
    }

    /// <summary>A session's request for options (its uniform drawn from a fixed RNG) over an empty window.</summary>
    private static SampleRequest Request(GenerationOptions o, RecentTokens? recent = null, ulong seed = 1)
    {
        var q = new SampleRequest();
        q.Prepare(new SamplingSettings(o.Temperature, o.TopK, o.TopP, o.MinP, o.RepetitionPenalty, o.PresencePenalty, o.FrequencyPenalty, o.LogitBias),
            recent ?? new RecentTokens(0), new Palm.Inference.Model.Rng(seed));
        return q;
    }

    private static int StateBytes => SequenceState.FloatCount(M.Parameters.Config) * sizeof(float);

    [VulkanFact]
    public async Task Thirty_two_sessions_at_different_positions_step_in_one_submission_and_match_their_solo_runs()
    {
        const int N = 32;
        var seed = TestSeed.Next();
        var rng = new Palm.Inference.Model.Rng(seed);
        var words = TinyModel.Corpus.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // Prompts of different lengths: the sessions sit at different positions in every batch.
        var prompts = Enumerable.Range(0, N).Select(_ => string.Join(' ', Enumerable.Range(0, 1 + rng.NextInt(12)).Select(_ => words[rng.NextInt(words.Length)]))).ToArray();
        // Plain greedy rows (ids only), greedy with a bias or penalty (logits), and sampled rows.
        var options = Enumerable.Range(0, N).Select(i => new GenerationOptions
        {
            Temperature = i % 3 == 0 ? 0 : 0.9f, TopK = i % 4 == 0 ? 0 : 20, MinP = i % 5 == 0 ? 0.05f : 0,
            RepetitionPenalty = i % 6 == 3 ? 1.2f : 1, LogitBias = i % 9 == 0 ? M.AsciiOnly : null,
            MaxTokens = 12 + rng.NextInt(16), Seed = seed + (ulong)i,
        }).ToArray();

        var (model, backend) = Load();
        using (model)
        {
            var solo = new string[N];
            for (int i = 0; i < N; i++)
            {
                using var s = model.CreateSession();
                solo[i] = await SessionTests.Collect(s, prompts[i], options[i]);
            }
            // Solo sessions were disposed: their slots came back and were reused.
            Assert.Equal(0, backend.ResidentStates);
            Assert.Equal(8, backend.PoolCapacity);

            var sched = model.Scheduler;
            long submissions0 = backend.Forward.Recorder.Submissions, steps0 = sched.StepCalls, prefills0 = sched.PrefillCalls;
            var sessions = Enumerable.Range(0, N).Select(_ => model.CreateSession()).ToArray();
            var together = await Task.WhenAll(Enumerable.Range(0, N).Select(i => Task.Run(() => SessionTests.Collect(sessions[i], prompts[i], options[i]))));
            Assert.Equal(N, backend.ResidentStates);
            foreach (var s in sessions) s.Dispose();
            Assert.Equal(0, backend.ResidentStates);

            for (int i = 0; i < N; i++)
                Assert.True(solo[i] == together[i], $"Vulkan session {i} differs when batched (seed {seed}, {M.Describe}):\n  solo:    {solo[i]}\n  batched: {together[i]}");
            long steps = sched.StepCalls - steps0, prefills = sched.PrefillCalls - prefills0;
            long submissions = backend.Forward.Recorder.Submissions - submissions0;
            output.WriteLine($"largest batch {sched.MaxBatch} of {N}; {steps} batched steps, {prefills} prefills, {submissions} submissions; pool {backend.PoolCapacity} rows");
            // One submission per batched step, whatever the positions of its sessions.
            Assert.Equal(steps + prefills, submissions);
            Assert.True(sched.MaxBatch > N / 2, $"largest batched step held {sched.MaxBatch} sessions of {N}");
            Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
        }
    }

    [VulkanFact]
    public async Task Save_restore_and_fork_round_trip_through_the_device_copy()
    {
        var (model, backend) = Load();
        using (model)
        {
            using var s = model.CreateSession(new SessionOptions { Seed = 21 });
            var o = new GenerationOptions { Temperature = 1, MaxTokens = 20, LogitBias = M.AsciiOnly, RepetitionPenalty = 1.3f, PresencePenalty = 0.5f };
            await SessionTests.Collect(s, "In the beginning", o);
            Assert.True(s.StateForTests.Slot >= 0, "the generated state has no device slot");
            var saved = s.SaveState();
            using var fork = s.Fork();
            var a = await SessionTests.Collect(s, " and", o);
            var b = await SessionTests.Collect(fork, " and", o);
            Assert.Equal(a, b);

            using var other = model.CreateSession();
            await SessionTests.Collect(other, "Then it wrote", o);   // a resident state, overwritten in place
            other.RestoreState(saved);
            // Restored bytes go to the device at the next use and come back unchanged.
            Assert.Equal(saved, other.SaveState());
            var c = await SessionTests.Collect(other, " and", o);
            Assert.Equal(a, c);
            s.RestoreState(saved);
            Assert.Equal(a, await SessionTests.Collect(s, " and", o));

            // Cancelling during the prompt rolls the resident state back on the host; the next
            // call uploads it and continues as if nothing happened.
            var before = s.SaveState();
            using (var cts = new CancellationTokenSource())
            {
                cts.Cancel();
                await SessionTests.Collect(s, " more words that never get fed", o, cts.Token);
            }
            Assert.Equal(before, s.SaveState());
            Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
        }
    }

    [VulkanFact]
    public async Task Disposed_sessions_free_their_slots_and_a_state_after_its_model_is_an_ObjectDisposedException()
    {
        var (model, backend) = Load();
        var o = new GenerationOptions { Temperature = 0, MaxTokens = 4, LogitBias = M.AsciiOnly };
        var sessions = Enumerable.Range(0, 3).Select(_ => model.CreateSession()).ToArray();
        foreach (var s in sessions) await SessionTests.Collect(s, "The tokens", o);
        Assert.Equal(3, backend.ResidentStates);
        sessions[1].Dispose();
        Assert.Equal(2, backend.ResidentStates);
        using (var again = model.CreateSession())
        {
            await SessionTests.Collect(again, "The", o);
            Assert.Equal(3, backend.ResidentStates);
        }
        Assert.Equal(2, backend.ResidentStates);
        // A reset session gives its old slot back and takes one again when it next runs.
        sessions[0].Reset();
        Assert.Equal(1, backend.ResidentStates);

        model.Dispose();
        // The device copy is gone with the model: reading it is a clear error, not stale floats.
        var e = Assert.Throws<ObjectDisposedException>(() => sessions[2].SaveState());
        Assert.Contains("GPU", e.Message);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => SessionTests.Collect(sessions[2], "x", o));
        // The failed call did not leave the session busy.
        Assert.Throws<ObjectDisposedException>(() => sessions[2].Fork());
        // A session whose state is on the host (reset) still saves.
        Assert.NotEmpty(sessions[0].SaveState());
        foreach (var s in sessions) s.Dispose();
    }

    [VulkanFact]
    public void Backend_steps_move_no_state_over_the_bus()
    {
        using var backend = VulkanBackend.Create(M.Parameters, VulkanFixture.Options("api-sessions"));
        var c = M.Parameters.Config;
        int V = c.VocabSize, B = 3, hd = c.DQkv / c.NHead;
        var states = Enumerable.Range(0, B).Select(_ => backend.CreateState()).ToArray();
        var last = new float[V];
        for (int b = 0; b < B; b++) backend.Prefill(Enumerable.Range(1, 1 + 2 * b).ToArray(), states[b], last);
        var t = backend.Context.Transfers;
        var logits = new float[B * V];
        for (int step = 0; step < 4; step++)
        {
            long w0 = t.BytesWritten, r0 = t.BytesRead;
            backend.Step([1, 2, 3], states, logits);
            // Up: tokens, slots, and the per-row RoPE tables (cos and sin, hd/2 each). Down: the logits.
            Assert.Equal(B * (4 + 4 + hd * 4), t.BytesWritten - w0);
            Assert.Equal(B * V * 4, t.BytesRead - r0);
        }
        // The state comes back only when the host asks for it, once, and is then current.
        long before = t.BytesRead;
        var f = new float[states[0].Length];
        states[0].CopyTo(f);
        states[0].CopyTo(f);
        Assert.Equal(StateBytes, t.BytesRead - before);
        // A host overwrite is uploaded once, at the next use.
        states[1].CopyFrom(f);
        long w1 = t.BytesWritten;
        backend.Step([1, 2, 3], states, logits);
        Assert.Equal(StateBytes + B * (4 + 4 + hd * 4), t.BytesWritten - w1);
        Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
    }

    [VulkanFact]
    public void Greedy_rows_get_only_their_argmax_id_back()
    {
        using var backend = VulkanBackend.Create(M.Parameters, VulkanFixture.Options("api-sessions"));
        int V = M.Parameters.Config.VocabSize, B = 3;
        var greedyStates = Enumerable.Range(0, B).Select(_ => backend.CreateState()).ToArray();
        var logitStates = Enumerable.Range(0, B).Select(_ => backend.CreateState()).ToArray();
        var last = new float[V];
        for (int b = 0; b < B; b++)
        {
            var prompt = Enumerable.Range(3, 2 + 3 * b).ToArray();
            backend.Prefill(prompt, greedyStates[b], last);
            backend.Prefill(prompt, logitStates[b], last);
        }
        var t = backend.Context.Transfers;
        var logits = new float[B * V];
        var all = new float[B * V];
        var ids = new int[B];
        var tok = new[] { 5, 6, 7 };
        var greedy = Request(new GenerationOptions { Temperature = 0 });
        Assert.True(greedy.PlainArgmax);
        for (int step = 0; step < 4; step++)
        {
            Array.Fill(logits, float.NaN);
            long r0 = t.BytesRead;
            // Rows 0 and 2 greedy, row 1 wants its logits.
            backend.Step(tok, greedyStates, [greedy, null, greedy], logits, ids);
            // Down: one logits row and the ids (the argmax runs for the whole batch).
            Assert.Equal(V * 4 + B * 4, t.BytesRead - r0);
            backend.Step(tok, logitStates, all);
            Assert.Equal(-1, ids[1]);
            Numerics.AssertClose(logits.AsSpan(V, V), all.AsSpan(V, V), 0, 0, $"step {step}: the logits row of a mixed batch");
            foreach (var b in new[] { 0, 2 })
            {
                // Same device, same inputs: the argmax of the logits the other batch brought back.
                var want = Palm.Inference.Sampling.Sampler.ArgMax(all.AsSpan(b * V, V));
                Assert.True(want == ids[b], $"step {step} row {b}: id {ids[b]}, argmax of its logits {want}");
                Assert.True(float.IsNaN(logits[b * V]), $"step {step}: greedy row {b} had its logits copied back");
            }
            tok = [ids[0], 9, ids[2]];
        }
        Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
    }

    [VulkanFact]
    public async Task Greedy_generation_reads_back_one_id_per_token_and_the_text_of_the_host_argmax()
    {
        var (model, backend) = Load();
        using (model)
        {
            int V = M.Parameters.Config.VocabSize;
            var t = backend.Context.Transfers;
            var plain = new GenerationOptions { Temperature = 0, MaxTokens = 30 };
            using var a = model.CreateSession();
            long r0 = t.BytesRead, s0 = model.Scheduler.StepCalls;
            var ta = await SessionTests.Collect(a, "In the beginning", plain);
            long readA = t.BytesRead - r0, stepsA = model.Scheduler.StepCalls - s0;
            // A backend that samples on the host: the session takes the argmax of the logits it gets back.
            var (hostModel, hostBackend) = Load(hostSampling: true);
            using var _ = hostModel;
            using var b = hostModel.CreateSession();
            // A zero bias changes no logit but keeps the row off the argmax kernel.
            var onHost = plain with { LogitBias = new Dictionary<int, float> { [0] = 0f } };
            var th = hostBackend.Context.Transfers;
            r0 = th.BytesRead;
            s0 = hostModel.Scheduler.StepCalls;
            var tb = await SessionTests.Collect(b, "In the beginning", onHost);
            long readB = th.BytesRead - r0, stepsB = hostModel.Scheduler.StepCalls - s0;
            output.WriteLine($"{stepsA} greedy steps read {readA} bytes; {stepsB} host-sampled steps read {readB} bytes");
            Assert.Equal(tb, ta);
            Assert.Equal(stepsB, stepsA);
            // The prompt's last logits, then 4 bytes per generated token; against a logits row per token.
            Assert.Equal(V * 4 + stepsA * 4, readA);
            Assert.Equal(V * 4 + stepsB * V * 4, readB);
        }
    }

    [VulkanFact]
    public void Sampled_rows_get_only_their_id_back_and_the_token_the_chain_picks()
    {
        using var backend = VulkanBackend.Create(M.Parameters, VulkanFixture.Options("api-sessions") with { HostSampling = false });
        int V = M.Parameters.Config.VocabSize, B = 3;
        var sampledStates = Enumerable.Range(0, B).Select(_ => backend.CreateState()).ToArray();
        var logitStates = Enumerable.Range(0, B).Select(_ => backend.CreateState()).ToArray();
        var last = new float[V];
        for (int b = 0; b < B; b++)
        {
            var prompt = Enumerable.Range(3, 2 + 3 * b).ToArray();
            backend.Prefill(prompt, sampledStates[b], last);
            backend.Prefill(prompt, logitStates[b], last);
        }
        var window = new RecentTokens(16);
        window.AddRange([5, 6, 6, 7, 9, 9, 9]);
        var nucleus = new GenerationOptions { Temperature = 0.8f, TopK = 0, TopP = 0.9f };
        var everything = new GenerationOptions
        {
            Temperature = 1.1f, TopK = 12, MinP = 0.02f, RepetitionPenalty = 1.3f, PresencePenalty = 0.4f, FrequencyPenalty = 0.1f, LogitBias = M.AsciiOnly,
        };
        var t = backend.Context.Transfers;
        var logits = new float[B * V];
        var all = new float[B * V];
        var ids = new int[B];
        var tok = new[] { 5, 6, 7 };
        ulong seed = TestSeed.Next();
        var sampler = new TokenSampler(V);
        for (int step = 0; step < 6; step++)
        {
            var requests = new[] { Request(nucleus, window, seed + (ulong)step), null, Request(everything, window, seed + 100 + (ulong)step) };
            Array.Fill(logits, float.NaN);
            long r0 = t.BytesRead;
            backend.Step(tok, sampledStates, requests, logits, ids);
            // Down: row 1's logits and the ids; nothing of the sampled rows but their id.
            Assert.Equal(V * 4 + B * 4, t.BytesRead - r0);
            backend.Step(tok, logitStates, all);
            Assert.Equal(-1, ids[1]);
            Numerics.AssertClose(logits.AsSpan(V, V), all.AsSpan(V, V), 0, 0, $"step {step}: the logits row of a mixed batch");
            foreach (var b in new[] { 0, 2 })
            {
                var q = requests[b]!;
                Assert.True(float.IsNaN(logits[b * V]), $"step {step}: sampled row {b} had its logits copied back");
                // Same device, same inputs: what the host chain picks from the logits the other batch brought back,
                // unless float32 rounding puts a boundary within reach (SampleKernelTests).
                int want = sampler.Sample(all.AsSpan(b * V, V), q.Settings, window, q.Uniform);
                if (ids[b] != want)
                {
                    var (row, pairs) = SampleKernelTests.Inputs(q, q.Uniform);
                    var near = SampleKernelTests.Candidates(all.AsSpan(b * V, V), row, pairs);
                    Assert.True(near.Contains(ids[b]), $"step {step} row {b}: GPU sampled {ids[b]}, the host chain {want}, within rounding {{{string.Join(", ", near)}}} (seed {seed})");
                    output.WriteLine($"step {step} row {b}: GPU {ids[b]}, host {want}: within rounding of a boundary");
                }
                window.Add(ids[b]);
            }
            tok = [ids[0], 9, ids[2]];
        }
        Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
    }

    [VulkanFact]
    public async Task Sampled_generation_reads_back_one_id_per_token_and_advances_the_rng_as_host_sampling()
    {
        var (model, backend) = Load();
        var (hostModel, hostBackend) = Load(hostSampling: true);
        using (model)
        using (hostModel)
        {
            int V = M.Parameters.Config.VocabSize;
            // End-of-text banned: both runs make exactly MaxTokens tokens, so both RNGs must have taken as many draws.
            var o = new GenerationOptions
            {
                Temperature = 0.8f, TopP = 0.9f, MaxTokens = 30, Seed = TestSeed.Next(), RepetitionPenalty = 1.1f,
                LogitBias = new Dictionary<int, float> { [M.Tokenizer.EotId] = float.NegativeInfinity },
            };
            async Task<(string Text, long Read, long Steps, ulong[] Rng)> Run(PalmModel m, VulkanBackend vk)
            {
                using var s = m.CreateSession();
                long r0 = vk.Context.Transfers.BytesRead, s0 = m.Scheduler.StepCalls;
                var text = await SessionTests.Collect(s, "In the beginning", o);
                Assert.Equal(o.MaxTokens, s.LastResult!.GeneratedTokens);
                return (text, vk.Context.Transfers.BytesRead - r0, m.Scheduler.StepCalls - s0, s.RngStateForTests);
            }
            var gpu = await Run(model, backend);
            var again = await Run(model, backend);
            var host = await Run(hostModel, hostBackend);
            output.WriteLine($"GPU sampling: {gpu.Steps} steps read {gpu.Read} bytes; host sampling: {host.Steps} steps read {host.Read} bytes");
            output.WriteLine($"same text on both sides: {gpu.Text == host.Text} (may differ only within float32 rounding of a boundary)");
            // The prompt's last logits, then 4 bytes per generated token; against a logits row per token.
            Assert.Equal(V * 4 + gpu.Steps * 4, gpu.Read);
            Assert.Equal(V * 4 + host.Steps * V * 4, host.Read);
            Assert.Equal(o.MaxTokens - 1, gpu.Steps);   // the first token comes from the prompt's logits
            // Same seed, same device: the same text.
            Assert.Equal(gpu.Text, again.Text);
            // One uniform per token on either side: the session's RNG (saved state) ends where the host path's does.
            Assert.Equal(host.Rng, gpu.Rng);
            Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
            Validation.AssertClean(hostBackend.Context, nameof(VulkanSessionTests));
        }
    }

    /// <summary>
    /// The discrete-GPU memory path (no mapped device memory: every row read or write, token
    /// upload and logits download is a staged copy) and a pool that grows while it holds states.
    /// </summary>
    [VulkanFact]
    public async Task Staged_memory_and_a_growing_pool_keep_sessions_exact()
    {
        const int N = 10;   // past the first pool capacity (8): the pool grows by a device copy
        var backend = VulkanBackend.Create(M.Parameters, VulkanFixture.Options("api-staging") with { ForceStaging = true, HostSampling = false });
        using var model = PalmModel.Create(M.Parameters, M.Tokenizer, backend);
        var o = new GenerationOptions { Temperature = 0.8f, MaxTokens = 10, Seed = 5 };
        var prompts = Enumerable.Range(0, N).Select(i => string.Join(' ', TinyModel.Corpus.Split(' ').Take(1 + i))).ToArray();
        var solo = new string[N];
        for (int i = 0; i < N; i++)
        {
            using var s = model.CreateSession();
            solo[i] = await SessionTests.Collect(s, prompts[i], o);
        }
        var sessions = Enumerable.Range(0, N).Select(_ => model.CreateSession()).ToArray();
        // The first half start (and hold rows) before the rest make the pool grow.
        var first = await Task.WhenAll(Enumerable.Range(0, N / 2).Select(i => Task.Run(() => SessionTests.Collect(sessions[i], prompts[i], o))));
        var saved = sessions[0].SaveState();
        var rest = await Task.WhenAll(Enumerable.Range(N / 2, N - N / 2).Select(i => Task.Run(() => SessionTests.Collect(sessions[i], prompts[i], o))));
        Assert.Equal(16, backend.PoolCapacity);
        var together = first.Concat(rest).ToArray();
        for (int i = 0; i < N; i++)
            Assert.True(solo[i] == together[i], $"staged session {i} differs {M.Describe}:\n  solo:    {solo[i]}\n  batched: {together[i]}");
        // The rows written before the growth survived the copy.
        Assert.Equal(saved, sessions[0].SaveState());
        Assert.True(backend.Context.Transfers.StagedCopies > 0, "no staged copy ran");
        foreach (var s in sessions) s.Dispose();
        Validation.AssertClean(backend.Context, nameof(VulkanSessionTests));
    }
}
