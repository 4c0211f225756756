// The fast CPU decode path against the CPU reference's recurrent step (and so, transitively,
// the golden files), on every golden config and on random configs, batch 1 and batch > 1, with
// float32 and with q8/q4 weights.
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Tests.Golden;

namespace Palm.Tests;

public class FastCpuDecoderTests
{
    public static TheoryData<string> Files => GoldenCase.Files();

    [Theory, MemberData(nameof(Files))]
    public void MatchesGoldenLogits(string file)
    {
        var g = GoldenCase.Load(file);
        using var fast = new FastCpuDecoder(g.ToParameters());
        int B = g.B, T = g.T, V = g.Config.VocabSize;
        var state = new AodStateSet(g.Config, B);
        var got = new float[B * T * V];
        var step = new float[B * V];
        for (int t = 0; t < T; t++)
        {
            fast.Step(Enumerable.Range(0, B).Select(b => g.Tokens[b][t]).ToArray(), state, step);
            for (int b = 0; b < B; b++) step.AsSpan(b * V, V).CopyTo(got.AsSpan((b * T + t) * V, V));
        }
        Numerics.AssertClose(got, g.Logits.Data, GoldenForwardTests.LogitsAtol, GoldenForwardTests.LogitsRtol, $"{g.Name} fast decode logits");
    }

    // Both forms of the QKV second factor and the projection: skipping zero inputs (the default
    // for float32) and the dense products (PALM_CPU_DECODE_SPARSE=0, and quantized weights).
    [Theory, MemberData(nameof(ReferenceModelTests.Configs), MemberType = typeof(ReferenceModelTests))]
    public void MatchesReferenceStepOnRandomConfigs(string config)
    {
        foreach (bool sparse in new[] { true, false }) MatchesReferenceStep(config, sparse);
    }

    private static void MatchesReferenceStep(string config, bool sparse)
    {
        ulong seed = TestSeed.Next();
        var c = ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var reference = new CpuReferenceModel(p);
        using var fast = new FastCpuDecoder(CpuWeights.From(p).Aligned(), sparseInputs: sparse);
        Assert.Equal(sparse, fast.SkipsZeroInputs);
        int B = 2, V = c.VocabSize;
        var sr = new AodStateSet(c, B);
        var sf = new AodStateSet(c, B);
        var lr = new float[B * V];
        var lf = new float[B * V];
        for (int t = 0; t < 40; t++)
        {
            var tok = new[] { rng.NextInt(V), rng.NextInt(V) };
            reference.Step(tok, sr, lr);
            fast.Step(tok, sf, lf);
            // Same float32 math in another order; see ReferenceModelTests for why random weights need 2e-3.
            Numerics.AssertClose(lf, lr, 2e-3, 2e-3, $"seed {seed} {config} sparse={sparse} t={t}");
        }
        for (int a = 0; a < c.Applications; a++) Numerics.AssertClose(sf.S[a], sr.S[a], 2e-3, 2e-3, $"seed {seed} sparse={sparse} state S app {a}");
        Assert.Equal(sr.Position, sf.Position);
    }
}

public class FastCpuDecoderTwoCoreTests
{
    public static TheoryData<string> Configs => ReferenceModelTests.Configs;

    private static PalmConfig SmallShaped() => PalmConfig.Preset("small") with { VocabSize = 300, NLayer = 2 };

    /// <summary>PALM_CPU_DECODE_SPARSE=0 (a run measuring the dense products) turns the copies off.</summary>
    internal static bool SparseSwitchedOff => Environment.GetEnvironmentVariable("PALM_CPU_DECODE_SPARSE") == "0";

    /// <summary>
    /// Batch-1 steps split over two threads must give the very same bits as one thread running
    /// both parts: the API promises the same text for the same seed whether a session decodes
    /// alone (two cores) or batched (one core per sequence).
    /// </summary>
    [Theory, MemberData(nameof(Configs))]
    [InlineData("small-shaped")]
    public void TwoThreadsAreBitIdenticalToOneAndMatchTheReference(string config)
    {
        ulong seed = TestSeed.Next();
        var c = config == "small-shaped" ? SmallShaped() : ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        AssertTwoThreadsBitIdentical($"seed {seed} {config}", CpuWeights.From(p), p, rng, skipsZeros: !SparseSwitchedOff);
    }

    public static TheoryData<string, string> QuantizedCases()
    {
        var d = new TheoryData<string, string>();
        foreach (var dtype in new[] { "q8", "q4" })
        {
            foreach (string config in ReferenceModelTests.Configs) d.Add(config, dtype);
            d.Add("small-shaped", dtype);
        }
        return d;
    }

    /// <summary>
    /// The same promise with q8/q4 weights (every linear and the embedding quantized, the quantizer's
    /// default groups): the parts' column slices cut groups (q8 keeps one scale per row, so the
    /// projection's halves split every group; the tiny configs have d_ffn = 5 or 6 and odd row
    /// lengths, so q4 slices start on high nibbles) and must still add up to the same bits.
    /// The reference runs on the dequantized weights.
    /// </summary>
    [Theory, MemberData(nameof(QuantizedCases))]
    public void QuantizedWeightsTwoThreadsAreBitIdenticalToOneAndMatchTheReference(string config, string dtypeName)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        ulong seed = TestSeed.Next();
        var c = config == "small-shaped" ? SmallShaped() : ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), dtype, null, embedding: true);
        var weights = ModelWeights.From(ck).ToCpu();
        Assert.All(weights.All, m => Assert.NotNull(m.Quantized));
        // Quantized weights take the zero-skipping products where AVX-512 runs, else the dense ones.
        bool skips = System.Runtime.Intrinsics.X86.Avx512F.IsSupported && !SparseSwitchedOff;
        AssertTwoThreadsBitIdentical($"seed {seed} {config} {dtypeName}", weights, ck.ToParameters(), rng, skips);
    }

    private static void AssertTwoThreadsBitIdentical(string what, CpuWeights weights, PalmParameters referenceParameters, Rng rng, bool skipsZeros)
    {
        var c = weights.Config;
        var reference = new CpuReferenceModel(referenceParameters);
        using var two = new FastCpuDecoder(weights, threads: 2) { AdaptiveTeam = false };
        using var one = new FastCpuDecoder(weights, threads: 1);
        Assert.Equal(skipsZeros, one.SkipsZeroInputs);
        int V = c.VocabSize;
        var s2 = new AodStateSet(c, 1);
        var s1 = new AodStateSet(c, 1);
        var sr = new AodStateSet(c, 1);
        var l2 = new float[V];
        var l1 = new float[V];
        var lr = new float[V];
        for (int t = 0; t < 24; t++)
        {
            var tok = new[] { rng.NextInt(V) };
            two.Step(tok, s2, l2);
            one.Step(tok, s1, l1);
            reference.Step(tok, sr, lr);
            for (int i = 0; i < V; i++)
                Assert.True(BitConverter.SingleToInt32Bits(l1[i]) == BitConverter.SingleToInt32Bits(l2[i]),
                    $"{what} t={t}: logit {i} is {l2[i]:R} on two threads, {l1[i]:R} on one");
            // Same float32 math in another order; see ReferenceModelTests for why random weights need 2e-3.
            Numerics.AssertClose(l2, lr, 2e-3, 2e-3, $"{what} t={t} against the reference");
        }
        for (int a = 0; a < c.Applications; a++)
        {
            Assert.Equal(s1.S[a], s2.S[a]);
            if (s1.Z is not null) Assert.Equal(s1.Z[a], s2.Z![a]);
        }
        if (Environment.ProcessorCount >= 2) Assert.Equal(24, two.TeamSteps);
        Assert.Equal(0, one.TeamSteps);
    }

    /// <summary>
    /// StepArgMax: the logits of Step, and the very index Sampler.ArgMax picks from them, on one
    /// core and on two, with random heads and with heads made to tie (every row the same: the
    /// lowest index, across the parts) or to give NaN (row 0: index 0 wins, as the loop; a row of
    /// the second part: never picked).
    /// </summary>
    [Theory]
    [InlineData("small-shaped")]
    [InlineData("rank-mean-seq")]
    [InlineData("full-sum-ffn-cycle")]
    public void StepArgMaxGivesStepsLogitsAndTheSamplersArgmax(string config)
    {
        ulong seed = TestSeed.Next();
        var c = config == "small-shaped" ? SmallShaped() : ReferenceModelTests.Make(config);
        int V = c.VocabSize;
        foreach (string head in new[] { "random", "ties", "nan-first", "nan-late" })
        {
            var rng = new Rng(seed);
            var p = ReferenceModelTests.RandomParams(c, rng);
            var w = p.Unembed.Factorized ? p.Unembed.W2! : p.Unembed.W!;
            int cols = w.Cols;
            if (head == "ties") for (int r = 1; r < V; r++) Array.Copy(w.Data, 0, w.Data, r * cols, cols);
            if (head == "nan-first") w.Data[0] = float.NaN;
            if (head == "nan-late") for (int r = V - 1; r > V - 4; r--) w.Data[r * cols] = float.NaN;
            foreach (int threads in new[] { 1, 2 })
            {
                string what = $"seed {seed} {config} head {head} threads {threads}";
                using var fused = new FastCpuDecoder(p, threads) { AdaptiveTeam = false };
                using var plain = new FastCpuDecoder(p, threads) { AdaptiveTeam = false };
                var sf = new AodStateSet(c, 1);
                var sp = new AodStateSet(c, 1);
                var lf = new float[V];
                var lp = new float[V];
                for (int t = 0; t < 12; t++)
                {
                    int tok = rng.NextInt(V);
                    int got = fused.StepArgMax(tok, sf, lf);
                    plain.Step([tok], sp, lp);
                    for (int i = 0; i < V; i++)
                        Assert.True(BitConverter.SingleToInt32Bits(lf[i]) == BitConverter.SingleToInt32Bits(lp[i]), $"{what} t={t}: logit {i} is {lf[i]:R} from StepArgMax, {lp[i]:R} from Step");
                    int want = Palm.Inference.Sampling.Sampler.ArgMax(lp);
                    Assert.True(got == want, $"{what} t={t}: StepArgMax picked {got} ({lf[Math.Max(0, got)]:R}), Sampler.ArgMax {want} ({lp[want]:R})");
                    Assert.Equal(sp.Position, sf.Position);
                }
                if (threads == 2 && Environment.ProcessorCount >= 2) Assert.Equal(12, fused.TeamSteps);
            }
        }
    }

    /// <summary>
    /// A warm batch-1 step allocates nothing on the caller's thread (the hot-path rule),
    /// on one core and with the team, for Step and StepArgMax, from the token-start table or not.
    /// </summary>
    [Fact]
    public void WarmBatchOneStepsAllocateNothing()
    {
        var c = SmallShaped();
        var p = ReferenceModelTests.RandomParams(c, new Rng(TestSeed.Next()));
        foreach (int threads in new[] { 1, 2 })
            foreach (int slots in new[] { 0, 64 })
            {
                using var dec = new FastCpuDecoder(CpuWeights.From(p).Aligned(), threads, tokenStartSlots: slots) { AdaptiveTeam = false };
                var st = new AodStateSet(c, 1);
                var logits = new float[c.VocabSize];
                int[] one = [0];
                int tok = 1;
                void Steps(int n)
                {
                    for (int i = 0; i < n; i++)
                    {
                        one[0] = tok;
                        dec.Step(one, st, logits);
                        tok = dec.StepArgMax((tok * 7 + 3) % c.VocabSize, st, logits);
                    }
                }
                Steps(20);   // the team's thread, the table, the JIT: once
                long allocated = AllocatedWithoutGc(() => Steps(50));
                Assert.True(allocated == 0, $"threads {threads}, table slots {slots}: 100 warm steps allocated {allocated} bytes");

                // Two sessions stepped together on the team (a pool hand-off allocates by nature).
                if (threads == 2 && Environment.ProcessorCount == 2)
                {
                    var states = new List<AodStateSet> { new(c, 1), new(c, 1) };
                    var both = new float[2 * c.VocabSize];
                    int[] toks = [3, 5];
                    for (int i = 0; i < 10; i++) dec.StepMany(toks, states, both);
                    allocated = AllocatedWithoutGc(() => { for (int i = 0; i < 50; i++) dec.StepMany(toks, states, both); });
                    Assert.True(allocated == 0, $"table slots {slots}: 50 warm two-session steps allocated {allocated} bytes");
                }
            }
    }

    // Bytes the current thread allocates running body, from a run during which no collection
    // happened: a collection started by tests running beside this one retires the thread's
    // allocation context, which can show as bytes it never allocated.
    private static long AllocatedWithoutGc(Action body)
    {
        for (int attempt = 0; attempt < 20; attempt++)
        {
            int gcs = GC.CollectionCount(0);
            long before = GC.GetAllocatedBytesForCurrentThread();
            body();
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (GC.CollectionCount(0) == gcs) return allocated;
        }
        throw new Xunit.Sdk.XunitException("a collection ran during each of 20 attempts: nothing measured");
    }

    [Fact]
    public void AlignedWeightsHoldTheSameValuesOnCacheLinesAndDecodeBitIdentically()
    {
        ulong seed = TestSeed.Next();
        var c = SmallShaped();
        var p = ReferenceModelTests.RandomParams(c, new Rng(seed));
        var shared = CpuWeights.From(p);
        var aligned = shared.Aligned();
        Assert.Same(aligned, aligned.Aligned());
        for (int i = 0; i < shared.All.Count; i++)
        {
            var m = aligned.All[i];
            Assert.True(m.IsAligned64, $"{m.Name} is not on a 64-byte boundary");
            Assert.True(shared.All[i].Float32Span.SequenceEqual(m.Float32Span), $"{m.Name}: the aligned copy differs");
            // A copy, not a view: the decoder must not depend on the caller's arrays.
            Assert.False(System.Runtime.CompilerServices.Unsafe.AreSame(
                ref System.Runtime.InteropServices.MemoryMarshal.GetReference(shared.All[i].Float32Span),
                ref System.Runtime.InteropServices.MemoryMarshal.GetReference(m.Float32Span)));
        }
        // Same kernels, same order: alignment changes where loads land, never a bit of the result.
        using var a = new FastCpuDecoder(aligned, threads: 1);
        using var u = new FastCpuDecoder(shared, threads: 1);
        int V = c.VocabSize;
        var sa = new AodStateSet(c, 1);
        var su = new AodStateSet(c, 1);
        var la = new float[V];
        var lu = new float[V];
        var rng = new Rng(seed + 1);
        for (int t = 0; t < 8; t++)
        {
            var tok = new[] { rng.NextInt(V) };
            a.Step(tok, sa, la);
            u.Step(tok, su, lu);
            for (int i = 0; i < V; i++)
                Assert.True(BitConverter.SingleToInt32Bits(la[i]) == BitConverter.SingleToInt32Bits(lu[i]),
                    $"seed {seed} t={t}: logit {i} is {la[i]:R} aligned, {lu[i]:R} shared");
        }
    }

    [Fact]
    public void ConcurrentBatchOneCallersShareTheTeamSafely()
    {
        // Several threads stepping their own sequences through one decoder: one of them gets the
        // team at a time, the others run alone; every sequence must equal its solo run.
        ulong seed = TestSeed.Next();
        var c = SmallShaped();
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        using var dec = new FastCpuDecoder(p, threads: 2) { AdaptiveTeam = false };
        using var solo = new FastCpuDecoder(p, threads: 1);
        const int Seqs = 4, Steps = 16;
        var toks = Enumerable.Range(0, Seqs).Select(_ => Enumerable.Range(0, Steps).Select(_ => rng.NextInt(c.VocabSize)).ToArray()).ToArray();
        float[][] Run(FastCpuDecoder d, int s)
        {
            var st = new AodStateSet(c, 1);
            var outp = new float[Steps][];
            for (int t = 0; t < Steps; t++) { outp[t] = new float[c.VocabSize]; d.Step(toks[s].AsSpan(t, 1), st, outp[t]); }
            return outp;
        }
        var together = new float[Seqs][][];
        Parallel.For(0, Seqs, new ParallelOptions { MaxDegreeOfParallelism = Seqs }, s => together[s] = Run(dec, s));
        for (int s = 0; s < Seqs; s++)
        {
            var alone = Run(solo, s);
            for (int t = 0; t < Steps; t++) Assert.Equal(alone[t], together[s][t]);
        }
    }

    // Drives the adaptive policy with simulated step times: one-core steps cost oneCore, team
    // steps team, the first team step after one-core ones wakeUp more (the worker slept), and
    // the first `badStart` team steps coldStart (a busy thread pool, a cold cache). Returns the
    // share of team steps over the last half.
    private static double TeamShare(long oneCore, long team, long wakeUp, int badStart, long coldStart)
    {
        var policy = new FastCpuDecoder.TeamPolicy();
        const int Steps = 40_000;
        int teamSteps = 0, teamSeen = 0;
        bool last = true;
        for (int i = 0; i < Steps; i++)
        {
            bool t = policy.UseTeam();
            long ticks = t ? (teamSeen++ < badStart ? coldStart : team) + (last ? 0 : wakeUp) : oneCore;
            policy.Record(t, ticks);
            if (t && i >= Steps / 2) teamSteps++;
            last = t;
        }
        return (double)teamSteps / (Steps / 2);
    }

    [Fact]
    public void AdaptivePolicyFindsTheFasterModeDespiteABadStartAndWakeUps()
    {
        // Two cores 1.6x faster, but waking the worker costs ten team steps and the first 40 team
        // steps are 5x slow: the policy must end up on the team (a timed wake-up made every probe
        // of it lose, so such a start stayed on one core for good).
        double share = TeamShare(oneCore: 100, team: 62, wakeUp: 600, badStart: 40, coldStart: 500);
        Assert.True(share > 0.95, $"the team ran {share:P1} of the last steps; it is 1.6x faster");
        // A loaded machine: the team 1.5x slower than one core. The policy must stay on one core.
        share = TeamShare(oneCore: 100, team: 150, wakeUp: 600, badStart: 0, coldStart: 0);
        Assert.True(share < 0.05, $"the team ran {share:P1} of the last steps; it is 1.5x slower");
        // And when the team is faster from the start, it keeps it.
        share = TeamShare(oneCore: 100, team: 62, wakeUp: 600, badStart: 0, coldStart: 0);
        Assert.True(share > 0.95, $"the team ran {share:P1} of the last steps from a good start");
    }

    [Fact]
    public void AdaptivePolicyMeasuresBothModesAndKeepsTheText()
    {
        // The policy may switch modes at any step; the text must not notice.
        ulong seed = TestSeed.Next();
        var c = SmallShaped();
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        using var adaptive = new FastCpuDecoder(p, threads: 2);
        using var one = new FastCpuDecoder(p, threads: 1);
        var sa = new AodStateSet(c, 1);
        var s1 = new AodStateSet(c, 1);
        var la = new float[c.VocabSize];
        var l1 = new float[c.VocabSize];
        for (int t = 0; t < 300; t++)
        {
            var tok = new[] { rng.NextInt(c.VocabSize) };
            adaptive.Step(tok, sa, la);
            one.Step(tok, s1, l1);
            Assert.Equal(l1, la);
        }
        // Both modes were timed: the team (first steps, then at least one probe) and not only it.
        if (Environment.ProcessorCount >= 2) Assert.InRange(adaptive.TeamSteps, 2, 299);
    }

    [Fact]
    public void StepAfterDisposeThrows()
    {
        var c = ReferenceModelTests.Make("rank-mean-seq");
        var dec = new FastCpuDecoder(ReferenceModelTests.RandomParams(c, new Rng(1)), threads: 2);
        dec.Step([1], new AodStateSet(c, 1), new float[c.VocabSize]);
        dec.Dispose();
        Assert.Throws<ObjectDisposedException>(() => dec.Step([1], new AodStateSet(c, 1), new float[c.VocabSize]));
    }
}

public class FastCpuMatVecTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(15, 16)]
    [InlineData(16, 16)]      // one 16-row block (AVX-512 transposing reduction)
    [InlineData(37, 64)]      // two blocks, then 4-row groups, then single rows
    [InlineData(64, 48)]
    [InlineData(33, 20)]      // k not a multiple of 16: the 4-row kernels and their tails
    [InlineData(7, 3)]
    public void MatVecMatchesFloat64(int n, int k)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var w = Enumerable.Range(0, n * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var x = Enumerable.Range(0, k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var y = Enumerable.Repeat(float.NaN, n).ToArray();
        FloatMatVec.MatVec(w, n, k, x, y);
        var expected = new double[n];
        for (int i = 0; i < n; i++)
            for (int p = 0; p < k; p++) expected[i] += (double)w[i * k + p] * x[p];
        // |terms| <= 1: float32 summation error stays below k * 2^-24 * k.
        Numerics.AssertClose(y, expected.Select(v => (float)v).ToArray(), 1e-6 * k, 1e-5, $"seed {seed} matvec {n}x{k}");
    }

    // A column slice (row stride ld > k), as the decoder's per-part products read: k = 64 takes
    // the row-sequential kernel, which must honour the stride.
    [Theory]
    [InlineData(35, 64, 80)]
    [InlineData(16, 64, 128)]
    [InlineData(20, 32, 48)]
    public unsafe void MatVecOnAColumnSliceMatchesFloat64(int n, int k, int ld)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var w = Enumerable.Range(0, n * ld).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var x = Enumerable.Range(0, k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var y = Enumerable.Repeat(float.NaN, n).ToArray();
        const int col0 = 5;
        fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
            FloatMatVec.MatVec(pw + col0, ld, n, k, px, py);
        var expected = new float[n];
        for (int i = 0; i < n; i++)
        {
            double e = 0;
            for (int p = 0; p < k; p++) e += (double)w[i * ld + col0 + p] * x[p];
            expected[i] = (float)e;
        }
        Numerics.AssertClose(y, expected, 1e-6 * k, 1e-5, $"seed {seed} matvec {n}x{k} of stride {ld}");
    }
}

public class FastCpuDecoderBatchTests
{
    public static TheoryData<string, string> Cases()
    {
        var d = new TheoryData<string, string>();
        foreach (var dtype in new[] { "f32", "q8", "q4" })
        {
            foreach (string config in ReferenceModelTests.Configs) d.Add(config, dtype);
            d.Add("small-shaped", dtype);
        }
        return d;
    }

    /// <summary>
    /// Sessions generating at the same time are stepped together (StepMany): each one's logits and
    /// state must be the very bits of its step alone, whatever it is batched with and wherever the
    /// others stand, or a session's text would depend on other sessions.
    /// </summary>
    [Theory, MemberData(nameof(Cases))]
    public void StepManyIsBitIdenticalToEachSequenceAlone(string config, string dtypeName)
    {
        ulong seed = TestSeed.Next();
        var c = config == "small-shaped" ? PalmConfig.Preset("small") with { VocabSize = 300, NLayer = 2 } : ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        CpuWeights weights;
        if (dtypeName == "f32") weights = CpuWeights.From(p).Aligned();
        else
        {
            Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
            weights = ModelWeights.From(CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), dtype, null, embedding: true)).ToCpu();
        }
        // threads 2: the second group runs on the team's worker (interleaved with batch-1 team steps).
        foreach (int threads in new[] { 1, 2 })
            AssertStepManyBitIdentical($"seed {seed} {config} {dtypeName} threads {threads}", c, weights, threads, rng);
    }

    private static void AssertStepManyBitIdentical(string what, PalmConfig c, CpuWeights weights, int threads, Rng rng)
    {
        using var dec = new FastCpuDecoder(weights, threads);
        int V = c.VocabSize;
        foreach (int B in new[] { 2, 5, 19 })
        {
            // Each session at its own position: some history first.
            var many = Enumerable.Range(0, B).Select(_ => new AodStateSet(c, 1)).ToList();
            var solo = new List<AodStateSet>();
            var scratch = new float[V];
            for (int b = 0; b < B; b++)
            {
                for (int t = 0; t < b % 4; t++) dec.Step([rng.NextInt(V)], many[b], scratch);
                solo.Add(many[b].Clone());
            }
            var got = new float[B * V];
            var want = new float[V];
            for (int step = 0; step < 3; step++)
            {
                var tok = Enumerable.Range(0, B).Select(_ => rng.NextInt(V)).ToArray();
                got.AsSpan().Fill(float.NaN);
                dec.StepMany(tok, many, got);
                for (int b = 0; b < B; b++)
                {
                    dec.Step(tok.AsSpan(b, 1), solo[b], want);
                    for (int i = 0; i < V; i++)
                        Assert.True(BitConverter.SingleToInt32Bits(want[i]) == BitConverter.SingleToInt32Bits(got[b * V + i]),
                            $"{what} B={B} step {step}: sequence {b} logit {i} is {got[b * V + i]:R} batched, {want[i]:R} alone");
                    Assert.Equal(solo[b].Position, many[b].Position);
                    for (int a = 0; a < c.Applications; a++) Assert.Equal(solo[b].S[a], many[b].S[a]);
                }
            }
        }
        if (threads == 2 && Environment.ProcessorCount >= 2) Assert.Equal(9, dec.TeamManySteps);
        else Assert.Equal(0, dec.TeamManySteps);
    }

    [Fact]
    public void StepManyRejectsBadArguments()
    {
        var c = ReferenceModelTests.Make("rank-mean-seq");
        using var dec = new FastCpuDecoder(ReferenceModelTests.RandomParams(c, new Rng(1)), threads: 1);
        var two = new List<AodStateSet> { new(c, 1), new(c, 1) };
        int V = c.VocabSize;
        Assert.Throws<ArgumentException>(() => dec.StepMany([1], two, new float[2 * V]));
        Assert.Throws<ArgumentException>(() => dec.StepMany([1, 2], two, new float[2 * V - 1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => dec.StepMany([1, V], two, new float[2 * V]));
        Assert.Throws<ArgumentException>(() => dec.StepMany([1, 2], [new(c, 1), new(c, 2)], new float[2 * V]));
        Assert.Equal(0, two[0].Position);   // nothing ran
    }
}
