// Properties of the CPU reference beyond the golden files: finite-difference gradient checks and
// agreement of the three forward forms on random configs of our own (longer sequences, other
// shapes), with fresh seeds printed on failure.
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Cpu;
using Xunit.Abstractions;

namespace Palm.Tests;

public class ReferenceModelTests(ITestOutputHelper output)
{
    public static TheoryData<string> Configs => new() { "full-sum-ffn-cycle", "rank-mean-seq", "rank-sum-ffn-seq", "full-mean-cycle-R3" };

    internal static PalmConfig Make(string name) => name switch
    {
        "full-sum-ffn-cycle" => new PalmConfig { VocabSize = 11, BlockSize = 16, NEmbd = 8, NHead = 2, DQkv = 8, DRank = 0, NLayer = 2, NRecur = 2, DFfn = 6, Share = ShareMode.Cycle, Mix = AodMix.Sum },
        "rank-mean-seq" => new PalmConfig { VocabSize = 13, BlockSize = 16, NEmbd = 12, NHead = 1, DQkv = 8, DRank = 8, NLayer = 2, NRecur = 2, DFfn = 0, Share = ShareMode.Sequence, Mix = AodMix.Mean },
        "rank-sum-ffn-seq" => new PalmConfig { VocabSize = 7, BlockSize = 16, NEmbd = 6, NHead = 2, DQkv = 16, DRank = 10, NLayer = 1, NRecur = 3, DFfn = 5, Share = ShareMode.Sequence, Mix = AodMix.Sum },
        "full-mean-cycle-R3" => new PalmConfig { VocabSize = 9, BlockSize = 16, NEmbd = 10, NHead = 3, DQkv = 12, DRank = 0, NLayer = 1, NRecur = 3, DFfn = 4, Share = ShareMode.Cycle, Mix = AodMix.Mean },
        _ => throw new ArgumentException(name),
    };

    /// <summary>Test init like the golden generator's: std 1/sqrt(fan_in) per factor, so every nonlinearity bites.</summary>
    internal static PalmParameters RandomParams(PalmConfig c, Rng rng)
    {
        var p = new PalmParameters(c);
        foreach (var t in p.All)
        {
            double std = t == p.Embed ? 1 : 1 / Math.Sqrt(t.Cols);
            for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextGaussian() * std);
        }
        return p;
    }

    [Theory, MemberData(nameof(Configs))]
    public void GradientsMatchFiniteDifferences(string config)
    {
        ulong seed = TestSeed.Next();
        output.WriteLine($"seed {seed}");
        var c = Make(config);
        var rng = new Rng(seed);
        var p = RandomParams(c, rng);
        int B = 2, T = 5;
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(c.VocabSize)).ToArray();
        var targets = tokens.Select((_, i) => i == 1 ? -1 : rng.NextInt(c.VocabSize)).ToArray();
        var model = new CpuReferenceModel(p);
        var (_, grads) = ReferenceBackward.LossAndGradients(model, tokens, targets, B, T);

        // Central differences in float32 on random entries of every tensor. The model has kinks
        // (relu of q) and near-singular spots (QK-norm of a head that relu2 nearly zeroed), where
        // a finite difference is meaningless: an entry near one is replaced by another entry.
        const float h = 1e-2f;
        double Loss(ParamTensor t, int i, float delta)
        {
            float orig = t.Data[i];
            t.Data[i] = orig + delta;
            double l = CpuOps.CrossEntropy(model.Forward(tokens, B, T), targets, c.VocabSize);
            t.Data[i] = orig;
            return l;
        }
        foreach (var t in p.All)
        {
            var gt = grads[t.Name];
            double worst = 0;
            int checkedCount = 0;
            for (int tries = 0; tries < 60 && checkedCount < 4; tries++)
            {
                int i = rng.NextInt(t.Length);
                // Steps of 2.5e-3 and, for strongly curved entries (random weights can sit near
                // the QK-norm's singular spot, f'' in the hundreds), 6e-4 and 1.6e-4: the
                // curvature term shrinks with the step while float32 noise (~1e-6 in the loss)
                // stays well inside the tolerance.
                foreach (float step in new[] { h / 4, h / 16, h / 64 })
                {
                    double l0 = Loss(t, i, 0), lp = Loss(t, i, step), lm = Loss(t, i, -step), lp2 = Loss(t, i, step / 2), lm2 = Loss(t, i, -step / 2);
                    double fd = (lp - lm) / (2 * step), fd2 = (lp2 - lm2) / step;
                    // A kink inside [-h/2, h/2] shows as one-sided slopes that disagree; a central
                    // difference across it would be the mean of two slopes, not the derivative.
                    double fwd = (lp2 - l0) / (step / 2), bwd = (l0 - lm2) / (step / 2);
                    if (Math.Abs(fwd - bwd) > 2e-2 * Math.Max(Math.Abs(fd2), 0.1) || Math.Abs(fd - fd2) > 1e-3 + 1e-2 * Math.Abs(fd)) continue;
                    checkedCount++;
                    double rich = (4 * fd2 - fd) / 3;        // Richardson: cancels the h^2 truncation term
                    double err = Math.Abs(rich - gt.Data[i]);
                    double tol = 2e-3 + 2e-2 * Math.Abs(rich);
                    worst = Math.Max(worst, err);
                    Assert.True(err <= tol, $"seed {seed} {config} {t.Name}[{i}] (h={step}): analytic {gt.Data[i]:g6}, finite difference {rich:g6}, err {err:g3} > {tol:g3}");
                    break;
                }
            }
            Assert.True(checkedCount >= 2, $"seed {seed} {config} {t.Name}: only {checkedCount} smooth entries found");
            output.WriteLine($"{t.Name}: worst |fd - analytic| {worst:g3}");
        }
    }

    [Theory, MemberData(nameof(Configs))]
    public void ThreeFormsAgreeOnLongerSequences(string config)
    {
        ulong seed = TestSeed.Next();
        var c = Make(config);
        var rng = new Rng(seed);
        var model = new CpuReferenceModel(RandomParams(c, rng));
        int B = 3, T = 67, V = c.VocabSize;
        // Random weights put some heads near the QK-norm's singular spot (a head whose relu2
        // factor output is almost zero is divided by ~sqrt(eps)), where float32 rounding that
        // differs between the forms is amplified ~3000x; the golden files check 1e-4 on sane
        // weights, this test looks for structural mistakes, which are O(1).
        const double Tol = 2e-3;
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(V)).ToArray();
        var parallel = model.Forward(tokens, B, T);

        var state = new AodStateSet(c, B);
        var step = new float[B * V];
        for (int t = 0; t < T; t++)
        {
            model.Step(Enumerable.Range(0, B).Select(b => tokens[b * T + t]).ToArray(), state, step);
            for (int b = 0; b < B; b++)
                Numerics.AssertClose(step.AsSpan(b * V, V), parallel.AsSpan((b * T + t) * V, V), Tol, Tol, $"seed {seed} {config} recurrent b={b} t={t}");
        }
        Assert.Equal(T, state.Position);

        // Random chunk sizes.
        var cstate = new AodStateSet(c, B);
        for (int t0 = 0; t0 < T;)
        {
            int len = Math.Min(T - t0, 1 + rng.NextInt(20));
            var tok = new int[B * len];
            for (int b = 0; b < B; b++) for (int i = 0; i < len; i++) tok[b * len + i] = tokens[b * T + t0 + i];
            var l = model.Forward(tok, B, len, cstate);
            for (int b = 0; b < B; b++)
                Numerics.AssertClose(l.AsSpan(b * len * V, len * V), parallel.AsSpan((b * T + t0) * V, len * V), Tol, Tol, $"seed {seed} chunk at t0={t0} len={len} b={b}");
            t0 += len;
        }
        // The state after chunks equals the state after single steps.
        for (int a = 0; a < c.Applications; a++)
            Numerics.AssertClose(cstate.S[a], state.S[a], Tol, Tol, $"seed {seed} state S app {a}");
    }

    [Fact]
    public void StateSizeDoesNotGrow()
    {
        var c = Make("rank-mean-seq");
        var model = new CpuReferenceModel(RandomParams(c, new Rng(1)));
        var state = new AodStateSet(c, 1);
        long before = state.FloatCount;
        var logits = new float[c.VocabSize];
        for (int i = 0; i < 200; i++) model.Step([i % c.VocabSize], state, logits);
        Assert.Equal(before, state.FloatCount);
        Assert.Equal(c.Applications * 2L * c.DQkv, before);
    }

    [Fact]
    public void BadTokensGiveClearErrors()
    {
        var c = Make("rank-mean-seq");
        var model = new CpuReferenceModel(RandomParams(c, new Rng(1)));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward([0, c.VocabSize], 1, 2));
        Assert.Contains("token id", e.Message);
        Assert.Throws<ArgumentException>(() => model.Forward([0, 1, 2], 2, 2));
    }
}
