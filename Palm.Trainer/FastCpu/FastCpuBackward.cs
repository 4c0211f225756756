// The fast CPU backward pass: the same gradients as ReferenceBackward (which checks it,
// tests/Palm.Tests/FastCpu), from FastCpuModel's taped forward. Gradient buffers and every
// intermediate are allocated once per (B, T) and reused; cross-entropy and its gradient are
// one fused pass written over the logits in place; the AoD reverse scan runs one job per
// (sequence, head). Not thread-safe: one instance per trainer.
using System.Numerics.Tensors;
using Palm.Inference.Cpu;
using Palm.Inference.Cpu.Fast;
using Palm.Inference.Model;

namespace Palm.Trainer.FastCpu;

internal sealed unsafe class FastCpuBackward
{
    private readonly FastCpuModel _model;
    private Buffers? _buf;

    public FastCpuBackward(PalmParameters parameters)
    {
        _model = new FastCpuModel(parameters);
        Grads = new PalmParameters(parameters.Config);
    }

    public PalmParameters Parameters => _model.Parameters;
    public FastCpuModel Model => _model;
    /// <summary>Gradients of the last <see cref="LossAndGradients"/> (overwritten by the next call).</summary>
    public PalmParameters Grads { get; }

    private sealed class Buffers(PalmConfig c, int rows)
    {
        public readonly int Rows = rows;
        public readonly float[] DX = new float[rows * c.NEmbd], DH = new float[rows * c.NEmbd], DXf = new float[rows * c.NEmbd];
        public readonly float[] DO = new float[rows * 2 * c.NEmbd], DY = new float[rows * c.DQkv], DQkv = new float[rows * 3 * c.DQkv];
        public readonly float[] DU = new float[rows * Math.Max(1, c.DRank)];
        public readonly float[] DGated = new float[rows * c.DFfn], DM = new float[rows * 2 * c.DFfn];
        public readonly float[] DE = new float[rows * (c.DRank > 0 ? c.DRank : c.NEmbd)];
        public readonly double[] RowLoss = new double[rows];
    }

    /// <summary>
    /// Forward, mean cross-entropy over targets != -1, and backward for tokens/targets (B, T);
    /// gradients land in <see cref="Grads"/> (zeroed first).
    /// </summary>
    public double LossAndGradients(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int batch, int t)
    {
        if (targets.Length != batch * t) throw new ArgumentException($"targets holds {targets.Length} ids, expected B*T = {batch * t}", nameof(targets));
        var c = _model.Config;
        var p = _model.Parameters;
        var g = Grads;
        foreach (var gt in g.All) Array.Clear(gt.Data);
        int rows = batch * t, C = c.NEmbd, V = c.VocabSize;
        var bf = _buf is { } old && old.Rows == rows ? old : (_buf = new Buffers(c, rows));

        var logits = _model.Forward(tokens, batch, t, state: null, taped: true);
        var tape = _model.Tape;
        double loss = CrossEntropyInPlace(logits, targets, V, bf.RowLoss);
        var dLogits = logits;

        LinearBackward(p.Unembed, g.Unembed, tape.XF, rows, tape.Unembed, dLogits, relu2: false, bf.DXf, bf.DU, accumulateDx: false);
        RmsNormBackward(tape.XF, tape.XFInv, bf.DXf, rows, C, bf.DX, accumulate: false);

        for (int ai = tape.Apps.Count - 1; ai >= 0; ai--)
        {
            var at = tape.Apps[ai];
            var bp = p.Blocks[at.Block];
            var bg = g.Blocks[at.Block];
            AodBackward(c, bp, bg, at, tape, bf.DX, bf);
            if (bp.Up is not null)
            {
                int F = c.DFfn;
                LinearBackward(bp.Down!, bg.Down!, at.Gated!, rows, at.Down!, bf.DX, relu2: false, bf.DGated, bf.DU, accumulateDx: false);
                SwiGluBackward(at.M!, bf.DGated, rows, F, bf.DM);
                LinearBackward(bp.Up, bg.Up!, at.H, rows, at.Up!, bf.DM, relu2: false, bf.DH, bf.DU, accumulateDx: true);
            }
            RmsNormBackward(at.H, at.HInv, bf.DH, rows, C, bf.DX, accumulate: true);
        }

        EmbedBackward(c, p, g, tape, bf);
        return loss;
    }

    /// <summary>
    /// Mean cross-entropy over rows whose target is not -1; the logits are replaced by
    /// d(loss)/d(logits) = (softmax − onehot)/count (ignored rows: zeros). Same numerics as
    /// <see cref="CpuOps.CrossEntropy"/>: max-shifted exponentials summed in double blocks.
    /// </summary>
    internal static double CrossEntropyInPlace(float[] logits, ReadOnlySpan<int> targets, int v, double[] rowLoss)
    {
        int rows = targets.Length, count = 0;
        foreach (var t in targets)
        {
            if (t < -1 || t >= v) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} outside [-1, {v})");
            if (t != -1) count++;
        }
        var tg = targets.ToArray();
        int cnt = Math.Max(count, 1);
        FastCpuModel.ParallelRows(rows, 16, (r0, r1) =>
        {
            var scratch = new float[v];     // one per row range, not per row
            for (int i = r0; i < r1; i++)
            {
                var z = logits.AsSpan(i * v, v);
                int t = tg[i];
                rowLoss[i] = 0;
                if (t == -1) { z.Clear(); continue; }
                float max = TensorPrimitives.Max(z);
                float zt = z[t];
                TensorPrimitives.Subtract(z, max, z);
                CpuOps.ExpOfNonPositive(z, z, scratch);
                double sum = 0;
                for (int j = 0; j < v; j += 256) sum += TensorPrimitives.Sum(z.Slice(j, Math.Min(256, v - j)));
                rowLoss[i] = max + Math.Log(sum) - zt;
                TensorPrimitives.Multiply(z, (float)(1.0 / (sum * cnt)), z);
                z[t] -= 1f / cnt;
            }
        });
        if (count == 0) return 0;
        double total = 0;
        for (int i = 0; i < rows; i++) total += rowLoss[i];
        return total / count;
    }

    /// <summary>
    /// Backward of y = Linear(x): accumulates dW (or dW1, dW2) into <paramref name="g"/> and writes
    /// (or adds) dx (rows, In). <paramref name="du"/> is scratch of at least rows·r.
    /// </summary>
    private static void LinearBackward(LinearParams p, LinearParams g, float[] x, int rows, LinearTape tape, float[] dy, bool relu2, float[] dx, float[] du, bool accumulateDx)
    {
        if (!p.Factorized)
        {
            CpuOps.MatMulAtB(dy, x, p.Out, p.In, rows, g.W!.Data, accumulate: true);
            CpuOps.MatMulAB(dy, p.W!.Data, rows, p.In, p.Out, dx, accumulateDx);
            return;
        }
        int r = p.W1!.Rows;
        CpuOps.MatMulAtB(dy, tape.A!, p.Out, r, rows, g.W2!.Data, accumulate: true);
        CpuOps.MatMulAB(dy, p.W2!.Data, rows, r, p.Out, du);
        if (relu2)
        {
            var u = tape.U!;
            FastCpuModel.ParallelRows(rows, 64, (r0, r1) =>
            {
                for (int i = r0 * r; i < r1 * r; i++) du[i] *= 2 * MathF.Max(u[i], 0);
            });
        }
        CpuOps.MatMulAtB(du, x, r, p.In, rows, g.W1!.Data, accumulate: true);
        CpuOps.MatMulAB(du, p.W1.Data, rows, p.In, r, dx, accumulateDx);
    }

    private static void RmsNormBackward(float[] y, float[] inv, float[] dy, int rows, int n, float[] dx, bool accumulate) =>
        FastCpuModel.ParallelRows(rows, 32, (r0, r1) =>
        {
            fixed (float* py = y, pdy = dy, pdx = dx)
                for (int i = r0; i < r1; i++)
                    FastAodKernels.RmsNormBackward(py + (long)i * n, inv[i], pdy + (long)i * n, n, pdx + (long)i * n, accumulate);
        });

    /// <summary>d[a | b] (rows, 2n) from dout (rows, n), vectorised (the readable form is CpuOps.SwiGluBackward).</summary>
    private static void SwiGluBackward(float[] ab, float[] dout, int rows, int n, float[] dab) =>
        FastCpuModel.ParallelRows(rows, 16, (r0, r1) =>
        {
            var sig = new float[n];
            fixed (float* pab = ab, pd = dout, pdab = dab, ps = sig)
                for (int i = r0; i < r1; i++)
                    FastAodKernels.SwiGluBackward(pab + (long)i * 2 * n, pd + (long)i * n, n, pdab + (long)i * 2 * n, ps);
        });

    /// <summary>Backward of one AoD branch given d(branch output) <paramref name="dOut"/> (rows, C); writes dH (rows, C) into the buffers.</summary>
    private static void AodBackward(PalmConfig c, BlockParams bp, BlockParams bg, ApplicationTape at, ForwardTape tape, float[] dOut, Buffers bf)
    {
        int batch = tape.B, t = tape.T, rows = batch * t, C = c.NEmbd, D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        var dO = bf.DO;
        SwiGluBackward(at.O, dOut, rows, C, dO);
        var dY = bf.DY;
        LinearBackward(bp.Proj, bg.Proj, at.Y, rows, at.Proj, dO, relu2: false, dY, bf.DU, accumulateDx: false);

        var dQkv = bf.DQkv;
        if (!FastAodKernels.Vectorised(hd)) AodScanBackwardScalar(c, at, tape, dY, dQkv);
        else Parallel.For(0, batch * H, job =>
        {
            int b = job / H, hh = job % H, o = hh * hd;
            // Reverse scan: carried gradients of S and Z are the sums of their direct gradients over all later tokens.
            double* cS = stackalloc double[hd];
            double* cZ = stackalloc double[hd];
            float* dq = stackalloc float[hd];
            float* dk = stackalloc float[hd];
            for (int j = 0; j < hd; j++) cS[j] = cZ[j] = 0;
            fixed (float* pq = at.Q, pS = at.S, pZ = at.Z, pdy = dY, pg = at.G, pqkv = at.QkvOut, pd = dQkv, pcos = tape.RopeCos, psin = tape.RopeSin,
                   pqn = at.QNorm, pkn = at.KNorm, pqi = at.QInv, pki = at.KInv)
            {
                for (int ti = t - 1; ti >= 0; ti--)
                {
                    int row = b * t + ti;
                    long i0 = (long)row * D + o;
                    float* dst = pd + (long)row * 3 * D;
                    FastAodKernels.ScanBackStep(pq + i0, pS + i0, mean ? pZ + i0 : null, pdy + i0, pg + i0, pqkv + (long)row * 3 * D + 2 * D + o,
                        cS, cZ, dq, dst + 2 * D + o, dk, hd, mean);
                    float* cs = pcos + ti * half, sn = psin + ti * half;
                    FastAodKernels.RopeBackward(dq, cs, sn, hd);
                    FastAodKernels.RopeBackward(dk, cs, sn, hd);
                    FastAodKernels.RmsNormBackward(pqn + i0, pqi[row * H + hh], dq, hd, dst + o);
                    FastAodKernels.RmsNormBackward(pkn + i0, pki[row * H + hh], dk, hd, dst + D + o);
                }
            }
        });
        LinearBackward(bp.Qkv, bg.Qkv, at.H, rows, at.Qkv, dQkv, relu2: true, bf.DH, bf.DU, accumulateDx: false);
    }

    // Head widths that are not a multiple of 16: the reference's arithmetic per (sequence, head).
    private static void AodScanBackwardScalar(PalmConfig c, ApplicationTape at, ForwardTape tape, float[] dY, float[] dQkv)
    {
        int batch = tape.B, t = tape.T, D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        Parallel.For(0, batch * H, job =>
        {
            int b = job / H, hh = job % H, o = hh * hd;
            // Reverse scan: carried gradients of S and Z are the sums of their direct gradients over all later tokens.
            Span<double> cS = stackalloc double[hd];
            Span<double> cZ = stackalloc double[hd];
            Span<float> dq = stackalloc float[hd];
            Span<float> dk = stackalloc float[hd];
            cS.Clear(); cZ.Clear();
            for (int ti = t - 1; ti >= 0; ti--)
            {
                int row = b * t + ti;
                var dst = dQkv.AsSpan(row * 3 * D, 3 * D);
                int i0 = row * D + o;
                var vRow = at.QkvOut.AsSpan(row * 3 * D + 2 * D + o, hd);
                for (int j = 0; j < hd; j++)
                {
                    int i = i0 + j;
                    float q = at.Q[i], s = at.S[i], dy = dY[i];
                    float rq = MathF.Max(q, 0);
                    if (mean)
                    {
                        float z = at.Z![i];
                        dq[j] = q > 0 ? dy * s / z : 0;
                        cS[j] += dy * rq / z;
                        cZ[j] -= (double)dy * rq * s / ((double)z * z);
                    }
                    else
                    {
                        dq[j] = q > 0 ? dy * s : 0;
                        cS[j] += dy * rq;
                    }
                    float gg = at.G[i], v = vRow[j];
                    dst[2 * D + o + j] = (float)(cS[j] * gg);
                    double dg = cS[j] * v + (mean ? cZ[j] : 0);
                    dk[j] = (float)(dg * gg * (1 - gg));
                }
                var cs = tape.RopeCos.AsSpan(ti * half, half);
                var sn = tape.RopeSin.AsSpan(ti * half, half);
                CpuOps.RopeBackwardInPlace(dq, cs, sn);
                CpuOps.RopeBackwardInPlace(dk, cs, sn);
                CpuOps.RmsNormRowsBackward(at.QNorm.AsSpan(i0, hd), at.QInv.AsSpan(row * H + hh, 1), dq, 1, hd, dst.Slice(o, hd), accumulate: false);
                CpuOps.RmsNormRowsBackward(at.KNorm.AsSpan(i0, hd), at.KInv.AsSpan(row * H + hh, 1), dk, 1, hd, dst.Slice(D + o, hd), accumulate: false);
            }
        });
    }

    private static void EmbedBackward(PalmConfig c, PalmParameters p, PalmParameters grads, ForwardTape tape, Buffers bf)
    {
        int rows = tape.B * tape.T, C = c.NEmbd, w = p.Embed.Cols;
        var dPre = bf.DXf;
        RmsNormBackward(tape.X0, tape.X0Inv, bf.DX, rows, C, dPre, accumulate: false);
        float[] dE = dPre;
        if (p.EmbedProj is { } proj)
        {
            CpuOps.MatMulAtB(dPre, tape.E, C, w, rows, grads.EmbedProj!.Data, accumulate: true);
            dE = bf.DE;
            CpuOps.MatMulAB(dPre, proj.Data, rows, w, C, dE);
        }
        var gE = grads.Embed.Data;
        for (int i = 0; i < rows; i++)
            TensorPrimitives.Add(gE.AsSpan(tape.Tokens[i] * w, w), dE.AsSpan(i * w, w), gE.AsSpan(tape.Tokens[i] * w, w));
    }
}
