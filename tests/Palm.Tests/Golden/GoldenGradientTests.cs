// Golden conformance of the hand-written backward: every gradient tensor of every golden file.
using Palm.Inference.Cpu;
using Palm.Trainer.Cpu;
using Xunit.Abstractions;

namespace Palm.Tests.Golden;

public class GoldenGradientTests(ITestOutputHelper output)
{
    public const double GradRelMax = 5e-4;

    public static TheoryData<string> Files => GoldenCase.Files();

    [Theory, MemberData(nameof(Files))]
    public void Gradients(string file)
    {
        var g = GoldenCase.Load(file);
        var model = new CpuReferenceModel(g.ToParameters());
        var (loss, grads) = ReferenceBackward.LossAndGradients(model, g.FlatTokens, g.FlatTargets, g.B, g.T);
        Assert.True(Math.Abs(loss - g.Loss) <= GoldenForwardTests.LossAtol, $"{g.Name} loss {loss} vs {g.Loss}");
        Assert.Equal(g.Grads.Count, grads.All.Count);
        double worst = 0;
        string worstName = "";
        foreach (var t in grads.All)
        {
            var gold = g.Grads[t.Name].Data;
            double rel = Numerics.MaxAbsDiff(t.Data, gold) / Math.Max(gold.Max(v => Math.Abs((double)v)), 1e-30);
            if (rel > worst) (worst, worstName) = (rel, t.Name);
        }
        output.WriteLine($"{g.Name}: worst grad error / max|ref| {worst:g3} ({worstName})");
        foreach (var t in grads.All)
            Numerics.AssertCloseRelMax(t.Data, g.Grads[t.Name].Data, GradRelMax, $"{g.Name} grad {t.Name}");
    }
}
