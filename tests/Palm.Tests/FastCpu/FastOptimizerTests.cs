// The fast optimizer step against ReferenceOptimizer.Step: several steps of Muon + AdamW on
// random parameters and gradients (wide, tall and square block matrices), clipped and not.
using Palm.Inference.Model;
using Palm.Trainer.FastCpu;
using Palm.Trainer.Optim;
using Xunit.Abstractions;

namespace Palm.Tests.FastCpu;

public class FastOptimizerTests(ITestOutputHelper output)
{
    // Newton-Schulz amplifies float32 reordering a little; parameters move by lr·O(1) per step.
    private const double RelMax = 1e-4;

    [Theory, InlineData(1.0), InlineData(0.0)]
    public void MatchesReferenceStep(double clip)
    {
        ulong seed = TestSeed.Next();
        output.WriteLine($"seed {seed}");
        var c = new PalmConfig { VocabSize = 53, BlockSize = 16, NEmbd = 24, NHead = 2, DQkv = 32, DRank = 8, NLayer = 2, NRecur = 1, DFfn = 20, Share = ShareMode.Cycle, Mix = AodMix.Mean };
        var rng = new Rng(seed);
        var pRef = ReferenceModelTests.RandomParams(c, rng);
        var pFast = new PalmParameters(c);
        foreach (var t in pRef.All) t.Data.CopyTo(pFast[t.Name].Data, 0);
        var sRef = OptimizerState.For(pRef);
        var sFast = OptimizerState.For(pFast);
        var fast = new FastOptimizer(pFast);
        for (int step = 1; step <= 3; step++)
        {
            var gRef = new PalmParameters(c);
            var gFast = new PalmParameters(c);
            foreach (var t in gRef.All)
            {
                for (int i = 0; i < t.Length; i++) t.Data[i] = (float)(rng.NextGaussian() * 0.3);
                t.Data.CopyTo(gFast[t.Name].Data, 0);
            }
            var hp = new StepHyper { Clip = clip, WeightDecay = 0.1, MuonBeta = ReferenceOptimizer.MuonBeta(step) };
            double nRef = ReferenceOptimizer.Step(pRef, gRef, sRef, hp, step);
            double nFast = fast.Step(pFast, gFast, sFast, hp, step);
            Assert.True(Math.Abs(nRef - nFast) <= 1e-5 * nRef, $"seed {seed} step {step} grad norm {nFast} vs {nRef}");
            foreach (var t in pRef.All)
            {
                Numerics.AssertCloseRelMax(pFast[t.Name].Data, t.Data, RelMax, $"seed {seed} step {step} clip {clip} param {t.Name}");
                Numerics.AssertCloseRelMax(sFast.M[t.Name], sRef.M[t.Name], RelMax, $"seed {seed} step {step} m {t.Name}");
            }
            Assert.Equal(sRef.Step, sFast.Step);
        }
    }
}
