// The training loop, the same on every backend: sample micro-batches, hand them to the backend
// (forward + backward with gradient accumulation, clip, Muon + AdamW) with the spec's LR
// schedule and Muon momentum warm-up, periodic validation. Its whole state (weights, moments,
// step, batch-sampler RNG, windows drawn, loss history) round-trips through a checkpoint, so a
// resumed run continues bit for bit on the CPU (and within float tolerance on Vulkan), and a
// checkpoint of either backend resumes on the other.
using System.Diagnostics;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Trainer.Backends;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Training;

/// <summary>What one step reports to the caller's progress display.</summary>
public readonly record struct StepReport(int Step, int Steps, double Loss, double? ValLoss, double TokensPerSecond, double MuonLr, double AdamLr, double GradNorm);

/// <summary>Trains a <see cref="PalmParameters"/> on a <see cref="TokenDataset"/> with the backend the config names.</summary>
public sealed class TrainingLoop : IDisposable
{
    private readonly ITrainingBackend _backend;
    private readonly PalmConfig _modelConfig;
    private readonly TokenDataset _data;
    private readonly TrainConfig _cfg;
    private readonly Rng _rng;
    private readonly LrSchedule _schedule;
    private readonly List<float> _losses = [];
    private long _step;
    private long _dataPosition;

    /// <summary>
    /// A trainer at step 0 (fresh moments, sampler seeded from the config), or resumed from
    /// <paramref name="resume"/>. The cpu backend trains <paramref name="parameters"/> in place;
    /// the vulkan one uploads them and writes them back on <see cref="Parameters"/>.
    /// </summary>
    /// <exception cref="PalmFormatException">The training state does not fit these parameters.</exception>
    /// <exception cref="Commands.UserError">backend=vulkan without a usable Vulkan device.</exception>
    public TrainingLoop(PalmParameters parameters, TokenDataset data, TrainConfig config, TrainingState? resume = null)
    {
        config.Validate();
        if (data.BlockSize > parameters.Config.BlockSize)
            throw new ArgumentException($"dataset windows of {data.BlockSize} tokens exceed block_size {parameters.Config.BlockSize}");
        _modelConfig = parameters.Config;
        _data = data;
        _cfg = config;
        // A distinct stream from the init RNG (same seed), so changing the init does not change the data order.
        _rng = new Rng(config.Seed ^ 0xDA7AUL);
        _schedule = new LrSchedule { Warmup = config.Warmup, DecayIters = config.Steps, CooldownFrac = config.CooldownFrac, MinLrFrac = config.MinLrFrac };
        OptimizerState? moments = null;
        if (resume is not null)
        {
            moments = OptimizerState.For(parameters);
            foreach (var (name, m) in moments.M) CopyMoment(resume, name, "m", m);
            foreach (var (name, v) in moments.V) CopyMoment(resume, name, "v", v);
            _step = resume.Step;
            _rng = new Rng(resume.RngState);
            _dataPosition = resume.DataPosition;
            _losses.AddRange(resume.LossHistory);
        }
        _backend = TrainingBackends.Create(config.Backend, config.Device, config.MuonFp16, parameters);
        try { if (moments is not null) _backend.WriteMoments(moments); }
        catch { _backend.Dispose(); throw; }
    }

    private static void CopyMoment(TrainingState s, string name, string moment, float[] dst)
    {
        if (!s.Optimizer.TryGetValue(name, out var ms) || !ms.TryGetValue(moment, out var src))
            throw new PalmFormatException($"training.optimizer: no '{moment}' moment for '{name}'; cannot resume exactly");
        if (src.Length != dst.Length) throw new PalmFormatException($"training.optimizer '{name}'.{moment}: {src.Length} values, expected {dst.Length}");
        src.CopyTo(dst, 0);
    }

    /// <summary>The backend, as the start-up line names it.</summary>
    public string BackendDescription => _backend.Description;
    /// <summary>The current weights (read back from the device on the vulkan backend).</summary>
    public PalmParameters Parameters => _backend.ReadParameters();
    public PalmConfig ModelConfig => _modelConfig;
    public long Step => _step;
    /// <summary>Training windows drawn so far (batch · grad_accum per step).</summary>
    public long DataPosition => _dataPosition;
    /// <summary>Mean training loss of every step so far.</summary>
    public IReadOnlyList<float> LossHistory => _losses;

    /// <summary>The state a checkpoint needs to resume this run exactly (copied).</summary>
    public TrainingState ExportState()
    {
        var moments = _backend.ReadMoments();
        var opt = new Dictionary<string, IReadOnlyDictionary<string, float[]>>(StringComparer.Ordinal);
        foreach (var (name, m) in moments.M)
        {
            var d = new Dictionary<string, float[]>(StringComparer.Ordinal) { ["m"] = m };
            if (moments.V.TryGetValue(name, out var v)) d["v"] = v;
            opt[name] = d;
        }
        long s = Math.Max(0, _step - 1);
        return new TrainingState
        {
            Step = _step,
            RngState = _rng.GetState(),
            DataPosition = _dataPosition,
            LossHistory = [.. _losses],
            Optimizer = opt,
            Extra = new Dictionary<string, double> { ["muon_lr"] = _schedule.At(s, _cfg.MuonLr), ["adam_lr"] = _schedule.At(s, _cfg.AdamLr), ["steps"] = _cfg.Steps },
        };
    }

    /// <summary>Mean validation loss over <see cref="TrainConfig.EvalIters"/> batches drawn with a fixed seed (the same windows every time).</summary>
    public double Evaluate()
    {
        var rng = new Rng(_cfg.Seed ^ 0x5EEDUL);
        double total = 0;
        for (int i = 0; i < _cfg.EvalIters; i++)
        {
            var (x, y) = _data.Batch(false, _cfg.Batch, rng);
            total += _backend.Loss(x, y, _cfg.Batch, _data.BlockSize);
        }
        return total / _cfg.EvalIters;
    }

    /// <summary>One optimizer step over grad_accum micro-batches; returns its report.</summary>
    public StepReport TrainStep()
    {
        long s = _step;
        var sw = Stopwatch.StartNew();
        int b = _cfg.Batch, t = _data.BlockSize, accum = _cfg.GradAccum;
        var micro = new MicroBatch[accum];
        for (int k = 0; k < accum; k++)
        {
            var (x, y) = _data.Batch(true, b, _rng);
            micro[k] = new MicroBatch(x, y);
        }
        var hp = new StepHyper
        {
            MuonLr = _schedule.At(s, _cfg.MuonLr), AdamLr = _schedule.At(s, _cfg.AdamLr), WeightDecay = _cfg.WeightDecay,
            MuonBeta = ReferenceOptimizer.MuonBeta(s), AdamBeta1 = _cfg.AdamBeta1, AdamBeta2 = _cfg.AdamBeta2, AdamEps = _cfg.AdamEps, Clip = _cfg.Clip,
        };
        var (loss, norm) = _backend.Step(micro, b, t, hp, s + 1);
        _dataPosition += (long)b * accum;
        _step = s + 1;
        _losses.Add((float)loss);
        double tps = (double)b * accum * t / sw.Elapsed.TotalSeconds;
        int done = (int)_step;
        double? val = done % _cfg.EvalInterval == 0 || done == _cfg.Steps ? Evaluate() : null;
        return new StepReport(done, _cfg.Steps, loss, val, tps, hp.MuonLr, hp.AdamLr, norm);
    }

    public void Dispose() => _backend.Dispose();
}
