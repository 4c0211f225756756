// The fast CPU forward and backward against the CPU reference (random configs, fresh seeds,
// awkward T, ignored targets, carried state, last-position prefill) and against the golden
// files (logits, loss, every gradient tensor).
using Palm.Inference.Cpu;
using Palm.Inference.Cpu.Fast;
using Palm.Inference.Model;
using Palm.Tests.Golden;
using Palm.Trainer.Cpu;
using Palm.Trainer.FastCpu;
using Xunit.Abstractions;

namespace Palm.Tests.FastCpu;

public class FastCpuModelTests(ITestOutputHelper output)
{
    // Same float32 math in another order (GEMM blocking, per-head jobs); random weights need the
    // looser bound ReferenceModelTests explains.
    private const double Atol = 2e-4, Rtol = 2e-4;
    private const double GradRelMax = 1e-4;

    public static TheoryData<string> Files => GoldenCase.Files();

    // The reference tests' configs (head widths 4-8: the scalar AoD path) plus two whose head
    // width is a multiple of 16, which take the vectorised AoD kernels.
    public static TheoryData<string> Configs => new() { "full-sum-ffn-cycle", "rank-mean-seq", "rank-sum-ffn-seq", "full-mean-cycle-R3", "wide-rank-mean", "wide-full-sum-ffn" };

    [Theory, InlineData("wide-rank-mean"), InlineData("wide-full-sum-ffn")]
    public void DecoderMatchesReferenceStepOnWideConfigs(string config)
    {
        // Widths ≥ 16 take the decoder's 16-lane matrix-vector path where AVX-512 runs.
        ulong seed = TestSeed.Next();
        output.WriteLine($"seed {seed}");
        var c = Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var reference = new CpuReferenceModel(p);
        using var fast = new FastCpuDecoder(p);
        int V = c.VocabSize;
        var sr = new AodStateSet(c, 1);
        var sf = new AodStateSet(c, 1);
        var lr = new float[V];
        var lf = new float[V];
        for (int t = 0; t < 40; t++)
        {
            var tok = new[] { rng.NextInt(V) };
            reference.Step(tok, sr, lr);
            fast.Step(tok, sf, lf);
            Numerics.AssertClose(lf, lr, Atol, Rtol, $"seed {seed} {config} decode t={t}");
        }
    }

    private static PalmConfig Make(string name) => name switch
    {
        "wide-rank-mean" => new PalmConfig { VocabSize = 37, BlockSize = 32, NEmbd = 32, NHead = 2, DQkv = 32, DRank = 8, NLayer = 2, NRecur = 2, DFfn = 0, Share = ShareMode.Cycle, Mix = AodMix.Mean },
        "wide-full-sum-ffn" => new PalmConfig { VocabSize = 29, BlockSize = 32, NEmbd = 24, NHead = 1, DQkv = 32, DRank = 0, NLayer = 1, NRecur = 2, DFfn = 12, Share = ShareMode.Sequence, Mix = AodMix.Sum },
        _ => ReferenceModelTests.Make(name),
    };

    [Theory, MemberData(nameof(Files))]
    public void MatchesGoldenLogitsAndGradients(string file)
    {
        var g = GoldenCase.Load(file);
        var fast = new FastCpuBackward(g.ToParameters());
        var logits = (float[])fast.Model.Forward(g.FlatTokens, g.B, g.T).Clone();
        Numerics.AssertClose(logits.AsSpan(0, g.Logits.Data.Length), g.Logits.Data, GoldenForwardTests.LogitsAtol, GoldenForwardTests.LogitsRtol, $"{g.Name} fast logits");
        double loss = fast.LossAndGradients(g.FlatTokens, g.FlatTargets, g.B, g.T);
        Assert.True(Math.Abs(loss - g.Loss) <= GoldenForwardTests.LossAtol, $"{g.Name} fast loss {loss} vs {g.Loss}");
        foreach (var t in fast.Grads.All)
            Numerics.AssertCloseRelMax(t.Data, g.Grads[t.Name].Data, GoldenGradientTests.GradRelMax, $"{g.Name} fast grad {t.Name}");
    }

    [Theory, MemberData(nameof(Configs))]
    public void ForwardMatchesReference(string config)
    {
        ulong seed = TestSeed.Next();
        output.WriteLine($"seed {seed}");
        var c = Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var reference = new CpuReferenceModel(p);
        var fast = new FastCpuModel(p);
        int V = c.VocabSize;
        foreach (var (B, T) in new[] { (1, 1), (2, 13), (3, 16), (1, 31) })
        {
            var tokens = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(V)).ToArray();
            var want = reference.Forward(tokens, B, T);
            var got = fast.Forward(tokens, B, T, taped: B == 2);
            Numerics.AssertClose(got.AsSpan(0, B * T * V), want, Atol, Rtol, $"seed {seed} {config} B={B} T={T} logits");

            // Chunked with a carried state, the second chunk prefill-style (last positions only).
            var sr = new AodStateSet(c, B);
            var sf = new AodStateSet(c, B);
            int t1 = Math.Max(1, T / 3), t2 = T - t1;
            if (t2 == 0) continue;
            var first = tokens.Where((_, i) => i % T < t1).ToArray();
            var second = tokens.Where((_, i) => i % T >= t1).ToArray();
            reference.Forward(first, B, t1, sr);
            fast.Forward(first, B, t1, sf);
            var wantLast = reference.Forward(second, B, t2, sr);
            var gotLast = fast.Forward(second, B, t2, sf, lastOnly: true);
            for (int b = 0; b < B; b++)
                Numerics.AssertClose(gotLast.AsSpan(b * V, V), wantLast.AsSpan(((b + 1) * t2 - 1) * V, V), Atol, Rtol, $"seed {seed} {config} B={B} chunked last logits b={b}");
            for (int a = 0; a < c.Applications; a++)
            {
                Numerics.AssertClose(sf.S[a], sr.S[a], Atol, Rtol, $"seed {seed} {config} state S app {a}");
                if (sr.Z is not null) Numerics.AssertClose(sf.Z![a], sr.Z[a], Atol, Rtol, $"seed {seed} {config} state Z app {a}");
            }
            Assert.Equal(sr.Position, sf.Position);
        }
    }

    [Theory, MemberData(nameof(Configs))]
    public void GradientsMatchReference(string config)
    {
        ulong seed = TestSeed.Next();
        output.WriteLine($"seed {seed}");
        var c = Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var fast = new FastCpuBackward(p);
        foreach (var (B, T) in new[] { (2, 7), (3, 16), (2, 7) })   // the repeat reuses the workspace
        {
            var tokens = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(c.VocabSize)).ToArray();
            var targets = tokens.Select((_, i) => i % 5 == 1 ? -1 : rng.NextInt(c.VocabSize)).ToArray();
            var (wantLoss, want) = ReferenceBackward.LossAndGradients(new CpuReferenceModel(p), tokens, targets, B, T);
            double loss = fast.LossAndGradients(tokens, targets, B, T);
            Assert.True(Math.Abs(loss - wantLoss) <= 1e-5 * Math.Max(1, Math.Abs(wantLoss)), $"seed {seed} {config} loss {loss} vs {wantLoss}");
            foreach (var t in fast.Grads.All)
                Numerics.AssertCloseRelMax(t.Data, want[t.Name].Data, GradRelMax, $"seed {seed} {config} B={B} T={T} grad {t.Name}");
        }
    }
}
