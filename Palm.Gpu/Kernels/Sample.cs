// sample: a session's whole sampling chain on the GPU, one id back per row. GPU wrapper for
// shaders/sample.comp and its CPU reference, which is Palm.Inference's TokenSampler chain
// written over the kernel's inputs: logit bias, penalties over the recent-token window, then
// the argmax (temperature <= 0) or temperature -> top-k -> top-p -> min-p -> draw, in the order
// logit descending, ties by ascending id.
//
// Where the GPU may pick another token than the reference (float32 sums and exp against the
// reference's doubles; the logits themselves are bit-equal, bias and penalties included):
//  - the draw: when u lies within rounding of an edge of the chosen token's cumulative
//    interval (relative to the total mass), the GPU may pick the neighbour across that edge;
//  - top-p: when the cumulative mass at the cut lies within rounding of top_p, the cut may
//    keep one token more or fewer;
//  - min-p: a token whose probability lies within rounding of min_p may be kept or dropped;
//  - u itself arrives as a float (the host draws a double).
// Vulkan allows exp 3 + 2|x| ulp and division 2.5 ulp, so for the tokens that carry mass the
// rounding is some 1e-5 of the total at worst; top-k and the argmax compare keys and agree exactly.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Sample
{
    /// <summary>Twin of <c>SamplePush</c> in shaders/sample.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SamplePush
    {
        public uint firstRow;
        public uint rows;
        public uint V;
    }

    /// <summary>Twin of <c>SampleRow</c> in shaders/sample.comp: one row's settings and where its pairs are.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SampleRow
    {
        public float temperature;
        public int topK;
        public float topP;
        public float minP;
        public float repetitionPenalty;
        public float repetitionInverse;
        public float presencePenalty;
        public float frequencyPenalty;
        public float draw;
        public uint penaltyStart;
        public uint penaltyCount;
        public uint biasStart;
        public uint biasCount;
    }

    /// <summary>Twin of <c>Pair</c> in shaders/sample.comp: (token id, count in the window) or (token id, bias).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal readonly record struct SamplePair(int Id, float Value);

    /// <summary>Ints per <see cref="SampleRow"/> in an i32 tensor.</summary>
    public static readonly int RowInts = Marshal.SizeOf<SampleRow>() / sizeof(int);

    /// <summary>Ints per <see cref="SamplePair"/> in an i32 tensor.</summary>
    public static readonly int PairInts = Marshal.SizeOf<SamplePair>() / sizeof(int);

    /// <summary>The largest vocabulary: the kernel counts tokens in float32, exact up to 2^24.</summary>
    public const int MaxVocab = 1 << 24;

    /// <summary>
    /// The row for one sampled token. <paramref name="uniform"/> in [0, 1) (the one draw of the
    /// session's RNG for this token) is rounded to float32, never up to 1.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A setting outside what the session API validates.</exception>
    public static SampleRow Row(float temperature, int topK, float topP, float minP,
        float repetitionPenalty, float presencePenalty, float frequencyPenalty, double uniform,
        int penaltyStart, int penaltyCount, int biasStart, int biasCount)
    {
        if (!(temperature >= 0) || float.IsInfinity(temperature)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "must be finite and >= 0");
        if (!(topP > 0 && topP <= 1)) throw new ArgumentOutOfRangeException(nameof(topP), topP, "must be in (0, 1]");
        if (!(minP >= 0 && minP < 1)) throw new ArgumentOutOfRangeException(nameof(minP), minP, "must be in [0, 1)");
        if (!(repetitionPenalty > 0) || float.IsInfinity(repetitionPenalty)) throw new ArgumentOutOfRangeException(nameof(repetitionPenalty), repetitionPenalty, "must be finite and > 0");
        if (!(uniform >= 0 && uniform < 1)) throw new ArgumentOutOfRangeException(nameof(uniform), uniform, "must be in [0, 1)");
        if (penaltyStart < 0 || penaltyCount < 0 || biasStart < 0 || biasCount < 0) throw new ArgumentOutOfRangeException(nameof(penaltyStart), "pair ranges must be non-negative");
        var u = (float)uniform;
        return new SampleRow
        {
            temperature = temperature, topK = topK, topP = topP, minP = minP,
            repetitionPenalty = repetitionPenalty, repetitionInverse = 1f / repetitionPenalty,
            presencePenalty = presencePenalty, frequencyPenalty = frequencyPenalty,
            draw = u < 1f ? u : MathF.BitDecrement(1f),
            penaltyStart = (uint)penaltyStart, penaltyCount = (uint)penaltyCount,
            biasStart = (uint)biasStart, biasCount = (uint)biasCount,
        };
    }

    /// <summary>
    /// Records ids[firstRow + r] = the token sampled from logits[firstRow + r] with rows[r], for
    /// r in [0, count). logits (R, V) f32, overwritten on those rows by the biased and penalized
    /// logits; rows (at least count * <see cref="RowInts"/>) i32; pairs (at least the pairs the
    /// rows name, * <see cref="PairInts"/>) i32; ids (R) i32. The caller checks the rows with
    /// <see cref="CheckRows"/> before uploading them: the kernel trusts their ids and ranges.
    /// <paramref name="subgroup"/>: null picks the subgroup-arithmetic variant where the device has it
    /// and a workgroup holds at most 8 subgroups (every invocation then adds the subgroups' sums:
    /// with lavapipe's 8-wide subgroups, 32 of them, that measured slower than the shared-memory tree).
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor logits, GpuTensor rows, GpuTensor pairs, int firstRow, int count, GpuTensor ids,
        bool? subgroup = null)
    {
        var v = logits.Shape[^1];
        var total = logits.Count / v;
        if (logits.DType != GpuDType.F32 || ids.DType != GpuDType.I32 || ids.Count != total)
            throw new ArgumentException($"sample: logits {logits} f32 and ids {ids} i32 must have {total} rows");
        if (v > MaxVocab) throw new ArgumentException($"sample: V = {v} exceeds {MaxVocab}");
        if (firstRow < 0 || count < 0 || firstRow + count > total)
            throw new ArgumentOutOfRangeException(nameof(count), $"sample: rows [{firstRow}, {firstRow + count}) outside the {total} rows of logits");
        if (rows.DType != GpuDType.I32 || rows.Count < (long)count * RowInts || pairs.DType != GpuDType.I32)
            throw new ArgumentException($"sample: rows {rows} must be i32 holding {count} rows of {RowInts} ints, pairs {pairs} i32");
        if (count == 0) return;
        var wg = Math.Min(Math.Clamp(Grid.NextPow2((uint)v), 32u, 256u), Grid.NextPow2(ctx.Capabilities.MaxWorkgroupInvocations + 1) / 2);
        bool useSubgroup = subgroup ?? (ctx.Capabilities.SubgroupArithmetic && wg <= 8 * ctx.Capabilities.SubgroupSize);
        if (useSubgroup && !ctx.Capabilities.SubgroupArithmetic) throw new NotSupportedException("sample: the device has no subgroup arithmetic");
        var pipeline = ctx.Pipelines.Get(useSubgroup ? "sample_subgroup" : "sample", 4, (uint)Marshal.SizeOf<SamplePush>(), wg);
        var push = new SamplePush { firstRow = (uint)firstRow, rows = (uint)count, V = (uint)v };
        var (gx, gy) = Grid.Rows(count, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.InOut(logits), Binding.In(rows), Binding.In(pairs), Binding.InOut(ids)], push, gx, gy);
    }

    /// <summary>
    /// Checks what the kernel trusts: pair ranges inside <paramref name="pairs"/>, ids in [0, V),
    /// distinct within each list. <paramref name="seen"/> (at least V flags) is scratch, all
    /// false on entry and on return.
    /// </summary>
    /// <exception cref="ArgumentException">A range past the pairs, an id outside [0, V), or an id twice in one list.</exception>
    public static void CheckRows(ReadOnlySpan<SampleRow> rows, ReadOnlySpan<SamplePair> pairs, int V, Span<bool> seen)
    {
        if (seen.Length < V) throw new ArgumentException($"seen holds {seen.Length} flags, fewer than V = {V}", nameof(seen));
        for (var r = 0; r < rows.Length; r++)
        {
            CheckList(pairs, rows[r].penaltyStart, rows[r].penaltyCount, V, r, "penalty", seen);
            CheckList(pairs, rows[r].biasStart, rows[r].biasCount, V, r, "bias", seen);
        }
    }

    static void CheckList(ReadOnlySpan<SamplePair> pairs, uint start, uint count, int V, int row, string what, Span<bool> seen)
    {
        if ((ulong)start + count > (ulong)pairs.Length)
            throw new ArgumentException($"sample row {row}: {what} pairs [{start}, {start + count}) outside the {pairs.Length} pairs");
        var list = pairs.Slice((int)start, (int)count);
        string? error = null;
        var i = 0;
        for (; i < list.Length && error is null; i++)
        {
            var id = list[i].Id;
            if ((uint)id >= (uint)V) error = $"sample row {row}: {what} id {id} outside [0, {V})";
            // Two invocations updating one logit would race.
            else if (seen[id]) error = $"sample row {row}: {what} id {id} appears twice";
            else seen[id] = true;
        }
        for (var j = 0; j < i; j++)
            if ((uint)list[j].Id < (uint)V) seen[list[j].Id] = false;
        if (error is not null) throw new ArgumentException(error);
    }

    /// <summary>
    /// The order key of a logit: ascending with the value, -0 equal to +0 (NaN logits are not
    /// supported: their place in the order is unspecified, on the host as on the GPU).
    /// </summary>
    public static uint Key(float x)
    {
        var u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7fffffffu) == 0) u = 0;
        return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
    }

    /// <summary>How the reference reached its token (for tests that judge the GPU's near the edges).</summary>
    /// <param name="Order">Token ids, logit descending, ties by ascending id.</param>
    /// <param name="Probs">exp((l - max) / T) in that order, over the top-k (empty for the argmax).</param>
    /// <param name="Keep">Tokens kept after top-k, top-p and min-p (a prefix of Order).</param>
    /// <param name="Total">The kept mass (sum of Probs over Keep).</param>
    /// <param name="Point">u times the kept mass: the draw lands where the cumulative mass first exceeds it.</param>
    /// <param name="Chosen">The drawn token's index in Order.</param>
    internal sealed record Trace(int[] Order, double[] Probs, int Keep, double Total, double Point, int Chosen);

    /// <summary>CPU reference of one row: the id TokenSampler picks for these inputs. logits (V) are not modified.</summary>
    public static int Reference(ReadOnlySpan<float> logits, in SampleRow row, ReadOnlySpan<SamplePair> pairs) =>
        Reference(logits, row, pairs, out _);

    /// <inheritdoc cref="Reference(ReadOnlySpan{float}, in SampleRow, ReadOnlySpan{SamplePair})"/>
    public static int Reference(ReadOnlySpan<float> logits, in SampleRow row, ReadOnlySpan<SamplePair> pairs, out Trace trace)
    {
        int V = logits.Length;
        CheckRows([row], pairs, V, new bool[V]);
        var l = logits.ToArray();
        foreach (var (id, b) in pairs.Slice((int)row.biasStart, (int)row.biasCount)) l[id] += b;
        foreach (var (id, count) in pairs.Slice((int)row.penaltyStart, (int)row.penaltyCount))
        {
            var x = l[id];
            x = x > 0 ? x * row.repetitionInverse : x * row.repetitionPenalty;
            l[id] = x - (row.presencePenalty + row.frequencyPenalty * count);
        }

        var order = Enumerable.Range(0, V).OrderByDescending(i => Key(l[i])).ThenBy(i => i).ToArray();
        if (!(row.temperature > 0))
        {
            trace = new Trace(order, [], 1, 1, 0, 0);
            return order[0];
        }
        var k = row.topK > 0 ? Math.Min(row.topK, V) : V;
        double max = l[order[0]];
        // Weights exp((l - max) / T) in double (SampleWeights, as TokenSampler), and the top-k
        // set's mass summed in id order (TokenSampler does not sort the row).
        var w = new double[V];
        SampleWeights.Compute(l, max, row.temperature, w);
        var inTopK = new bool[V];
        for (var i = 0; i < k; i++) inTopK[order[i]] = true;
        double sum = 0;
        for (var i = 0; i < V; i++) if (inTopK[i]) sum += w[i];
        var probs = new double[k];
        for (var i = 0; i < k; i++) probs[i] = w[order[i]];
        var keep = k;
        if (row.topP < 1f)
        {
            double cum = 0;
            for (var i = 0; i < k; i++)
            {
                cum += probs[i] / sum;
                if (cum >= row.topP)
                {
                    keep = i + 1;
                    break;
                }
            }
        }
        if (row.minP > 0f)
        {
            // Relative to the top token's probability, probs[0] = 1.
            var m = 1;
            while (m < keep && probs[m] >= row.minP * probs[0]) m++;
            keep = m;
        }
        // The kept mass: the top-k set's sum (id order) when no filter cut it, else the kept
        // tokens' sum in the order (TokenSampler then needs no more of the order than the draw).
        double total = 0;
        if (keep < k) for (var i = 0; i < keep; i++) total += probs[i];
        else total = sum;
        var point = row.draw * total;
        var r = point;
        var chosen = keep - 1;
        for (var i = 0; i < keep; i++)
        {
            r -= probs[i];
            if (r < 0)
            {
                chosen = i;
                break;
            }
        }
        trace = new Trace(order, probs, keep, total, point, chosen);
        return order[chosen];
    }
}
