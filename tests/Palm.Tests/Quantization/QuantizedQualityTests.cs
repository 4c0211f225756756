// Quality of quantized weights on real text, for the built-in model (models/palm-kjv.palm): its
// val perplexity on the held-out end of the KJV (data/corpus/kjv.txt, written by
// scripts/setup.sh) with q8 and q4 weights, against f32, at the issue's bars: q8 within +1%, q4
// within +5%. q4 reaches its bar only with GPTQ (quantize --calibrate), calibrated on the train
// split of data/kjv2k (the first 90 % of the same text, so disjoint from the val text here) with
// the command's default 8,192 tokens; round-to-nearest q4 (+8.2%) is kept as a printed baseline
// with a +10% regression guard. File sizes are printed (docs/quantization.md).
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Commands;
using Xunit.Abstractions;

namespace Palm.Tests.Quantization;

public sealed class QuantizedQualityTests(ITestOutputHelper output)
{
    private const int EvalWindows = 48;

    private static string Find(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"{relative} not found above the test binaries (run scripts/setup.sh for the corpus)");
    }

    /// <summary>Mean cross-entropy over consecutive windows of the val tokens.</summary>
    private static double ValLoss(PalmParameters p, int[] val)
    {
        var model = new CpuReferenceModel(p);
        int T = p.Config.BlockSize, windows = Math.Min(EvalWindows, (val.Length - 1) / T);
        double total = 0;
        for (int w = 0; w < windows; w++)
        {
            var x = val.AsSpan(w * T, T).ToArray();
            var y = val.AsSpan(w * T + 1, T).ToArray();
            total += CpuOps.CrossEntropy(model.Forward(x, 1, T), y, p.Config.VocabSize);
        }
        return total / windows;
    }

    [Fact]
    public void Builtin_model_quantized_val_perplexity_stays_close_to_f32()
    {
        string f32 = Find(Path.Combine("models", "palm-kjv.palm"));
        string text = File.ReadAllText(Find(Path.Combine("data", "corpus", "kjv.txt")));
        var ck = PalmCheckpoint.Load(f32);
        var tokenizer = ck.Tokenizer!.ToTokenizer();
        // The held-out split the model was evaluated on: the last 10 % of the text.
        var val = tokenizer.Encode(text[(int)(text.Length * 0.9)..]);
        double baseline = Math.Exp(ValLoss(ck.ToParameters(), val));
        output.WriteLine($"{"f32",-16} {new FileInfo(f32).Length / 1024.0,7:F0} KiB  ppl {baseline:F3}");

        string calibration = Path.GetDirectoryName(Find(Path.Combine("data", "kjv2k", "manifest.json")))!;
        using var dir = new Trainer.TempDir();
        var q4Ppl = new Dictionary<string, double>();
        foreach (var (dtype, embed, calibrate, limit) in new[]
                 {
                     ("q8", false, false, 1.01), ("q8", true, false, 1.01),
                     ("q4", false, false, 1.10), ("q4", false, true, 1.05), ("q4", true, true, 1.05),
                 })
        {
            string label = $"{dtype}{(embed ? "+embed" : "")}{(calibrate ? " GPTQ" : "")}";
            string path = dir[$"{dtype}{(embed ? "-embed" : "")}{(calibrate ? "-gptq" : "")}.palm"];
            output.WriteLine(QuantizeCommand.Run(f32, path, dtype, null, embed, calibrate ? calibration : null));
            double ppl = Math.Exp(ValLoss(PalmCheckpoint.Load(path).ToParameters(), val));
            double ratio = ppl / baseline;
            output.WriteLine($"{label,-16} {new FileInfo(path).Length / 1024.0,7:F0} KiB  ppl {ppl:F3}  ({(ratio >= 1 ? "+" : "")}{(ratio - 1) * 100:F2}%)");
            Assert.True(ratio <= limit, $"{label}: perplexity {ppl:F3} vs f32 {baseline:F3} (x{ratio:F4}, limit x{limit})");
            if (dtype == "q4" && !embed) q4Ppl[label] = ppl;
        }
        Assert.True(q4Ppl["q4 GPTQ"] < q4Ppl["q4"], $"GPTQ q4 perplexity {q4Ppl["q4 GPTQ"]:F3} is not below round-to-nearest's {q4Ppl["q4"]:F3}");
    }
}
