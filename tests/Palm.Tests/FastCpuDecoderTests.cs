// The fast CPU decode path against the CPU reference's recurrent step (and so, transitively,
// the golden files), on every golden config and on random configs, batch 1 and batch > 1.
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Tests.Golden;

namespace Palm.Tests;

public class FastCpuDecoderTests
{
    public static TheoryData<string> Files => GoldenCase.Files();

    [Theory, MemberData(nameof(Files))]
    public void MatchesGoldenLogits(string file)
    {
        var g = GoldenCase.Load(file);
        var fast = new FastCpuDecoder(g.ToParameters());
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

    [Theory, MemberData(nameof(ReferenceModelTests.Configs), MemberType = typeof(ReferenceModelTests))]
    public void MatchesReferenceStepOnRandomConfigs(string config)
    {
        ulong seed = TestSeed.Next();
        var c = ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        var reference = new CpuReferenceModel(p);
        var fast = new FastCpuDecoder(p);
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
            Numerics.AssertClose(lf, lr, 2e-3, 2e-3, $"seed {seed} {config} t={t}");
        }
        for (int a = 0; a < c.Applications; a++) Numerics.AssertClose(sf.S[a], sr.S[a], 2e-3, 2e-3, $"seed {seed} state S app {a}");
        Assert.Equal(sr.Position, sf.Position);
    }
}
