// q8/q4 models on the CPU backend: the weights stay quantized in memory (WeightBytes is the levels
// and scales, and no float32 array of a quantized tensor is reachable from the backend, before or
// after generating), and prefill and batched steps equal the CPU reference model over the
// dequantized weights within float32 tolerance. Shapes as QuantizedVulkanModelTests: an odd rank
// (q4 rows that start on either nibble of a byte, odd group sizes) and full rank.
using System.Reflection;
using Palm.Inference;
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Tests.Api;
using Xunit.Abstractions;

namespace Palm.Tests.Quantization;

public sealed class QuantizedCpuModelTests(ITestOutputHelper output)
{
    // Both sides float32 over the same dequantized values (level * scale), summed in another order.
    private const double Atol = 1e-4, Rtol = 1e-4;

    private static PalmConfig Rank => QuantizedVulkanModelTests.Rank;
    private static PalmConfig Full => QuantizedVulkanModelTests.Full;

    // Wide enough that the decoder's two parts cut groups: the projection's halves meet at column
    // 64 (inside q8's one-scale-per-row groups), the FFN down linear's at 48 (inside a q4 group of 32).
    private static PalmConfig Wide => new()
    {
        VocabSize = 301, BlockSize = 64, NEmbd = 64, NHead = 4, DQkv = 128, DRank = 32,
        NLayer = 1, NRecur = 2, DFfn = 96, Share = ShareMode.Cycle, Mix = AodMix.Mean,
    };

    /// <summary>
    /// The bytes a checkpoint's tensors take when q8/q4 stay quantized, from the format's own length
    /// rules (not from the tensors' arrays): q8 1 byte per element + 4 per group, q4 half a byte
    /// (rounded up) + 2 per group, f32 4 per element.
    /// </summary>
    internal static long QuantizedBytes(PalmCheckpoint ck) => ck.Tensors.Sum(t => t.Quantized is { } q
        ? q.DType.DataByteLength(q.Length) + q.DType.ScaleByteLength(q.Length, q.GroupSize)
        : 4L * t.Length);

    /// <summary>
    /// What the CPU decoder holds besides the tensors: a transposed copy of each block's QKV second
    /// factor (factorized models) and projection input factor, 4 bytes an element where float32;
    /// where q8/q4 and AVX-512 runs, 1 an element plus 4 per scale (none for q8 with one scale per
    /// row, whose scales are shared); none for quantized tensors elsewhere (FastCpuDecoder).
    /// </summary>
    internal static long CpuDecoderCopyBytes(PalmCheckpoint ck)
    {
        var c = ck.Config;
        long bytes = 0;
        if (FastCpuDecoderTwoCoreTests.SparseSwitchedOff) return 0;
        for (int l = 0; l < c.NLayer; l++)
            foreach (var name in c.DRank > 0 ? new[] { $"blocks.{l}.qkv.w2", $"blocks.{l}.proj.w1" } : [$"blocks.{l}.proj.w"])
            {
                var t = ck.Tensors.Single(t => t.Name == name);
                if (t.Quantized is not { } q) bytes += 4L * t.Length;
                else if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
                    bytes += t.Length + (q.DType == TensorDType.Q8 && q.GroupSize == t.Shape[^1] ? 0 : 4L * (t.Length / q.GroupSize));
            }
        return bytes;
    }

    [Theory]
    [InlineData("rank", "q8", null, false)]
    [InlineData("rank", "q8", null, true)]
    [InlineData("rank", "q4", null, true)]     // rows of r = 7: one odd-sized group per row, rows straddle bytes
    [InlineData("full", "q4", 4, true)]
    [InlineData("full", "q8", 5, false)]
    [InlineData("wide", "q8", null, true)]
    [InlineData("wide", "q4", null, false)]
    [InlineData("wide", "q4", 16, true)]
    public void Quantized_weights_stay_quantized_and_match_the_reference(string shape, string dtypeName, int? group, bool embed)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        ulong seed = TestSeed.Next();
        var p = new PalmParameters(shape switch { "rank" => Rank, "full" => Full, _ => Wide });
        p.InitTraining(new Rng(seed));
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), dtype, group, embed);
        var dequantized = ck.ToParameters();
        string what = $"{shape} {dtypeName} group {group?.ToString() ?? "default"} embed {embed} (seed {seed}; replay with PALM_TEST_SEED={seed})";

        using var backend = new CpuBackend(ModelWeights.From(ck).ToCpu());
        long expected = QuantizedBytes(ck) + CpuDecoderCopyBytes(ck), f32 = p.Count * sizeof(float);
        output.WriteLine($"{what}: {expected} resident bytes, f32 {f32} ({(double)expected / f32:P1}); {backend.Description}");
        Assert.Equal(expected, backend.WeightBytes);
        Assert.True(expected < f32, $"{what}: {expected} resident bytes is not below the float32 {f32}");
        Assert.Contains(dtypeName, backend.Description);
        AssertNoFloatCopy(backend, ck, what, strict: true);

        var reference = new CpuReferenceModel(dequantized);
        var rng = new Rng(seed ^ 0x5eed);
        int V = p.Config.VocabSize;
        int[] lengths = [9, 4, 1];
        var states = new SequenceState[lengths.Length];
        var refStates = new AodStateSet[lengths.Length];
        var last = new float[V];
        for (int b = 0; b < lengths.Length; b++)
        {
            var ids = Enumerable.Range(0, lengths[b]).Select(_ => rng.NextInt(V)).ToArray();
            states[b] = backend.CreateState();
            refStates[b] = new AodStateSet(p.Config, 1);
            Array.Fill(last, float.NaN);
            backend.Prefill(ids, states[b], last);
            var full = reference.Forward(ids, 1, ids.Length, refStates[b]);
            Numerics.AssertClose(last, full.AsSpan((ids.Length - 1) * V, V), Atol, Rtol, $"{what} prefill T={ids.Length}");
        }
        var logits = new float[lengths.Length * V];
        var refLogits = new float[V];
        for (int step = 0; step < 3; step++)
        {
            // Batched (one sequence per pool thread), then each sequence alone (batch 1, two cores).
            var tok = Enumerable.Range(0, lengths.Length).Select(_ => rng.NextInt(V)).ToArray();
            Array.Fill(logits, float.NaN);
            backend.Step(tok, states, default, logits, default);
            for (int b = 0; b < lengths.Length; b++)
            {
                reference.Step([tok[b]], refStates[b], refLogits);
                Numerics.AssertClose(logits.AsSpan(b * V, V), refLogits, Atol, Rtol, $"{what} batched step {step} sequence {b}");
            }
            for (int b = 0; b < lengths.Length; b++)
            {
                int t = rng.NextInt(V);
                backend.Step([t], [states[b]], default, logits.AsSpan(0, V), default);
                reference.Step([t], refStates[b], refLogits);
                Numerics.AssertClose(logits.AsSpan(0, V), refLogits, Atol, Rtol, $"{what} solo step {step} sequence {b}");
            }
        }
        // Generating made scratch, not a float copy of a quantized tensor.
        AssertNoFloatCopy(backend, ck, what, strict: false);
    }

    [Theory]
    [InlineData("q8")]
    [InlineData("q4")]
    public async Task PalmModel_on_the_cpu_keeps_a_quantized_file_quantized(string dtypeName)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        var tiny = TinyModel.Shared;
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.Load(tiny.Path), dtype, null, embedding: dtype == TensorDType.Q4);
        var bytes = new MemoryStream();
        ck.Save(bytes);
        using var model = PalmModel.Load(new MemoryStream(bytes.ToArray()), new ModelOptions { Backend = Backend.Cpu });
        Assert.Equal(Backend.Cpu, model.Backend);
        Assert.Equal(QuantizedBytes(ck) + CpuDecoderCopyBytes(ck), model.WeightBytes);
        Assert.True(model.WeightBytes < tiny.Parameters.Count * sizeof(float));
        Assert.StartsWith($"cpu (fast path, {dtypeName} linears", model.BackendDescription);
        AssertNoFloatCopy(model.BackendImpl, ck, tiny.Describe, strict: true);
        // The id hashes the dequantized values: the same as the float32 expansion's (states move between them).
        using (var f32 = PalmModel.Create(ck.ToParameters(), tiny.Tokenizer)) Assert.Equal(f32.Id, model.Id);

        // Logits through the model's backend against the reference over the dequantized weights.
        var reference = new CpuReferenceModel(ck.ToParameters());
        int V = model.Config.VocabSize;
        var ids = tiny.Tokenizer.Encode("In the beginning");
        var state = model.BackendImpl.CreateState();
        var refState = new AodStateSet(model.Config, 1);
        var last = new float[V];
        model.BackendImpl.Prefill(ids, state, last);
        Numerics.AssertClose(last, reference.Forward(ids, 1, ids.Length, refState).AsSpan((ids.Length - 1) * V, V), Atol, Rtol, $"{dtypeName} prefill {tiny.Describe}");
        var refLogits = new float[V];
        for (int t = 0; t < 5; t++)
        {
            int tok = (t * 37 + 11) % V;
            model.BackendImpl.Step([tok], [state], default, last, default);
            reference.Step([tok], refState, refLogits);
            Numerics.AssertClose(last, refLogits, Atol, Rtol, $"{dtypeName} step {t} {tiny.Describe}");
        }

        // Sampled text: the same seed gives the same text, a session at a time or two at once.
        var o = new GenerationOptions { Temperature = 1.1f, TopK = 0, TopP = 1, MaxTokens = 24, Seed = 7, LogitBias = tiny.AsciiOnly };
        string a, b;
        using (var s = model.CreateSession()) a = await SessionTests.Collect(s, "The tokens", o);
        using (var s = model.CreateSession()) b = await SessionTests.Collect(s, "The tokens", o);
        Assert.Equal(a, b);
        using var s1 = model.CreateSession();
        using var s2 = model.CreateSession();
        var both = await Task.WhenAll(SessionTests.Collect(s1, "The tokens", o), SessionTests.Collect(s2, "The tokens", o));
        Assert.Equal(a, both[0]);
        Assert.Equal(a, both[1]);
        AssertNoFloatCopy(model.BackendImpl, ck, tiny.Describe, strict: false);
    }

    /// <summary>
    /// Walks every object reachable from <paramref name="backend"/>. Strict (right after loading,
    /// before any scratch exists): the float arrays reachable are exactly the checkpoint's float32
    /// tensors (each as an aligned copy, a few floats of pad longer). Always: no reachable float array holds the dequantized values of a quantized tensor.
    /// </summary>
    private static void AssertNoFloatCopy(object backend, PalmCheckpoint ck, string what, bool strict)
    {
        var floats = ReachableFloatArrays(backend);
        if (strict)
        {
            var expected = ck.Tensors.Where(t => !t.IsQuantized).Select(t => t.Length).Order().ToArray();
            var got = floats.Select(f => f.Length).Order().ToArray();
            // The CPU backend copies float32 tensors onto 64-byte boundaries (CpuMatrix.Aligned):
            // one array per tensor, up to 15 floats of pad longer.
            Assert.True(expected.Length == got.Length && expected.Zip(got).All(e => e.Second - e.First is >= 0 and <= 15),
                $"{what}: float arrays reachable from the backend have lengths [{string.Join(", ", got)}], expected only the float32 tensors' [{string.Join(", ", expected)}]");
        }
        foreach (var t in ck.Tensors.Where(t => t.IsQuantized))
        {
            var dq = t.ToFloats();
            foreach (var f in floats)
                Assert.False(f.Length == dq.Length && f.AsSpan().SequenceEqual(dq),
                    $"{what}: a float32 copy of the quantized tensor '{t.Name}' ({dq.Length} floats) is reachable from the backend");
        }
    }

    // Every float[] reachable through instance fields and array elements, each once. Reflection
    // metadata, threads and delegates' methods are not followed (they lead into the runtime, not to
    // the backend's data); a delegate's target is.
    private static List<float[]> ReachableFloatArrays(object root)
    {
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var found = new List<float[]>();
        var todo = new Stack<object>();
        todo.Push(root);
        while (todo.Count > 0)
        {
            var o = todo.Pop();
            if (!seen.Add(o)) continue;
            switch (o)
            {
                case float[] f: found.Add(f); continue;
                case string or MemberInfo or Thread or Pointer or Module or Assembly: continue;
                case Delegate d:
                    foreach (var inner in d.GetInvocationList()) if (inner.Target is { } target) todo.Push(target);
                    continue;
                case Array a:
                    if (!a.GetType().GetElementType()!.IsPrimitive)
                        foreach (var e in a) if (e is not null) todo.Push(e);
                    continue;
            }
            for (var type = o.GetType(); type is not null; type = type.BaseType)
                foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                {
                    if (field.FieldType.IsPrimitive || field.FieldType.IsPointer || field.FieldType.IsEnum) continue;
                    if (field.GetValue(o) is { } v) todo.Push(v);
                }
        }
        return found;
    }
}
