// The spec's optimizers in float32, written to be read: global-norm clipping, Muon (Nesterov
// momentum, Frobenius normalisation, 5-step quintic Newton-Schulz, sqrt(max(1, m/n)) scale,
// decoupled weight decay) for block matrices and torch-semantics AdamW for embeddings/unembed.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Trainer.Optim;

/// <summary>Per-tensor optimizer moments: Muon keeps M, AdamW keeps M and V.</summary>
public sealed class OptimizerState
{
    /// <summary>First moments by parameter name.</summary>
    public Dictionary<string, float[]> M { get; } = new(StringComparer.Ordinal);
    /// <summary>Second moments (AdamW tensors only).</summary>
    public Dictionary<string, float[]> V { get; } = new(StringComparer.Ordinal);
    /// <summary>Optimizer steps taken so far (AdamW's bias-correction step is Step + 1 for the next update).</summary>
    public long Step { get; set; }

    /// <summary>Zero moments shaped for <paramref name="parameters"/>.</summary>
    public static OptimizerState For(PalmParameters parameters)
    {
        var s = new OptimizerState();
        foreach (var t in parameters.All)
        {
            s.M[t.Name] = new float[t.Length];
            if (!t.IsMuon) s.V[t.Name] = new float[t.Length];
        }
        return s;
    }
}

/// <summary>Hyper-parameters of one optimizer step.</summary>
public sealed record StepHyper
{
    public double MuonLr { get; init; } = 0.02;
    public double AdamLr { get; init; } = 0.003;
    public double WeightDecay { get; init; } = 0.0;
    public double MuonBeta { get; init; } = 0.95;
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.95;
    public double AdamEps { get; init; } = 1e-8;
    /// <summary>Global-norm clip threshold; 0 disables clipping.</summary>
    public double Clip { get; init; } = 1.0;
}

internal static class ReferenceOptimizer
{
    public const double NsA = 3.4445, NsB = -4.7750, NsC = 2.0315;
    public const int NsSteps = 5;

    /// <summary>Muon momentum warm-up: (1-f)·0.85 + f·0.95 with f = min(step/300, 1).</summary>
    public static double MuonBeta(long step)
    {
        double f = Math.Min(step / 300.0, 1.0);
        return (1 - f) * 0.85 + f * 0.95;
    }

    /// <summary>Total L2 norm over all gradients (accumulated in double).</summary>
    public static double GlobalNorm(PalmParameters grads)
    {
        double ss = 0;
        foreach (var t in grads.All)
            foreach (var v in t.Data) ss += (double)v * v;
        return Math.Sqrt(ss);
    }

    /// <summary>If clip &gt; 0 and the norm exceeds it, scales every gradient by clip/(norm + 1e-6). Returns the norm before clipping.</summary>
    public static double Clip(PalmParameters grads, double clip)
    {
        double norm = GlobalNorm(grads);
        if (clip > 0 && norm > clip)
        {
            float s = (float)(clip / (norm + 1e-6));
            foreach (var t in grads.All)
                System.Numerics.Tensors.TensorPrimitives.Multiply(t.Data, s, t.Data);
        }
        return norm;
    }

    /// <summary>
    /// The 5-step quintic Newton-Schulz orthogonalisation of U (m, n), with the transpose for
    /// tall matrices and the Frobenius normalisation; no scale, no lr.
    /// </summary>
    public static float[] NewtonSchulz(ReadOnlySpan<float> u, int m, int n)
    {
        bool tall = m > n;
        int p = tall ? n : m, q = tall ? m : n;      // X is (p, q) with p <= q
        var x = tall ? CpuOps.Transpose(u, m, n) : u.ToArray();
        double ss = 0;
        foreach (var v in x) ss += (double)v * v;
        float inv = (float)(1.0 / (Math.Sqrt(ss) + 1e-7));
        for (int i = 0; i < x.Length; i++) x[i] *= inv;

        var a = new float[p * p];
        var aa = new float[p * p];
        var bx = new float[p * q];
        for (int it = 0; it < NsSteps; it++)
        {
            CpuOps.MatMulABt(x, x, p, p, q, a);          // A = X Xᵀ
            CpuOps.MatMulABt(a, a, p, p, p, aa);         // A A = A Aᵀ (A is symmetric)
            for (int i = 0; i < a.Length; i++) a[i] = (float)(NsB * a[i] + NsC * aa[i]);   // B
            CpuOps.MatMulAB(a, x, p, q, p, bx);          // B X
            for (int i = 0; i < x.Length; i++) x[i] = (float)(NsA * x[i]) + bx[i];
        }
        return tall ? CpuOps.Transpose(x, p, q) : x;
    }

    /// <summary>One Muon update of <paramref name="param"/> with gradient g and momentum m (updated in place).</summary>
    public static void MuonStep(ParamTensor param, ReadOnlySpan<float> g, float[] m, double lr, double wd, double beta)
    {
        int rows = param.Rows, cols = param.Cols;
        float fb = (float)beta, f1 = (float)(1 - beta);
        var u = new float[m.Length];
        for (int i = 0; i < m.Length; i++)
        {
            m[i] = fb * m[i] + f1 * g[i];
            u[i] = f1 * g[i] + fb * m[i];                // Nesterov
        }
        var x = NewtonSchulz(u, rows, cols);
        float decay = (float)(1 - lr * wd);
        float step = (float)(lr * Math.Sqrt(Math.Max(1.0, (double)rows / cols)));
        var pd = param.Data;
        for (int i = 0; i < pd.Length; i++) pd[i] = pd[i] * decay - step * x[i];
    }

    /// <summary>One AdamW update (torch semantics; <paramref name="step"/> counted from 1).</summary>
    public static void AdamWStep(ParamTensor param, ReadOnlySpan<float> g, float[] m, float[] v, double lr, double wd, double b1, double b2, double eps, long step)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), "AdamW steps count from 1");
        float decay = (float)(1 - lr * wd);
        float fb1 = (float)b1, fb2 = (float)b2;
        double bc1 = 1 - Math.Pow(b1, step), bc2 = 1 - Math.Pow(b2, step);
        float stepSize = (float)(lr / bc1);
        float invSqrtBc2 = (float)(1 / Math.Sqrt(bc2));
        var pd = param.Data;
        for (int i = 0; i < pd.Length; i++)
        {
            pd[i] *= decay;
            m[i] = fb1 * m[i] + (1 - fb1) * g[i];
            v[i] = fb2 * v[i] + (1 - fb2) * g[i] * g[i];
            pd[i] -= stepSize * m[i] / (MathF.Sqrt(v[i]) * invSqrtBc2 + (float)eps);
        }
    }

    /// <summary>
    /// Clip, then Muon on block matrices and AdamW on the rest, with AdamW's bias-correction step
    /// <paramref name="adamStep"/>. Gradients are modified (clipped) in place. Returns the
    /// gradient norm before clipping.
    /// </summary>
    public static double Step(PalmParameters parameters, PalmParameters grads, OptimizerState state, StepHyper hp, long adamStep)
    {
        double norm = Clip(grads, hp.Clip);
        Parallel.ForEach(parameters.All, p =>
        {
            var g = grads[p.Name].Data;
            if (p.IsMuon) MuonStep(p, g, state.M[p.Name], hp.MuonLr, hp.WeightDecay, hp.MuonBeta);
            else AdamWStep(p, g, state.M[p.Name], state.V[p.Name], hp.AdamLr, hp.WeightDecay, hp.AdamBeta1, hp.AdamBeta2, hp.AdamEps, adamStep);
        });
        state.Step = adamStep;
        return norm;
    }
}
