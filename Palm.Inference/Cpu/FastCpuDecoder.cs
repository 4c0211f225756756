// The fast CPU decode path: one recurrent step per sequence with preallocated scratch, fused
// per-head AoD (QK-norm, RoPE, gate, state update, mix) and register-blocked matrix-vector
// products. The same function as CpuReferenceModel.Step, which checks it (FastCpuDecoderTests);
// nothing here allocates per token or takes a lock.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Palm.Inference.Model;

namespace Palm.Inference.Cpu;

internal sealed class FastCpuDecoder
{
    private readonly PalmConfig _c;
    private readonly PalmParameters _p;
    private readonly double[] _freq;
    private readonly ThreadLocal<Scratch> _scratch;

    public FastCpuDecoder(PalmParameters parameters)
    {
        _p = parameters;
        _c = parameters.Config;
        _freq = CpuOps.RopeFrequencies(_c.HeadDim);
        _scratch = new ThreadLocal<Scratch>(() => new Scratch(_c));
    }

    public PalmConfig Config => _c;

    private sealed class Scratch(PalmConfig c)
    {
        public readonly float[] X = new float[c.NEmbd], H = new float[c.NEmbd], Xf = new float[c.NEmbd];
        public readonly float[] U = new float[Math.Max(1, Math.Max(c.DRank, c.NEmbd))];
        public readonly float[] Qkv = new float[3 * c.DQkv], G = new float[c.DQkv], Y = new float[c.DQkv];
        public readonly float[] O = new float[2 * c.NEmbd], Tmp = new float[Math.Max(c.NEmbd, Math.Max(c.DFfn, 1))];
        public readonly float[] M = new float[Math.Max(1, 2 * c.DFfn)], Z = new float[Math.Max(1, c.DFfn)], F = new float[c.NEmbd];
        public readonly float[] Cos = new float[c.HeadDim / 2], Sin = new float[c.HeadDim / 2];
    }

    /// <summary>One token per sequence of <paramref name="state"/>; logits (B, V). Same contract as <see cref="CpuReferenceModel.Step"/>.</summary>
    public void Step(ReadOnlySpan<int> tokens, AodStateSet state, Span<float> logits)
    {
        int batch = state.Batch, V = _c.VocabSize;
        if (tokens.Length != batch) throw new ArgumentException($"expected {batch} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < batch * V) throw new ArgumentException($"logits must hold B*V = {batch * V} floats", nameof(logits));
        foreach (var t in tokens)
            if ((uint)t >= (uint)V) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} outside [0, {V})");
        if (batch == 1) StepOne(tokens[0], state, 0, logits[..V]);
        else
        {
            // Sequences are independent: one per worker, each with its own scratch.
            var toks = tokens.ToArray();
            unsafe
            {
                fixed (float* pl = logits)
                {
                    nint il = (nint)pl;
                    Parallel.For(0, batch, b => StepOne(toks[b], state, b, new Span<float>((float*)il + (long)b * V, V)));
                }
            }
        }
        state.Position++;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void StepOne(int token, AodStateSet state, int b, Span<float> logits)
    {
        var s = _scratch.Value!;
        var c = _c;
        int C = c.NEmbd, D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;

        long pos = state.Position;
        for (int j = 0; j < half; j++)
        {
            double th = pos * _freq[j];
            s.Cos[j] = (float)Math.Cos(th);
            s.Sin[j] = (float)Math.Sin(th);
        }

        // Embedding (+ projection) and the input norm.
        var E = _p.Embed;
        var e = E.Data.AsSpan(token * E.Cols, E.Cols);
        if (_p.EmbedProj is { } proj) { MatVec(proj.Data, C, E.Cols, e, s.H); RmsNorm(s.H, s.X); }
        else RmsNorm(e, s.X);

        for (int app = 0; app < c.Applications; app++)
        {
            var bp = _p.Blocks[c.BlockOfApplication(app)];
            RmsNorm(s.X, s.H);
            Linear(bp.Qkv, s.H, s.Qkv, s.U, relu2: true);
            var q = s.Qkv.AsSpan(0, D);
            var k = s.Qkv.AsSpan(D, D);
            var v = s.Qkv.AsSpan(2 * D, D);
            for (int hh = 0; hh < H; hh++)
            {
                var qh = q.Slice(hh * hd, hd);
                var kh = k.Slice(hh * hd, hd);
                RmsNorm(qh, qh);
                RmsNorm(kh, kh);
                CpuOps.RopeInPlace(qh, s.Cos, s.Sin);
                CpuOps.RopeInPlace(kh, s.Cos, s.Sin);
            }
            var S = state.S[app].AsSpan(b * D, D);
            TensorPrimitives.Sigmoid(k, s.G);
            TensorPrimitives.FusedMultiplyAdd(s.G, v, S, S);            // S += g·v
            TensorPrimitives.Max(q, 0f, s.Y);                           // relu(q)
            TensorPrimitives.Multiply(s.Y, S, s.Y);
            if (mean)
            {
                var Z = state.Z![app].AsSpan(b * D, D);
                TensorPrimitives.Add(Z, s.G, Z);
                TensorPrimitives.Divide(s.Y, Z, s.Y);
            }
            Linear(bp.Proj, s.Y, s.O, s.U, relu2: false);
            SwiGluAdd(s.O, C, s.X, s.Tmp);
            if (bp.Up is not null)
            {
                int F = c.DFfn;
                Linear(bp.Up, s.H, s.M, s.U, relu2: false);
                var tmp = s.Tmp.AsSpan(0, F);
                var z = s.Z.AsSpan(0, F);
                var a = s.M.AsSpan(0, F);
                var gate = s.M.AsSpan(F, F);
                TensorPrimitives.Sigmoid(gate, tmp);
                TensorPrimitives.Multiply(tmp, gate, tmp);
                TensorPrimitives.Multiply(a, tmp, z);
                Linear(bp.Down!, z, s.F, s.U, relu2: false);
                TensorPrimitives.Add(s.X, s.F, s.X);
            }
        }
        RmsNorm(s.X, s.Xf);
        Linear(_p.Unembed, s.Xf, logits, s.U, relu2: false);
    }

    private static void SwiGluAdd(float[] o, int C, float[] x, float[] tmp)
    {
        var a = o.AsSpan(0, C);
        var g = o.AsSpan(C, C);
        var t = tmp.AsSpan(0, C);
        TensorPrimitives.Sigmoid(g, t);
        TensorPrimitives.Multiply(t, g, t);
        TensorPrimitives.FusedMultiplyAdd(a, t, x, x);
    }

    private static void RmsNorm(ReadOnlySpan<float> x, Span<float> y)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i += 64) ss += TensorPrimitives.SumOfSquares(x.Slice(i, Math.Min(64, x.Length - i)));
        TensorPrimitives.Multiply(x, (float)(1.0 / Math.Sqrt(ss / x.Length + CpuOps.RmsEps)), y);
    }

    private static void Linear(LinearParams p, ReadOnlySpan<float> x, Span<float> y, float[] u, bool relu2)
    {
        if (!p.Factorized) { MatVec(p.W!.Data, p.Out, p.In, x, y); return; }
        int r = p.W1!.Rows;
        var us = u.AsSpan(0, r);
        MatVec(p.W1.Data, r, p.In, x, us);
        if (relu2) { TensorPrimitives.Max(us, 0f, us); TensorPrimitives.Multiply(us, us, us); }
        MatVec(p.W2!.Data, p.Out, r, us, y);
    }

    /// <summary>y (n) = W (n, k) · x (k): four rows per pass share each load of x (16 lanes where AVX-512 runs, else 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void MatVec(float[] w, int n, int k, ReadOnlySpan<float> x, Span<float> y)
    {
        fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
        {
            int i = 0;
            if (Vector512.IsHardwareAccelerated && k >= 16)
            {
                int k16 = k & ~15;
                for (; i + 4 <= n; i += 4)
                {
                    float* r0 = pw + (long)i * k, r1 = r0 + k, r2 = r1 + k, r3 = r2 + k;
                    Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    for (int p = 0; p < k16; p += 16)
                    {
                        var xv = Vector512.Load(px + p);
                        a0 = Vector512.FusedMultiplyAdd(Vector512.Load(r0 + p), xv, a0);
                        a1 = Vector512.FusedMultiplyAdd(Vector512.Load(r1 + p), xv, a1);
                        a2 = Vector512.FusedMultiplyAdd(Vector512.Load(r2 + p), xv, a2);
                        a3 = Vector512.FusedMultiplyAdd(Vector512.Load(r3 + p), xv, a3);
                    }
                    float s0 = Vector512.Sum(a0), s1 = Vector512.Sum(a1), s2 = Vector512.Sum(a2), s3 = Vector512.Sum(a3);
                    for (int p = k16; p < k; p++) { float xp = px[p]; s0 += r0[p] * xp; s1 += r1[p] * xp; s2 += r2[p] * xp; s3 += r3[p] * xp; }
                    py[i] = s0; py[i + 1] = s1; py[i + 2] = s2; py[i + 3] = s3;
                }
            }
            else if (Vector256.IsHardwareAccelerated && k >= 8)
            {
                int k8 = k & ~7;
                for (; i + 4 <= n; i += 4)
                {
                    float* r0 = pw + (long)i * k, r1 = r0 + k, r2 = r1 + k, r3 = r2 + k;
                    Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    for (int p = 0; p < k8; p += 8)
                    {
                        var xv = Vector256.Load(px + p);
                        a0 = Vector256.FusedMultiplyAdd(Vector256.Load(r0 + p), xv, a0);
                        a1 = Vector256.FusedMultiplyAdd(Vector256.Load(r1 + p), xv, a1);
                        a2 = Vector256.FusedMultiplyAdd(Vector256.Load(r2 + p), xv, a2);
                        a3 = Vector256.FusedMultiplyAdd(Vector256.Load(r3 + p), xv, a3);
                    }
                    float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
                    for (int p = k8; p < k; p++) { float xp = px[p]; s0 += r0[p] * xp; s1 += r1[p] * xp; s2 += r2[p] * xp; s3 += r3[p] * xp; }
                    py[i] = s0; py[i + 1] = s1; py[i + 2] = s2; py[i + 3] = s3;
                }
            }
            for (; i < n; i++) py[i] = Dot(pw + (long)i * k, px, k);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe float Dot(float* a, float* b, int k) => TensorPrimitives.Dot(new ReadOnlySpan<float>(a, k), new ReadOnlySpan<float>(b, k));
}
