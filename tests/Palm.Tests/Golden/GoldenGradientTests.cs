// Golden conformance of the hand-written backward: every gradient tensor of every golden file.
using Palm.Inference.Cpu;
using Palm.Trainer.Cpu;

namespace Palm.Tests.Golden;

public class GoldenGradientTests
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
        foreach (var t in grads.All)
            Numerics.AssertCloseRelMax(t.Data, g.Grads[t.Name].Data, GradRelMax, $"{g.Name} grad {t.Name}");
    }
}
