// f16 checkpoints on the Vulkan backend: the linear weights stay half precision on the device
// (2 bytes an element, read by linear_f16) and the logits equal the CPU reference model over the
// same (widened) weights within float32 tolerance; with half arithmetic asked for, the linears
// run linear_half (or linear_coopmat) and the logits stay within fp16 tolerance.
using Palm.Gpu.Vulkan;
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu;

[RequiresVulkan]
public sealed class HalfWeightVulkanModelTests(ITestOutputHelper output)
{
    // Same weights on both sides (halves widened exactly); only the float32 reduction order differs.
    private const double Atol = 1e-4, Rtol = 1e-4;
    // Half arithmetic rounds every linear's input and products to half (2^-11 relative each),
    // through two layers and two recursions: the fp16 tolerance of CONVENTIONS.
    private const double HalfAtol = 1e-2, HalfRtol = 1e-2;

    [VulkanTheory]
    [InlineData(7, 10)]   // factorized, odd rank: half rows straddle 32-bit words; FFN
    [InlineData(0, 0)]    // full rank
    public void Half_weights_stay_half_and_match_the_reference(int rank, int ffn) => Check(rank, ffn, halfArithmetic: false);

    [VulkanTheory(GpuFeature.HalfArithmetic)]
    [InlineData(7, 10)]
    [InlineData(0, 0)]
    public void Half_arithmetic_linears_match_the_reference_within_fp16_tolerance(int rank, int ffn) => Check(rank, ffn, halfArithmetic: true);

    void Check(int rank, int ffn, bool halfArithmetic)
    {
        ulong seed = TestSeed.Next();
        var config = new PalmConfig
        {
            VocabSize = 301, BlockSize = 64, NEmbd = 24, NHead = 2, DQkv = 24, DRank = rank,
            NLayer = 2, NRecur = 2, DFfn = ffn, Share = ShareMode.Cycle, Mix = AodMix.Mean,
        };
        var p = new PalmParameters(config);
        p.InitTraining(new Rng(seed));
        // Through the checkpoint format, as a user's f16 export arrives.
        var f32 = PalmCheckpoint.FromParameters(p);
        var half = new PalmCheckpoint
        {
            Config = f32.Config,
            Tensors = f32.Tensors.Select(t => new CheckpointTensor(t.Name, t.Shape, t.ToFloats(), TensorDType.F16)).ToList(),
        };
        var bytes = new MemoryStream();
        half.Save(bytes);
        bytes.Position = 0;
        var ck = PalmCheckpoint.Load(bytes);
        var widened = ck.ToParameters();

        using var backend = VulkanBackend.Create(ModelWeights.From(ck), VulkanFixture.Options("f16") with { HalfArithmetic = halfArithmetic });
        var (atol, rtol) = halfArithmetic ? (HalfAtol, HalfRtol) : (Atol, Rtol);
        long embed = 4L * p.Embed.Length;
        long expected = embed + p.All.Where(t => t.Name != p.Embed.Name).Sum(t => (2L * t.Length + 3) / 4 * 4);
        output.WriteLine($"seed {seed}: {backend.WeightBytes} resident bytes, expected {expected}, f32 {4L * p.Count}");
        Assert.Equal(expected, backend.WeightBytes);
        Assert.Equal((ulong)expected, backend.Context.Memory.LiveBytes);   // no f32 copy on the device

        var reference = new CpuReferenceModel(widened);
        var rng = new Rng(seed ^ 0xf16);
        int V = config.VocabSize;
        var ids = Enumerable.Range(0, 11).Select(_ => rng.NextInt(V)).ToArray();
        var state = backend.CreateState();
        var refState = new AodStateSet(config, 1);
        var got = new float[V];
        backend.Prefill(ids, state, got);
        var all = reference.Forward(ids, 1, ids.Length, refState);
        Numerics.AssertClose(got, all.AsSpan((ids.Length - 1) * V, V).ToArray(), atol, rtol, $"seed {seed} f16 prefill, half arithmetic {halfArithmetic}");
        var want = new float[V];
        for (int t = 0; t < 5; t++)
        {
            int tok = rng.NextInt(V);
            backend.Step([tok], [state], got);
            reference.Step([tok], refState, want);
            Numerics.AssertClose(got, want, atol, rtol, $"seed {seed} f16 step {t}, half arithmetic {halfArithmetic}");
        }
        // Which linear kernels ran: the f32-arithmetic one alone, or only half-arithmetic ones.
        var linears = backend.Context.Pipelines.All.Select(p => p.Shader).Where(n => n.StartsWith("linear", StringComparison.Ordinal)).Distinct().Order().ToList();
        output.WriteLine($"linear kernels: {string.Join(", ", linears)}");
        Assert.NotEmpty(linears);
        Assert.All(linears, n => Assert.True(halfArithmetic ? n.StartsWith("linear_half", StringComparison.Ordinal) || n.StartsWith("linear_coopmat", StringComparison.Ordinal)
            : n.StartsWith("linear_f16", StringComparison.Ordinal), n));
        Validation.AssertClean(backend.Context, $"f16 model, half arithmetic {halfArithmetic}");
    }
}
