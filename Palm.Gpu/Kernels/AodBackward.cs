// aod backward: d qkv of the fused AoD mix (aod.comp) for a scan from a zero state: the forward
// is recomputed, then the reverse scan carries d/dS (and d/dZ for mean mixing) backwards over
// T, followed by the transposed RoPE and the per-head rmsnorm backward. GPU wrapper for
// shaders/aod_backward.comp (sequential form, and the chunked form's passes with the forward's
// chunk sums and prefix and aod_prefix.comp's SUFFIX variant), each with its MEAN variant, and
// the CPU references of both forms.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class AodBackward
{
    /// <summary>Twin of <c>AodBackwardPush</c> in shaders/aod_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AodBackwardPush
    {
        public uint B;
        public uint T;
        public uint D;
        public uint hd;
        public float eps;
    }

    /// <summary>
    /// <see cref="Record"/> takes the chunked form from this many tokens on, as the forward does
    /// from <see cref="Aod.ChunkedFrom"/> (at least two chunks of <see cref="Aod.ChunkLength"/>).
    /// Tests lower it to push the short golden sequences through the chunked form.
    /// </summary>
    internal static int ChunkedFrom { get; set; } = 2 * Aod.ChunkLength;

    /// <summary>
    /// Records dqkv (B*T, 3D) from qkv (B*T, 3D), the RoPE tables cos, sin (T, hd/2) and dy
    /// (B*T, D). sScratch (and zScratch for mean mixing, else null), (B*T, D), hold the forward's
    /// running sums between the kernel's passes. The chunked form runs when T >=
    /// <see cref="ChunkedFrom"/> and the caller supplies its scratch chunkS, chunkZ
    /// (<see cref="Aod.ChunkRows"/>(B, T), D) each (chunkZ only for mean mixing).
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, GpuTensor dy,
        int B, int T, int H, GpuTensor sScratch, GpuTensor? zScratch, GpuTensor dqkv, GpuTensor? chunkS = null, GpuTensor? chunkZ = null)
    {
        if (chunkS is not null && T >= Math.Max(2, ChunkedFrom))
            RecordChunked(rec, ctx, qkv, cos, sin, dy, B, T, H, Aod.ChunkLength, sScratch, zScratch, chunkS, chunkZ, dqkv);
        else
            RecordSequential(rec, ctx, qkv, cos, sin, dy, B, T, H, sScratch, zScratch, dqkv);
    }

    /// <summary>The sequential form: one workgroup per (sequence, head group), T steps forwards then back. Arguments as <see cref="Record"/>.</summary>
    internal static void RecordSequential(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, GpuTensor dy,
        int B, int T, int H, GpuTensor sScratch, GpuTensor? zScratch, GpuTensor dqkv)
    {
        var (D, hd, wg) = Validate(ctx, qkv, cos, sin, dy, B, T, H, sScratch, zScratch, dqkv);
        var push = new AodBackwardPush { B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, eps = RmsNorm.Eps };
        var groups = (uint)(D / wg);
        if (zScratch is null)
        {
            var pipeline = ctx.Pipelines.Get("aod_backward", 6, (uint)Marshal.SizeOf<AodBackwardPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.InOut(sScratch), Binding.Out(dqkv)],
                push, groups, (uint)B);
        }
        else
        {
            var pipeline = ctx.Pipelines.Get("aod_backward_mean", 7, (uint)Marshal.SizeOf<AodBackwardPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.InOut(sScratch), Binding.InOut(zScratch),
                Binding.Out(dqkv)], push, groups, (uint)B);
        }
    }

    /// <summary>
    /// The chunked form with chunks of <paramref name="L"/> tokens, five dispatches (see
    /// shaders/aod_backward.comp): the forward's chunk sums and prefix, the chunks' gradient
    /// totals, their suffix, and the in-chunk reverse walks writing dqkv. chunkS, chunkZ
    /// (<see cref="Aod.ChunkRows"/>(B, T, L), D) scratch, overwritten; other arguments as <see cref="Record"/>.
    /// </summary>
    internal static void RecordChunked(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, GpuTensor dy,
        int B, int T, int H, int L, GpuTensor sScratch, GpuTensor? zScratch, GpuTensor chunkS, GpuTensor? chunkZ, GpuTensor dqkv)
    {
        var (D, hd, wg) = Validate(ctx, qkv, cos, sin, dy, B, T, H, sScratch, zScratch, dqkv);
        if (L <= 0) throw new ArgumentOutOfRangeException(nameof(L), $"aod backward: chunk length {L} must be > 0");
        var chunks = Aod.Chunks(T, L);
        if ((uint)chunks > 65535) throw new ArgumentOutOfRangeException(nameof(T), $"aod backward: T = {T} makes {chunks} chunks of {L}, at most 65535");
        var rows = (long)B * chunks;
        if (chunkS.DType != GpuDType.F32 || chunkS.Shape[^1] != D || chunkS.Count < rows * D)
            throw new ArgumentException($"aod backward: chunkS {chunkS} must be f32 rows of D = {D}, at least B*chunks = {rows} of them", nameof(chunkS));
        if ((zScratch is null) != (chunkZ is null))
            throw new ArgumentException("aod backward: chunkZ is needed exactly when zScratch is (mean mixing)", nameof(chunkZ));
        if (chunkZ is not null && (chunkZ.DType != GpuDType.F32 || chunkZ.Shape[^1] != D || chunkZ.Count < rows * D))
            throw new ArgumentException($"aod backward: chunkZ {chunkZ} must be f32 rows of D = {D}, at least B*chunks = {rows} of them", nameof(chunkZ));
        var mean = zScratch is not null;
        var groups = (uint)(D / wg);

        // Passes 1-2, the forward's: chunkS (chunkZ) <- the scan's value before each chunk.
        var fwdPush = new Aod.AodPush { B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, eps = RmsNorm.Eps };
        var fwdBytes = (uint)Marshal.SizeOf<Aod.AodPush>();
        var sums = ctx.Pipelines.Get(mean ? "aod_sums_mean" : "aod_sums", mean ? 5 : 4, fwdBytes, (uint)wg, (uint)L);
        if (mean) rec.Dispatch(sums, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.Out(chunkS), Binding.Out(chunkZ!)], fwdPush, groups, (uint)chunks, (uint)B);
        else rec.Dispatch(sums, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.Out(chunkS)], fwdPush, groups, (uint)chunks, (uint)B);
        RecordScanOverChunks(rec, ctx, mean ? "aod_prefix_mean" : "aod_prefix", dqkv, chunkS, chunkZ, B, D, chunks);

        // Pass 3: per chunk, S_t (Z_t) saved and the chunk's totals of the cS (cZ) terms.
        var push = new AodBackwardPush { B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, eps = RmsNorm.Eps };
        var pushBytes = (uint)Marshal.SizeOf<AodBackwardPush>();
        var grads = ctx.Pipelines.Get(mean ? "aod_backward_grads_mean" : "aod_backward_grads", mean ? 8 : 6, pushBytes, (uint)wg, (uint)L);
        if (mean)
            rec.Dispatch(grads, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.Out(sScratch), Binding.Out(zScratch!),
                Binding.InOut(chunkS), Binding.InOut(chunkZ!)], push, groups, (uint)chunks, (uint)B);
        else
            rec.Dispatch(grads, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.Out(sScratch), Binding.InOut(chunkS)],
                push, groups, (uint)chunks, (uint)B);

        // Pass 4: totals -> values carried into each chunk from the later ones, in place.
        RecordScanOverChunks(rec, ctx, mean ? "aod_suffix_mean" : "aod_suffix", dqkv, chunkS, chunkZ, B, D, chunks);

        // Pass 5: per chunk, the reverse walk from its carried value.
        var walk = ctx.Pipelines.Get(mean ? "aod_backward_chunked_mean" : "aod_backward_chunked", mean ? 9 : 7, pushBytes, (uint)wg, (uint)L);
        if (mean)
            rec.Dispatch(walk, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.In(sScratch), Binding.In(zScratch!),
                Binding.In(chunkS), Binding.In(chunkZ!), Binding.Out(dqkv)], push, groups, (uint)chunks, (uint)B);
        else
            rec.Dispatch(walk, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(dy), Binding.In(sScratch), Binding.In(chunkS), Binding.Out(dqkv)],
                push, groups, (uint)chunks, (uint)B);
    }

    // aod_prefix.comp (or its SUFFIX variant) over the chunk rows in place, without a state;
    // placeholder (at least D floats) stands in for the slots and state bindings, never read or
    // written then. Bound read-write: the shader may write the state (the sync validation goes by
    // the shader), so the placeholder must be a buffer the caller lets this op write: dqkv,
    // which the last pass overwrites anyway.
    static void RecordScanOverChunks(CommandRecorder rec, VulkanContext ctx, string shader, GpuTensor placeholder, GpuTensor chunkS, GpuTensor? chunkZ,
        int B, int D, int chunks)
    {
        var push = new Aod.AodPrefixPush { B = (uint)B, D = (uint)D, chunks = (uint)chunks, has_state = 0 };
        const int prefixWg = 64;
        var pipeline = ctx.Pipelines.Get(shader, chunkZ is not null ? 5 : 3, (uint)Marshal.SizeOf<Aod.AodPrefixPush>(), prefixWg);
        var groups = (uint)((D + prefixWg - 1) / prefixWg);
        if (chunkZ is not null)
            rec.Dispatch(pipeline, [Binding.In(placeholder), Binding.InOut(placeholder), Binding.InOut(chunkS), Binding.InOut(placeholder), Binding.InOut(chunkZ)],
                push, groups, (uint)B);
        else
            rec.Dispatch(pipeline, [Binding.In(placeholder), Binding.InOut(placeholder), Binding.InOut(chunkS)], push, groups, (uint)B);
    }

    // Shapes shared by both forms; returns D, hd and the channels per workgroup.
    static (int D, int hd, int wg) Validate(VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, GpuTensor dy,
        int B, int T, int H, GpuTensor sScratch, GpuTensor? zScratch, GpuTensor dqkv)
    {
        var D = dy.Shape[^1];
        if (H <= 0 || D % H != 0 || D / H % 4 != 0)
            throw new ArgumentException($"aod backward: D = {D} must split into H = {H} heads of a multiple of 4 channels");
        var hd = D / H;
        Check(qkv, (long)B * T * 3 * D, 3 * D, nameof(qkv));
        Check(dqkv, (long)B * T * 3 * D, 3 * D, nameof(dqkv));
        Check(dy, (long)B * T * D, D, nameof(dy));
        Check(cos, (long)T * hd / 2, hd / 2, nameof(cos));
        Check(sin, (long)T * hd / 2, hd / 2, nameof(sin));
        Check(sScratch, (long)B * T * D, D, nameof(sScratch));
        if (zScratch is not null) Check(zScratch, (long)B * T * D, D, nameof(zScratch));
        var wg = Aod.HeadsPerGroup(H, hd) * hd;
        if (wg > ctx.Capabilities.MaxWorkgroupInvocations)
            throw new NotSupportedException($"aod backward: head width {hd} exceeds the device's {ctx.Capabilities.MaxWorkgroupInvocations} invocations per workgroup");
        if ((uint)B > 65535) throw new ArgumentOutOfRangeException(nameof(B), "aod backward: at most 65535 sequences per dispatch");
        return (D, hd, wg);
    }

    static void Check(GpuTensor t, long count, int cols, string name)
    {
        if (t.DType != GpuDType.F32 || t.Count != count || t.Shape[^1] != cols)
            throw new ArgumentException($"aod backward: {name} {t} must be f32 with {count} elements in rows of {cols}", name);
    }

    /// <summary>
    /// CPU reference, written from the spec: forward per sequence keeping q, g, S, Z per token,
    /// then the reverse scan. qkv (B*T, 3D), cos/sin (T, hd/2), dy (B*T, D), dqkv (B*T, 3D).
    /// </summary>
    public static void Reference(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, ReadOnlySpan<float> dy,
        int B, int T, int D, int H, bool mean, Span<float> dqkv)
    {
        var qn = new float[T * D];    // rmsnorm(q) per head, before RoPE
        var kn = new float[T * D];
        var rq = new float[T * H];    // 1/rms per head
        var rk = new float[T * H];
        var q = new float[T * D];     // after RoPE
        var g = new float[T * D];     // sigmoid(k after RoPE)
        var s = new float[T * D];     // running sums after token t
        var z = new float[T * D];
        var k = new float[D];
        var dq = new float[D];
        var dk = new float[D];
        for (var b = 0; b < B; b++)
        {
            for (var t = 0; t < T; t++)
            {
                var row = qkv.Slice((b * T + t) * 3 * D, 3 * D);
                PrepareToken(row, cos, sin, t, D, H, qn, kn, rq, rk, q, k, g);
                for (var j = 0; j < D; j++)
                {
                    s[t * D + j] = (t > 0 ? s[(t - 1) * D + j] : 0f) + g[t * D + j] * row[2 * D + j];
                    z[t * D + j] = (t > 0 ? z[(t - 1) * D + j] : 0f) + g[t * D + j];
                }
            }

            var cS = new float[D];
            var cZ = new float[D];
            for (var t = T - 1; t >= 0; t--)
                ReverseStep(qkv, cos, sin, dy, b, t, T, D, H, mean, q, g, s, z, qn, kn, rq, rk, cS, cZ, dq, dk, dqkv);
        }
    }

    /// <summary>
    /// Chunked CPU twin of <see cref="RecordChunked"/>, the same passes and order of float32 sums
    /// over chunks of <paramref name="L"/> tokens: the forward's chunk sums (fma, from zero) and
    /// prefix; per chunk the forward walk from its start value keeping S_t (Z_t) and summing the
    /// cS (cZ) terms in token order; the exclusive suffix of those totals from the last chunk;
    /// per chunk the reverse walk from its carried value. Arguments as <see cref="Reference"/>.
    /// </summary>
    public static void ChunkedReference(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, ReadOnlySpan<float> dy,
        int B, int T, int D, int H, int L, bool mean, Span<float> dqkv)
    {
        if (L <= 0) throw new ArgumentOutOfRangeException(nameof(L), $"chunk length {L} must be > 0");
        int chunks = Aod.Chunks(T, L);
        var qn = new float[T * D];
        var kn = new float[T * D];
        var rq = new float[T * H];
        var rk = new float[T * H];
        var q = new float[T * D];
        var g = new float[T * D];
        var s = new float[T * D];
        var z = new float[T * D];
        var k = new float[D];
        var dq = new float[D];
        var dk = new float[D];
        var chunkS = new float[chunks * D];
        var chunkZ = new float[chunks * D];
        for (var b = 0; b < B; b++)
        {
            // q, k (normalised, rotated) and g per token: what every pass recomputes.
            for (var t = 0; t < T; t++)
                PrepareToken(qkv.Slice((b * T + t) * 3 * D, 3 * D), cos, sin, t, D, H, qn, kn, rq, rk, q, k, g);
            // Passes 1-2 (the forward's): the scan's value before each chunk.
            Array.Clear(chunkS);
            Array.Clear(chunkZ);
            for (var t = 0; t < T; t++)
                for (var j = 0; j < D; j++)
                {
                    var c = t / L * D + j;
                    chunkS[c] = MathF.FusedMultiplyAdd(g[t * D + j], qkv[(b * T + t) * 3 * D + 2 * D + j], chunkS[c]);
                    chunkZ[c] += g[t * D + j];
                }
            ExclusiveScan(chunkS, chunks, D, reverse: false);
            ExclusiveScan(chunkZ, chunks, D, reverse: false);

            // Pass 3: per chunk, S_t (Z_t) from its start value and the totals of the cS (cZ) terms.
            for (var c = 0; c < chunks; c++)
                for (var j = 0; j < D; j++)
                {
                    float runS = chunkS[c * D + j], runZ = chunkZ[c * D + j], gS = 0f, gZ = 0f;
                    for (var t = c * L; t < Math.Min(T, (c + 1) * L); t++)
                    {
                        int i = t * D + j;
                        runS = MathF.FusedMultiplyAdd(g[i], qkv[(b * T + t) * 3 * D + 2 * D + j], runS);
                        runZ += g[i];
                        s[i] = runS;
                        z[i] = runZ;
                        float d = dy[(b * T + t) * D + j], relu = MathF.Max(q[i], 0f);
                        if (mean)
                        {
                            gS += d * relu / runZ;
                            gZ -= d * relu * runS / (runZ * runZ);
                        }
                        else gS += d * relu;
                    }
                    chunkS[c * D + j] = gS;
                    chunkZ[c * D + j] = gZ;
                }

            // Pass 4: the totals carried into each chunk from the later ones.
            ExclusiveScan(chunkS, chunks, D, reverse: true);
            ExclusiveScan(chunkZ, chunks, D, reverse: true);

            // Pass 5: per chunk, the reverse walk from its carried value.
            for (var c = 0; c < chunks; c++)
            {
                var cS = chunkS.AsSpan(c * D, D);
                var cZ = chunkZ.AsSpan(c * D, D);
                for (var t = Math.Min(T, (c + 1) * L) - 1; t >= c * L; t--)
                    ReverseStep(qkv, cos, sin, dy, b, t, T, D, H, mean, q, g, s, z, qn, kn, rq, rk, cS, cZ, dq, dk, dqkv);
            }
        }
    }

    // In place over rows (chunks, D), per column: each row becomes the sum of the rows before it
    // (after it when reverse), summed from the first (last) row.
    static void ExclusiveScan(Span<float> rows, int chunks, int D, bool reverse)
    {
        for (var j = 0; j < D; j++)
        {
            var run = 0f;
            for (var n = 0; n < chunks; n++)
            {
                var c = reverse ? chunks - 1 - n : n;
                var sum = rows[c * D + j];
                rows[c * D + j] = run;
                run += sum;
            }
        }
    }

    // Token t of sequence b in the reverse scan: adds its terms to cS (cZ) and writes its dqkv row.
    // q, g, s, z, qn, kn (T*D) and rq, rk (T*H) per token of the sequence; dq, dk (D) workspace.
    static void ReverseStep(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, ReadOnlySpan<float> dy, int b, int t, int T, int D, int H,
        bool mean, float[] q, float[] g, float[] s, float[] z, float[] qn, float[] kn, float[] rq, float[] rk, Span<float> cS, Span<float> cZ,
        float[] dq, float[] dk, Span<float> dqkv)
    {
        int hd = D / H, half = hd / 2;
        var r = b * T + t;
        var row = qkv.Slice(r * 3 * D, 3 * D);
        var dst = dqkv.Slice(r * 3 * D, 3 * D);
        for (var j = 0; j < D; j++)
        {
            int i = t * D + j;
            float d = dy[r * D + j], relu = MathF.Max(q[i], 0f);
            if (mean)
            {
                dq[j] = q[i] > 0 ? d * s[i] / z[i] : 0f;
                cS[j] += d * relu / z[i];
                cZ[j] -= d * relu * s[i] / (z[i] * z[i]);
            }
            else
            {
                dq[j] = q[i] > 0 ? d * s[i] : 0f;
                cS[j] += d * relu;
            }
            dst[2 * D + j] = cS[j] * g[i];
            dk[j] = (cS[j] * row[2 * D + j] + cZ[j]) * g[i] * (1f - g[i]);
        }
        for (var h = 0; h < H; h++)
        {
            RopeNormBackward(dq.AsSpan(h * hd, hd), qn.AsSpan(t * D + h * hd, hd), rq[t * H + h], cos.Slice(t * half, half), sin.Slice(t * half, half), dst.Slice(h * hd, hd));
            RopeNormBackward(dk.AsSpan(h * hd, hd), kn.AsSpan(t * D + h * hd, hd), rk[t * H + h], cos.Slice(t * half, half), sin.Slice(t * half, half), dst.Slice(D + h * hd, hd));
        }
    }

    // normed = rmsnorm(x), output = rope(normed); returns 1/rms.
    // Token t of one sequence (its qkv row): per head QK-norm (normed values and 1/rms kept) and
    // RoPE into q (T, D) and k (D, this token only), then g = sigmoid(k). Both twins start so.
    static void PrepareToken(ReadOnlySpan<float> row, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, int t, int D, int H,
        float[] qn, float[] kn, float[] rq, float[] rk, float[] q, float[] k, float[] g)
    {
        int hd = D / H, half = hd / 2;
        for (var h = 0; h < H; h++)
        {
            rq[t * H + h] = NormRope(row.Slice(h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), qn.AsSpan(t * D + h * hd, hd), q.AsSpan(t * D + h * hd, hd));
            rk[t * H + h] = NormRope(row.Slice(D + h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), kn.AsSpan(t * D + h * hd, hd), k.AsSpan(h * hd, hd));
        }
        for (var j = 0; j < D; j++) g[t * D + j] = 1f / (1f + MathF.Exp(-k[j]));
    }

    static float NormRope(ReadOnlySpan<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, Span<float> normed, Span<float> output)
    {
        int hd = x.Length, half = hd / 2;
        var ss = 0f;
        foreach (var v in x) ss += v * v;
        var scale = 1f / MathF.Sqrt(ss / hd + RmsNorm.Eps);
        for (var c = 0; c < hd; c++) normed[c] = x[c] * scale;
        for (var j = 0; j < half; j++)
        {
            float a = normed[j], b = normed[half + j];
            output[j] = a * cos[j] + b * sin[j];
            output[half + j] = -a * sin[j] + b * cos[j];
        }
        return scale;
    }

    // dx of one head from d(rope(rmsnorm(x))): rotate back by -theta, then dx = r (dn - n mean(dn n)).
    static void RopeNormBackward(ReadOnlySpan<float> dOut, ReadOnlySpan<float> normed, float invRms, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, Span<float> dx)
    {
        int hd = dOut.Length, half = hd / 2;
        Span<float> dn = stackalloc float[hd];
        for (var j = 0; j < half; j++)
        {
            float da = dOut[j], db = dOut[half + j];
            dn[j] = da * cos[j] - db * sin[j];
            dn[half + j] = da * sin[j] + db * cos[j];
        }
        var dot = 0f;
        for (var c = 0; c < hd; c++) dot += dn[c] * normed[c];
        var meanDot = dot / hd;
        for (var c = 0; c < hd; c++) dx[c] = invRms * (dn[c] - normed[c] * meanDot);
    }
}
