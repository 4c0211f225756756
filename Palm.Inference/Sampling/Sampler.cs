// Simple sampling for tools (trainer samples, demo): greedy at temperature 0, otherwise
// temperature + top-k + top-p from the caller's seeded RNG via the sessions' TokenSampler.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
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

    /// <summary>
    /// Index of the largest logit (first on ties; NaNs never win unless the first logit is one,
    /// -0 and +0 tie; 0 for an empty row): exactly <see cref="ArgMaxScalar"/>'s answer.
    /// </summary>
    public static int ArgMax(ReadOnlySpan<float> logits) =>
        logits.IsEmpty || float.IsNaN(logits[0]) ? 0 : ArgMaxOfNumbers(logits);

    /// <summary>
    /// Index of the largest logit that is not NaN (first on ties, -0 and +0 tie); -1 when every
    /// one is NaN or the row is empty. A row cut in consecutive pieces has the argmax of the
    /// first piece's answer and each later piece's answer that is strictly larger.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static int ArgMaxOfNumbers(ReadOnlySpan<float> logits)
    {
        // Greedy decoding calls this once a token over the vocabulary (or each decode part's
        // rows of it, FastCpuDecoder.StepArgMax): the plain loop's
        // dependent compare-and-branch took 2.5-3.4 us a `small` token (V 4,096; ~5 % of a
        // ~60 us two-core step), these two vector passes over the row (in L1) 0.4: the largest
        // value by the same `>` rule lane-wise, then the first index holding a value equal to it.
        int n = logits.Length;
        if (!Vector256.IsHardwareAccelerated || n < 64)
        {
            int best = -1;
            for (int k = 0; k < n; k++) if (best < 0 ? !float.IsNaN(logits[k]) : logits[k] > logits[best]) best = k;
            return best;
        }
        ref float r = ref MemoryMarshal.GetReference(logits);
        const int W = 8;   // Vector256<float>.Count
        int last = n - W;
        // Four independent chains (one compare-and-select chain is latency-bound), from -inf: a
        // NaN never replaces a lane, so only numbers reach the maximum.
        var m0 = Vector256.Create(float.NegativeInfinity);
        Vector256<float> m1 = m0, m2 = m0, m3 = m0;
        int i = 0;
        for (; i + 4 * W <= n; i += 4 * W)
        {
            m0 = Larger(Vector256.LoadUnsafe(ref r, (nuint)i), m0);
            m1 = Larger(Vector256.LoadUnsafe(ref r, (nuint)(i + W)), m1);
            m2 = Larger(Vector256.LoadUnsafe(ref r, (nuint)(i + 2 * W)), m2);
            m3 = Larger(Vector256.LoadUnsafe(ref r, (nuint)(i + 3 * W)), m3);
        }
        for (; i < last; i += W) m0 = Larger(Vector256.LoadUnsafe(ref r, (nuint)i), m0);
        m0 = Larger(Vector256.LoadUnsafe(ref r, (nuint)last), m0);   // the tail, overlapping: max is idempotent
        var m = Larger(Larger(m0, m1), Larger(m2, m3));
        float top = m.GetElement(0);
        for (int j = 1; j < W; j++) if (m.GetElement(j) > top) top = m.GetElement(j);
        // The first number equal to the maximum (-inf when the row holds only -inf and NaNs; none
        // when only NaNs).
        var b = Vector256.Create(top);
        for (i = 0; i <= last; i += W)
        {
            uint eq = Vector256.Equals(Vector256.LoadUnsafe(ref r, (nuint)i), b).ExtractMostSignificantBits();
            if (eq != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(eq);
        }
        for (i = last; i < n; i++) if (logits[i] == top) return i;
        return -1;

        // Lane-wise: v where v > m, else m (a NaN in v never replaces m; m never holds one).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> Larger(Vector256<float> v, Vector256<float> m) => Vector256.ConditionalSelect(Vector256.GreaterThan(v, m), v, m);
    }

    /// <summary>The plain loop <see cref="ArgMax"/> is checked against.</summary>
    internal static int ArgMaxScalar(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
