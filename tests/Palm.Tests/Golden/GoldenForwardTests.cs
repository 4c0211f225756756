// Golden conformance of the CPU reference forward: logits in all three forms (parallel,
// recurrent one token at a time, chunked prefill) and the loss, per golden file.
using Palm.Inference.Cpu;

namespace Palm.Tests.Golden;

public class GoldenForwardTests
{
    public const double LogitsAtol = 1e-4, LogitsRtol = 1e-5, LossAtol = 1e-5;

    public static TheoryData<string> Files => GoldenCase.Files();

    [Fact]
    public void GoldenFilesArePresent() => Assert.NotEmpty(GoldenCase.Files());

    private static Func<int, string> LogitIndex(GoldenCase g) => i =>
    {
        int V = g.Config.VocabSize, T = g.T;
        return $"(b={i / (T * V)}, t={i / V % T}, v={i % V})";
    };

    [Theory, MemberData(nameof(Files))]
    public void ParallelLogitsAndLoss(string file)
    {
        var g = GoldenCase.Load(file);
        var model = new CpuReferenceModel(g.ToParameters());
        var logits = model.Forward(g.FlatTokens, g.B, g.T);
        Numerics.AssertClose(logits, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} parallel logits", LogitIndex(g));
        double loss = CpuOps.CrossEntropy(logits, g.FlatTargets, g.Config.VocabSize);
        Assert.True(Math.Abs(loss - g.Loss) <= LossAtol, $"{g.Name} loss {loss:g9}, ref {g.Loss:g9}, err {Math.Abs(loss - g.Loss):g3} > {LossAtol}");
    }

    [Theory, MemberData(nameof(Files))]
    public void RecurrentLogits(string file)
    {
        var g = GoldenCase.Load(file);
        var model = new CpuReferenceModel(g.ToParameters());
        int B = g.B, T = g.T, V = g.Config.VocabSize;
        var state = new AodStateSet(g.Config, B);
        var got = new float[B * T * V];
        var step = new float[B * V];
        var tok = new int[B];
        for (int t = 0; t < T; t++)
        {
            for (int b = 0; b < B; b++) tok[b] = g.Tokens[b][t];
            model.Step(tok, state, step);
            for (int b = 0; b < B; b++) step.AsSpan(b * V, V).CopyTo(got.AsSpan((b * T + t) * V, V));
        }
        Numerics.AssertClose(got, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} recurrent logits", LogitIndex(g));
    }

    [Theory, MemberData(nameof(Files))]
    public void ChunkedLogits(string file)
    {
        var g = GoldenCase.Load(file);
        var model = new CpuReferenceModel(g.ToParameters());
        int B = g.B, T = g.T, V = g.Config.VocabSize;
        // Several chunkings, including 1-token chunks and one chunk of everything.
        foreach (var chunks in new[] { new[] { T }, Enumerable.Repeat(1, T).ToArray(), Split(T, 3), Split(T, 5) })
        {
            var state = new AodStateSet(g.Config, B);
            var got = new float[B * T * V];
            int t0 = 0;
            foreach (int len in chunks)
            {
                var tok = new int[B * len];
                for (int b = 0; b < B; b++) for (int i = 0; i < len; i++) tok[b * len + i] = g.Tokens[b][t0 + i];
                var l = model.Forward(tok, B, len, state);
                for (int b = 0; b < B; b++) l.AsSpan(b * len * V, len * V).CopyTo(got.AsSpan((b * T + t0) * V, len * V));
                t0 += len;
            }
            Numerics.AssertClose(got, g.Logits.Data, LogitsAtol, LogitsRtol, $"{g.Name} chunked logits [{string.Join(",", chunks)}]", LogitIndex(g));
        }
    }

    private static int[] Split(int t, int size)
    {
        var l = new List<int>();
        for (int i = 0; i < t; i += size) l.Add(Math.Min(size, t - i));
        return l.ToArray();
    }

    [Theory, MemberData(nameof(Files))]
    public void Rope(string file)
    {
        var g = GoldenCase.Load(file);
        var r = g.Rope;
        int hd = r.Hd;
        var got = (float[])r.Input.Data.Clone();
        for (int p = 0; p < r.Positions.Length; p++)
        {
            var (cos, sin) = CpuOps.RopeTables(hd, r.Positions[p], 1);
            CpuOps.RopeInPlace(got.AsSpan(p * hd, hd), cos, sin);
        }
        // Our angles are formed in double, so the tight tolerance applies at every position.
        Numerics.AssertClose(got, r.Output.Data, 1e-5, 0, $"{g.Name} rope", i => $"(pos {r.Positions[i / hd]}, ch {i % hd})");
    }
}
