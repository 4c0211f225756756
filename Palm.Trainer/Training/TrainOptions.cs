// Hyper-parameters of a training run, as data with defaults (CONVENTIONS: config is data).
namespace Palm.Trainer.Training;

/// <summary>Training hyper-parameters; every field has a sensible default for the presets.</summary>
public sealed record TrainOptions
{
    public int Steps { get; init; } = 300;
    public int Batch { get; init; } = 8;
    public double MuonLr { get; init; } = 0.02;
    public double AdamLr { get; init; } = 0.006;
    public double WeightDecay { get; init; } = 0.0;
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.95;
    public double AdamEps { get; init; } = 1e-8;
    public double Clip { get; init; } = 1.0;
    public int Warmup { get; init; } = 20;
    public double CooldownFrac { get; init; } = 0.4;
    public double MinLrFrac { get; init; } = 0.1;
    public int EvalInterval { get; init; } = 50;
    public int EvalIters { get; init; } = 4;
    public ulong Seed { get; init; } = 1337;

    /// <summary>Checks ranges; the message names the field.</summary>
    public void Validate()
    {
        if (Steps <= 0) throw new ArgumentException($"steps must be > 0, got {Steps}", nameof(Steps));
        if (Batch <= 0) throw new ArgumentException($"batch must be > 0, got {Batch}", nameof(Batch));
        if (MuonLr < 0 || AdamLr < 0) throw new ArgumentException("learning rates must be >= 0");
        if (Warmup < 0) throw new ArgumentException($"warmup must be >= 0, got {Warmup}", nameof(Warmup));
        if (CooldownFrac < 0 || CooldownFrac > 1) throw new ArgumentException($"cooldown_frac must be in [0, 1], got {CooldownFrac}", nameof(CooldownFrac));
        if (EvalInterval <= 0 || EvalIters <= 0) throw new ArgumentException("eval_interval and eval_iters must be > 0");
    }
}
