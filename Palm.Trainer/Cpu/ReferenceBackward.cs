// The hand-written backward pass of the CPU reference model: d(mean cross-entropy)/d(every
// parameter), walking the forward tape in reverse. Checked against the golden gradients and
// by finite differences; every backward shader is checked against this file.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Trainer.Cpu;

internal static class ReferenceBackward
{
    /// <summary>
    /// Forward, loss and backward for tokens/targets (B, T). Returns the mean cross-entropy over
    /// targets != -1 and the gradients (zero-initialised, same shapes as the parameters).
    /// </summary>
    public static (double Loss, PalmParameters Grads) LossAndGradients(CpuReferenceModel model, ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int batch, int t)
    {
        var grads = new PalmParameters(model.Config);
        double loss = Accumulate(model, tokens, targets, batch, t, grads, 1f);
        return (loss, grads);
    }

    /// <summary>
    /// Adds <paramref name="scale"/> · d(loss)/d(params) into <paramref name="grads"/> (gradient
    /// accumulation over micro-batches) and returns the micro-batch loss.
    /// </summary>
    public static double Accumulate(CpuReferenceModel model, ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int batch, int t, PalmParameters grads, float scale)
    {
        if (targets.Length != batch * t) throw new ArgumentException($"targets holds {targets.Length} ids, expected B*T = {batch * t}", nameof(targets));
        var c = model.Config;
        var p = model.Parameters;
        var tape = new ForwardTape();
        var logits = model.Forward(tokens, batch, t, null, tape);
        int rows = batch * t, C = c.NEmbd, V = c.VocabSize;
        var dLogits = new float[rows * V];
        double loss = CpuOps.CrossEntropy(logits, targets, V, dLogits);
        if (scale != 1f) for (int i = 0; i < dLogits.Length; i++) dLogits[i] *= scale;

        var dXf = LinearBackward(p.Unembed, grads.Unembed, tape.XF, rows, tape.Unembed, dLogits, relu2: false);
        var dX = new float[rows * C];
        CpuOps.RmsNormRowsBackward(tape.XF, tape.XFInv, dXf, rows, C, dX, accumulate: false);

        for (int ai = tape.Apps.Count - 1; ai >= 0; ai--)
        {
            var at = tape.Apps[ai];
            var bp = p.Blocks[at.Block];
            var bg = grads.Blocks[at.Block];
            // x_out = x_in + AoD(h) + FFN(h): dX flows to x_in unchanged, and into both branches.
            var dH = AodBackward(c, bp, bg, at, tape, dX);
            if (bp.Up is not null)
            {
                var dGated = LinearBackward(bp.Down!, bg.Down!, at.Gated!, rows, at.Down!, dX, relu2: false);
                var dM = new float[rows * 2 * c.DFfn];
                CpuOps.SwiGluBackward(at.M!, dGated, rows, c.DFfn, dM);
                var dH2 = LinearBackward(bp.Up, bg.Up!, at.H, rows, at.Up!, dM, relu2: false);
                for (int i = 0; i < dH.Length; i++) dH[i] += dH2[i];
            }
            CpuOps.RmsNormRowsBackward(at.H, at.HInv, dH, rows, C, dX, accumulate: true);
        }

        EmbedBackward(c, p, grads, tape, dX);
        return loss;
    }

    /// <summary>
    /// Backward of y = Linear(x): accumulates dW (or dW1, dW2) into <paramref name="g"/> and
    /// returns dx (rows, in).
    /// </summary>
    internal static float[] LinearBackward(LinearParams p, LinearParams g, float[] x, int rows, LinearTape tape, float[] dy, bool relu2)
    {
        var dx = new float[rows * p.In];
        if (!p.Factorized)
        {
            CpuOps.MatMulAtB(dy, x, p.Out, p.In, rows, g.W!.Data, accumulate: true);
            CpuOps.MatMulAB(dy, p.W!.Data, rows, p.In, p.Out, dx);
            return dx;
        }
        int r = p.W1!.Rows;
        CpuOps.MatMulAtB(dy, tape.A!, p.Out, r, rows, g.W2!.Data, accumulate: true);
        var du = new float[rows * r];
        CpuOps.MatMulAB(dy, p.W2!.Data, rows, r, p.Out, du);
        if (relu2)
        {
            var u = tape.U!;
            for (int i = 0; i < du.Length; i++) du[i] *= 2 * MathF.Max(u[i], 0);
        }
        CpuOps.MatMulAtB(du, x, r, p.In, rows, g.W1!.Data, accumulate: true);
        CpuOps.MatMulAB(du, p.W1.Data, rows, p.In, r, dx);
        return dx;
    }

    /// <summary>Backward of one AoD branch given d(branch output) (rows, C); returns dH (rows, C).</summary>
    private static float[] AodBackward(PalmConfig c, BlockParams bp, BlockParams bg, ApplicationTape at, ForwardTape tape, float[] dOut)
    {
        int batch = tape.B, t = tape.T, rows = batch * t, C = c.NEmbd, D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        var dO = new float[rows * 2 * C];
        CpuOps.SwiGluBackward(at.O, dOut, rows, C, dO);
        var dY = LinearBackward(bp.Proj, bg.Proj, at.Y, rows, at.Proj, dO, relu2: false);

        var dQkv = new float[rows * 3 * D];
        Parallel.For(0, batch, b =>
        {
            // Reverse scan: carried gradients of S and Z are the sums of their direct
            // gradients over all later tokens.
            var cS = new double[D];
            var cZ = new double[D];
            var dq = new float[D];
            var dk = new float[D];
            for (int ti = t - 1; ti >= 0; ti--)
            {
                int row = b * t + ti;
                var qkv = at.QkvOut.AsSpan(row * 3 * D, 3 * D);
                var dst = dQkv.AsSpan(row * 3 * D, 3 * D);
                for (int j = 0; j < D; j++)
                {
                    int i = row * D + j;
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
                    float g = at.G[i], v = qkv[2 * D + j];
                    dst[2 * D + j] = (float)(cS[j] * g);                 // dv
                    double dg = cS[j] * v + (mean ? cZ[j] : 0);
                    dk[j] = (float)(dg * g * (1 - g));                     // through sigmoid
                }
                var cs = tape.RopeCos.AsSpan(ti * half, half);
                var sn = tape.RopeSin.AsSpan(ti * half, half);
                for (int hh = 0; hh < H; hh++)
                {
                    var dqh = dq.AsSpan(hh * hd, hd);
                    var dkh = dk.AsSpan(hh * hd, hd);
                    CpuOps.RopeBackwardInPlace(dqh, cs, sn);
                    CpuOps.RopeBackwardInPlace(dkh, cs, sn);
                    CpuOps.RmsNormRowsBackward(at.QNorm.AsSpan(row * D + hh * hd, hd), at.QInv.AsSpan(row * H + hh, 1), dqh, 1, hd, dst.Slice(hh * hd, hd), accumulate: false);
                    CpuOps.RmsNormRowsBackward(at.KNorm.AsSpan(row * D + hh * hd, hd), at.KInv.AsSpan(row * H + hh, 1), dkh, 1, hd, dst.Slice(D + hh * hd, hd), accumulate: false);
                }
            }
        });
        return LinearBackward(bp.Qkv, bg.Qkv, at.H, rows, at.Qkv, dQkv, relu2: true);
    }

    private static void EmbedBackward(PalmConfig c, PalmParameters p, PalmParameters grads, ForwardTape tape, float[] dX0)
    {
        int rows = tape.B * tape.T, C = c.NEmbd, w = p.Embed.Cols;
        var dPre = new float[rows * C];
        CpuOps.RmsNormRowsBackward(tape.X0, tape.X0Inv, dX0, rows, C, dPre, accumulate: false);
        float[] dE = dPre;
        if (p.EmbedProj is { } proj)
        {
            CpuOps.MatMulAtB(dPre, tape.E, C, w, rows, grads.EmbedProj!.Data, accumulate: true);
            dE = new float[rows * w];
            CpuOps.MatMulAB(dPre, proj.Data, rows, w, C, dE);
        }
        var gE = grads.Embed.Data;
        for (int i = 0; i < rows; i++)
        {
            int id = tape.Tokens[i];
            for (int j = 0; j < w; j++) gE[id * w + j] += dE[i * w + j];
        }
    }
}
