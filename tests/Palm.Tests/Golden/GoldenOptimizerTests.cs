// Golden conformance of one clipped Muon + AdamW step, and of Newton-Schulz on its own.
using Palm.Inference.Model;
using Palm.Trainer.Optim;

namespace Palm.Tests.Golden;

public class GoldenOptimizerTests
{
    public const double GradNormRtol = 1e-5, ParamsOutAtol = 5e-6, StateRelMax = 1e-5, NsAtol = 2e-5;

    public static TheoryData<string> Files => GoldenCase.Files();

    [Theory, MemberData(nameof(Files))]
    public void ClippedMuonAdamWStep(string file)
    {
        var g = GoldenCase.Load(file);
        var s = g.Step;
        var parameters = g.ToParameters();
        var grads = g.ToParameters(g.Grads);
        var state = new OptimizerState();
        foreach (var (name, st) in s.StateIn)
        {
            state.M[name] = (float[])st["m"].Data.Clone();
            if (st.TryGetValue("v", out var v)) state.V[name] = (float[])v.Data.Clone();
        }
        var hp = new StepHyper
        {
            MuonLr = s.MuonLr, AdamLr = s.AdamLr, WeightDecay = s.WeightDecay, MuonBeta = s.MuonBeta,
            AdamBeta1 = s.AdamBeta1, AdamBeta2 = s.AdamBeta2, AdamEps = s.AdamEps, Clip = s.Clip,
        };
        double norm = ReferenceOptimizer.Step(parameters, grads, state, hp, s.AdamStep);
        Assert.True(Math.Abs(norm - s.GradNorm) <= GradNormRtol * Math.Abs(s.GradNorm), $"{g.Name} grad_norm {norm:g9} vs {s.GradNorm:g9}");
        foreach (var t in parameters.All)
        {
            Numerics.AssertClose(t.Data, s.ParamsOut[t.Name].Data, ParamsOutAtol, 0, $"{g.Name} params_out {t.Name}");
            var so = s.StateOut[t.Name];
            Numerics.AssertCloseRelMax(state.M[t.Name], so["m"].Data, StateRelMax, $"{g.Name} state_out {t.Name}.m");
            if (so.TryGetValue("v", out var v)) Numerics.AssertCloseRelMax(state.V[t.Name], v.Data, StateRelMax, $"{g.Name} state_out {t.Name}.v");
            Assert.Equal(t.IsMuon, !so.ContainsKey("v"));
        }
    }

    [Theory, MemberData(nameof(Files))]
    public void NewtonSchulz(string file)
    {
        var g = GoldenCase.Load(file);
        Assert.NotEmpty(g.NewtonSchulz);
        foreach (var (input, output) in g.NewtonSchulz)
        {
            int m = input.Shape[0], n = input.Shape[1];
            var got = ReferenceOptimizer.NewtonSchulz(input.Data, m, n);
            Numerics.AssertClose(got, output.Data, NsAtol, 0, $"{g.Name} newton_schulz ({m}x{n})", i => $"({i / n},{i % n})");
        }
    }

    [Fact]
    public void MuonBetaWarmsUp()
    {
        Assert.Equal(0.85, ReferenceOptimizer.MuonBeta(0), 12);
        Assert.Equal(0.90, ReferenceOptimizer.MuonBeta(150), 12);
        Assert.Equal(0.95, ReferenceOptimizer.MuonBeta(300), 12);
        Assert.Equal(0.95, ReferenceOptimizer.MuonBeta(10_000), 12);
    }

    [Fact]
    public void LrScheduleFollowsSpec()
    {
        var s = new LrSchedule { Warmup = 10, DecayIters = 100, CooldownFrac = 0.5, MinLrFrac = 0.1 };
        Assert.Equal(1.0 / 11, s.At(0, 1), 12);
        Assert.Equal(10.0 / 11, s.At(9, 1), 12);
        Assert.Equal(1.0, s.At(10, 1), 12);
        Assert.Equal(1.0, s.At(50, 1), 12);            // s/decay = 0.5, not > 0.5
        Assert.Equal(0.1 + 0.45 * (1 + Math.Cos(Math.PI * 0.5)), s.At(75, 1), 12);
        Assert.Equal(0.1, s.At(100, 1), 12);
        Assert.Equal(0.1, s.At(1000, 1), 12);
        Assert.True(s.At(60, 1) < 1 && s.At(60, 1) > s.At(90, 1));
    }
}
