// Quality of quantized weights on real text: a tiny model trained briefly on the checked-in KJV
// shards (data/kjv2k), then `quantize`d and measured with `eval` (which dequantizes q8/q4 weights
// for the CPU reference). q8 must stay within +1% and q4 within +5% of the f32 val perplexity.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Trainer.Commands;
using Palm.Trainer.Data;
using Palm.Trainer.Training;
using Xunit.Abstractions;

namespace Palm.Tests.Quantization;

public sealed class QuantizedQualityTests(ITestOutputHelper output)
{
    // PALM_QUANT_STEPS trains longer for the figures in docs/quantization.md.
    private static readonly int Steps = int.TryParse(Environment.GetEnvironmentVariable("PALM_QUANT_STEPS"), out var n) && n > 0 ? n : 60;
    private const int EvalWindows = 48;

    private static string DataDir()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "data", "kjv2k");
            if (File.Exists(Path.Combine(candidate, "manifest.json"))) return candidate;
        }
        throw new InvalidOperationException("data/kjv2k not found above the test binaries");
    }

    [Fact]
    public void Quantized_val_perplexity_stays_close_to_f32()
    {
        string data = DataDir();
        var config = PalmConfig.Tiny with { VocabSize = 2048, BlockSize = 64 };
        var p = new PalmParameters(config);
        p.InitTraining(new Rng(1234));
        var train = TokenSplit.OpenPrepared(data, "train", out _);
        var val = TokenSplit.OpenPrepared(data, "val", out _);
        using (var dataset = new TokenDataset(train, val, config.BlockSize, data))
        {
            var trainer = new CpuTrainer(p, dataset, new TrainConfig { Steps = Steps, Seed = 1234, Warmup = 10, EvalInterval = 1000, EvalIters = 1 });
            for (int s = 0; s < Steps; s++) trainer.TrainStep();
        }

        using var dir = new Trainer.TempDir();
        string f32 = dir["f32.palm"];
        PalmCheckpoint.FromParameters(p).Save(f32);
        var baseline = EvalCommand.Run(f32, data, "val", 8, EvalWindows);
        output.WriteLine($"{Steps} steps, val over {baseline.Windows} windows of {config.BlockSize} tokens");
        output.WriteLine($"f32       {new FileInfo(f32).Length / 1024.0,7:F0} KiB  loss {baseline.Loss:F4}  ppl {baseline.Perplexity:F3}");

        foreach (var (dtype, embed, limit) in new[] { ("q8", false, 1.01), ("q8", true, 1.01), ("q4", false, 1.05), ("q4", true, 1.05) })
        {
            string path = dir[$"{dtype}{(embed ? "-embed" : "")}.palm"];
            output.WriteLine(QuantizeCommand.Run(f32, path, dtype, null, embed));
            var r = EvalCommand.Run(path, data, "val", 8, EvalWindows);
            double ratio = r.Perplexity / baseline.Perplexity;
            output.WriteLine($"{dtype}{(embed ? "+embed" : "      ")} {new FileInfo(path).Length / 1024.0,7:F0} KiB  loss {r.Loss:F4}  ppl {r.Perplexity:F3}  ({(ratio >= 1 ? "+" : "")}{(ratio - 1) * 100:F2}%)");
            Assert.True(ratio <= limit, $"{dtype} embed={embed}: perplexity {r.Perplexity:F3} vs f32 {baseline.Perplexity:F3} (x{ratio:F4}, limit x{limit})");
        }
    }
}
