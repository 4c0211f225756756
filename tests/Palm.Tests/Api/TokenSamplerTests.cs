// The sampling chain on hand-made logits: each filter alone, the penalties, and the draw against
// the softmax it samples from.
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Tests.Api;

public sealed class TokenSamplerTests
{
    private static SamplingSettings S(float temp = 1, int topK = 0, float topP = 1, float minP = 0, float rep = 1, float pres = 0, float freq = 0,
        IReadOnlyDictionary<int, float>? bias = null) => new(temp, topK, topP, minP, rep, pres, freq, bias);

    private static readonly float[] Logits = [1.0f, 3.0f, 2.5f, -1.0f, 0.0f, 2.9f];

    [Fact]
    public void Greedy_and_single_survivor_filters_pick_the_argmax()
    {
        var t = new TokenSampler(Logits.Length);
        var rng = new Rng(TestSeed.Next());
        var empty = new RecentTokens(8);
        Assert.Equal(1, t.Sample(Logits, S(temp: 0), empty, rng));
        for (int i = 0; i < 20; i++)
        {
            Assert.Equal(1, t.Sample(Logits, S(topK: 1), empty, rng));
            Assert.Equal(1, t.Sample(Logits, S(topP: 1e-6f), empty, rng));
            Assert.Equal(1, t.Sample(Logits, S(minP: 0.99f), empty, rng));
            Assert.Contains(t.Sample(Logits, S(topK: 3), empty, rng), new[] { 1, 5, 2 });
        }
    }

    [Fact]
    public void The_vector_argmax_gives_the_plain_loops_index_on_every_kind_of_row()
    {
        // Rows of many lengths (the vector path starts at 64, with an overlapping tail), drawn
        // from a few values so ties are common, with NaNs, signed zeros and infinities mixed in.
        var rng = new Rng(TestSeed.Next());
        float[] specials = [float.NaN, 0f, -0f, float.NegativeInfinity, float.PositiveInfinity, 1f, -1f];
        int checkedRows = 0;
        foreach (int n in new[] { 0, 1, 7, 63, 64, 65, 71, 72, 100, 257, 4096, 4099 })
            for (int trial = 0; trial < 60; trial++)
            {
                var row = new float[n];
                int kind = trial % 6;
                for (int i = 0; i < n; i++)
                    row[i] = kind switch
                    {
                        0 => (float)rng.NextGaussian(),
                        1 => rng.NextInt(4),                                // many ties
                        2 => specials[rng.NextInt(specials.Length)],
                        3 => rng.NextInt(8) == 0 ? float.NaN : -(float)rng.NextInt(3),
                        4 => rng.NextInt(2) == 0 ? -0f : 0f,
                        _ => -1000f,
                    };
                if (kind == 5 && n > 0) row[rng.NextInt(n)] = -999f;       // one winner anywhere, the tail included
                if (trial % 7 == 3 && n > 0) row[0] = float.NaN;          // a NaN first: the loop keeps index 0
                int want = Sampler.ArgMaxScalar(row), got = Sampler.ArgMax(row);
                Assert.True(want == got, $"n {n}, kind {kind}, trial {trial}: vector argmax {got} ({(got < n ? row[got] : float.NaN)}), loop {want} ({(n > 0 ? row[want] : float.NaN)})");
                checkedRows++;
            }
        Assert.Equal(12 * 60, checkedRows);
    }

    [Fact]
    public void A_row_cut_in_pieces_has_the_argmax_of_its_pieces_answers()
    {
        // The decoder's parts each take ArgMaxOfNumbers of their rows; the row's answer is the
        // first part's unless a later one is strictly larger (a NaN first logit wins outright).
        var rng = new Rng(TestSeed.Next());
        float[] specials = [float.NaN, 0f, -0f, float.NegativeInfinity, 1f];
        for (int trial = 0; trial < 400; trial++)
        {
            int n = 1 + rng.NextInt(300);
            var row = new float[n];
            for (int i = 0; i < n; i++)
                row[i] = (trial % 4) switch { 0 => (float)rng.NextGaussian(), 1 => rng.NextInt(3), 2 => specials[rng.NextInt(specials.Length)], _ => float.NaN };
            if (trial % 4 == 3 && n > 1) row[rng.NextInt(n)] = -5f;   // one number among NaNs
            int cut = rng.NextInt(n + 1);
            int a = Sampler.ArgMaxOfNumbers(row.AsSpan(0, cut)), b = Sampler.ArgMaxOfNumbers(row.AsSpan(cut));
            int whole = Sampler.ArgMaxOfNumbers(row);
            int combined = a < 0 ? (b < 0 ? -1 : cut + b) : b >= 0 && row[cut + b] > row[a] ? cut + b : a;
            Assert.True(whole == combined, $"trial {trial}, n {n}, cut {cut}: whole row {whole}, pieces {a} and {b} give {combined}");
            int want = Sampler.ArgMaxScalar(row);
            Assert.True(Sampler.ArgMax(row) == want, $"trial {trial}: ArgMax {Sampler.ArgMax(row)}, loop {want}");
            if (!float.IsNaN(row[0])) Assert.Equal(want, whole);
            else Assert.True(whole < 0 || !float.IsNaN(row[whole]), $"trial {trial}: a NaN at {whole} won");
        }
    }

    [Fact]
    public void Bias_and_penalties_move_the_choice()
    {
        var t = new TokenSampler(Logits.Length);
        var rng = new Rng(1);
        var recent = new RecentTokens(4);
        Assert.Equal(3, t.Sample(Logits, S(temp: 0, bias: new Dictionary<int, float> { [3] = 10 }), recent, rng));
        Assert.Equal(5, t.Sample(Logits, S(temp: 0, bias: new Dictionary<int, float> { [1] = float.NegativeInfinity }), recent, rng));
        recent.AddRange([1, 1, 5]);
        Assert.Equal(2, t.Sample(Logits, S(temp: 0, pres: 0.6f), recent, rng));          // 3-0.6, 2.9-0.6 < 2.5
        Assert.Equal(5, t.Sample(Logits, S(temp: 0, freq: 0.2f), recent, rng));           // 3-0.4 < 2.9-0.2
        Assert.Equal(2, t.Sample(Logits, S(temp: 0, rep: 1.5f), recent, rng));            // 3/1.5, 2.9/1.5 < 2.5
        // The window forgets: after four more tokens, 1 and 5 are out of it.
        recent.AddRange([0, 0, 4, 4]);
        Assert.Equal(1, t.Sample(Logits, S(temp: 0, pres: 5), recent, rng));
    }

    [Fact]
    public void Draws_follow_the_tempered_softmax()
    {
        ulong seed = TestSeed.Next();
        var t = new TokenSampler(Logits.Length);
        var rng = new Rng(seed);
        var none = new RecentTokens(0);
        const float temp = 1.5f;
        const int draws = 30000;
        var counts = new int[Logits.Length];
        for (int i = 0; i < draws; i++) counts[t.Sample(Logits, S(temp: temp), none, rng)]++;
        var p = Logits.Select(l => Math.Exp(l / temp)).ToArray();
        double z = p.Sum();
        for (int i = 0; i < p.Length; i++)
        {
            double expect = draws * p[i] / z, sd = Math.Sqrt(expect * (1 - p[i] / z));
            Assert.True(Math.Abs(counts[i] - expect) <= 5 * sd + 1, $"token {i}: {counts[i]} draws, expected {expect:F0} +- {sd:F0} (seed {seed})");
        }
    }
}
