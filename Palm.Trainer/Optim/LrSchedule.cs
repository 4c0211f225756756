// The spec's learning-rate schedule: linear warm-up, constant, cosine cool-down to min_lr.
namespace Palm.Trainer.Optim;

/// <summary>Warm-up / constant / cosine cool-down, as a multiplier applied to each optimizer's base lr.</summary>
public sealed record LrSchedule
{
    /// <summary>Warm-up steps (linear from lr/(warmup+1)).</summary>
    public int Warmup { get; init; }
    /// <summary>Step at which the schedule reaches min_lr.</summary>
    public int DecayIters { get; init; } = 1000;
    /// <summary>Fraction of <see cref="DecayIters"/> spent in the cosine cool-down.</summary>
    public double CooldownFrac { get; init; } = 0.4;
    /// <summary>min_lr as a fraction of the base lr.</summary>
    public double MinLrFrac { get; init; } = 0.1;

    /// <summary>The learning rate at step <paramref name="s"/> (from 0) for base rate <paramref name="lr"/>.</summary>
    public double At(long s, double lr)
    {
        double minLr = lr * MinLrFrac;
        if (s < Warmup) return lr * (s + 1) / (Warmup + 1);
        if (DecayIters <= 0 || (double)s / DecayIters <= 1 - CooldownFrac) return lr;
        if (s >= DecayIters) return minLr;
        double start = (1 - CooldownFrac) * DecayIters;
        double ratio = (s - start) / (DecayIters - start);
        return minLr + 0.5 * (1 + Math.Cos(Math.PI * ratio)) * (lr - minLr);
    }
}
