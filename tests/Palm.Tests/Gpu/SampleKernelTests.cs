// The sampling kernel (shaders/sample.comp) and its CPU reference: the reference picks exactly
// what the sessions' TokenSampler picks (same inputs, same uniform; random settings, ties,
// -inf biases, penalties), and the GPU picks what the reference picks except where float32
// rounding may move a boundary: then it must pick what the reference picks for some top-p,
// min-p or uniform within Eps of the real ones (Sample.cs lists those cases). Bad inputs are
// typed errors.
using Palm.Gpu.Vulkan;
using Palm.Inference.Model;
using Palm.Inference.Sampling;
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;

namespace Palm.Tests.Gpu;

[Collection("Vulkan")]
public sealed class SampleKernelTests(VulkanFixture fixture, ITestOutputHelper output)
{
    /// <summary>
    /// How far (relative: of the kept mass for top-p and the uniform, of min_p for min-p) float32
    /// rounding may move a boundary. Vulkan's exp may be off by 3 + 2|x| ulp and a float sum of
    /// 256 terms per invocation by some 256 ulp; for the tokens that carry mass that stays below
    /// 2e-5, so 1e-4 leaves a margin and is still far below any token's share in these tests'
    /// peaked rows.
    /// </summary>
    internal const double Eps = 1e-4;

    internal sealed record Case(float[] Logits, SamplingSettings Settings, RecentTokens Recent, float Uniform, string Describe);

    /// <summary>
    /// A random row and settings: peaked logits (some rows quantized to halves, so ties are
    /// common), each filter on or off, penalties over a window with repeats, biases including -inf.
    /// </summary>
    internal static Case RandomCase(Random r, int V)
    {
        double scale = new[] { 1.0, 3.0, 6.0 }[r.Next(3)];
        bool quantized = r.Next(3) == 0;
        var logits = new float[V];
        for (int i = 0; i < V; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()) * scale;
            logits[i] = quantized ? (float)(Math.Round(g * 2) / 2) : (float)g;
        }
        float temp = r.Next(5) == 0 ? 0f : (float)(0.3 + 1.2 * r.NextDouble());
        int topK = r.Next(5) < 2 ? 0 : r.Next(4) == 0 ? V + r.Next(3) : 1 + r.Next(Math.Min(V, 100));
        float topP = r.Next(5) < 2 ? 1f : (float)(0.05 + 0.949 * r.NextDouble());
        float minP = r.Next(5) < 3 ? 0f : (float)(0.001 + 0.3 * r.NextDouble());
        float rep = r.Next(2) == 0 ? 1f : (float)(0.7 + 0.9 * r.NextDouble());
        float pres = r.Next(5) < 3 ? 0f : (float)(2 * r.NextDouble() - 1);
        float freq = r.Next(5) < 3 ? 0f : (float)(r.NextDouble() - 0.5);
        Dictionary<int, float>? bias = null;
        if (r.Next(2) == 0)
        {
            bias = [];
            int n = r.Next(Math.Min(V, 20) + 1);
            for (int i = 0; i < n; i++)
                // -inf on at most a quarter of the tokens: never all of them.
                bias[r.Next(V)] = V >= 4 && r.Next(8) == 0 && bias.Count(kv => float.IsNegativeInfinity(kv.Value)) < V / 4
                    ? float.NegativeInfinity : (float)(10 * r.NextDouble() - 5);
        }
        var recent = new RecentTokens(r.Next(65));
        int pool = 1 + r.Next(Math.Min(V, 12));   // few distinct ids: counts above 1
        int fed = r.Next(2 * recent.Capacity + 1);
        for (int i = 0; i < fed; i++) recent.Add(r.Next(4) == 0 ? r.Next(V) : r.Next(pool));
        float u = (float)r.NextDouble();
        if (u >= 1f) u = MathF.BitDecrement(1f);
        var s = new SamplingSettings(temp, topK, topP, minP, rep, pres, freq, bias);
        string describe = $"V={V} T={temp} topK={topK} topP={topP} minP={minP} rep={rep} pres={pres} freq={freq} bias={bias?.Count ?? -1} " +
                          $"window={recent.Count}/{recent.Capacity} u={u:R} scale={scale} quantized={quantized}";
        return new Case(logits, s, recent, u, describe);
    }

    /// <summary>The kernel's row and pairs for a case, built as the Vulkan backend builds them (through SampleRequest).</summary>
    internal static (Kernels.Sample.SampleRow Row, Kernels.Sample.SamplePair[] Pairs) Inputs(Case c, int pairStart = 0)
    {
        var q = new SampleRequest();
        q.Prepare(c.Settings, c.Recent, new Rng(1));
        return Inputs(q, c.Uniform, pairStart);
    }

    /// <summary>The kernel's row (window pairs, then bias pairs, from <paramref name="pairStart"/>) for a session's request.</summary>
    internal static (Kernels.Sample.SampleRow Row, Kernels.Sample.SamplePair[] Pairs) Inputs(SampleRequest q, double uniform, int pairStart = 0)
    {
        var pairs = new List<Kernels.Sample.SamplePair>();
        for (int j = 0; j < q.PenaltyPairs; j++) pairs.Add(new(q.PenaltyIds[j], q.PenaltyCounts[j]));
        for (int j = 0; j < q.BiasPairs; j++) pairs.Add(new(q.BiasIds[j], q.BiasValues[j]));
        var s = q.Settings;
        var row = Kernels.Sample.Row(s.Temperature, s.TopK, s.TopP, s.MinP, s.RepetitionPenalty, s.PresencePenalty, s.FrequencyPenalty,
            uniform, pairStart, q.PenaltyPairs, pairStart + q.PenaltyPairs, q.BiasPairs);
        return (row, pairs.ToArray());
    }

    /// <summary>
    /// Every token the reference picks with top-p, min-p and the uniform each moved by up to
    /// <see cref="Eps"/>: what float32 rounding may make of this row. For each top-p and min-p, every
    /// token of the walk between the picks at the lowest and the highest draw, not only those two:
    /// on a wide flat row (V = 65,536) a draw moved by Eps crosses many tokens.
    /// </summary>
    internal static HashSet<int> Candidates(ReadOnlySpan<float> logits, Kernels.Sample.SampleRow row, ReadOnlySpan<Kernels.Sample.SamplePair> pairs)
    {
        var set = new HashSet<int>();
        float below1 = MathF.BitDecrement(1f);
        var topPs = row.topP < 1f ? new[] { row.topP, (float)(row.topP * (1 - Eps)), Math.Min(below1, (float)(row.topP * (1 + Eps))) } : [row.topP];
        var minPs = row.minP > 0f ? new[] { row.minP, (float)(row.minP * (1 - Eps)), (float)(row.minP * (1 + Eps)) } : [row.minP];
        var draws = new[] { row.draw, Math.Max(0f, (float)(row.draw - Eps)), Math.Min(below1, (float)(row.draw + Eps)) };
        foreach (var tp in topPs)
            foreach (var mp in minPs)
            {
                int lo = int.MaxValue, hi = -1;
                int[] order = [];
                foreach (var d in draws)
                {
                    var moved = row;
                    moved.topP = tp;
                    moved.minP = mp;
                    moved.draw = d;
                    set.Add(Kernels.Sample.Reference(logits, moved, pairs, out var trace));
                    order = trace.Order;
                    if (trace.Chosen >= 0) (lo, hi) = (Math.Min(lo, trace.Chosen), Math.Max(hi, trace.Chosen));
                }
                for (int p = lo; p <= hi && p < order.Length; p++) set.Add(order[p]);
            }
        return set;
    }

    [Fact]
    public void Reference_picks_what_TokenSampler_picks()
    {
        ulong seed = TestSeed.Next();
        var r = new Random((int)seed);
        int cases = 0;
        foreach (int V in new[] { 1, 2, 5, 64, 257, 2048 })
        {
            var sampler = new TokenSampler(V);
            var narrow = new TokenSampler(V) { NarrowFirstGather = true };
            for (int i = 0; i < (V >= 2048 ? 150 : 600); i++, cases++)
            {
                var c = RandomCase(r, V);
                var (row, pairs) = Inputs(c);
                int want = sampler.Sample(c.Logits, c.Settings, c.Recent, c.Uniform);
                int got = Kernels.Sample.Reference(c.Logits, row, pairs);
                Assert.True(want == got, $"case {i}: reference picked {got}, TokenSampler {want} ({c.Describe}, seed {seed})");
                int wide = narrow.Sample(c.Logits, c.Settings, c.Recent, c.Uniform);
                Assert.True(wide == got, $"case {i}: reference picked {got}, TokenSampler with a narrow first gather {wide} ({c.Describe}, seed {seed})");
            }
        }
        output.WriteLine($"{cases} cases agree exactly (seed {seed})");
    }

    /// <summary>
    /// TokenSampler sorts only the tokens above a threshold and lowers it when the walk runs past
    /// them: rows so peaked that the first gather holds a handful of tokens, with top-k, top-p and
    /// min-p set so each must widen it (top-k beyond the gathered set, top-p near 1, no filter at
    /// all), still pick exactly what the full-sort reference picks, draw for draw.
    /// </summary>
    [Fact]
    public void TokenSampler_widening_its_gathered_prefix_picks_what_the_full_sort_picks()
    {
        ulong seed = TestSeed.Next();
        var r = new Random((int)seed);
        var none = new RecentTokens(0);
        int cases = 0;
        foreach (int V in new[] { 300, 2048 })
        foreach (bool narrow in new[] { false, true })
        {
            // Narrow: the first gather holds only the top bucket of the weights' histogram, so the
            // walks run past it and the row is gathered again (normally the histogram sizes it).
            var sampler = new TokenSampler(V) { NarrowFirstGather = narrow };
            for (int i = 0; i < 40; i++)
            {
                var logits = new float[V];
                float temp;
                if (i % 2 == 0)
                {
                    for (int j = 0; j < V; j++) logits[j] = (float)(Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()) * 8);
                    temp = (float)(0.2 + 0.3 * r.NextDouble());
                }
                else
                {
                    // A few peaks over a wide plateau just under the first threshold: the tokens
                    // past top-k hold a few percent of the mass, so summing more than the top-k
                    // set moves the top-p cut.
                    for (int j = 0; j < V; j++) logits[j] = (float)(0.01 * r.NextDouble());
                    for (int j = 0; j < 3; j++) logits[r.Next(V)] = 10f + j;
                    temp = 1f;
                }
                foreach (var (topK, topP, minP) in new[] { (V / 3, 0.9999f, 0f), (50, 0.999f, 0f), (V / 2, 1f, 0f), (0, 0.99999f, 0f), (0, 1f, 0f), (V - 1, 0.9995f, 1e-7f), (0, 1f, 1e-12f) })
                {
                    var settings = new SamplingSettings(temp, topK, topP, minP, 1f, 0f, 0f, null);
                    for (int d = 0; d < 5; d++, cases++)
                    {
                        float u = d == 0 ? MathF.BitDecrement(1f) : (float)r.NextDouble();
                        var c = new Case(logits, settings, none, u, $"V={V} T={temp} topK={topK} topP={topP} minP={minP} u={u:R}");
                        var (row, pairs) = Inputs(c);
                        int want = Kernels.Sample.Reference(logits, row, pairs);
                        int got = sampler.Sample(logits, settings, none, u);
                        Assert.True(want == got, $"TokenSampler (narrow first gather: {narrow}) picked {got}, the full-sort reference {want} ({c.Describe}, seed {seed})");
                    }
                }
            }
        }
        output.WriteLine($"{cases} draws agree exactly (seed {seed})");
    }

    [Fact]
    public void TokenSampler_applies_the_logit_bias_and_a_copy_with_another_bias_uses_the_new_one()
    {
        // The bias is flattened once per settings value; a `with` copy must flatten its own.
        float[] logits = [0f, 2f, 1f];
        var t = new TokenSampler(logits.Length);
        var none = new RecentTokens(0);
        var s = new SamplingSettings(0f, 0, 1f, 0f, 1f, 0f, 0f, new Dictionary<int, float> { [1] = float.NegativeInfinity });
        Assert.Equal(2, t.Sample(logits, s, none, 0.0));
        Assert.Equal(0, t.Sample(logits, s with { LogitBias = new Dictionary<int, float> { [0] = 5f } }, none, 0.0));
        Assert.Equal(1, t.Sample(logits, s with { LogitBias = null }, none, 0.0));
        Assert.Equal(2, t.Sample(logits, s with { Temperature = 0 }, none, 0.0));
    }

    [Fact]
    public void TokenSampler_orders_ties_by_id_and_draws_one_uniform_per_sampled_token()
    {
        // Tokens 1, 3 and 4 tie for the top; top-k 2 keeps 1 and 3, whatever the draw.
        float[] logits = [0f, 2f, 1f, 2f, 2f];
        var t = new TokenSampler(logits.Length);
        var none = new RecentTokens(0);
        var s = new SamplingSettings(1f, 2, 1f, 0f, 1f, 0f, 0f, null);
        Assert.Equal(1, t.Sample(logits, s, none, 0.0));
        Assert.Equal(1, t.Sample(logits, s, none, 0.4999));
        Assert.Equal(3, t.Sample(logits, s, none, 0.5001));
        Assert.Equal(3, t.Sample(logits, s, none, 0.9999));
        // -0 and +0 tie too: the lower id wins the argmax.
        Assert.Equal(0, t.Sample([-0f, 0f, -1f, -2f, -3f], s with { Temperature = 0 }, none, 0.0));
        Assert.Equal(0, t.Sample([0f, -0f, -1f, -2f, -3f], s with { Temperature = 0 }, none, 0.0));

        // The RNG path takes exactly one NextDouble per sampled token and none when greedy.
        var a = new Rng(5);
        var b = new Rng(5);
        t.Sample(logits, s, none, a);
        t.Sample(logits, s with { Temperature = 0 }, none, a);
        b.NextDouble();
        Assert.Equal(b.NextU64(), a.NextU64());
    }

    [VulkanTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void Kernel_matches_the_reference_except_within_rounding_of_a_boundary(bool subgroup)
    {
        var ctx = fixture.Require();
        if (subgroup && !ctx.Capabilities.SubgroupArithmetic)
        {
            output.WriteLine("no subgroup arithmetic on this device: only the shared-memory variant runs");
            return;
        }
        ctx.Messenger?.Clear();
        ulong seed = TestSeed.Next();
        var r = new Random((int)seed);
        int rowsChecked = 0, needTolerance = 0;
        foreach (var (V, R) in new[] { (1, 6), (3, 12), (61, 40), (1000, 40), (2048, 40), (65536, 5) })
        {
            var cases = Enumerable.Range(0, R).Select(_ => RandomCase(r, V)).ToArray();
            // Rows 0 and R+1 are not sampled: their logits and ids must come back untouched.
            int rows = R + 2;
            var logits = new float[rows * V];
            for (int i = 0; i < logits.Length; i++) logits[i] = (float)r.NextDouble();
            var kRows = new Kernels.Sample.SampleRow[R];
            var kPairs = new List<Kernels.Sample.SamplePair>();
            for (int i = 0; i < R; i++)
            {
                cases[i].Logits.CopyTo(logits, (i + 1) * V);
                (kRows[i], var p) = Inputs(cases[i], kPairs.Count);
                kPairs.AddRange(p);
            }
            var ids = Enumerable.Repeat(-7, rows).ToArray();
            var rowInts = System.Runtime.InteropServices.MemoryMarshal.Cast<Kernels.Sample.SampleRow, int>(kRows).ToArray();
            var pairInts = System.Runtime.InteropServices.MemoryMarshal.Cast<Kernels.Sample.SamplePair, int>(kPairs.ToArray()).ToArray();
            using var tl = ctx.CreateTensor(logits, GpuDType.F32, rows, V);
            using var tr = ctx.CreateTensor(GpuDType.I32, rowInts.Length);
            using var tp = ctx.CreateTensor(GpuDType.I32, Math.Max(2, pairInts.Length));
            using var ti = ctx.CreateTensor(GpuDType.I32, rows);
            tr.Upload(rowInts);
            if (pairInts.Length > 0) tp.Upload(pairInts, 0);
            ti.Upload(ids);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using (var rec = new CommandRecorder(ctx))
            {
                Kernels.Sample.Record(rec, ctx, tl, tr, tp, 1, R, ti, subgroup);
                rec.Submit();
            }
            output.WriteLine($"V={V}: {R} rows in {clock.Elapsed.TotalMilliseconds:F1} ms");
            ti.Download(ids);
            var after = tl.ToArray();

            Assert.True(ids[0] == -7 && ids[R + 1] == -7, $"V={V}: ids outside the sampled rows were written: {ids[0]}, {ids[R + 1]}");
            Numerics.AssertClose(after.AsSpan(0, V), logits.AsSpan(0, V), 0, 0, $"V={V}: logits of the row before the sampled ones");
            Numerics.AssertClose(after.AsSpan((R + 1) * V, V), logits.AsSpan((R + 1) * V, V), 0, 0, $"V={V}: logits of the row after the sampled ones");
            for (int i = 0; i < R; i++)
            {
                var c = cases[i];
                var row = kRows[i];
                var pairs = kPairs.ToArray().AsSpan((int)Math.Min(row.penaltyStart, row.biasStart), (int)(row.penaltyCount + row.biasCount)).ToArray();
                var local = row;
                local.penaltyStart = 0;
                local.biasStart = row.penaltyCount;
                // Bias and penalties are float steps the GPU reproduces bit for bit.
                var adjusted = AdjustedLogits(c);
                for (int j = 0; j < V; j++)
                    if (BitConverter.SingleToInt32Bits(after[(i + 1) * V + j]) != BitConverter.SingleToInt32Bits(adjusted[j]) && !(adjusted[j] == 0 && after[(i + 1) * V + j] == 0))
                        Assert.Fail($"V={V} row {i}: adjusted logit {j} is {after[(i + 1) * V + j]:R} on the GPU, {adjusted[j]:R} on the host ({c.Describe}, seed {seed})");
                int want = Kernels.Sample.Reference(c.Logits, local, pairs, out var trace);
                int got = ids[i + 1];
                rowsChecked++;
                if (got == want) continue;
                needTolerance++;
                var near = Candidates(c.Logits, local, pairs);
                Assert.True(near.Contains(got),
                    $"V={V} row {i}: GPU picked {got}, the reference {want} (kept {trace.Keep}, chosen at {trace.Chosen}); within rounding it may pick " +
                    $"{{{string.Join(", ", near.Order())}}} ({c.Describe}, seed {seed})");
                output.WriteLine($"V={V} row {i}: GPU {got}, reference {want}: within rounding of a boundary ({c.Describe})");
            }
        }
        output.WriteLine($"{rowsChecked} rows: {rowsChecked - needTolerance} exact, {needTolerance} within rounding of a boundary (seed {seed})");
        // The tolerance is for the rare row whose boundary falls within rounding, not the rule.
        Assert.True(needTolerance * 20 <= rowsChecked, $"{needTolerance} of {rowsChecked} rows needed the rounding tolerance (seed {seed})");
        Validation.AssertClean(ctx, nameof(SampleKernelTests));
    }

    /// <summary>The logits after bias and penalties, as TokenSampler forms them.</summary>
    static float[] AdjustedLogits(Case c)
    {
        var (row, pairs) = Inputs(c);
        var l = (float[])c.Logits.Clone();
        foreach (var (id, b) in pairs.AsSpan((int)row.biasStart, (int)row.biasCount)) l[id] += b;
        foreach (var (id, n) in pairs.AsSpan((int)row.penaltyStart, (int)row.penaltyCount))
        {
            var x = l[id];
            x = x > 0 ? x * (1f / c.Settings.RepetitionPenalty) : x * c.Settings.RepetitionPenalty;
            l[id] = x - (c.Settings.PresencePenalty + c.Settings.FrequencyPenalty * n);
        }
        return l;
    }

    [Fact]
    public void Bad_rows_and_pairs_are_typed_errors()
    {
        var seen = new bool[8];
        Kernels.Sample.SampleRow Row(int ps, int pc, int bs, int bc) => Kernels.Sample.Row(1, 0, 1, 0, 1, 0, 0, 0.5, ps, pc, bs, bc);
        Kernels.Sample.SamplePair[] pairs = [new(1, 2), new(3, 1), new(1, 0.5f)];
        Kernels.Sample.CheckRows([Row(0, 2, 2, 1)], pairs, 8, seen);   // id 1 in both lists is fine
        Assert.All(seen, f => Assert.False(f));
        Assert.Contains("twice", Assert.Throws<ArgumentException>(() => Kernels.Sample.CheckRows([Row(0, 3, 0, 0)], pairs, 8, seen)).Message);
        Assert.All(seen, f => Assert.False(f));
        Assert.Contains("outside [0, 2)", Assert.Throws<ArgumentException>(() => Kernels.Sample.CheckRows([Row(0, 2, 0, 0)], pairs, 2, seen)).Message);
        Assert.Contains("outside the 3 pairs", Assert.Throws<ArgumentException>(() => Kernels.Sample.CheckRows([Row(2, 2, 0, 0)], pairs, 8, seen)).Message);
        Assert.All(seen, f => Assert.False(f));
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Sample.Row(1, 0, 1, 0, 1, 0, 0, 1.0, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Sample.Row(1, 0, 0, 0, 1, 0, 0, 0.5, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Sample.Row(-1, 0, 1, 0, 1, 0, 0, 0.5, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Sample.Row(1, 0, 1, 0, 0, 0, 0, 0.5, 0, 0, 0, 0));
        // The largest double below 1 rounds to 1 in float: the row holds the largest float below 1.
        Assert.Equal(MathF.BitDecrement(1f), Kernels.Sample.Row(1, 0, 1, 0, 1, 0, 0, Math.BitDecrement(1.0), 0, 0, 0, 0).draw);
    }
}
