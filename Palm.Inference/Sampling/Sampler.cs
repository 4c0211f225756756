// Simple sampling for tools (trainer samples, demo): greedy at temperature 0, otherwise
// temperature + top-k + top-p from the caller's seeded RNG via the sessions' TokenSampler.
using System.Runtime.CompilerServices;
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
    private static readonly RecentTokens NoHistory = new(0);

    /// <summary>
    /// Samples one token id from <paramref name="logits"/> (V): temperature, top-k, top-p, through
    /// the same chain as sessions (<see cref="TokenSampler"/>) without penalties or bias.
    /// </summary>
    public static int Sample(ReadOnlySpan<float> logits, SamplerOptions options, Rng rng)
    {
        if (logits.IsEmpty) throw new ArgumentException("empty logits", nameof(logits));
        var settings = new SamplingSettings(options.Temperature, options.TopK, options.TopP, 0f, 1f, 0f, 0f, null);
        return new TokenSampler(logits.Length).Sample(logits, settings, NoHistory, rng);
    }

    /// <summary>Index of the largest logit (first on ties).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
