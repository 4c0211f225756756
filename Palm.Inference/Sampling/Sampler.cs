// Token sampling from logits: greedy at temperature 0, otherwise temperature + top-k + top-p
// from the caller's seeded RNG, so the same seed gives the same text.
using Palm.Inference.Model;

namespace Palm.Inference.Sampling;

/// <summary>Sampling settings.</summary>
public sealed record SamplerOptions
{
    /// <summary>0 = greedy (argmax).</summary>
    public float Temperature { get; init; } = 0.8f;
    /// <summary>Keep the k most likely tokens; 0 = all.</summary>
    public int TopK { get; init; } = 40;
    /// <summary>Keep the smallest set of tokens whose probability reaches p; 1 = all.</summary>
    public float TopP { get; init; } = 0.95f;
}

/// <summary>Picks the next token from a row of logits.</summary>
public static class Sampler
{
    /// <summary>Samples one token id from <paramref name="logits"/> (V).</summary>
    public static int Sample(ReadOnlySpan<float> logits, SamplerOptions options, Rng rng)
    {
        if (logits.IsEmpty) throw new ArgumentException("empty logits", nameof(logits));
        if (options.Temperature <= 0) return ArgMax(logits);
        int v = logits.Length;
        var idx = new int[v];
        for (int i = 0; i < v; i++) idx[i] = i;
        var l = logits.ToArray();
        Array.Sort(idx, (a, b) => l[b].CompareTo(l[a]));
        int k = options.TopK > 0 ? Math.Min(options.TopK, v) : v;
        var p = new double[k];
        double max = l[idx[0]], sum = 0;
        for (int i = 0; i < k; i++) { p[i] = Math.Exp((l[idx[i]] - max) / options.Temperature); sum += p[i]; }
        double cum = 0; int keep = k;
        for (int i = 0; i < k; i++)
        {
            cum += p[i] / sum;
            if (cum >= options.TopP) { keep = i + 1; break; }
        }
        double total = 0;
        for (int i = 0; i < keep; i++) total += p[i];
        double r = rng.NextDouble() * total;
        for (int i = 0; i < keep; i++) { r -= p[i]; if (r <= 0) return idx[i]; }
        return idx[keep - 1];
    }

    /// <summary>Index of the largest logit (first on ties).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
