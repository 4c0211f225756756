// The whole Vulkan forward (Palm.Gpu.Model.VulkanForward) against every golden file: parallel
// logits and loss, single-step decoding and chunked prefill with odd chunk sizes against the
// parallel GPU forward, greedy argmax, and buffer reuse. Tolerances are the golden README's
// float32 ones (logits atol 1e-4 rtol 1e-5, loss atol 1e-5).
using Palm.Gpu.Kernels;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Model;
using Palm.Tests.Golden;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu;

[Collection("Vulkan")]
public sealed class VulkanForwardTests : IDisposable
{
    const double LogitsAtol = GoldenForwardTests.LogitsAtol, LogitsRtol = GoldenForwardTests.LogitsRtol, LossAtol = GoldenForwardTests.LossAtol;

    readonly VulkanFixture fixture;
    readonly ITestOutputHelper output;

    public VulkanForwardTests(VulkanFixture fixture, ITestOutputHelper output)
    {
        this.fixture = fixture;
        this.output = output;
        fixture.Context?.Messenger?.Clear();
    }

    VulkanContext Ctx => fixture.Require();

    public void Dispose()
    {
        if (fixture.Context is { } ctx) Validation.AssertClean(ctx, nameof(VulkanForwardTests));
    }

    public static TheoryData<string> Files => GoldenCase.Files();

    internal static GpuModelConfig ToGpu(PalmConfig c) => Palm.Inference.Backends.GpuMapping.ToGpu(c);

    static VulkanForward Load(VulkanContext ctx, GoldenCase g) =>
        new(ctx, ToGpu(g.Config), g.Params.ToDictionary(kv => kv.Key, kv => new GpuWeight(kv.Value.Shape[0], kv.Value.Shape[1], kv.Value.Data)));

    // A low-rank, mean-mixing case when present (it exercises the most kernels), else the first file.
    static string AnyFile()
    {
        var files = GoldenCase.Directories().SelectMany(d => Directory.EnumerateFiles(d, "*.msgpack")).Order(StringComparer.Ordinal).ToList();
        return files.FirstOrDefault(f => Path.GetFileName(f).StartsWith("p1_", StringComparison.Ordinal)) ?? files[0];
    }

    static Func<int, string> LogitIndex(int T, int V) => i => $"(b={i / (T * V)}, t={i / V % T}, v={i % V})";

    [VulkanTheory, MemberData(nameof(Files))]
    public void Parallel_logits_and_loss_match_golden(string file)
    {
        var g = GoldenCase.Load(file);
        using var fwd = Load(Ctx, g);
        var logits = fwd.Forward(g.FlatTokens, g.B, g.T);
        Assert.Equal(1, fwd.Recorder.Submissions);
        Numerics.AssertClose(logits, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} GPU parallel logits", LogitIndex(g.T, g.Config.VocabSize));
        var loss = fwd.Loss(g.FlatTokens, g.FlatTargets, g.B, g.T);
        Assert.Equal(2, fwd.Recorder.Submissions);
        output.WriteLine($"{g.Name}: max |logits - golden| {Numerics.MaxAbsDiff(logits, g.Logits.Data):g3}, |loss - golden| {Math.Abs(loss - g.Loss):g3}, " +
                         $"{fwd.Recorder.DispatchCount} dispatches, {fwd.Recorder.BarrierCount} barriers in one submission");
        Assert.True(Math.Abs(loss - g.Loss) <= LossAtol, $"{g.Name} GPU loss {loss:g9}, ref {g.Loss:g9}, err {Math.Abs(loss - g.Loss):g3} > {LossAtol}");
    }

    [VulkanTheory, MemberData(nameof(Files))]
    public void Step_decoding_and_chunked_prefill_match_the_parallel_forward(string file)
    {
        var g = GoldenCase.Load(file);
        int B = g.B, T = g.T, V = g.Config.VocabSize;
        using var fwd = Load(Ctx, g);
        var parallel = fwd.Forward(g.FlatTokens, B, T);
        var where = LogitIndex(T, V);

        // One token at a time, states resident on the GPU.
        using (var state = fwd.CreateState(B))
        {
            var got = new float[B * T * V];
            var step = new float[B * V];
            var tok = new int[B];
            for (var t = 0; t < T; t++)
            {
                for (var b = 0; b < B; b++) tok[b] = g.Tokens[b][t];
                fwd.Step(tok, state, step);
                for (var b = 0; b < B; b++) step.AsSpan(b * V, V).CopyTo(got.AsSpan((b * T + t) * V, V));
            }
            Assert.Equal(T, state.Position);
            Numerics.AssertClose(got, parallel, LogitsAtol, LogitsRtol, $"{g.Name} GPU step decoding vs GPU parallel", where);
        }

        // Odd chunk sizes, and a 1-token chunk between longer ones.
        foreach (var sizes in new[] { new[] { 3, 1, 5 }, new[] { 7 }, new[] { 1, 2 } })
        {
            using var state = fwd.CreateState(B);
            var got = new float[B * T * V];
            var t0 = 0;
            for (var k = 0; t0 < T; k++)
            {
                var len = Math.Min(sizes[k % sizes.Length], T - t0);
                var tok = new int[B * len];
                for (var b = 0; b < B; b++)
                    for (var i = 0; i < len; i++) tok[b * len + i] = g.Tokens[b][t0 + i];
                var l = fwd.Prefill(tok, len, state);
                for (var b = 0; b < B; b++) l.AsSpan(b * len * V, len * V).CopyTo(got.AsSpan((b * T + t0) * V, len * V));
                t0 += len;
            }
            Numerics.AssertClose(got, parallel, LogitsAtol, LogitsRtol, $"{g.Name} GPU chunked prefill [{string.Join(",", sizes)}...] vs GPU parallel", where);
            Assert.InRange(fwd.ShapeCount, 1, VulkanForward.MaxShapes);
            // The chunked run ends where the golden logits are defined too.
            Numerics.AssertClose(got, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} GPU chunked prefill vs golden", where);
        }
    }

    // The golden sequences (T <= 17) are shorter than Aod.ChunkedFrom. With the switch lowered,
    // every AoD application of the parallel forward, the loss and a stateful prefill takes the
    // chunked scan (one chunk of 16, or 16 + 1 for T = 17), held to the same golden logits and loss;
    // the dispatch count shows the two extra passes per application actually ran.
    [VulkanTheory, MemberData(nameof(Files))]
    public void Chunked_aod_scan_matches_golden(string file)
    {
        var g = GoldenCase.Load(file);
        int B = g.B, T = g.T, V = g.Config.VocabSize;
        var where = LogitIndex(T, V);
        using var fwd = Load(Ctx, g);
        var saved = Aod.ChunkedFrom;
        try
        {
            // The baseline forced sequential: at the default threshold a long golden sequence
            // (T >= 2 * ChunkLength) would already take the chunked scan.
            Aod.ChunkedFrom = int.MaxValue;
            fwd.Forward(g.FlatTokens, B, T);
            var sequentialDispatches = fwd.Recorder.DispatchCount;
            Aod.ChunkedFrom = 2;
            var logits = fwd.Forward(g.FlatTokens, B, T);
            // Two more dispatches per application (chunk sums, then the scan within chunks); a
            // single token (T = 1) has nothing to chunk.
            Assert.Equal(sequentialDispatches + (T >= 2 ? 2 * ToGpu(g.Config).Applications : 0), fwd.Recorder.DispatchCount);
            Numerics.AssertClose(logits, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} GPU chunked-scan logits", where);
            var loss = fwd.Loss(g.FlatTokens, g.FlatTargets, B, T);
            Assert.True(Math.Abs(loss - g.Loss) <= LossAtol, $"{g.Name} GPU chunked-scan loss {loss:g9}, ref {g.Loss:g9}, err {Math.Abs(loss - g.Loss):g3} > {LossAtol}");

            // A stateful prefill of T - 1 tokens through the chunked scan, then one step from the
            // state it left: the last row must still match.
            // (T = 1: no prefill, the step starts from a fresh state.)
            using var state = fwd.CreateState(B);
            var head = new int[B * (T - 1)];
            for (var b = 0; b < B; b++)
                for (var i = 0; i < T - 1; i++) head[b * (T - 1) + i] = g.Tokens[b][i];
            var pre = T > 1 ? fwd.Prefill(head, T - 1, state) : [];
            var step = new float[B * V];
            fwd.Step(Enumerable.Range(0, B).Select(b => g.Tokens[b][T - 1]).ToArray(), state, step);
            for (var b = 0; b < B; b++)
            {
                Numerics.AssertClose(pre.AsSpan(b * (T - 1) * V, (T - 1) * V), g.Logits.Data.AsSpan(b * T * V, (T - 1) * V), LogitsAtol, LogitsRtol,
                    $"{g.Name} GPU chunked-scan prefill, sequence {b}");
                Numerics.AssertClose(step.AsSpan(b * V, V), g.Logits.Data.AsSpan((b * T + T - 1) * V, V), LogitsAtol, LogitsRtol,
                    $"{g.Name} GPU step after a chunked-scan prefill, sequence {b}");
            }
            output.WriteLine($"{g.Name}: chunked scan max |logits - golden| {Numerics.MaxAbsDiff(logits, g.Logits.Data):g3}, |loss - golden| {Math.Abs(loss - g.Loss):g3}");
        }
        finally
        {
            Aod.ChunkedFrom = saved;
        }
    }

    [VulkanFact]
    public void Greedy_steps_pick_the_argmax_and_reuse_their_buffers()
    {
        var g = GoldenCase.Load(AnyFile());
        int B = g.B, V = g.Config.VocabSize;
        using var fwd = Load(Ctx, g);
        using var a = fwd.CreateState(B);
        using var b = fwd.CreateState(B);
        var tok = Enumerable.Range(0, B).Select(i => g.Tokens[i][0]).ToArray();
        var logits = new float[B * V];
        var next = new int[B];
        for (var t = 0; t < 4; t++)
        {
            fwd.Step(tok, a, logits);
            fwd.StepGreedy(tok, b, next);
            var expected = new int[B];
            CrossEntropy.ArgmaxReference(logits, B, V, expected);
            Assert.Equal(expected, next);
            tok = next.ToArray();
        }
        // Every step reused the one (B, 1) activation set.
        Assert.Equal(1, fwd.ShapeCount);
        Assert.Equal(4, b.Position);
        Assert.Equal(a.DownloadS(0), b.DownloadS(0));
    }

    [VulkanFact]
    public void Rejects_bad_tokens_targets_and_weights()
    {
        var g = GoldenCase.Load(AnyFile());
        using var fwd = Load(Ctx, g);
        int V = g.Config.VocabSize;
        Assert.Throws<ArgumentOutOfRangeException>(() => fwd.Forward([0, V], 1, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => fwd.Loss([0, 1], [0, -2], 1, 2));
        Assert.Throws<ArgumentException>(() => fwd.Forward([0, 1, 2], 1, 2));
        var weights = g.Params.ToDictionary(kv => kv.Key, kv => new GpuWeight(kv.Value.Shape[0], kv.Value.Shape[1], kv.Value.Data));
        weights.Remove("unembed.w" + (g.Config.DRank > 0 ? "2" : ""));
        Assert.Throws<ArgumentException>(() => new VulkanForward(Ctx, ToGpu(g.Config), weights));
    }
}

/// <summary>The host RoPE tables that shaders/aod.comp reads, against the golden rope vectors (no device needed).</summary>
public sealed class RopeTableTests
{
    public static TheoryData<string> Files => GoldenCase.Files();

    [Theory, MemberData(nameof(Files))]
    public void Rope_tables_match_golden_rope(string file)
    {
        var r = GoldenCase.Load(file).Rope;
        int hd = r.Hd, half = hd / 2;
        var got = new float[r.Input.Data.Length];
        var cos = new float[half];
        var sin = new float[half];
        for (var p = 0; p < r.Positions.Length; p++)
        {
            Aod.RopeTables(hd, r.Positions[p], 1, cos, sin);
            var x = r.Input.Data.AsSpan(p * hd, hd);
            for (var j = 0; j < half; j++)
            {
                got[p * hd + j] = x[j] * cos[j] + x[half + j] * sin[j];
                got[p * hd + half + j] = -x[j] * sin[j] + x[half + j] * cos[j];
            }
        }
        // Angles formed in double: the tight tolerance holds at every position, t = 5000 included.
        Numerics.AssertClose(got, r.Output.Data, 1e-5, 0, $"rope hd={hd}", i => $"(pos {r.Positions[i / hd]}, ch {i % hd})");
    }
}

/// <summary>
/// The slot-addressed decoding path of VulkanForward (a state pool, per-row positions) against
/// the CPU reference model's Step: sequences at different positions in one submission, states in
/// shuffled rows of a pool that grows while it holds them, last-row prefill, argmax ids.
/// </summary>
[Collection("Vulkan")]
public sealed class VulkanPoolDecodingTests : IDisposable
{
    const double Atol = 1e-4, Rtol = 1e-4;
    readonly VulkanFixture fixture;

    public VulkanPoolDecodingTests(VulkanFixture fixture)
    {
        this.fixture = fixture;
        fixture.Context?.Messenger?.Clear();
    }

    public void Dispose()
    {
        if (fixture.Context is { } ctx) Validation.AssertClean(ctx, nameof(VulkanPoolDecodingTests));
    }

    [VulkanFact]
    public void Sequences_at_different_positions_step_in_one_submission_and_match_the_reference()
    {
        var ctx = fixture.Require();
        var m = Palm.Tests.Api.TinyModel.Shared;
        var p = m.Parameters;
        int V = p.Config.VocabSize;
        var reference = new Palm.Inference.Cpu.CpuReferenceModel(p);
        using var fwd = new VulkanForward(ctx, Palm.Inference.Backends.GpuMapping.ToGpu(p.Config), Palm.Inference.Backends.GpuMapping.ToGpuWeights(p));
        using var pool = fwd.CreatePool(2);
        var rng = new Rng(TestSeed.Next());
        // Prompt lengths 1, 3, 4, 6: four different positions. Rows 5, 0, 3, 1 of a pool that
        // has 2 rows when the first two prefill and grows to 6 before the rest.
        int[] lengths = [1, 3, 4, 6], slots = [5, 0, 3, 1];
        int B = lengths.Length;
        var refStates = new Palm.Inference.Cpu.AodStateSet[B];
        var positions = new long[B];
        var last = new float[V];
        foreach (var b in new[] { 1, 3, 0, 2 })
        {
            if (slots[b] >= pool.Capacity) pool.Grow(6);
            var ids = Enumerable.Range(0, lengths[b]).Select(_ => rng.NextInt(V)).ToArray();
            refStates[b] = new Palm.Inference.Cpu.AodStateSet(p.Config, 1);
            // Pool rows start undefined: a new sequence's row is written (zeros) before it is read.
            for (var app = 0; app < p.Config.Applications; app++)
                pool.WriteRow(slots[b], app, refStates[b].S[app], p.Config.Mix == AodMix.Mean ? refStates[b].Z![app] : []);
            var want = reference.Forward(ids, 1, ids.Length, refStates[b]).AsSpan((ids.Length - 1) * V, V).ToArray();
            fwd.Prefill(ids, slots[b], 0, pool, last);
            Numerics.AssertClose(last, want, Atol, Rtol, $"pool prefill b={b} T={ids.Length} {m.Describe}");
            positions[b] = ids.Length;
        }
        Assert.Equal(6, pool.Capacity);

        var logits = new float[B * V];
        var ids2 = new int[B];
        var wantRow = new float[V];
        for (var step = 0; step < 3; step++)
        {
            var tok = Enumerable.Range(0, B).Select(_ => rng.NextInt(V)).ToArray();
            var before = fwd.Recorder.Submissions;
            // Logits of every row on even steps; ids only, and logits of the first row, on odd ones.
            var rows = step % 2 == 0 ? B : 1;
            Array.Fill(logits, float.NaN);
            Array.Fill(ids2, -7);
            fwd.Step(tok, slots, positions, pool, logits.AsSpan(0, rows * V), step % 2 == 0 ? [] : ids2);
            Assert.Equal(before + 1, fwd.Recorder.Submissions);
            for (var b = 0; b < B; b++)
            {
                reference.Step([tok[b]], refStates[b], wantRow);
                if (b < rows)
                    Numerics.AssertClose(logits.AsSpan(b * V, V), wantRow, Atol, Rtol, $"pool step {step} row {b} at position {positions[b]} {m.Describe}");
                if (step % 2 == 1)
                {
                    // A float32 difference may flip the argmax only at a near-tie of the two best.
                    var sorted = wantRow.OrderDescending().ToArray();
                    if (sorted[0] - sorted[1] > 1e-3f)
                        Assert.True(Palm.Inference.Sampling.Sampler.ArgMax(wantRow) == ids2[b], $"step {step} row {b}: GPU argmax {ids2[b]}, reference {Palm.Inference.Sampling.Sampler.ArgMax(wantRow)} {m.Describe}");
                }
                positions[b]++;
            }
        }
        // Each sequence's row holds the reference's state after all it was fed.
        var s = new float[p.Config.DQkv];
        var z = new float[p.Config.DQkv];
        for (var b = 0; b < B; b++)
            for (var app = 0; app < p.Config.Applications; app++)
            {
                pool.ReadRow(slots[b], app, s, p.Config.Mix == AodMix.Mean ? z : []);
                Numerics.AssertClose(s, refStates[b].S[app], Atol, Rtol, $"pool row {slots[b]} S app {app} {m.Describe}");
                if (p.Config.Mix == AodMix.Mean) Numerics.AssertClose(z, refStates[b].Z![app], Atol, Rtol, $"pool row {slots[b]} Z app {app}");
            }
    }

    [VulkanFact]
    public void Step_rejects_repeated_and_out_of_range_slots()
    {
        var ctx = fixture.Require();
        var p = Palm.Tests.Api.TinyModel.Shared.Parameters;
        using var fwd = new VulkanForward(ctx, Palm.Inference.Backends.GpuMapping.ToGpu(p.Config), Palm.Inference.Backends.GpuMapping.ToGpuWeights(p));
        using var pool = fwd.CreatePool(3);
        var logits = new float[2 * p.Config.VocabSize];
        Assert.Throws<ArgumentException>(() => fwd.Step([1, 2], [1, 1], [0, 0], pool, logits, []));
        Assert.Throws<ArgumentOutOfRangeException>(() => fwd.Step([1, 2], [0, 3], [0, 0], pool, logits, []));
        Assert.Throws<ArgumentOutOfRangeException>(() => fwd.Step([1, 2], [0, 1], [0, -1], pool, logits, []));
        Assert.Throws<ArgumentException>(() => fwd.Step([1, 2], [0, 1], [0, 0], pool, logits.AsSpan(1), []));
        // A rejected batch leaves the duplicate check clean: the same rows are fine on their own.
        fwd.Step([1, 2], [0, 1], [0, 0], pool, logits, []);
    }
}
