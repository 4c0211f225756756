// The decoder's token-start table (TokenStartMemo): a step that takes the start of its token from
// the table must give the very bits of a step that computes it, on one core, on two, in batches
// stepped from pool threads, with float32 and q8 weights, and when ids keep evicting each other
// from a table of three slots. And the table's seqlock must never hand out a torn slot.
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Quantization;

namespace Palm.Tests;

public class TokenStartMemoTests
{
    public static TheoryData<string, string> Cases()
    {
        var d = new TheoryData<string, string>();
        foreach (string config in ReferenceModelTests.Configs) { d.Add(config, "f32"); d.Add(config, "q8"); }
        d.Add("small-shaped", "f32");
        return d;
    }

    [Theory, MemberData(nameof(Cases))]
    public void Steps_from_the_table_give_the_bits_of_computed_steps(string config, string dtypeName)
    {
        ulong seed = TestSeed.Next();
        var c = config == "small-shaped" ? PalmConfig.Preset("small") with { VocabSize = 300, NLayer = 2 } : ReferenceModelTests.Make(config);
        var rng = new Rng(seed);
        var p = ReferenceModelTests.RandomParams(c, rng);
        CpuWeights weights = dtypeName == "f32"
            ? CpuWeights.From(p).Aligned()
            : ModelWeights.From(CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), TensorDType.Q8, null, embedding: true)).ToCpu();
        int V = c.VocabSize;
        // A few ids, coming back often: 0, 3 and 6 share a slot of a three-slot table.
        int[] pool = [0, 3, 6, 1, Math.Min(7, V - 1), V - 1];
        foreach (int threads in new[] { 1, 2 })
            foreach (int slots in new[] { 3, 1000 })
            {
                string what = $"seed {seed} {config} {dtypeName} threads {threads} slots {slots}";
                using var computed = new FastCpuDecoder(weights, threads, tokenStartSlots: 0) { AdaptiveTeam = false };
                using var memo = new FastCpuDecoder(weights, threads, tokenStartSlots: slots) { AdaptiveTeam = false };
                Assert.Equal(0, memo.MemoBytes);   // made at the first step
                foreach (int B in new[] { 1, 4 })   // batch 4: sequences stepped on pool threads at once
                {
                    var sc = new AodStateSet(c, B);
                    var sm = new AodStateSet(c, B);
                    var lc = new float[B * V];
                    var lm = new float[B * V];
                    for (int t = 0; t < 30; t++)
                    {
                        var tok = Enumerable.Range(0, B).Select(_ => pool[rng.NextInt(pool.Length)]).ToArray();
                        computed.Step(tok, sc, lc);
                        memo.Step(tok, sm, lm);
                        for (int i = 0; i < B * V; i++)
                            Assert.True(BitConverter.SingleToInt32Bits(lc[i]) == BitConverter.SingleToInt32Bits(lm[i]),
                                $"{what} B={B} t={t} (tokens {string.Join(",", tok)}): logit {i} is {lm[i]:R} from the table, {lc[i]:R} computed");
                    }
                    for (int a = 0; a < c.Applications; a++) Assert.Equal(sc.S[a], sm.S[a]);
                }
                Assert.Equal(0, computed.MemoBytes);
                Assert.True(memo.MemoBytes > 0, what);
            }
    }

    [Fact]
    public void Readers_never_see_a_slot_half_written()
    {
        // One slot, long rows (slow copies): a writer storing ids 1 and 2 in turn, a reader
        // reading them in turn. Every read that succeeds must hold one id's values whole.
        const int C = 4096, R = 64, Parts = 2;
        var memo = new TokenStartMemo(1, C, R, Parts);
        static float Value(int token, int i) => token * 100_000 + i;
        long reads = 0, torn = 0;
        string? firstTorn = null;
        var stop = DateTime.UtcNow.AddMilliseconds(600);
        var writer = new Thread(() =>
        {
            var rows = new[] { 1, 2 }.Select(token => (
                X: Enumerable.Range(0, C).Select(i => Value(token, i)).ToArray(),
                Pu: Enumerable.Range(0, Parts).Select(p => Enumerable.Range(0, R).Select(i => Value(token, C + p * R + i)).ToArray()).ToArray(),
                Ss: Enumerable.Range(0, 8 * Parts).Select(k => (double)(token + k / 8)).ToArray())).ToArray();
            while (DateTime.UtcNow < stop)
                for (int t = 0; t < 2; t++) memo.Write(t + 1, rows[t].X, rows[t].Pu, rows[t].Ss);
        });
        var reader = new Thread(() =>
        {
            var x = new float[C];
            var pu = Enumerable.Range(0, Parts).Select(_ => new float[R]).ToArray();
            var ss = new double[8 * Parts];
            while (DateTime.UtcNow < stop)
                for (int token = 1; token <= 2; token++)
                {
                    if (!memo.TryRead(token, x, pu, ss)) continue;
                    reads++;
                    bool ok = true;
                    for (int i = 0; i < C && ok; i++) ok = x[i] == Value(token, i);
                    for (int p = 0; p < Parts && ok; p++)
                    {
                        for (int i = 0; i < R && ok; i++) ok = pu[p][i] == Value(token, C + p * R + i);
                        ok &= ss[8 * p] == token + p;
                    }
                    if (!ok && ++torn == 1) firstTorn = $"a read of id {token} held other values (x[0] {x[0]}, x[{C - 1}] {x[C - 1]})";
                }
        });
        writer.Start(); reader.Start();
        writer.Join(); reader.Join();
        Assert.True(torn == 0, $"{torn} of {reads} reads were torn; first: {firstTorn}");
        Assert.True(reads > 0, "no read ever hit: the test checked nothing");
    }

    [Fact]
    public void The_table_is_bounded_and_off_when_too_small_to_help()
    {
        Assert.Equal(0, TokenStartMemo.SlotsFor(1024, 4096, 256, 64, 2));        // under 16 slots
        Assert.Equal(300, TokenStartMemo.SlotsFor(1L << 30, 300, 256, 64, 2));   // never more than one per id
        int slots = TokenStartMemo.SlotsFor(1L << 20, 4096, 256, 64, 2);
        Assert.InRange(new TokenStartMemo(slots, 256, 64, 2).Bytes, 1, 1L << 20);
    }
}
