// The fast CPU forward pass: the same function as CpuReferenceModel.Forward (which checks it,
// tests/Palm.Tests/FastCpu), organised for speed. Every activation lives in a workspace sized
// once per (B, T) and reused, so a training step or a prefill allocates no large arrays; the
// element-wise work is fused (rmsnorm, SwiGLU + residual, relu² after the first factor) and
// split over row chunks; the AoD part (QK-norm, RoPE, gate, causal scan, mix) runs one job per
// (sequence, head), so batch-1 prefill uses every core too. Weights are CpuWeights: each matrix
// float32 or q8/q4 (the CPU backend of a quantized file; QuantizedMatVec.MatMul decodes blocks of
// rows into scratch, never the whole matrix). Not thread-safe: one instance per trainer or session.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using Palm.Inference.Model;

namespace Palm.Inference.Cpu.Fast;

internal sealed unsafe class FastCpuModel
{
    private Workspace? _ws;
    private readonly PalmParameters? _parameters;

    /// <summary>Float32 weights (shared: a trainer updates them in place between passes).</summary>
    public FastCpuModel(PalmParameters parameters) : this(CpuWeights.From(parameters)) => _parameters = parameters;

    /// <summary>Weights whose matrices may be q8/q4 (inference only: no <see cref="Parameters"/>).</summary>
    public FastCpuModel(CpuWeights weights)
    {
        Weights = weights;
        Config = weights.Config;
    }

    public CpuWeights Weights { get; }

    /// <summary>The float32 parameters a training backward pass reads.</summary>
    /// <exception cref="InvalidOperationException">The model was built from <see cref="CpuWeights"/> (possibly quantized).</exception>
    public PalmParameters Parameters => _parameters ?? throw new InvalidOperationException("this model was built from CpuWeights (possibly q8/q4); training needs float32 PalmParameters");
    public PalmConfig Config { get; }

    /// <summary>Activations for one (B, T): a full tape (training) or one shared application set (inference).</summary>
    internal sealed class Workspace
    {
        public readonly int B, T;
        public readonly bool Taped;
        public readonly ForwardTape Tape = new();
        public readonly float[][] X;          // residual stream after each application (taped) or 2 ping-pong rows
        public readonly float[] Logits;       // (BT, V), or (B, V) when only last positions are wanted
        public readonly float[] UnembedU;     // (BT, r) unembed first factor output
        public long RopePos0 = -1;

        public Workspace(PalmConfig c, int b, int t, bool taped)
        {
            B = b; T = t; Taped = taped;
            int rows = b * t, C = c.NEmbd, D = c.DQkv, H = c.NHead, r = c.DRank, F = c.DFfn, w = r > 0 ? r : C;
            var tp = Tape;
            tp.B = b; tp.T = t;
            tp.Tokens = new int[rows];
            tp.E = new float[rows * w];
            tp.P = r > 0 ? new float[rows * C] : null;
            tp.X0 = new float[rows * C];
            tp.X0Inv = new float[rows];
            int sets = taped ? c.Applications : 1;
            var apps = new ApplicationTape[sets];
            for (int i = 0; i < sets; i++)
            {
                var at = new ApplicationTape
                {
                    H = new float[rows * C], HInv = new float[rows], QkvOut = new float[rows * 3 * D],
                    QInv = new float[rows * H], KInv = new float[rows * H], QNorm = new float[rows * D], KNorm = new float[rows * D],
                    Q = new float[rows * D], G = new float[rows * D], S = new float[rows * D], Z = c.Mix == AodMix.Mean ? new float[rows * D] : null,
                    Y = new float[rows * D], O = new float[rows * 2 * C],
                };
                if (r > 0)
                {
                    at.Qkv.U = new float[rows * r]; at.Qkv.A = new float[rows * r];
                    at.Proj.U = new float[rows * r]; at.Proj.A = at.Proj.U;
                }
                if (F > 0)
                {
                    at.M = new float[rows * 2 * F]; at.Gated = new float[rows * F];
                    at.Up = new LinearTape(); at.Down = new LinearTape();
                    if (r > 0) { at.Up.U = at.Up.A = new float[rows * r]; at.Down.U = at.Down.A = new float[rows * r]; }
                }
                apps[i] = at;
            }
            for (int a = 0; a < c.Applications; a++) tp.Apps.Add(apps[taped ? a : 0]);
            X = new float[taped ? c.Applications + 1 : 2][];
            for (int i = 0; i < X.Length; i++) X[i] = new float[rows * C];
            tp.XF = new float[rows * C];
            tp.XFInv = new float[rows];
            UnembedU = new float[rows * Math.Max(r, 1)];
            if (r > 0) tp.Unembed.U = tp.Unembed.A = UnembedU;
            Logits = new float[rows * c.VocabSize];
        }
    }

    /// <summary>
    /// Logits (B*T, V) for tokens (B, T), the same function as <see cref="CpuReferenceModel.Forward"/>.
    /// The returned array is the workspace's and is overwritten by the next call. With
    /// <paramref name="lastOnly"/>, only the last position of each sequence gets logits, in rows
    /// 0..B-1 (prefill). With <paramref name="taped"/>, every activation stays for a backward pass
    /// in <see cref="Tape"/>.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, int batch, int t, AodStateSet? state = null, bool taped = false, bool lastOnly = false)
    {
        var c = Config;
        if (batch <= 0 || t <= 0) throw new ArgumentOutOfRangeException(nameof(t), $"batch ({batch}) and T ({t}) must be > 0");
        if (tokens.Length != batch * t) throw new ArgumentException($"tokens holds {tokens.Length} ids, expected B*T = {batch * t}", nameof(tokens));
        if (state is not null && state.Batch != batch) throw new ArgumentException($"state holds {state.Batch} sequences, expected {batch}", nameof(state));
        foreach (var id in tokens)
            if ((uint)id >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} outside [0, {c.VocabSize})");
        var ws = _ws;
        if (ws is null || ws.B != batch || ws.T != t || ws.Taped != taped) _ws = ws = new Workspace(c, batch, t, taped);
        var tp = ws.Tape;
        int rows = batch * t, C = c.NEmbd;
        long pos0 = state?.Position ?? 0;
        tokens.CopyTo(tp.Tokens);
        tp.Pos0 = pos0;
        if (ws.RopePos0 != pos0) { (tp.RopeCos, tp.RopeSin) = CpuOps.RopeTables(c.HeadDim, pos0, t); ws.RopePos0 = pos0; }

        Embed(tp, rows);
        var x = tp.X0;
        for (int app = 0; app < c.Applications; app++)
        {
            var at = tp.Apps[app];
            var bp = Weights.Blocks[c.BlockOfApplication(app)];
            at.Block = c.BlockOfApplication(app);
            at.XIn = x;
            var xNext = ws.Taped ? ws.X[app + 1] : ws.X[app & 1];
            RmsNorm(x, rows, C, at.H, at.HInv);
            Linear(bp.Qkv, at.H, rows, at.QkvOut, at.Qkv, relu2: true);
            Aod(at, batch, t, tp.RopeCos, tp.RopeSin, state, app);
            Linear(bp.Proj, at.Y, rows, at.O, at.Proj, relu2: false);
            SwiGluResidual(at.O, x, rows, C, xNext);
            if (bp.Up is not null)
            {
                int F = c.DFfn;
                Linear(bp.Up, at.H, rows, at.M!, at.Up!, relu2: false);
                var m = at.M!;
                var gated = at.Gated!;
                ParallelRows(rows, 8, (r0, r1) => SwiGluRows(m, gated, r0, r1, F));
                // Down projection added onto the residual by the GEMM's accumulate.
                LinearAcc(bp.Down!, at.Gated!, rows, xNext, at.Down!);
            }
            x = xNext;
        }
        tp.XFinal = x;
        if (state is not null) state.Position += t;
        if (lastOnly)
        {
            // Only each sequence's last row goes through the final norm and the unembedding.
            for (int b = 0; b < batch; b++)
                CpuOps.RmsNormRows(x.AsSpan(((b + 1) * t - 1) * C, C), 1, C, tp.XF.AsSpan(b * C, C), tp.XFInv.AsSpan(b, 1));
            Linear(Weights.Unembed, tp.XF, batch, ws.Logits, tp.Unembed, relu2: false);
            return ws.Logits;
        }
        RmsNorm(x, rows, C, tp.XF, tp.XFInv);
        Linear(Weights.Unembed, tp.XF, rows, ws.Logits, tp.Unembed, relu2: false);
        return ws.Logits;
    }

    /// <summary>The tape of the last taped <see cref="Forward"/> (valid until the next call).</summary>
    public ForwardTape Tape => _ws?.Tape ?? throw new InvalidOperationException("no forward pass has run");

    private void Embed(ForwardTape tp, int rows)
    {
        var E = Weights.Embed;
        int w = E.Cols, C = Config.NEmbd;
        if (E.IsFloat32)
            for (int i = 0; i < rows; i++) E.Float32Span.Slice(tp.Tokens[i] * w, w).CopyTo(tp.E.AsSpan(i * w, w));
        else
            // A quantized table: each row decoded exactly (level · scale) where it is needed.
            for (int i = 0; i < rows; i++) E.Row(tp.Tokens[i], tp.E.AsSpan(i * w, w));
        float[] pre = tp.E;
        if (Weights.EmbedProj is { } proj)
        {
            proj.MatMul(tp.E, rows, tp.P!);
            pre = tp.P!;
        }
        RmsNorm(pre, rows, C, tp.X0, tp.X0Inv);
    }

    /// <summary>y (rows, Out) = Linear(x); relu² between the factors for QKV. Intermediates go to the tape's buffers.</summary>
    private static void Linear(CpuLinear p, float[] x, int rows, float[] y, LinearTape lt, bool relu2)
    {
        if (!p.Factorized) { p.W!.MatMul(x, rows, y); return; }
        int r = p.W1!.Rows;
        var u = lt.U!;
        p.W1.MatMul(x, rows, u);
        var a = u;
        if (relu2)
        {
            a = lt.A!;
            ParallelRows(rows, 64, (r0, r1) =>
            {
                var us = u.AsSpan(r0 * r, (r1 - r0) * r);
                var as_ = a.AsSpan(r0 * r, (r1 - r0) * r);
                TensorPrimitives.Max(us, 0f, as_);
                TensorPrimitives.Multiply(as_, as_, as_);
            });
        }
        p.W2!.MatMul(a, rows, y);
    }

    /// <summary>y += Linear(x) (no activation between factors).</summary>
    private static void LinearAcc(CpuLinear p, float[] x, int rows, float[] y, LinearTape lt)
    {
        if (!p.Factorized) { p.W!.MatMul(x, rows, y, accumulate: true); return; }
        p.W1!.MatMul(x, rows, lt.U!);
        p.W2!.MatMul(lt.U!, rows, y, accumulate: true);
    }

    private static void RmsNorm(float[] x, int rows, int n, float[] y, float[] inv) =>
        ParallelRows(rows, 32, (r0, r1) => CpuOps.RmsNormRows(x.AsSpan(r0 * n, (r1 - r0) * n), r1 - r0, n, y.AsSpan(r0 * n, (r1 - r0) * n), inv.AsSpan(r0, r1 - r0)));

    /// <summary>xNext = x + o[:, :C] ⊙ silu(o[:, C:]).</summary>
    private static void SwiGluResidual(float[] o, float[] x, int rows, int C, float[] xNext) =>
        ParallelRows(rows, 32, (r0, r1) => SwiGluResidualRows(o, x, xNext, r0, r1, C));

    // Rows [r0, r1) of SwiGluResidual. Compiled optimised from the first call (as SwiGluRows):
    // unoptimised code would not inline FastMath's vector exp, and a first reply's prompt runs
    // this before the tiering catches up.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void SwiGluResidualRows(float[] o, float[] x, float[] xNext, int r0, int r1, int C)
    {
        fixed (float* po = o, px = x, pn = xNext)
            for (int i = r0; i < r1; i++)
                FastMath.SwiGlu(po + (long)i * 2 * C, po + (long)i * 2 * C + C, px + (long)i * C, pn + (long)i * C, C);
    }

    // gated[i] = m[i, :F] ⊙ silu(m[i, F:]) for rows [r0, r1).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void SwiGluRows(float[] m, float[] gated, int r0, int r1, int F)
    {
        fixed (float* pm = m, pz = gated)
            for (int i = r0; i < r1; i++) FastMath.SwiGlu(pm + (long)i * 2 * F, pm + (long)i * 2 * F + F, null, pz + (long)i * F, F);
    }

    /// <summary>
    /// AoD per (sequence, head): QK-norm, RoPE, gate, causal running sums (in double, as the
    /// reference) and the relu(q)-weighted mix, all for one head's hd channels per token.
    /// </summary>
    private void Aod(ApplicationTape at, int batch, int t, float[] cos, float[] sin, AodStateSet? state, int app)
    {
        var c = Config;
        int D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        var qkv = at.QkvOut;
        if (!FastAodKernels.Vectorised(hd)) { AodScalar(at, batch, t, cos, sin, state, app); return; }
        // Short prompts stay on this thread (see AodSerialBelow).
        // (Optimised from the first call: unoptimised code would not inline the vector helpers.)
        For(batch * H, (long)batch * t * D, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (int job) =>
        {
            int b = job / H, hh = job % H, o = hh * hd;
            double* sRun = stackalloc double[hd];
            double* zRun = stackalloc double[hd];
            float* kr = stackalloc float[hd];
            for (int j = 0; j < hd; j++) { sRun[j] = state is null ? 0 : state.S[app][b * D + o + j]; zRun[j] = mean && state is not null ? state.Z![app][b * D + o + j] : 0; }
            fixed (float* pqkv = qkv, pcos = cos, psin = sin, pqn = at.QNorm, pkn = at.KNorm, pq = at.Q, pg = at.G, pS = at.S, pZ = at.Z, pY = at.Y, pqi = at.QInv, pki = at.KInv)
            {
                for (int ti = 0; ti < t; ti++)
                {
                    int row = b * t + ti;
                    float* src = pqkv + (long)row * 3 * D;
                    float* cs = pcos + ti * half, sn = psin + ti * half;
                    long i0 = (long)row * D + o;
                    pqi[row * H + hh] = FastAodKernels.RmsNorm(src + o, hd, pqn + i0);
                    pki[row * H + hh] = FastAodKernels.RmsNorm(src + D + o, hd, pkn + i0);
                    FastAodKernels.Rope(pqn + i0, cs, sn, hd, pq + i0);
                    FastAodKernels.Rope(pkn + i0, cs, sn, hd, kr);
                    FastMath.Sigmoid(kr, pg + i0, hd);
                    FastAodKernels.ScanStep(pg + i0, src + 2 * D + o, pq + i0, sRun, zRun, pS + i0, mean ? pZ + i0 : null, pY + i0, hd, mean);
                }
            }
            if (state is not null)
            {
                for (int j = 0; j < hd; j++) state.S[app][b * D + o + j] = (float)sRun[j];
                if (mean) for (int j = 0; j < hd; j++) state.Z![app][b * D + o + j] = (float)zRun[j];
            }
        });
    }

    // Head widths that are not a multiple of 16: the reference's loops, per (sequence, head).
    private void AodScalar(ApplicationTape at, int batch, int t, float[] cos, float[] sin, AodStateSet? state, int app)
    {
        var c = Config;
        int D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        var qkv = at.QkvOut;
        Parallel.For(0, batch * H, job =>
        {
            int b = job / H, hh = job % H, o = hh * hd;
            Span<double> sRun = stackalloc double[hd];
            Span<double> zRun = stackalloc double[hd];
            Span<float> kr = stackalloc float[hd];
            sRun.Clear(); zRun.Clear();
            if (state is not null)
            {
                for (int j = 0; j < hd; j++) sRun[j] = state.S[app][b * D + o + j];
                if (mean) for (int j = 0; j < hd; j++) zRun[j] = state.Z![app][b * D + o + j];
            }
            for (int ti = 0; ti < t; ti++)
            {
                int row = b * t + ti;
                var cs = cos.AsSpan(ti * half, half);
                var sn = sin.AsSpan(ti * half, half);
                var src = qkv.AsSpan(row * 3 * D, 3 * D);
                var qs = at.QNorm.AsSpan(row * D + o, hd);
                var ks = at.KNorm.AsSpan(row * D + o, hd);
                CpuOps.RmsNormRows(src.Slice(o, hd), 1, hd, qs, at.QInv.AsSpan(row * H + hh, 1));
                CpuOps.RmsNormRows(src.Slice(D + o, hd), 1, hd, ks, at.KInv.AsSpan(row * H + hh, 1));
                var q = at.Q.AsSpan(row * D + o, hd);
                qs.CopyTo(q);
                CpuOps.RopeInPlace(q, cs, sn);
                ks.CopyTo(kr);
                CpuOps.RopeInPlace(kr, cs, sn);
                var g = at.G.AsSpan(row * D + o, hd);
                TensorPrimitives.Sigmoid(kr, g);
                var v = src.Slice(2 * D + o, hd);
                var S = at.S.AsSpan(row * D + o, hd);
                var y = at.Y.AsSpan(row * D + o, hd);
                if (mean)
                {
                    var Z = at.Z.AsSpan(row * D + o, hd);
                    for (int j = 0; j < hd; j++)
                    {
                        sRun[j] += (double)g[j] * v[j];
                        zRun[j] += g[j];
                        float sj = (float)sRun[j], zj = (float)zRun[j];
                        S[j] = sj; Z[j] = zj;
                        y[j] = MathF.Max(q[j], 0) * sj / zj;
                    }
                }
                else
                {
                    for (int j = 0; j < hd; j++)
                    {
                        sRun[j] += (double)g[j] * v[j];
                        float sj = (float)sRun[j];
                        S[j] = sj;
                        y[j] = MathF.Max(q[j], 0) * sj;
                    }
                }
            }
            if (state is not null)
            {
                for (int j = 0; j < hd; j++) state.S[app][b * D + o + j] = (float)sRun[j];
                if (mean) for (int j = 0; j < hd; j++) state.Z![app][b * D + o + j] = (float)zRun[j];
            }
        });
    }

    // Channel-steps of AoD below which the (sequence, head) jobs run on the calling thread: with a
    // few tokens each job is a few microseconds, less than handing it to the pool (Gemm.SerialBelow).
    private const long AodSerialBelow = 1L << 16;

    private static void For(int n, long work, Action<int> body)
    {
        if (work < AodSerialBelow) { for (int i = 0; i < n; i++) body(i); return; }
        Parallel.For(0, n, body);
    }

    /// <summary>Runs body(r0, r1) over row chunks, in parallel when there is enough work.</summary>
    internal static void ParallelRows(int rows, int minRows, Action<int, int> body)
    {
        int workers = Environment.ProcessorCount;
        int chunks = Math.Min(2 * workers, rows / Math.Max(1, minRows));
        if (chunks <= 1 || workers < 2) { body(0, rows); return; }
        Parallel.For(0, chunks, ci => body((int)((long)rows * ci / chunks), (int)((long)rows * (ci + 1) / chunks)));
    }
}
