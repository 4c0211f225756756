// The full sampling chain of a session, in llama.cpp's order: logit bias, penalties over the
// recent-token window, then greedy (temperature 0) or temperature -> top-k -> top-p -> min-p ->
// draw. Buffers are owned and reused, so a generated token allocates nothing here.
// The Vulkan backend runs the same chain on the GPU (shaders/sample.comp, whose CPU reference
// Palm.Gpu.Kernels.Sample.Reference must pick what this picks): so every definition here is one
// a kernel can reproduce without a sort, and the order of tokens is total (logit descending,
// ties by ascending id). The host does not sort the row either: weights come from one vectorised
// exp, the top-k set's mass is summed in id order, the kept mass is that sum unless top-p or min-p
// cut it, and only the tokens above a threshold (a prefix of the order, sized by a histogram of
// the weights) are sorted, the whole row only when a walk runs past them. Measured (N(0, 3²)
// logits, T 0.8, steady state, dev VM), us a sampled token: V 2,048 top-p 0.9 99 -> 8.4,
// V 4,096 219 -> 16, V 4,096 top-k 40 239 -> 25, V 4,096 without top-p 220 -> 16, V 65,536
// 4,510 -> 331 (a full sort and V scalar exps each token before). Large gathers (flat
// distributions) are radix-sorted. Without top-k the row's mass is summed in the histogram's pass
// (a chain of V dependent adds, now beside the histogram's work): 17.4-18.0 -> 15.9-16.3 us
// (N(0, 3²)); a flat row (N(0, 1), ~2,600 tokens gathered and sorted) stays at ~64 us.
using System.Runtime.CompilerServices;
using Palm.Inference.Model;

namespace Palm.Inference.Sampling;

/// <summary>The sampling settings of one generation call, already validated.</summary>
internal readonly record struct SamplingSettings(
    float Temperature, int TopK, float TopP, float MinP,
    float RepetitionPenalty, float PresencePenalty, float FrequencyPenalty,
    IReadOnlyDictionary<int, float>? LogitBias)
{
    // The bias as parallel arrays, built once per generation call: enumerating the dictionary
    // through its interface every token boxed an enumerator and made two interface calls an
    // entry (measured ~10 us a token for a 2,049-entry ban list on the development VM).
    private readonly IReadOnlyDictionary<int, float>? _logitBias = LogitBias;
    private readonly (int[] Ids, float[] Values) _bias = Flatten(LogitBias);

    /// <summary>Bias per token id (a copy made with <c>with</c> flattens the new one).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias
    {
        get => _logitBias;
        init { _logitBias = value; _bias = Flatten(value); }
    }

    public int[] BiasIds => _bias.Ids ?? [];
    public float[] BiasValues => _bias.Values ?? [];

    private static (int[], float[]) Flatten(IReadOnlyDictionary<int, float>? bias)
    {
        if (bias is null || bias.Count == 0) return ([], []);
        var ids = new int[bias.Count];
        var values = new float[bias.Count];
        int n = 0;
        foreach (var (id, b) in bias) { ids[n] = id; values[n++] = b; }
        return (ids, values);
    }
}

internal sealed class TokenSampler(int vocabSize)
{
    private readonly float[] _work = new float[vocabSize];
    private readonly ulong[] _keys = new ulong[vocabSize];
    private readonly int[] _order = new int[vocabSize];
    private readonly double[] _probs = new double[vocabSize];
    private readonly int[] _counts = new int[vocabSize];

    /// <summary>Tests: the first gather holds only the top bucket, so every widening path runs.</summary>
    internal bool NarrowFirstGather { get; init; }
    private readonly uint[] _rk = new uint[vocabSize], _rk2 = new uint[vocabSize];
    private readonly int[] _rid = new int[vocabSize], _rid2 = new int[vocabSize];
    private readonly double[] _bucketMass = new double[4 * Buckets];
    private readonly int[] _bucketCount = new int[4 * Buckets];

    /// <summary>
    /// True when <see cref="Sample(ReadOnlySpan{float}, in SamplingSettings, RecentTokens, double)"/>
    /// would return the plain argmax of the logits: temperature 0 with no logit bias and no penalty
    /// that applies (none set, or an empty window). A backend may then compute the argmax itself
    /// and send back only the id.
    /// </summary>
    public static bool IsPlainArgmax(in SamplingSettings s, RecentTokens recent) =>
        s.Temperature <= 0 && (s.LogitBias is null || s.LogitBias.Count == 0) &&
        (recent.Count == 0 || (s.RepetitionPenalty == 1f && s.PresencePenalty == 0f && s.FrequencyPenalty == 0f));

    /// <summary>
    /// A logit's place in the order, ascending with the value (its bits, sign-flipped so that
    /// unsigned comparison orders them); -0 equals +0. NaN logits have no defined place.
    /// </summary>
    public static uint OrderKey(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7fffffffu) == 0) u = 0;
        return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
    }

    /// <summary>Picks the next token from <paramref name="logits"/> (V); draws one uniform from <paramref name="rng"/> unless greedy.</summary>
    public int Sample(ReadOnlySpan<float> logits, in SamplingSettings s, RecentTokens recent, Rng rng) =>
        Sample(logits, s, recent, s.Temperature <= 0 ? 0 : rng.NextDouble());

    /// <summary>
    /// Picks the next token from <paramref name="logits"/> (V) with <paramref name="uniform"/> in
    /// [0, 1) as the draw (ignored when greedy). A non-greedy token takes exactly one uniform, so
    /// a caller may draw it before the logits exist (to sample on the GPU) and keep the session's
    /// RNG sequence the same whichever side samples.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public int Sample(ReadOnlySpan<float> logits, in SamplingSettings s, RecentTokens recent, double uniform)
    {
        int V = _work.Length;
        if (logits.Length != V) throw new ArgumentException($"expected {V} logits, got {logits.Length}", nameof(logits));
        var l = _work.AsSpan();
        logits.CopyTo(l);
        var biasIds = s.BiasIds;
        var biasValues = s.BiasValues;
        for (int i = 0; i < biasIds.Length; i++)
            if ((uint)biasIds[i] < (uint)V) l[biasIds[i]] += biasValues[i];

        bool penalize = s.RepetitionPenalty != 1f || s.PresencePenalty != 0f || s.FrequencyPenalty != 0f;
        if (penalize && recent.Count > 0)
        {
            foreach (int id in recent) _counts[id]++;
            foreach (int id in recent)
            {
                int c = _counts[id];
                if (c == 0) continue; // already applied for this id
                // CTRL-style repetition penalty: shrink positive logits, push negative ones further.
                // By the float reciprocal: a GPU's division is not correctly rounded, its product is.
                float x = l[id];
                x = x > 0 ? x * (1f / s.RepetitionPenalty) : x * s.RepetitionPenalty;
                x -= s.PresencePenalty + s.FrequencyPenalty * c;
                l[id] = x;
                _counts[id] = 0;
            }
        }

        if (s.Temperature <= 0) return Sampler.ArgMax(l);

        // Every token's weight exp((l - max) / T) in double, by one vectorised exp over the row,
        // and a histogram of the weights by (max - l) / T: count and mass per bucket.
        // In inlined code, not TensorPrimitives': its generic helpers ran unoptimised for a while
        // after start-up (Palm.Gpu's SampleWeights says how that showed).
        float maxF = Palm.Gpu.Kernels.SampleWeights.Max(l);
        double max = maxF, T = s.Temperature;
        var e = _probs.AsSpan();
        Palm.Gpu.Kernels.SampleWeights.Compute(l, max, T, e);
        // The histogram only steers the first gather, so float arithmetic will do; four interleaved
        // copies keep neighbouring tokens of one bucket from waiting on each other's update.
        Array.Clear(_bucketMass);
        Array.Clear(_bucketCount);
        float perUnit = (float)(BucketsPerUnit / T);
        int k = s.TopK > 0 ? Math.Min(s.TopK, V) : V;
        // Without top-k the whole row is the top-k set: its mass, summed in id order (a kernel's
        // order too), is formed in the same pass, where its chain of dependent adds costs nothing.
        double sum = Histogram(l, e, maxF, perUnit, withSum: k == V);
        bool haveSum = k == V;
        for (int b = 0; b < Buckets; b++)
        {
            _bucketMass[b] = _bucketMass[4 * b] + _bucketMass[4 * b + 1] + _bucketMass[4 * b + 2] + _bucketMass[4 * b + 3];
            _bucketCount[b] = _bucketCount[4 * b] + _bucketCount[4 * b + 1] + _bucketCount[4 * b + 2] + _bucketCount[4 * b + 3];
        }

        // The filters and the draw only ever walk a prefix of the order (logit descending, ties by
        // ascending id), nearly always a short one: so instead of sorting the row, gather the
        // tokens above a threshold (always a prefix of the order) that the histogram says holds
        // the top-k set, or the top-p mass, or the draw's point, sort those, and gather the whole
        // row only when a walk still runs past them (rounding at the edge).
        int first;                                   // last bucket the first gather must hold
        if (k < V)
        {
            int c = 0;
            for (first = 0; first < Buckets - 1 && (c += _bucketCount[first]) < k; first++) { }
        }
        else
        {
            double target = (s.TopP < 1f ? s.TopP : uniform) * sum, m = 0;
            for (first = 0; first < Buckets - 1 && (m += _bucketMass[first]) < target; first++) { }
        }
        first = NarrowFirstGather ? 0 : Math.Min(Buckets - 1, first + 1);    // one bucket of margin for rounding
        for (int level = 0; ; level++)
        {
            bool all = level > 0 || first >= Buckets - 1;
            int n = Gather(l, all ? float.NegativeInfinity : (float)(max - T * (first + 1) / BucketsPerUnit), all);
            bool complete = all || n == V;
            if (k < V && n < k && !complete) continue;        // the top-k set is not in hand yet
            int kk = Math.Min(k, n);
            if (!haveSum)
            {
                // The top-k set's mass, summed in id order (a kernel's order too, needing no sort).
                // In the top-k set: above the k-th token's logit, or equal to it at an id no larger
                // (the order's tie rule; -0 equals +0 as in OrderKey; NaN logits have no place).
                int kId = _order[k - 1];
                float kl = l[kId];
                for (int i = 0; i < V; i++) if (l[i] > kl || (l[i] == kl && i <= kId)) sum += e[i];
                haveSum = true;
            }
            // The filters cut the kept set short of the top-k set (keep < k), or it is the whole
            // top-k set, which may go on past the gathered prefix.
            int keep = kk;
            bool cut = false;
            if (s.TopP < 1f)
            {
                double cum = 0;
                for (int i = 0; i < kk; i++)
                {
                    cum += e[_order[i]] / sum;
                    if (cum >= s.TopP) { keep = i + 1; cut = keep < k; break; }
                }
                if (!cut && kk < k) continue;                 // the cut may lie past this prefix
            }
            if (s.MinP > 0f)
            {
                // min-p: drop tokens less likely than min_p times the most likely one.
                int m = 1;
                while (m < keep && e[_order[m]] >= s.MinP * e[_order[0]]) m++;
                if (m < keep) cut = true;
                else if (!cut && kk < k) continue;            // more tokens may pass past this prefix
                keep = m;
            }
            // The draw: a point in the kept mass (the top-k set's sum when nothing was cut), walked
            // in the order. Uncut, it usually falls inside the gathered prefix; if not, gather more.
            double total = 0;
            if (cut) for (int i = 0; i < keep; i++) total += e[_order[i]];
            else total = sum;
            double r = uniform * total;
            for (int i = 0; i < keep; i++) { r -= e[_order[i]]; if (r < 0) return _order[i]; }
            if (!cut && kk < k) continue;
            return _order[keep - 1];
        }
    }

    // The histogram of the weights by (max - l) / T (count and mass per bucket, four interleaved
    // copies) and, when withSum, the sum of all weights in id order (else 0).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private double Histogram(ReadOnlySpan<float> l, ReadOnlySpan<double> e, float maxF, float perUnit, bool withSum)
    {
        double sum = 0;
        double[] mass = _bucketMass;
        int[] count = _bucketCount;
        for (int i = 0; i < l.Length; i++)
        {
            float d = (maxF - l[i]) * perUnit;
            int b = (d < Buckets - 1 ? (int)d : Buckets - 1) * 4 + (i & 3);   // NaN, -inf: last bucket
            double w = e[i];
            mass[b] += w;
            count[b]++;
            if (withSum) sum += w;
        }
        return sum;
    }

    // The histogram's buckets: (max - l) / T in steps of 1/4 (weights e^-0.25 apart) down to 48
    // (e^-48, 1.4e-21 of the top token's weight), the last bucket holding everything below.
    private const int Buckets = 193;
    private const double BucketsPerUnit = 4;

    // The ids whose logit is at least tau (all ids when all), sorted into the order in _order[0, n).
    // Returns n.
    private int Gather(ReadOnlySpan<float> l, float tau, bool all)
    {
        int n = 0;
        for (int i = 0; i < l.Length; i++)
            if (all || l[i] >= tau) { _rk[n] = ~OrderKey(l[i]); _rid[n++] = i; }   // complemented: ascending sort
        if (n <= RadixFrom)
        {
            var keys = _keys.AsSpan(0, n);
            for (int i = 0; i < n; i++) keys[i] = (ulong)_rk[i] << 32 | (uint)_rid[i];
            keys.Sort();
            for (int i = 0; i < n; i++) _order[i] = (int)(uint)keys[i];
            return n;
        }
        // Many tokens (a flat distribution, or a large vocabulary): a stable LSD radix sort on the
        // 32-bit order key, four passes of a byte, over ids gathered in ascending order, so ties
        // stay by ascending id: the same order as the 64-bit sort, in O(n).
        uint[] k0 = _rk, k1 = _rk2;
        int[] i0 = _rid, i1 = _rid2;
        Span<int> count = stackalloc int[256];
        for (int shift = 0; shift < 32; shift += 8)
        {
            count.Clear();
            for (int i = 0; i < n; i++) count[(int)(k0[i] >> shift) & 255]++;
            if (count[(int)(k0[0] >> shift) & 255] == n) continue;   // every key shares this byte
            int sumc = 0;
            for (int b = 0; b < 256; b++) { int c = count[b]; count[b] = sumc; sumc += c; }
            for (int i = 0; i < n; i++)
            {
                int d = count[(int)(k0[i] >> shift) & 255]++;
                k1[d] = k0[i];
                i1[d] = i0[i];
            }
            (k0, k1) = (k1, k0);
            (i0, i1) = (i1, i0);
        }
        i0.AsSpan(0, n).CopyTo(_order);
        return n;
    }

    // Gathers above this many tokens are radix-sorted (below, the comparison sort is as quick).
    private const int RadixFrom = 256;
}

/// <summary>The last N token ids fed to or produced by a session: a fixed-size ring.</summary>
internal sealed class RecentTokens : IEnumerable<int>
{
    private readonly int[] _ring;
    private int _start;

    public RecentTokens(int capacity)
    {
        if (capacity < 0) throw new ArgumentOutOfRangeException(nameof(capacity));
        _ring = new int[capacity];
    }

    public int Capacity => _ring.Length;
    public int Count { get; private set; }

    public void Add(int id)
    {
        if (_ring.Length == 0) return;
        if (Count < _ring.Length) { _ring[(_start + Count) % _ring.Length] = id; Count++; }
        else { _ring[_start] = id; _start = (_start + 1) % _ring.Length; }
    }

    public void AddRange(ReadOnlySpan<int> ids) { foreach (int id in ids) Add(id); }

    public void Clear() { _start = 0; Count = 0; }

    public void CopyFrom(RecentTokens other)
    {
        Clear();
        foreach (int id in other) Add(id);
    }

    public int[] ToArray()
    {
        var a = new int[Count];
        for (int i = 0; i < Count; i++) a[i] = _ring[(_start + i) % _ring.Length];
        return a;
    }

    public Enumerator GetEnumerator() => new(this);
    IEnumerator<int> IEnumerable<int>.GetEnumerator() => GetEnumerator();
    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Allocation-free enumeration, oldest first.</summary>
    public struct Enumerator(RecentTokens r) : IEnumerator<int>
    {
        private int _i = -1;
        public readonly int Current => r._ring[(r._start + _i) % r._ring.Length];
        readonly object System.Collections.IEnumerator.Current => Current;
        public bool MoveNext() => ++_i < r.Count;
        public void Reset() => _i = -1;
        public readonly void Dispose() { }
    }
}

/// <summary>
/// Holds back generated text that may be the start of a stop string, so a stop string is never
/// shown, not even in part.
/// </summary>
internal sealed class StopStringMatcher(IReadOnlyList<string> stops)
{
    private readonly System.Text.StringBuilder _held = new();

    /// <summary>Adds a piece; returns the text now safe to show and whether a stop string was hit
    /// (then the text is everything before it).</summary>
    public (string Emit, bool Hit) Push(string piece)
    {
        if (stops.Count == 0) return (piece, false);
        _held.Append(piece);
        var text = _held.ToString();
        int hitAt = -1;
        foreach (var s in stops)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (hitAt < 0 || i < hitAt)) hitAt = i;
        }
        if (hitAt >= 0)
        {
            _held.Clear();
            return (text[..hitAt], true);
        }
        int hold = 0;
        foreach (var s in stops)
            for (int n = Math.Min(s.Length - 1, text.Length); n > hold; n--)
                if (text.AsSpan(text.Length - n).SequenceEqual(s.AsSpan(0, n))) { hold = n; break; }
        _held.Clear().Append(text, text.Length - hold, hold);
        return (text[..^hold], false);
    }

    /// <summary>The held text, released because generation ended without a stop string.</summary>
    public string Flush()
    {
        var s = _held.ToString();
        _held.Clear();
        return s;
    }
}
