// The optimizer step of the fast CPU trainer: the same update as ReferenceOptimizer.Step (which
// checks it, tests/Palm.Tests/FastCpu), with Newton-Schulz scratch kept per tensor between steps,
// vectorised norms and moments, and one tensor per core (each Newton-Schulz product runs serially
// on its worker: the matrices are 64 x ≤1536, too small to split twice on a few cores).
using System.Numerics.Tensors;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Optim;

namespace Palm.Trainer.FastCpu;

internal sealed unsafe class FastOptimizer
{
    private readonly Dictionary<string, Scratch> _scratch = new(StringComparer.Ordinal);
    private readonly ParamTensor[] _order;

    public FastOptimizer(PalmParameters parameters)
    {
        foreach (var p in parameters.All)
            if (p.IsMuon) _scratch[p.Name] = new Scratch(p.Rows, p.Cols);
        // Largest first, so the long Newton-Schulz runs start early and small ones fill the gaps.
        _order = parameters.All.OrderByDescending(p => p.IsMuon ? (long)p.Length * Math.Min(p.Rows, p.Cols) : p.Length).ToArray();
    }

    private sealed class Scratch(int rows, int cols)
    {
        public readonly int P = Math.Min(rows, cols), Q = Math.Max(rows, cols);
        public readonly float[] U = new float[rows * cols], X = new float[rows * cols], BX = new float[rows * cols];
        public readonly float[] A = new float[Math.Min(rows, cols) * Math.Min(rows, cols)], AA = new float[Math.Min(rows, cols) * Math.Min(rows, cols)];
    }

    /// <summary>Same contract as <see cref="ReferenceOptimizer.Step"/>: clip, Muon / AdamW, returns the norm before clipping.</summary>
    public double Step(PalmParameters parameters, PalmParameters grads, OptimizerState state, StepHyper hp, long adamStep)
    {
        double ss = 0;
        foreach (var t in grads.All) ss += SumOfSquares(t.Data);
        double norm = Math.Sqrt(ss);
        if (hp.Clip > 0 && norm > hp.Clip)
        {
            float s = (float)(hp.Clip / (norm + 1e-6));
            foreach (var t in grads.All) TensorPrimitives.Multiply(t.Data, s, t.Data);
        }
        Parallel.ForEach(_order, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, p =>
        {
            var g = grads[p.Name].Data;
            if (p.IsMuon) MuonStep(p, g, state.M[p.Name], _scratch[p.Name], hp.MuonLr, hp.WeightDecay, hp.MuonBeta);
            else ReferenceOptimizer.AdamWStep(p, g, state.M[p.Name], state.V[p.Name], hp.AdamLr, hp.WeightDecay, hp.AdamBeta1, hp.AdamBeta2, hp.AdamEps, adamStep);
        });
        state.Step = adamStep;
        return norm;
    }

    // Float partial sums per 256 added in double: close to the reference's all-double sum.
    private static double SumOfSquares(float[] x)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i += 256) ss += TensorPrimitives.SumOfSquares(x.AsSpan(i, Math.Min(256, x.Length - i)));
        return ss;
    }

    private static void MuonStep(ParamTensor param, float[] g, float[] m, Scratch s, double lr, double wd, double beta)
    {
        int rows = param.Rows, cols = param.Cols;
        float fb = (float)beta, f1 = (float)(1 - beta);
        var u = s.U;
        // m = β·m + (1-β)·g; Nesterov u = (1-β)·g + β·m (same float operations as the reference).
        TensorPrimitives.Multiply(m, fb, m);
        TensorPrimitives.MultiplyAdd(g, f1, m, m);
        TensorPrimitives.Multiply(m, fb, u);
        TensorPrimitives.MultiplyAdd(g, f1, u, u);
        NewtonSchulz(u, rows, cols, s);
        float decay = (float)(1 - lr * wd);
        float step = (float)(lr * Math.Sqrt(Math.Max(1.0, (double)rows / cols)));
        var pd = param.Data;
        var x = rows > cols ? s.BX : s.X;     // the tall case transposes back into BX
        TensorPrimitives.Multiply(pd, decay, pd);
        TensorPrimitives.MultiplyAdd(x, -step, pd, pd);
    }

    /// <summary>ReferenceOptimizer.NewtonSchulz into the scratch (result in X, or in BX for tall matrices).</summary>
    private static void NewtonSchulz(float[] u, int m, int n, Scratch s)
    {
        bool tall = m > n;
        int p = s.P, q = s.Q;
        var x = s.X;
        if (tall) CpuOps.Transpose(u, m, n, x); else u.CopyTo(x, 0);
        float inv = (float)(1.0 / (Math.Sqrt(SumOfSquares(x)) + 1e-7));
        TensorPrimitives.Multiply(x, inv, x);
        var a = s.A; var aa = s.AA; var bx = s.BX;
        fixed (float* px = x, pa = a, paa = aa, pbx = bx)
        {
            for (int it = 0; it < ReferenceOptimizer.NsSteps; it++)
            {
                Gemm.MatMulABt(px, px, pa, p, p, q, acc: false, parallel: false);     // A = X Xᵀ
                Gemm.MatMulABt(pa, pa, paa, p, p, p, acc: false, parallel: false);    // A A (A symmetric)
                for (int i = 0; i < a.Length; i++) a[i] = (float)(ReferenceOptimizer.NsB * a[i] + ReferenceOptimizer.NsC * aa[i]);
                Gemm.MatMulAB(pa, px, pbx, p, q, p, acc: false, parallel: false);     // B X
                for (int i = 0; i < x.Length; i++) x[i] = (float)(ReferenceOptimizer.NsA * x[i]) + bx[i];
            }
        }
        if (tall) CpuOps.Transpose(x, p, q, bx);
    }
}
