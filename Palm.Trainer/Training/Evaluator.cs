// `eval`: the mean next-token loss of a model over consecutive non-overlapping T-token windows of
// a split (deterministic, every window weighted the same), and its perplexity exp(loss).
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Data;

namespace Palm.Trainer.Training;

/// <summary>Result of <see cref="Evaluator.Evaluate"/>.</summary>
public readonly record struct EvalResult(double Loss, long Windows, long Tokens)
{
    public double Perplexity => Math.Exp(Loss);
}

public static class Evaluator
{
    /// <summary>Mean cross-entropy over up to <paramref name="maxWindows"/> windows of <paramref name="t"/> targets, batched by <paramref name="batch"/>.</summary>
    /// <exception cref="Commands.UserError">No segment holds t + 1 tokens.</exception>
    public static EvalResult Evaluate(PalmParameters parameters, TokenSplit split, int t, int batch, long maxWindows = long.MaxValue)
    {
        var model = new CpuReferenceModel(parameters);
        int v = parameters.Config.VocabSize;
        var starts = new List<(ITokenSegment Seg, long Offset)>();
        foreach (var s in split.Segments)
            for (long o = 0; o + t + 1 <= s.Length && starts.Count < maxWindows; o += t) starts.Add((s, o));
        if (starts.Count == 0) throw new Commands.UserError($"no shard holds block_size + 1 = {t + 1} tokens to evaluate");
        double sum = 0;
        var w = new int[t + 1];
        for (int i = 0; i < starts.Count; i += batch)
        {
            int n = Math.Min(batch, starts.Count - i);
            var x = new int[n * t];
            var y = new int[n * t];
            for (int b = 0; b < n; b++)
            {
                var (seg, off) = starts[i + b];
                seg.Read(off, w);
                w.AsSpan(0, t).CopyTo(x.AsSpan(b * t));
                w.AsSpan(1, t).CopyTo(y.AsSpan(b * t));
            }
            // CrossEntropy is the mean over the n windows; weight it back to a per-window sum.
            sum += CpuOps.CrossEntropy(model.Forward(x, n, t), y, v) * n;
        }
        return new EvalResult(sum / starts.Count, starts.Count, (long)starts.Count * t);
    }
}
