// The CPU reference Palm: the spec's forward pass in float32, in two forms. `Forward` runs a
// chunk of T tokens of B sequences in parallel over (B, T) (training, prefill, and chunked
// prefill when a state set is carried between calls); `Step` feeds one token per sequence
// through the per-application states (decoding). Both must agree with each other and with the
// golden vectors; every shader is checked against this file.
using Palm.Inference.Model;

namespace Palm.Inference.Cpu;

internal sealed class CpuReferenceModel
{
    public CpuReferenceModel(PalmParameters parameters)
    {
        Parameters = parameters;
        Config = parameters.Config;
    }

    public PalmParameters Parameters { get; }
    public PalmConfig Config { get; }

    // ---- linears -------------------------------------------------------------------------

    /// <summary>y (rows, out) = Linear(x (rows, in)); with relu2 between the factors for QKV.</summary>
    internal static float[] Linear(LinearParams p, float[] x, int rows, bool relu2Between, LinearTape? tape)
    {
        var y = new float[rows * p.Out];
        if (!p.Factorized)
        {
            CpuOps.MatMulABt(x, p.W!.Data, rows, p.Out, p.In, y);
            return y;
        }
        int r = p.W1!.Rows;
        var u = new float[rows * r];
        CpuOps.MatMulABt(x, p.W1.Data, rows, r, p.In, u);
        var a = u;
        if (relu2Between)
        {
            a = new float[u.Length];
            for (int i = 0; i < u.Length; i++) { float v = MathF.Max(u[i], 0); a[i] = v * v; }
        }
        CpuOps.MatMulABt(a, p.W2!.Data, rows, p.Out, r, y);
        if (tape is not null) { tape.U = u; tape.A = a; }
        return y;
    }

    // ---- parallel forward ----------------------------------------------------------------

    /// <summary>
    /// Logits (B*T, V) for tokens (B, T) at positions pos0.. of each sequence. With
    /// <paramref name="state"/>, the chunk continues from it (pos0 = state.Position) and the
    /// state is advanced; without, every sequence starts fresh at position 0.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, int batch, int t, AodStateSet? state = null, ForwardTape? tape = null)
    {
        var c = Config;
        if (batch <= 0 || t <= 0) throw new ArgumentOutOfRangeException(nameof(t), $"batch ({batch}) and T ({t}) must be > 0");
        if (tokens.Length != batch * t) throw new ArgumentException($"tokens holds {tokens.Length} ids, expected B*T = {batch * t}", nameof(tokens));
        if (state is not null && state.Batch != batch) throw new ArgumentException($"state holds {state.Batch} sequences, expected {batch}", nameof(state));
        int rows = batch * t, C = c.NEmbd;
        long pos0 = state?.Position ?? 0;

        var x0 = Embed(tokens, rows, tape);
        var x = x0;
        var (cos, sin) = CpuOps.RopeTables(c.HeadDim, pos0, t);
        if (tape is not null)
        {
            tape.B = batch; tape.T = t; tape.Pos0 = pos0; tape.Tokens = tokens.ToArray();
            tape.RopeCos = cos; tape.RopeSin = sin;
        }

        for (int app = 0; app < c.Applications; app++)
        {
            int l = c.BlockOfApplication(app);
            var bp = Parameters.Blocks[l];
            ApplicationTape? at = tape is null ? null : new ApplicationTape { Block = l, XIn = x };
            var h = new float[rows * C];
            var hInv = new float[rows];
            CpuOps.RmsNormRows(x, rows, C, h, hInv);
            var aod = Aod(bp, h, batch, t, cos, sin, state, app, at);
            var xNext = new float[rows * C];
            for (int i = 0; i < xNext.Length; i++) xNext[i] = x[i] + aod[i];
            if (bp.Up is not null) Ffn(bp, h, rows, xNext, at);
            if (at is not null) { at.H = h; at.HInv = hInv; tape!.Apps.Add(at); }
            x = xNext;
        }

        var xf = new float[rows * C];
        var xfInv = new float[rows];
        CpuOps.RmsNormRows(x, rows, C, xf, xfInv);
        var logits = Linear(Parameters.Unembed, xf, rows, false, tape?.Unembed);
        if (tape is not null) { tape.XFinal = x; tape.XF = xf; tape.XFInv = xfInv; }
        if (state is not null) state.Position += t;
        return logits;
    }

    private float[] Embed(ReadOnlySpan<int> tokens, int rows, ForwardTape? tape)
    {
        var c = Config;
        var E = Parameters.Embed;
        int w = E.Cols, C = c.NEmbd;
        var e = new float[rows * w];
        for (int i = 0; i < rows; i++)
        {
            int id = tokens[i];
            if ((uint)id >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} at position {i} outside [0, {c.VocabSize})");
            Array.Copy(E.Data, id * w, e, i * w, w);
        }
        float[] pre = e;
        if (Parameters.EmbedProj is { } proj)
        {
            pre = new float[rows * C];
            CpuOps.MatMulABt(e, proj.Data, rows, C, w, pre);
        }
        var x0 = new float[rows * C];
        var inv = new float[rows];
        CpuOps.RmsNormRows(pre, rows, C, x0, inv);
        if (tape is not null) { tape.E = e; tape.P = Parameters.EmbedProj is null ? null : pre; tape.X0 = x0; tape.X0Inv = inv; }
        return x0;
    }

    /// <summary>AoD_l over (B, T) with optional initial/returned state; returns (B*T, C).</summary>
    private float[] Aod(BlockParams bp, float[] h, int batch, int t, float[] cos, float[] sin, AodStateSet? state, int app, ApplicationTape? at)
    {
        var c = Config;
        int rows = batch * t, C = c.NEmbd, D = c.DQkv, H = c.NHead, hd = c.HeadDim, half = hd / 2;
        bool mean = c.Mix == AodMix.Mean;
        var qkv = Linear(bp.Qkv, h, rows, relu2Between: true, at?.Qkv);

        var qn = new float[rows * D];
        var kn = new float[rows * D];
        var q = new float[rows * D];
        var g = new float[rows * D];
        var qInv = new float[rows * H];
        var kInv = new float[rows * H];
        var S = new float[rows * D];
        var Z = mean ? new float[rows * D] : null;
        var y = new float[rows * D];

        // Per token: QK-norm and RoPE per head (independent across rows), then the gates for
        // all rows at once (vectorised sigmoid), then the causal scan per sequence.
        var k = new float[rows * D];
        Parallel.For(0, batch, b =>
        {
            for (int ti = 0; ti < t; ti++)
            {
                int row = b * t + ti;
                var src = qkv.AsSpan(row * 3 * D, 3 * D);
                var cs = cos.AsSpan(ti * half, half);
                var sn = sin.AsSpan(ti * half, half);
                for (int hh = 0; hh < H; hh++)
                {
                    var qs = qn.AsSpan(row * D + hh * hd, hd);
                    var ks = kn.AsSpan(row * D + hh * hd, hd);
                    CpuOps.RmsNormRows(src.Slice(hh * hd, hd), 1, hd, qs, qInv.AsSpan(row * H + hh, 1));
                    CpuOps.RmsNormRows(src.Slice(D + hh * hd, hd), 1, hd, ks, kInv.AsSpan(row * H + hh, 1));
                    var qr = q.AsSpan(row * D + hh * hd, hd);
                    qs.CopyTo(qr);
                    CpuOps.RopeInPlace(qr, cs, sn);
                    var kr = k.AsSpan(row * D + hh * hd, hd);
                    ks.CopyTo(kr);
                    CpuOps.RopeInPlace(kr, cs, sn);
                }
            }
        });
        System.Numerics.Tensors.TensorPrimitives.Sigmoid(k, g);

        Parallel.For(0, batch, b =>
        {
            // Running sums in double: over long prefills a float32 cumsum loses digits that
            // the recurrent form (which adds one token at a time) would keep differently.
            var sRun = new double[D];
            var zRun = new double[D];
            if (state is not null)
            {
                for (int j = 0; j < D; j++) sRun[j] = state.S[app][b * D + j];
                if (mean) for (int j = 0; j < D; j++) zRun[j] = state.Z![app][b * D + j];
            }
            for (int ti = 0; ti < t; ti++)
            {
                int row = b * t + ti;
                var v = qkv.AsSpan(row * 3 * D + 2 * D, D);
                var gr = g.AsSpan(row * D, D);
                var qr = q.AsSpan(row * D, D);
                var sr = S.AsSpan(row * D, D);
                var yr = y.AsSpan(row * D, D);
                if (mean)
                {
                    var zr = Z.AsSpan(row * D, D);
                    for (int j = 0; j < D; j++)
                    {
                        sRun[j] += (double)gr[j] * v[j];
                        zRun[j] += gr[j];
                        float sj = (float)sRun[j], zj = (float)zRun[j];
                        sr[j] = sj; zr[j] = zj;
                        yr[j] = MathF.Max(qr[j], 0) * sj / zj;
                    }
                }
                else
                {
                    for (int j = 0; j < D; j++)
                    {
                        sRun[j] += (double)gr[j] * v[j];
                        float sj = (float)sRun[j];
                        sr[j] = sj;
                        yr[j] = MathF.Max(qr[j], 0) * sj;
                    }
                }
            }
            if (state is not null)
            {
                for (int j = 0; j < D; j++) state.S[app][b * D + j] = (float)sRun[j];
                if (mean) for (int j = 0; j < D; j++) state.Z![app][b * D + j] = (float)zRun[j];
            }
        });

        var o = Linear(bp.Proj, y, rows, false, at?.Proj);
        var outp = new float[rows * C];
        CpuOps.SwiGlu(o, rows, C, outp, accumulate: false);
        if (at is not null)
        {
            at.QkvOut = qkv; at.QNorm = qn; at.KNorm = kn; at.Q = q; at.G = g; at.QInv = qInv; at.KInv = kInv;
            at.S = S; at.Z = Z; at.Y = y; at.O = o;
        }
        return outp;
    }

    private void Ffn(BlockParams bp, float[] h, int rows, float[] xAccum, ApplicationTape? at)
    {
        int F = Config.DFfn;
        var upTape = at is null ? null : new LinearTape();
        var m = Linear(bp.Up!, h, rows, false, upTape);
        var z = new float[rows * F];
        CpuOps.SwiGlu(m, rows, F, z, accumulate: false);
        var downTape = at is null ? null : new LinearTape();
        var d = Linear(bp.Down!, z, rows, false, downTape);
        for (int i = 0; i < d.Length; i++) xAccum[i] += d[i];
        if (at is not null) { at.Up = upTape; at.M = m; at.Gated = z; at.Down = downTape; }
    }

    // ---- recurrent step --------------------------------------------------------------------

    /// <summary>
    /// Feeds one token per sequence (<paramref name="tokens"/>: B ids) through the state set and
    /// writes the logits (B, V). Written independently of <see cref="Forward"/>, one token at a
    /// time, so that the two forms check each other.
    /// </summary>
    public void Step(ReadOnlySpan<int> tokens, AodStateSet state, Span<float> logits)
    {
        var c = Config;
        int batch = state.Batch, C = c.NEmbd, D = c.DQkv, H = c.NHead, hd = c.HeadDim, V = c.VocabSize;
        if (tokens.Length != batch) throw new ArgumentException($"expected {batch} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < batch * V) throw new ArgumentException($"logits must hold B*V = {batch * V} floats", nameof(logits));
        var (cos, sin) = CpuOps.RopeTables(hd, state.Position, 1);
        bool mean = c.Mix == AodMix.Mean;

        for (int b = 0; b < batch; b++)
        {
            var x = Embed([tokens[b]], 1, null);
            var h = new float[C];
            for (int app = 0; app < c.Applications; app++)
            {
                var bp = Parameters.Blocks[c.BlockOfApplication(app)];
                CpuOps.RmsNormRows(x, 1, C, h);
                var qkv = Linear(bp.Qkv, h, 1, true, null);
                var S = state.S[app].AsSpan(b * D, D);
                var Z = mean ? state.Z![app].AsSpan(b * D, D) : default;
                var y = new float[D];
                for (int hh = 0; hh < H; hh++)
                {
                    var qh = qkv.AsSpan(hh * hd, hd);
                    var kh = qkv.AsSpan(D + hh * hd, hd);
                    CpuOps.RmsNormRows(qh, 1, hd, qh);
                    CpuOps.RmsNormRows(kh, 1, hd, kh);
                    CpuOps.RopeInPlace(qh, cos, sin);
                    CpuOps.RopeInPlace(kh, cos, sin);
                }
                for (int j = 0; j < D; j++)
                {
                    float gj = CpuOps.Sigmoid(qkv[D + j]);
                    S[j] += gj * qkv[2 * D + j];
                    float rq = MathF.Max(qkv[j], 0);
                    if (mean) { Z[j] += gj; y[j] = rq * S[j] / Z[j]; }
                    else y[j] = rq * S[j];
                }
                var o = Linear(bp.Proj, y, 1, false, null);
                for (int i = 0; i < C; i++) x[i] += o[i] * CpuOps.Silu(o[C + i]);
                if (bp.Up is not null)
                {
                    int F = c.DFfn;
                    var m = Linear(bp.Up, h, 1, false, null);
                    var z = new float[F];
                    CpuOps.SwiGlu(m, 1, F, z, false);
                    var d = Linear(bp.Down!, z, 1, false, null);
                    for (int i = 0; i < C; i++) x[i] += d[i];
                }
            }
            var xf = new float[C];
            CpuOps.RmsNormRows(x, 1, C, xf);
            Linear(Parameters.Unembed, xf, 1, false, null).CopyTo(logits.Slice(b * V, V));
        }
        state.Position++;
    }
}
