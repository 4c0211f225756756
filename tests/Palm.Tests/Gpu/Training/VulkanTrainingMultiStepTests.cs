// Several consecutive GPU training steps against the CPU oracle (Palm.Trainer's
// ReferenceBackward + ReferenceOptimizer, float32) from each golden file's parameters and
// state: checks what one step cannot, that the optimizer state, the reused activation buffers
// and the first-write/accumulate bookkeeping of shared-block gradients carry across steps.
// Tolerances: loss atol 1e-5 per step; parameters atol 2e-5 after the last step (two float32
// implementations whose gradients differ by ~1e-6 relative, through 3 steps of Muon/AdamW).
using Palm.Gpu.Training;
using Palm.Gpu.Vulkan;
using Palm.Gpu.Model;
using Palm.Inference.Cpu;
using Palm.Tests.Golden;
using Palm.Trainer.Cpu;
using Palm.Trainer.Optim;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu.Training;

[Collection("Vulkan")]
public sealed class VulkanTrainingMultiStepTests : IDisposable
{
    const int Steps = 3;
    const double LossAtol = 1e-5, ParamsAtol = 2e-5;

    readonly VulkanFixture fixture;
    readonly ITestOutputHelper output;

    public VulkanTrainingMultiStepTests(VulkanFixture fixture, ITestOutputHelper output)
    {
        this.fixture = fixture;
        this.output = output;
        fixture.Context?.Messenger?.Clear();
    }

    VulkanContext Ctx => fixture.Require();

    public void Dispose()
    {
        if (fixture.Context is { } ctx) Validation.AssertClean(ctx, nameof(VulkanTrainingMultiStepTests));
    }

    public static TheoryData<string> Files => GoldenCase.Files();

    [VulkanTheory, MemberData(nameof(Files))]
    public void Consecutive_steps_match_the_cpu_reference(string file)
    {
        var g = GoldenCase.Load(file);
        var cpuParams = g.ToParameters();
        var state = new OptimizerState();
        using var gpu = new VulkanTraining(Ctx, VulkanForwardTests.ToGpu(g.Config),
            g.Params.ToDictionary(kv => kv.Key, kv => new GpuWeight(kv.Value.Shape[0], kv.Value.Shape[1], kv.Value.Data)));
        foreach (var (name, st) in g.Step.StateIn)
        {
            state.M[name] = (float[])st["m"].Data.Clone();
            gpu.Write(name, ParamSlot.M, st["m"].Data);
            if (st.TryGetValue("v", out var v))
            {
                state.V[name] = (float[])v.Data.Clone();
                gpu.Write(name, ParamSlot.V, v.Data);
            }
        }

        var s = g.Step;
        for (var step = 0; step < Steps; step++)
        {
            long adamStep = s.AdamStep + step;
            var hp = new StepHyper
            {
                MuonLr = s.MuonLr, AdamLr = s.AdamLr, WeightDecay = s.WeightDecay, MuonBeta = ReferenceOptimizer.MuonBeta(adamStep),
                AdamBeta1 = s.AdamBeta1, AdamBeta2 = s.AdamBeta2, AdamEps = s.AdamEps, Clip = s.Clip,
            };
            var (cpuLoss, grads) = ReferenceBackward.LossAndGradients(new CpuReferenceModel(cpuParams), g.FlatTokens, g.FlatTargets, g.B, g.T);
            var cpuNorm = ReferenceOptimizer.Step(cpuParams, grads, state, hp, adamStep);
            var r = gpu.Step(g.FlatTokens, g.FlatTargets, g.B, g.T, new GpuStepHyper(hp.MuonLr, hp.AdamLr, hp.WeightDecay, hp.MuonBeta,
                hp.AdamBeta1, hp.AdamBeta2, hp.AdamEps, hp.Clip, adamStep));
            output.WriteLine($"{g.Name} step {step}: loss GPU {r.Loss:g9} CPU {cpuLoss:g9}; norm GPU {r.GradNorm:g9} CPU {cpuNorm:g9}");
            Assert.True(Math.Abs(r.Loss - cpuLoss) <= LossAtol, $"{g.Name} step {step}: loss {r.Loss:g9} vs CPU {cpuLoss:g9}");
            Assert.True(Math.Abs(r.GradNorm - cpuNorm) <= 1e-5 * cpuNorm, $"{g.Name} step {step}: grad norm {r.GradNorm:g9} vs CPU {cpuNorm:g9}");
        }
        Assert.Equal(Steps, gpu.Recorder.Submissions);
        foreach (var p in cpuParams.All)
            Numerics.AssertClose(gpu.Read(p.Name, ParamSlot.Value), p.Data, ParamsAtol, 0, $"{g.Name} params after {Steps} steps: {p.Name}");
    }
}
