// The training loop on the CPU reference backend: sample micro-batches, forward + backward with
// gradient accumulation, clip, Muon + AdamW with the spec's LR schedule and Muon momentum
// warm-up, periodic validation. Its whole state (weights, moments, step, batch-sampler RNG,
// windows drawn, loss history) round-trips through a checkpoint, so a resumed run continues
// bit for bit.
using System.Diagnostics;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Cpu;
using Palm.Trainer.Optim;

namespace Palm.Trainer.Training;

/// <summary>What one step reports to the caller's progress display.</summary>
public readonly record struct StepReport(int Step, int Steps, double Loss, double? ValLoss, double TokensPerSecond, double MuonLr, double AdamLr, double GradNorm);

/// <summary>Trains a <see cref="PalmParameters"/> in place on a <see cref="TokenDataset"/>.</summary>
public sealed class CpuTrainer
{
    private readonly CpuReferenceModel _model;
    private readonly TokenDataset _data;
    private readonly TrainConfig _cfg;
    private readonly OptimizerState _state;
    private readonly Rng _rng;
    private readonly LrSchedule _schedule;
    private readonly List<float> _losses = [];
    private long _dataPosition;

    /// <summary>A trainer at step 0 (fresh moments, sampler seeded from the config), or resumed from <paramref name="resume"/>.</summary>
    /// <exception cref="Palm.Inference.Checkpoint.PalmFormatException">The training state does not fit these parameters.</exception>
    public CpuTrainer(PalmParameters parameters, TokenDataset data, TrainConfig config, TrainingState? resume = null)
    {
        config.Validate();
        if (data.BlockSize > parameters.Config.BlockSize)
            throw new ArgumentException($"dataset windows of {data.BlockSize} tokens exceed block_size {parameters.Config.BlockSize}");
        _model = new CpuReferenceModel(parameters);
        _data = data;
        _cfg = config;
        _state = OptimizerState.For(parameters);
        // A distinct stream from the init RNG (same seed), so changing the init does not change the data order.
        _rng = new Rng(config.Seed ^ 0xDA7AUL);
        _schedule = new LrSchedule { Warmup = config.Warmup, DecayIters = config.Steps, CooldownFrac = config.CooldownFrac, MinLrFrac = config.MinLrFrac };
        if (resume is not null)
        {
            _state.Step = resume.Step;
            _rng = new Rng(resume.RngState);
            _dataPosition = resume.DataPosition;
            _losses.AddRange(resume.LossHistory);
            foreach (var (name, m) in _state.M) CopyMoment(resume, name, "m", m);
            foreach (var (name, v) in _state.V) CopyMoment(resume, name, "v", v);
        }
    }

    private static void CopyMoment(TrainingState s, string name, string moment, float[] dst)
    {
        if (!s.Optimizer.TryGetValue(name, out var ms) || !ms.TryGetValue(moment, out var src))
            throw new PalmFormatException($"training.optimizer: no '{moment}' moment for '{name}'; cannot resume exactly");
        if (src.Length != dst.Length) throw new PalmFormatException($"training.optimizer '{name}'.{moment}: {src.Length} values, expected {dst.Length}");
        src.CopyTo(dst, 0);
    }

    public PalmParameters Parameters => _model.Parameters;
    public long Step => _state.Step;
    /// <summary>Training windows drawn so far (batch · grad_accum per step).</summary>
    public long DataPosition => _dataPosition;
    /// <summary>Mean training loss of every step so far.</summary>
    public IReadOnlyList<float> LossHistory => _losses;

    /// <summary>The state a checkpoint needs to resume this run exactly (copied).</summary>
    public TrainingState ExportState()
    {
        var opt = new Dictionary<string, IReadOnlyDictionary<string, float[]>>(StringComparer.Ordinal);
        foreach (var (name, m) in _state.M)
        {
            var d = new Dictionary<string, float[]>(StringComparer.Ordinal) { ["m"] = (float[])m.Clone() };
            if (_state.V.TryGetValue(name, out var v)) d["v"] = (float[])v.Clone();
            opt[name] = d;
        }
        long s = Math.Max(0, _state.Step - 1);
        return new TrainingState
        {
            Step = _state.Step,
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
            total += CpuOps.CrossEntropy(_model.Forward(x, _cfg.Batch, _data.BlockSize), y, _model.Config.VocabSize);
        }
        return total / _cfg.EvalIters;
    }

    /// <summary>One optimizer step over grad_accum micro-batches; returns its report.</summary>
    public StepReport TrainStep()
    {
        long s = _state.Step;
        var sw = Stopwatch.StartNew();
        int b = _cfg.Batch, t = _data.BlockSize, accum = _cfg.GradAccum;
        var grads = new PalmParameters(_model.Config);
        double loss = 0;
        for (int k = 0; k < accum; k++)
        {
            var (x, y) = _data.Batch(true, b, _rng);
            // Scaling each micro-batch by 1/accum makes the sum the gradient of the mean loss.
            loss += ReferenceBackward.Accumulate(_model, x, y, b, t, grads, 1f / accum);
            _dataPosition += b;
        }
        loss /= accum;
        var hp = new StepHyper
        {
            MuonLr = _schedule.At(s, _cfg.MuonLr), AdamLr = _schedule.At(s, _cfg.AdamLr), WeightDecay = _cfg.WeightDecay,
            MuonBeta = ReferenceOptimizer.MuonBeta(s), AdamBeta1 = _cfg.AdamBeta1, AdamBeta2 = _cfg.AdamBeta2, AdamEps = _cfg.AdamEps, Clip = _cfg.Clip,
        };
        double norm = ReferenceOptimizer.Step(_model.Parameters, grads, _state, hp, s + 1);
        _losses.Add((float)loss);
        double tps = (double)b * accum * t / sw.Elapsed.TotalSeconds;
        int done = (int)_state.Step;
        double? val = done % _cfg.EvalInterval == 0 || done == _cfg.Steps ? Evaluate() : null;
        return new StepReport(done, _cfg.Steps, loss, val, tps, hp.MuonLr, hp.AdamLr, norm);
    }
}
