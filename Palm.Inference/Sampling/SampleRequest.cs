// What a session asks of the decoding step that computes its next token, so that a backend may
// pick the token itself and send back only its id: the settings, the token's one uniform, the
// penalty window as (id, count) pairs and the logit bias as (id, bias) pairs. The uniform is
// drawn here, before the logits exist, exactly as TokenSampler draws it (one per non-greedy
// token, none when greedy): the session's RNG, which is part of its saved state, advances the
// same whether the GPU or the host samples. A backend that hands back logits instead leaves the
// session to sample them with this same uniform. One request per session, reused every token.
using Palm.Inference.Model;

namespace Palm.Inference.Sampling;

internal sealed class SampleRequest
{
    private int[] _window = [];
    private int[] _penaltyIds = [], _biasIds = [];
    private float[] _penaltyCounts = [], _biasValues = [];

    public SamplingSettings Settings { get; private set; }

    /// <summary>The chain reduces to the argmax of the raw logits (<see cref="TokenSampler.IsPlainArgmax"/>): no pairs, no uniform.</summary>
    public bool PlainArgmax { get; private set; }

    /// <summary>This token's draw in [0, 1); 0 when greedy (no draw taken).</summary>
    public double Uniform { get; private set; }

    public int PenaltyPairs { get; private set; }
    public int BiasPairs { get; private set; }

    /// <summary>Distinct ids of the penalty window, ascending, with their counts (as floats, exact).</summary>
    public ReadOnlySpan<int> PenaltyIds => _penaltyIds.AsSpan(0, PenaltyPairs);
    public ReadOnlySpan<float> PenaltyCounts => _penaltyCounts.AsSpan(0, PenaltyPairs);
    public ReadOnlySpan<int> BiasIds => _biasIds.AsSpan(0, BiasPairs);
    public ReadOnlySpan<float> BiasValues => _biasValues.AsSpan(0, BiasPairs);

    /// <summary>
    /// Sets the request for the next token: takes this token's uniform from <paramref name="rng"/>
    /// unless greedy, and, unless the plain argmax, the window's counts (only when a penalty is
    /// set, as TokenSampler applies them) and the bias. Allocates only when a list outgrows its buffer.
    /// <paramref name="pairs"/> false: the backend never samples on the device, so the pairs are
    /// not built (the host sampler reads the settings themselves).
    /// </summary>
    public void Prepare(in SamplingSettings s, RecentTokens recent, Rng rng, bool pairs = true)
    {
        Settings = s;
        Uniform = s.Temperature <= 0 ? 0 : rng.NextDouble();
        PlainArgmax = TokenSampler.IsPlainArgmax(s, recent);
        PenaltyPairs = BiasPairs = 0;
        if (PlainArgmax || !pairs) return;

        bool penalize = s.RepetitionPenalty != 1f || s.PresencePenalty != 0f || s.FrequencyPenalty != 0f;
        if (penalize && recent.Count > 0)
        {
            if (_window.Length < recent.Capacity) _window = new int[recent.Capacity];
            int n = 0;
            foreach (int id in recent) _window[n++] = id;
            Array.Sort(_window, 0, n);
            Grow(ref _penaltyIds, ref _penaltyCounts, n);
            int count = 0;
            for (int i = 0; i < n;)
            {
                int j = i;
                while (j < n && _window[j] == _window[i]) j++;
                _penaltyIds[count] = _window[i];
                _penaltyCounts[count++] = j - i;
                i = j;
            }
            PenaltyPairs = count;
        }

        // The settings' own arrays (flattened once per generation), not copied per token.
        _biasIds = s.BiasIds;
        _biasValues = s.BiasValues;
        BiasPairs = _biasIds.Length;
    }

    private static void Grow(ref int[] ids, ref float[] values, int n)
    {
        if (ids.Length >= n) return;
        ids = new int[Math.Max(n, 2 * ids.Length)];
        values = new float[ids.Length];
    }
}
