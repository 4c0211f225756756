// One conformance suite for the inference backends (CONVENTIONS: abstract suite, one subclass per
// backend): batched steps at mixed positions equal solo steps, chunked prefill equals stepping,
// and both equal the CPU reference within float32 tolerance.
using Palm.Gpu.Vulkan;
using Palm.Inference.Backends;
using Palm.Inference.Cpu;
using Palm.Tests.Gpu;

namespace Palm.Tests.Api;

public abstract class BackendConformance
{
    protected const double Atol = 1e-4, Rtol = 1e-4;
    private static readonly TinyModel M = TinyModel.Shared;

    internal abstract IInferenceBackend Create();

    /// <summary>Backend-specific checks after a test (Vulkan: no validation messages).</summary>
    internal virtual void AssertClean(IInferenceBackend backend) { }

    [ConformanceFact]
    public void Mixed_position_batched_step_equals_the_reference()
    {
        using var backend = Create();
        var reference = new CpuReferenceModel(M.Parameters);
        var rng = new Palm.Inference.Model.Rng(TestSeed.Next());
        int V = M.Parameters.Config.VocabSize, B = 5;
        var states = new SequenceState[B];
        var refStates = new AodStateSet[B];
        var lastRef = new float[V];
        var last = new float[V];
        for (int b = 0; b < B; b++)
        {
            // Prompts of length 1, 2, 3, 3, 7: two share a position, the rest differ.
            int T = new[] { 1, 2, 3, 3, 7 }[b];
            var ids = Enumerable.Range(0, T).Select(_ => rng.NextInt(V)).ToArray();
            states[b] = backend.CreateState();
            refStates[b] = new AodStateSet(M.Parameters.Config, 1);
            backend.Prefill(ids, states[b], last);
            var full = reference.Forward(ids, 1, T, refStates[b]);
            Numerics.AssertClose(last, full.AsSpan((T - 1) * V, V), Atol, Rtol, $"{Name} prefill T={T} {M.Describe}");
        }
        var logits = new float[B * V];
        for (int step = 0; step < 3; step++)
        {
            var tok = Enumerable.Range(0, B).Select(_ => rng.NextInt(V)).ToArray();
            backend.Step(tok, states, logits);
            for (int b = 0; b < B; b++)
            {
                reference.Step([tok[b]], refStates[b], lastRef);
                Numerics.AssertClose(logits.AsSpan(b * V, V), lastRef, Atol, Rtol, $"{Name} batched step {step} sequence {b} {M.Describe}");
                Assert.Equal(refStates[b].Position, states[b].Position);
            }
        }
        var f = new float[states[0].Length];
        states[4].CopyTo(f);
        var r = new SequenceState(M.Parameters.Config) { Position = 0 };
        r.CopyFrom(f);
        var g = new float[f.Length];
        r.CopyTo(g);
        Assert.Equal(f, g);
        AssertClean(backend);
    }

    [ConformanceFact]
    public void Chunked_prefill_equals_stepping()
    {
        using var backend = Create();
        var rng = new Palm.Inference.Model.Rng(TestSeed.Next());
        int V = M.Parameters.Config.VocabSize;
        var ids = Enumerable.Range(0, 11).Select(_ => rng.NextInt(V)).ToArray();
        var a = backend.CreateState();
        var la = new float[V];
        backend.Prefill(ids.AsSpan(0, 4), a, la);
        backend.Prefill(ids.AsSpan(4, 7), a, la);
        var s = backend.CreateState();
        var ls = new float[V];
        foreach (var id in ids) backend.Step([id], [s], ls);
        Numerics.AssertClose(la, ls, Atol, Rtol, $"{Name} chunked prefill vs steps {M.Describe}");
        var fa = new float[a.Length];
        var fs = new float[s.Length];
        a.CopyTo(fa);
        s.CopyTo(fs);
        Numerics.AssertClose(fa, fs, Atol, Rtol, $"{Name} state after prefill vs steps");
        AssertClean(backend);
    }

    private string Name => GetType().Name;
}

public sealed class CpuBackendConformanceTests : BackendConformance
{
    internal override IInferenceBackend Create() => new CpuBackend(TinyModel.Shared.Parameters);
}

[RequiresVulkan]
public sealed class VulkanBackendConformanceTests : BackendConformance
{
    internal override IInferenceBackend Create() => VulkanBackend.Create(TinyModel.Shared.Parameters, VulkanFixture.Options("api"));

    internal override void AssertClean(IInferenceBackend backend) => Validation.AssertClean(((VulkanBackend)backend).Context, GetType().Name);
}
