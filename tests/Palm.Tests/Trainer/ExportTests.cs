// `export`: training state dropped, weights kept (exactly in f32, to half precision in f16).
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Trainer.Commands;

namespace Palm.Tests.Trainer;

public class ExportTests
{
    [Theory]
    [InlineData("f32", 0.0)]
    [InlineData("f16", 1e-3)]          // plus 1e-7 absolute: f16 subnormals below 6e-5
    [InlineData("bf16", 8e-3)]
    public void ExportKeepsWeightsAndDropsTrainingState(string dtype, double relTol)
    {
        var c = PalmConfig.Tiny with { VocabSize = 300 };
        var p = new PalmParameters(c);
        p.InitTraining(new Rng(TestSeed.Next()));
        var training = new TrainingState { Step = 7, RngState = new Rng(1).GetState() };
        var ck = PalmCheckpoint.FromParameters(p, training: training);
        Assert.True(TensorDTypes.TryParse(dtype, out var storage));
        var path = Path.Combine(Path.GetTempPath(), $"palm-export-{Guid.NewGuid():N}.palm");
        try
        {
            ExportCommand.Export(ck, storage).Save(path);
            var back = PalmCheckpoint.Load(path);
            Assert.Null(back.Training);
            var q = back.ToParameters();
            foreach (var t in p.All)
                Numerics.AssertClose(q[t.Name].Data, t.Data, relTol == 0 ? 0 : 1e-7, relTol, $"{dtype} {t.Name}");
            if (dtype != "f32") Assert.True(new FileInfo(path).Length < 0.6 * p.Count * 4, "half-precision export should be about half the size");
        }
        finally { File.Delete(path); }
    }
}
