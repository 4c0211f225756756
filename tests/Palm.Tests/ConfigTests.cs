using Palm.Inference.Model;

namespace Palm.Tests;

public class ConfigTests
{
    [Theory]
    [InlineData("vocab_size")]
    [InlineData("d_qkv")]
    public void InvalidConfigNamesField(string field)
    {
        var c = field switch
        {
            "vocab_size" => PalmConfig.Tiny with { VocabSize = 0 },
            _ => PalmConfig.Tiny with { DQkv = 130 },
        };
        var e = Assert.Throws<PalmConfigException>(c.Validate);
        Assert.Equal(field, e.Field);
    }
}

public class InitTests
{
    [Fact]
    public void TrainingInitFollowsSpec()
    {
        // embed.weight ~ N(0, 1); every linear factor ~ U(-b, b), b = sqrt(3)*0.5/sqrt(fan_in).
        var c = PalmConfig.Small;
        var p = new PalmParameters(c);
        ulong seed = TestSeed.Next();
        p.InitTraining(new Rng(seed));
        var e = p.Embed.Data;
        double mean = e.Average(v => (double)v), std = Math.Sqrt(e.Average(v => (double)v * v) - mean * mean);
        Assert.True(Math.Abs(mean) < 0.01 && Math.Abs(std - 1) < 0.01, $"seed {seed}: embed mean {mean:g3}, std {std:g3}");
        foreach (var t in p.All.Where(t => t != p.Embed))
        {
            double b = Math.Sqrt(3) * 0.5 / Math.Sqrt(t.Cols);
            double max = t.Data.Max(v => Math.Abs((double)v));
            double s = Math.Sqrt(t.Data.Average(v => (double)v * v));
            Assert.True(max <= b, $"seed {seed}: {t.Name} max |w| {max:g4} > b {b:g4}");
            Assert.True(Math.Abs(s - b / Math.Sqrt(3)) < 0.05 * b, $"seed {seed}: {t.Name} rms {s:g4}, expected {b / Math.Sqrt(3):g4}");
        }
        Assert.Equal(["embed.weight", "embed.proj.w", "blocks.0.qkv.w1", "blocks.0.qkv.w2", "blocks.0.proj.w1", "blocks.0.proj.w2"], p.All.Take(6).Select(t => t.Name));
        Assert.Equal((3 * c.DQkv, c.DRank), (p["blocks.0.qkv.w2"].Rows, p["blocks.0.qkv.w2"].Cols));
        Assert.Equal((c.VocabSize, c.DRank), (p["unembed.w2"].Rows, p["unembed.w2"].Cols));
    }
}
