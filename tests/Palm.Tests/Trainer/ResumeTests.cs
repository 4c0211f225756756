// Training runs through their run folder: 2N steps equal N steps + save + resume + N steps
// exactly, checkpoints hold the whole optimizer state, and eval reports the loss of a run.
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Trainer.Commands;
using Palm.Trainer.Data;
using Palm.Trainer.Training;

namespace Palm.Tests.Trainer;

public class ResumeTests
{
    private static PalmCheckpoint TrainInOneGo(TrainConfig cfg, string dir)
    {
        using (var run = TrainingRun.Open(cfg, dir, resume: false)) Assert.True(run.Run());
        return PalmCheckpoint.Load(System.IO.Path.Combine(dir, TrainingRun.CheckpointFile));
    }

    [Fact]
    public void TwoNSteps_Equal_NSteps_Save_Resume_NSteps_Exactly()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(11));
        var cfg = TrainerTestData.MicroConfig(data);
        var straight = TrainInOneGo(cfg, dir["a"]);

        using (var run = TrainingRun.Open(cfg, dir["b"], resume: false)) Assert.False(run.Run(stopAt: 3));
        // A fresh process would read config.json back; do the same.
        var saved = ConfigLoader.Load(System.IO.Path.Combine(dir["b"], TrainingRun.ConfigFile), []);
        using (var run = TrainingRun.Open(saved, dir["b"], resume: true))
        {
            Assert.Equal(3, run.Trainer.Step);
            Assert.True(run.Run());
        }
        var resumed = PalmCheckpoint.Load(System.IO.Path.Combine(dir["b"], TrainingRun.CheckpointFile));

        Assert.Equal(straight.Training!.LossHistory, resumed.Training!.LossHistory);
        Assert.Equal(6, resumed.Training.LossHistory.Length);
        foreach (var t in straight.Tensors)
        {
            var r = resumed.FindTensor(t.Name)!.Data;
            int bad = Enumerable.Range(0, r.Length).FirstOrDefault(i => r[i] != t.Data[i], -1);
            Assert.True(bad < 0, $"{t.Name}: resumed weight differs at {bad}: {(bad < 0 ? 0 : r[bad])} vs {(bad < 0 ? 0 : t.Data[bad])}");
        }
        foreach (var (name, moments) in straight.Training.Optimizer)
            foreach (var (k, m) in moments) Assert.True(m.AsSpan().SequenceEqual(resumed.Training.Optimizer[name][k]), $"{name}.{k} differs after resume");
        Assert.Equal(straight.Training.RngState, resumed.Training.RngState);
        Assert.Equal(straight.Training.DataPosition, resumed.Training.DataPosition);

        // The log holds each step once, in order, across the resume.
        var steps = File.ReadLines(System.IO.Path.Combine(dir["b"], TrainingRun.LogFile)).Where(l => l.Contains("\"type\":\"step\"")).ToList();
        Assert.Equal(6, steps.Count);
        Assert.True(File.Exists(System.IO.Path.Combine(dir["b"], TrainingRun.PlotFile)));
    }

    [Fact]
    public void Checkpoint_HoldsFullOptimizerState()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(12));
        var cfg = TrainerTestData.MicroConfig(data);
        using (var run = TrainingRun.Open(cfg, dir["run"], resume: false)) run.Run(stopAt: 3);
        var ck = PalmCheckpoint.Load(System.IO.Path.Combine(dir["run"], TrainingRun.CheckpointFile));
        var tr = ck.Training!;
        Assert.Equal(3, tr.Step);
        Assert.Equal(3L * cfg.Batch * cfg.GradAccum, tr.DataPosition);
        Assert.Equal(3, tr.LossHistory.Length);
        Assert.All(tr.LossHistory, l => Assert.True(float.IsFinite(l) && l > 0));
        var p = ck.ToParameters();
        Assert.Equal(p.All.Count, tr.Optimizer.Count);
        foreach (var t in p.All)
        {
            var moments = tr.Optimizer[t.Name];
            Assert.True(moments["m"].Any(v => v != 0), $"{t.Name}: first moment is all zero after 3 steps");
            if (t.IsMuon) Assert.False(moments.ContainsKey("v"), $"{t.Name}: Muon keeps no second moment");
            else Assert.True(moments["v"].Any(v => v != 0), $"{t.Name}: AdamW second moment is all zero");
        }
        Assert.NotNull(ck.Tokenizer);
    }

    [Fact]
    public void Resume_Refusals_AreUserErrors()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(13), lines: 300);
        var cfg = TrainerTestData.MicroConfig(data) with { Steps = 2 };
        Assert.Contains("--resume", Assert.Throws<UserError>(() => TrainingRun.Open(cfg, dir["none"], resume: true)).Message);
        using (var run = TrainingRun.Open(cfg, dir["run"], resume: false)) run.Run();
        Assert.Contains("already holds", Assert.Throws<UserError>(() => TrainingRun.Open(cfg, dir["run"], resume: false)).Message);
        Assert.Contains("already at step 2", Assert.Throws<UserError>(() => TrainingRun.Open(cfg, dir["run"], resume: true)).Message);
        var wider = cfg with { Steps = 4, Model = cfg.Model with { NEmbd = 32 } };
        Assert.Contains("model", Assert.Throws<UserError>(() => TrainingRun.Open(wider, dir["run"], resume: true)).Message);
        // A device selector that matches nothing fails like a machine without Vulkan: a clear user error.
        Assert.Contains("no usable Vulkan device", Assert.Throws<UserError>(() => TrainingRun.Open(cfg with { Backend = "vulkan", Device = "no-such-device-xyz" }, dir["v"], resume: false)).Message);
    }

    [Fact]
    public void Eval_OfATinyRun_MatchesWindowByWindowLoss_AndDropsWithTraining()
    {
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(14));
        var cfg = TrainerTestData.MicroConfig(data) with { Steps = 30, Batch = 8, GradAccum = 1, EvalInterval = 30, CheckpointInterval = 0, AdamLr = 0.02 };
        string ck = System.IO.Path.Combine(dir["run"], TrainingRun.CheckpointFile);
        double before;
        using (var run = TrainingRun.Open(cfg, dir["run"], resume: false))
        {
            run.SaveCheckpoint();
            before = EvalCommand.Run(ck, data, "val", batch: 5, maxWindows: 40).Loss;
            run.Run();
        }
        var res = EvalCommand.Run(ck, data, "val", batch: 5, maxWindows: 40);
        Assert.Equal(40, res.Windows);
        Assert.Equal(40 * 16, res.Tokens);
        Assert.Equal(Math.Exp(res.Loss), res.Perplexity, 12);
        Assert.True(res.Loss < before - 0.3, $"val loss {res.Loss:F3} after 30 steps, {before:F3} before");

        // Reference: each window on its own, the mean of their losses (batching must not change it).
        var p = PalmCheckpoint.Load(ck).ToParameters();
        var model = new CpuReferenceModel(p);
        using var val = TokenSplit.OpenPrepared(data, "val", out _);
        double sum = 0;
        int n = 0;
        var w = new int[17];
        foreach (var seg in val.Segments)
            for (long o = 0; o + 17 <= seg.Length && n < 40; o += 16, n++)
            {
                seg.Read(o, w);
                sum += CpuOps.CrossEntropy(model.Forward(w.AsSpan(0, 16), 1, 16), w.AsSpan(1, 16), p.Config.VocabSize);
            }
        Assert.True(Math.Abs(sum / n - res.Loss) <= 1e-5 + 1e-5 * Math.Abs(res.Loss), $"eval {res.Loss} vs window-by-window {sum / n}");

        // One shard file on its own evaluates like the folder whose only val shard it is.
        var m = ShardManifest.Load(data);
        if (m.Shards.Count(s => s.Split == "val") == 1)
        {
            var single = EvalCommand.Run(ck, System.IO.Path.Combine(data, m.Shards.Single(s => s.Split == "val").File), "val", 5, 40);
            Assert.Equal(res.Loss, single.Loss, 12);
        }
    }
}
