// q8/q4 models on the Vulkan backend: the weights stay quantized on the device (resident bytes are
// the levels and scales, and the device holds nothing else after loading), and the logits equal
// the CPU reference model over the dequantized weights within float32 tolerance. Shapes include
// an odd rank (q4 rows that start on either nibble of a byte, odd group sizes) and full rank.
using Palm.Gpu.Vulkan;
using Palm.Inference;
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Tests.Api;
using Palm.Tests.Gpu;
using Xunit.Abstractions;

namespace Palm.Tests.Quantization;

[RequiresVulkan]
public sealed class QuantizedVulkanModelTests(ITestOutputHelper output)
{
    // The reduction order differs between the shaders and the reference (both float32); the
    // dequantized values are the same products level * scale on both sides.
    private const double Atol = 1e-4, Rtol = 1e-4;

    /// <summary>Rank 7: q4 rows start on either nibble of a byte, one odd-sized group per row (also QuantizedCpuModelTests).</summary>
    internal static PalmConfig Rank => new()
    {
        VocabSize = 301, BlockSize = 64, NEmbd = 24, NHead = 2, DQkv = 24, DRank = 7,
        NLayer = 2, NRecur = 2, DFfn = 10, Share = ShareMode.Cycle, Mix = AodMix.Mean,
    };

    /// <summary>Full rank, one head, no FFN (also QuantizedCpuModelTests).</summary>
    internal static PalmConfig Full => new()
    {
        VocabSize = 301, BlockSize = 64, NEmbd = 20, NHead = 1, DQkv = 20, DRank = 0,
        NLayer = 1, NRecur = 2, DFfn = 0, Share = ShareMode.Sequence, Mix = AodMix.Sum,
    };

    /// <summary>Device bytes a checkpoint's tensors take when q8/q4 stay quantized (level and scale bytes in 4-byte words).</summary>
    internal static long QuantizedResidentBytes(PalmCheckpoint ck) => ck.Tensors.Sum(t => t.Quantized is { } q
        ? Words(q.Data.Length) + Words(q.Scales.Length)
        : 4L * t.Length);

    private static long Words(int bytes) => (bytes + 3) / 4 * 4L;

    [VulkanTheory]
    [InlineData("rank", "q8", null, false)]
    [InlineData("rank", "q8", null, true)]
    [InlineData("rank", "q4", null, true)]     // rows of r = 7: one odd-sized group per row, rows straddle bytes
    [InlineData("full", "q4", 4, true)]
    [InlineData("full", "q8", 5, false)]
    public void Quantized_weights_stay_quantized_and_match_the_reference(string shape, string dtypeName, int? group, bool embed)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        ulong seed = TestSeed.Next();
        var p = new PalmParameters(shape == "rank" ? Rank : Full);
        p.InitTraining(new Rng(seed));
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), dtype, group, embed);
        var dequantized = ck.ToParameters();
        string what = $"{shape} {dtypeName} group {group?.ToString() ?? "default"} embed {embed} (seed {seed}; replay with PALM_TEST_SEED={seed})";

        using var backend = VulkanBackend.Create(ModelWeights.From(ck), VulkanFixture.Options("quant"));
        long expected = QuantizedResidentBytes(ck), f32 = p.Count * sizeof(float);
        output.WriteLine($"{what}: {expected} resident bytes, f32 {f32} ({(double)expected / f32:P1})");
        Assert.Equal(expected, backend.WeightBytes);
        // Nothing but the weights is allocated yet: a float copy of any quantized tensor would show here.
        Assert.Equal((ulong)expected, backend.Context.Memory.LiveBytes);
        Assert.True(expected < f32, $"{what}: {expected} resident bytes is not below the float32 {f32}");

        var reference = new CpuReferenceModel(dequantized);
        var rng = new Rng(seed ^ 0x5eed);
        int V = p.Config.VocabSize;
        int[] lengths = [9, 4];
        var states = new SequenceState[lengths.Length];
        var refStates = new AodStateSet[lengths.Length];
        var last = new float[V];
        for (int b = 0; b < lengths.Length; b++)
        {
            var ids = Enumerable.Range(0, lengths[b]).Select(_ => rng.NextInt(V)).ToArray();
            states[b] = backend.CreateState();
            refStates[b] = new AodStateSet(p.Config, 1);
            backend.Prefill(ids, states[b], last);
            var full = reference.Forward(ids, 1, ids.Length, refStates[b]);
            Numerics.AssertClose(last, full.AsSpan((ids.Length - 1) * V, V), Atol, Rtol, $"{what} prefill T={ids.Length}");
        }
        var logits = new float[lengths.Length * V];
        var refLogits = new float[V];
        for (int step = 0; step < 3; step++)
        {
            var tok = Enumerable.Range(0, lengths.Length).Select(_ => rng.NextInt(V)).ToArray();
            backend.Step(tok, states, logits);
            for (int b = 0; b < lengths.Length; b++)
            {
                reference.Step([tok[b]], refStates[b], refLogits);
                Numerics.AssertClose(logits.AsSpan(b * V, V), refLogits, Atol, Rtol, $"{what} step {step} sequence {b}");
            }
        }
        Validation.AssertClean(backend.Context, nameof(QuantizedVulkanModelTests));
    }

    [VulkanFact]
    public void Bad_quantized_weights_are_rejected_and_nothing_leaks()
    {
        var p = new PalmParameters(Rank);
        p.InitTraining(new Rng(TestSeed.Next()));
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.FromParameters(p), TensorDType.Q4, null, embedding: false);
        var config = GpuMapping.ToGpu(p.Config);
        using var ctx = VulkanContext.Create(VulkanFixture.Options("quant-errors"));

        void Rejected(string expected, Action<Dictionary<string, Palm.Gpu.Model.GpuWeight>, Dictionary<string, Palm.Gpu.Model.GpuQuantizedWeight>> spoil)
        {
            var (f32, quantized) = ModelWeights.From(ck).ToGpu();
            spoil(f32, quantized);
            var e = Assert.Throws<ArgumentException>(() => new Palm.Gpu.Model.VulkanForward(ctx, config, f32, quantized));
            Assert.Contains(expected, e.Message);
            // Matrices uploaded before the bad one were freed.
            Assert.Equal(0UL, ctx.Memory.LiveBytes);
        }

        const string name = "blocks.1.proj.w2";
        Rejected("given both as f32 and quantized", (f, q) => f[name] = new(q[name].Rows, q[name].Cols, new float[q[name].Rows * q[name].Cols]));
        Rejected($"weight {name}:", (_, q) => q[name] = q[name] with { Scales = q[name].Scales[..^2] });
        Rejected($"weight {name} is (", (_, q) => q[name] = q[name] with { Rows = q[name].Cols, Cols = q[name].Rows });
        Rejected($"missing weight {name}", (_, q) => q.Remove(name));
        Rejected("unexpected weights: blocks.9.proj.w2", (_, q) => q["blocks.9.proj.w2"] = q[name]);
        Validation.AssertClean(ctx, nameof(QuantizedVulkanModelTests));
    }

    [VulkanFact]
    public async Task PalmModel_keeps_a_q4_file_quantized_on_vulkan()
    {
        var tiny = TinyModel.Shared;
        var ck = CheckpointQuantizer.Quantize(PalmCheckpoint.Load(tiny.Path), TensorDType.Q4, null, embedding: true);
        string path = Path.Combine(Path.GetTempPath(), $"palm-q4-vk-{Guid.NewGuid():N}.palm");
        try
        {
            ck.Save(path);
            using var gpu = PalmModel.Load(path, new ModelOptions { Backend = Backend.Vulkan });
            using var cpu = PalmModel.Load(path, new ModelOptions { Backend = Backend.Cpu });
            Assert.Equal(QuantizedResidentBytes(ck), gpu.WeightBytes);
            // The CPU backend keeps them quantized too (its exact bytes, without the device's 4-byte
            // words), plus its decoder's transposed copies.
            Assert.Equal(QuantizedCpuModelTests.QuantizedBytes(ck) + QuantizedCpuModelTests.CpuDecoderCopyBytes(ck), cpu.WeightBytes);
            // The id hashes the dequantized values, so it does not depend on the backend (saved states move between them).
            Assert.Equal(cpu.Id, gpu.Id);
            using (var f32 = PalmModel.Create(ck.ToParameters(), tiny.Tokenizer)) Assert.Equal(f32.Id, gpu.Id);

            // Greedy tokens: a float32 difference flips one only at a near-tie of the two best logits.
            var o = new GenerationOptions { Temperature = 0, MaxTokens = 12, LogitBias = tiny.AsciiOnly };
            string onGpu, onCpu;
            using (var s = gpu.CreateSession()) onGpu = await SessionTests.Collect(s, "In the beginning", o);
            using (var s = cpu.CreateSession()) onCpu = await SessionTests.Collect(s, "In the beginning", o);
            Assert.True(onGpu == onCpu, $"q4 on Vulkan differs from the CPU over the dequantized weights {tiny.Describe}:\n  cpu:    {onCpu}\n  vulkan: {onGpu}");
        }
        finally { File.Delete(path); }
    }
}
