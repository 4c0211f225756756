// The training loop on the CPU reference backend: sample a batch, forward + backward, clip,
// Muon + AdamW with the spec's LR schedule and Muon momentum warm-up, periodic validation.
using System.Diagnostics;
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
    private readonly TrainOptions _opt;
    private readonly OptimizerState _state;
    private readonly Rng _rng;
    private readonly LrSchedule _schedule;

    public CpuTrainer(PalmParameters parameters, TokenDataset data, TrainOptions options)
    {
        options.Validate();
        if (data.BlockSize > parameters.Config.BlockSize)
            throw new ArgumentException($"dataset windows of {data.BlockSize} tokens exceed block_size {parameters.Config.BlockSize}");
        _model = new CpuReferenceModel(parameters);
        _data = data;
        _opt = options;
        _state = OptimizerState.For(parameters);
        _rng = new Rng(options.Seed);
        _schedule = new LrSchedule { Warmup = options.Warmup, DecayIters = options.Steps, CooldownFrac = options.CooldownFrac, MinLrFrac = options.MinLrFrac };
    }

    public PalmParameters Parameters => _model.Parameters;
    public long Step => _state.Step;

    /// <summary>Mean validation loss over <see cref="TrainOptions.EvalIters"/> batches drawn with a fixed seed.</summary>
    public double Evaluate()
    {
        var rng = new Rng(_opt.Seed ^ 0x5EEDUL);
        double total = 0;
        for (int i = 0; i < _opt.EvalIters; i++)
        {
            var (x, y) = _data.Batch(false, _opt.Batch, rng);
            total += CpuOps.CrossEntropy(_model.Forward(x, _opt.Batch, _data.BlockSize), y, _model.Config.VocabSize);
        }
        return total / _opt.EvalIters;
    }

    /// <summary>One optimizer step; returns its report.</summary>
    public StepReport TrainStep()
    {
        long s = _state.Step;
        var sw = Stopwatch.StartNew();
        var (x, y) = _data.Batch(true, _opt.Batch, _rng);
        var (loss, grads) = ReferenceBackward.LossAndGradients(_model, x, y, _opt.Batch, _data.BlockSize);
        var hp = new StepHyper
        {
            MuonLr = _schedule.At(s, _opt.MuonLr), AdamLr = _schedule.At(s, _opt.AdamLr), WeightDecay = _opt.WeightDecay,
            MuonBeta = ReferenceOptimizer.MuonBeta(s), AdamBeta1 = _opt.AdamBeta1, AdamBeta2 = _opt.AdamBeta2, AdamEps = _opt.AdamEps, Clip = _opt.Clip,
        };
        double norm = ReferenceOptimizer.Step(_model.Parameters, grads, _state, hp, s + 1);
        double tps = _opt.Batch * _data.BlockSize / sw.Elapsed.TotalSeconds;
        int done = (int)_state.Step;
        double? val = done % _opt.EvalInterval == 0 || done == _opt.Steps ? Evaluate() : null;
        return new StepReport(done, _opt.Steps, loss, val, tps, hp.MuonLr, hp.AdamLr, norm);
    }
}
