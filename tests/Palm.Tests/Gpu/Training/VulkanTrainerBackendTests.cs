// Palm.Trainer's `train` on backend=vulkan against backend=cpu, through whole run folders: the
// same seed gives the same loss curve, val losses and weights within float tolerance; a Vulkan
// checkpoint resumed on Vulkan equals the uninterrupted Vulkan run; a CPU checkpoint resumes on
// Vulkan (the .palm files are interchangeable). Model: the tiny preset with block 32, batch 4
// (lavapipe runs a step in well under a second).
// Tolerances (two float32 implementations whose gradients differ by ~1e-6 relative, amplified
// a little by Muon's Newton-Schulz over the steps): per-step train loss and val loss 2e-4
// absolute; weights 2e-3 absolute after 10 steps; Vulkan resume vs straight 1e-5 (same kernels
// and same inputs; only the round trip of weights and moments through the checkpoint differs).
using Palm.Inference.Checkpoint;
using Palm.Tests.Trainer;
using Palm.Tests.Gpu;
using Palm.Trainer.Backends;
using Palm.Trainer.Commands;
using Palm.Trainer.Training;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu.Training;

[Collection("Vulkan")]
public sealed class VulkanTrainerBackendTests(VulkanFixture fixture, ITestOutputHelper output)
{
    const double LossAtol = 2e-4, WeightAtol = 2e-3, ResumeAtol = 1e-5;
    // muon_fp16 against fp32 Muon, same device and seed: each Muon update differs by the fp16
    // Newton-Schulz error (~3e-3 relative), which moves the loss far less. Measured on lavapipe:
    // at most 5.3e-6 per step over the 10 steps and the val losses. Bound ~20x that.
    const double Fp16LossAtol = 1e-4;

    static TrainConfig Config(string data, string backend, int accum) => new()
    {
        Model = new ModelSection { Preset = "tiny", BlockSize = 32 }, Data = data, Steps = 10, Batch = 4, GradAccum = accum,
        Warmup = 3, EvalInterval = 5, EvalIters = 2, CheckpointInterval = 0, Seed = 21, Backend = backend,
    };

    static PalmCheckpoint Train(TrainConfig cfg, string dir, int? stopAt = null, bool resume = false)
    {
        using (var run = TrainingRun.Open(cfg, dir, resume)) run.Run(stopAt: stopAt);
        return PalmCheckpoint.Load(Path.Combine(dir, TrainingRun.CheckpointFile));
    }

    static List<double> ValLosses(string dir) =>
        File.ReadLines(Path.Combine(dir, TrainingRun.LogFile)).Where(l => l.Contains("\"type\":\"eval\""))
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("val_loss").GetDouble()).ToList();

    static double MaxWeightDiff(PalmCheckpoint a, PalmCheckpoint b, out string where)
    {
        double max = 0;
        where = "";
        foreach (var t in a.Tensors)
        {
            var o = b.FindTensor(t.Name)!.Data;
            for (int i = 0; i < o.Length; i++)
                if (Math.Abs(o[i] - t.Data[i]) > max) { max = Math.Abs(o[i] - t.Data[i]); where = $"{t.Name}[{i}]"; }
        }
        return max;
    }

    [VulkanTheory]
    [InlineData(1)]   // the fused one-submission step
    [InlineData(2)]   // gradient accumulation: LossAndGradients per micro-batch, ApplyOptimizer
    public void Cpu_and_vulkan_give_the_same_loss_curve(int accum)
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(31), lines: 3000, shardTokens: 1 << 20);
        var cpu = Train(Config(data, "cpu", accum), dir["cpu"]);
        var vk = Train(Config(data, "vulkan", accum), dir["vk"]);

        var lc = cpu.Training!.LossHistory;
        var lv = vk.Training!.LossHistory;
        Assert.Equal(10, lv.Length);
        for (int s = 0; s < lc.Length; s++)
        {
            output.WriteLine($"step {s + 1,2}: cpu {lc[s]:F7} vulkan {lv[s]:F7} diff {lv[s] - lc[s]:E2}");
            Assert.True(Math.Abs(lc[s] - lv[s]) <= LossAtol, $"step {s + 1}: vulkan loss {lv[s]} vs cpu {lc[s]}");
        }
        Assert.True(lv[^1] < lv[0], "the loss should fall over 10 steps");
        var (vc, vv) = (ValLosses(dir["cpu"]), ValLosses(dir["vk"]));
        Assert.Equal(2, vv.Count);
        for (int i = 0; i < vc.Count; i++)
        {
            output.WriteLine($"val {i}: cpu {vc[i]:F7} vulkan {vv[i]:F7}");
            Assert.True(Math.Abs(vc[i] - vv[i]) <= LossAtol, $"val loss {i}: vulkan {vv[i]} vs cpu {vc[i]}");
        }
        double w = MaxWeightDiff(cpu, vk, out var where);
        output.WriteLine($"max weight difference after 10 steps: {w:E2} at {where}");
        Assert.True(w <= WeightAtol, $"weights differ by {w} at {where}");
        Assert.Equal(cpu.Training.DataPosition, vk.Training.DataPosition);
        Assert.Equal(cpu.Training.RngState, vk.Training.RngState);
        // Same moment set, so either checkpoint resumes on either backend.
        Assert.Equal(cpu.Training.Optimizer.Keys.Order(), vk.Training.Optimizer.Keys.Order());
        foreach (var (name, ms) in cpu.Training.Optimizer) Assert.Equal(ms.Keys.Order(), vk.Training.Optimizer[name].Keys.Order());
    }

    [VulkanFact(GpuFeature.HalfArithmetic)]
    public void Muon_fp16_gives_the_fp32_loss_curve_within_tolerance()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(34), lines: 3000, shardTokens: 1 << 20);
        var f32 = Train(Config(data, "vulkan", 1), dir["f32"]);
        var f16 = Train(Config(data, "vulkan", 1) with { MuonFp16 = true }, dir["f16"]);
        var (a, b) = (f32.Training!.LossHistory, f16.Training!.LossHistory);
        Assert.Equal(a.Length, b.Length);
        double worst = 0;
        for (int s = 0; s < a.Length; s++)
        {
            output.WriteLine($"step {s + 1,2}: fp32 {a[s]:F7} fp16 {b[s]:F7} diff {b[s] - a[s]:E2}");
            worst = Math.Max(worst, Math.Abs(a[s] - b[s]));
        }
        Assert.True(worst <= Fp16LossAtol, $"muon_fp16 loss differs from fp32 by {worst:E2} > {Fp16LossAtol}");
        // The option must reach the optimizer: identical curves would mean it ran fp32.
        Assert.True(worst > 0, "muon_fp16 gave exactly the fp32 losses: the f16 Newton-Schulz did not run");
        Assert.True(b[^1] < b[0], "the loss should fall over 10 steps");
        var (va, vb) = (ValLosses(dir["f32"]), ValLosses(dir["f16"]));
        for (int i = 0; i < va.Count; i++)
        {
            output.WriteLine($"val {i}: fp32 {va[i]:F7} fp16 {vb[i]:F7}");
            Assert.True(Math.Abs(va[i] - vb[i]) <= Fp16LossAtol, $"val loss {i}: fp16 {vb[i]} vs fp32 {va[i]}");
        }
    }

    [VulkanFact]
    public void Muon_fp16_without_f16_arithmetic_is_a_user_error_not_a_fallback()
    {
        var caps = fixture.Require().Capabilities;
        var e = Assert.Throws<UserError>(() => VulkanBackend.CheckMuonFp16(caps with { ShaderFloat16 = false }));
        Assert.Contains("config.muon_fp16", e.Message);
        Assert.Contains(caps.DeviceName, e.Message);
        if (caps.ShaderFloat16) VulkanBackend.CheckMuonFp16(caps);   // and a device that has it passes
    }

    [VulkanFact]
    public void Vulkan_checkpoint_and_resume_equal_the_uninterrupted_run()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(32), lines: 3000, shardTokens: 1 << 20);
        var cfg = Config(data, "vulkan", 1);
        var straight = Train(cfg, dir["a"]);
        Train(cfg, dir["b"], stopAt: 4);
        var saved = ConfigLoader.Load(Path.Combine(dir["b"], TrainingRun.ConfigFile), []);
        var resumed = Train(saved, dir["b"], resume: true);

        var (a, b) = (straight.Training!.LossHistory, resumed.Training!.LossHistory);
        Assert.Equal(a.Length, b.Length);
        for (int s = 0; s < a.Length; s++)
        {
            output.WriteLine($"step {s + 1,2}: straight {a[s]:F7} resumed {b[s]:F7}");
            Assert.True(Math.Abs(a[s] - b[s]) <= ResumeAtol, $"step {s + 1}: resumed loss {b[s]} vs {a[s]}");
        }
        double w = MaxWeightDiff(straight, resumed, out var where);
        output.WriteLine($"max weight difference: {w:E2} {where}");
        Assert.True(w <= ResumeAtol, $"resumed weights differ by {w} at {where}");
        foreach (var (name, ms) in straight.Training.Optimizer)
            foreach (var (k, m) in ms)
            {
                var r = resumed.Training.Optimizer[name][k];
                double d = m.Select((v, i) => Math.Abs(v - r[i])).Max();
                Assert.True(d <= ResumeAtol, $"{name}.{k} differs by {d} after resume");
            }
        Assert.Equal(straight.Training.RngState, resumed.Training.RngState);
        Assert.Equal(ValLosses(dir["a"]), ValLosses(dir["b"]), (x, y) => Math.Abs(x - y) <= ResumeAtol);
    }

    [VulkanFact]
    public void A_cpu_checkpoint_resumes_on_vulkan()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(33), lines: 3000, shardTokens: 1 << 20);
        var cfg = Config(data, "cpu", 1);
        var cpu = Train(cfg, dir["cpu"]);
        Train(cfg, dir["mixed"], stopAt: 5);
        var saved = ConfigLoader.Load(Path.Combine(dir["mixed"], TrainingRun.ConfigFile), ["backend=vulkan"]);
        var mixed = Train(saved, dir["mixed"], resume: true);
        var (a, b) = (cpu.Training!.LossHistory, mixed.Training!.LossHistory);
        for (int s = 0; s < a.Length; s++)
            Assert.True(Math.Abs(a[s] - b[s]) <= LossAtol, $"step {s + 1}: cpu→vulkan loss {b[s]} vs cpu {a[s]}");
        Assert.True(MaxWeightDiff(cpu, mixed, out var where) <= WeightAtol, where);
    }
}
