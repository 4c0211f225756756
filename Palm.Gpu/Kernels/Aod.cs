// aod: the fused AoD mix (QK-norm, RoPE, sigmoid gate, causal scan, relu(q)·S[/Z]) of one block
// application. GPU wrapper for shaders/aod.comp (sequential form, and the chunked form's passes
// 1 and 3) and shaders/aod_prefix.comp (the chunked form's pass 2), each with its MEAN variant,
// the host RoPE tables they read, and the CPU references of both forms. RoPE tables are shared by the batch or given per row (the
// decoding step batches sequences at different positions); states live in rows of a pool,
// addressed per sequence through a slot index.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Aod
{
    /// <summary>Twin of <c>AodPush</c> in shaders/aod.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AodPush
    {
        public uint B;
        public uint T;
        public uint D;
        public uint hd;
        public uint has_state;
        public uint rope_per_row;
        public float eps;
    }

    /// <summary>Twin of <c>AodPrefixPush</c> in shaders/aod_prefix.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AodPrefixPush
    {
        public uint B;
        public uint D;
        public uint chunks;
        public uint has_state;
    }

    /// <summary>Tokens per chunk of the chunked scan (the shaders' specialization constant L).</summary>
    public const int ChunkLength = 16;

    /// <summary>
    /// <see cref="Record"/> takes the chunked form from this many tokens on: with at least two
    /// chunks, the B * chunks * D invocations of passes 1 and 3 outnumber the sequential form's
    /// B * D, and the extra pass and the q/k recomputation are paid back. Tests lower it to push
    /// the short golden sequences through the chunked form.
    /// </summary>
    internal static int ChunkedFrom { get; set; } = 2 * ChunkLength;

    /// <summary>Chunks of <paramref name="L"/> tokens that cover T (the last may be shorter).</summary>
    public static int Chunks(int T, int L = ChunkLength) => (T + L - 1) / L;

    /// <summary>Rows (B * chunks) of the chunked scan's scratch tensors, each (rows, D).</summary>
    public static int ChunkRows(int B, int T, int L = ChunkLength) => B * Chunks(T, L);

    // Channels per workgroup: whole heads, at most this many (a multiple of the subgroup size
    // on common hardware when hd is).
    const int TargetChannels = 128;

    /// <summary>Heads per workgroup: the largest divisor of H whose channels fit <see cref="TargetChannels"/> (at least 1).</summary>
    public static int HeadsPerGroup(int H, int hd)
    {
        var best = 1;
        for (var g = 1; g <= H; g++)
            if (H % g == 0 && g * hd <= TargetChannels) best = g;
        return best;
    }

    /// <summary>
    /// Records the AoD mix over T tokens of B sequences. qkv (B*T, 3D) rows ordered b*T + t;
    /// cos, sin from <see cref="RopeTables"/>: (T, hd/2) shared by all sequences, or (B*T, hd/2)
    /// per row when <paramref name="ropePerRow"/> (sequences at different positions); s, z
    /// (capacity, D) the running sums of a state pool (z only for mean mixing, else null), sequence
    /// b's in row slots[b] (slots (B) i32, distinct): read first and written back when
    /// <paramref name="slots"/> is given, else the scan starts at zero, s and z are left alone and
    /// may be any placeholder of at least D floats; y (B*T, D).
    /// The chunked form runs when T >= <see cref="ChunkedFrom"/> and the caller supplies its
    /// scratch chunkS, chunkZ (<see cref="ChunkRows"/>(B, T), D) each (chunkZ only for mean
    /// mixing), else the sequential form: T = 1 decoding steps always take the sequential one.
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, bool ropePerRow,
        int B, int T, int H, GpuTensor? slots, GpuTensor s, GpuTensor? z, GpuTensor y, GpuTensor? chunkS = null, GpuTensor? chunkZ = null)
    {
        if (chunkS is not null && T >= Math.Max(2, ChunkedFrom))
            RecordChunked(rec, ctx, qkv, cos, sin, ropePerRow, B, T, H, ChunkLength, slots, s, z, chunkS, chunkZ, y);
        else
            RecordSequential(rec, ctx, qkv, cos, sin, ropePerRow, B, T, H, slots, s, z, y);
    }

    /// <summary>The sequential form: one workgroup per (sequence, head group), T steps in order. Arguments as <see cref="Record"/>.</summary>
    internal static void RecordSequential(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, bool ropePerRow,
        int B, int T, int H, GpuTensor? slots, GpuTensor s, GpuTensor? z, GpuTensor y)
    {
        var (D, hd, wg) = Validate(ctx, qkv, cos, sin, ropePerRow, B, T, H, slots, s, z, y);
        var push = Push(B, T, D, hd, slots is not null, ropePerRow);
        var state = slots is not null ? Access.ReadWrite : Access.Read;
        // A descriptor set needs every binding; without a state the shader never reads the slots,
        // so the qkv buffer stands in (read-only, adds no dependency).
        var slotBinding = Binding.In(slots ?? qkv);
        var groups = (uint)(D / wg);
        if (z is null)
        {
            var pipeline = ctx.Pipelines.Get("aod", 6, (uint)Marshal.SizeOf<AodPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), slotBinding, new Binding(s, state), Binding.Out(y)], push, groups, (uint)B);
        }
        else
        {
            var pipeline = ctx.Pipelines.Get("aod_mean", 7, (uint)Marshal.SizeOf<AodPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), slotBinding, new Binding(s, state), new Binding(z, state), Binding.Out(y)],
                push, groups, (uint)B);
        }
    }

    /// <summary>
    /// The chunked form with chunks of <paramref name="L"/> tokens, three dispatches: chunk sums,
    /// their prefix from the state (which it updates), and the in-chunk walks writing y.
    /// chunkS, chunkZ (<see cref="ChunkRows"/>(B, T, L), D) scratch, overwritten; other arguments
    /// as <see cref="Record"/>.
    /// </summary>
    internal static void RecordChunked(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, bool ropePerRow,
        int B, int T, int H, int L, GpuTensor? slots, GpuTensor s, GpuTensor? z, GpuTensor chunkS, GpuTensor? chunkZ, GpuTensor y)
    {
        var (D, hd, wg) = Validate(ctx, qkv, cos, sin, ropePerRow, B, T, H, slots, s, z, y);
        if (L <= 0) throw new ArgumentOutOfRangeException(nameof(L), $"aod: chunk length {L} must be > 0");
        var chunks = Chunks(T, L);
        if ((uint)chunks > 65535) throw new ArgumentOutOfRangeException(nameof(T), $"aod: T = {T} makes {chunks} chunks of {L}, at most 65535");
        var rows = (long)B * chunks;
        if (chunkS.DType != GpuDType.F32 || chunkS.Shape[^1] != D || chunkS.Count < rows * D)
            throw new ArgumentException($"aod: chunkS {chunkS} must be f32 rows of D = {D}, at least B*chunks = {rows} of them", nameof(chunkS));
        if ((z is null) != (chunkZ is null))
            throw new ArgumentException("aod: chunkZ is needed exactly when z is (mean mixing)", nameof(chunkZ));
        if (chunkZ is not null && (chunkZ.DType != GpuDType.F32 || chunkZ.Shape[^1] != D || chunkZ.Count < rows * D))
            throw new ArgumentException($"aod: chunkZ {chunkZ} must be f32 rows of D = {D}, at least B*chunks = {rows} of them", nameof(chunkZ));

        var push = Push(B, T, D, hd, slots is not null, ropePerRow);
        var pushBytes = (uint)Marshal.SizeOf<AodPush>();
        var groups = (uint)(D / wg);
        var mean = z is not null;

        // Pass 1: each chunk's sums from zero.
        var sums = ctx.Pipelines.Get(mean ? "aod_sums_mean" : "aod_sums", mean ? 5 : 4, pushBytes, (uint)wg, (uint)L);
        if (mean) rec.Dispatch(sums, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.Out(chunkS), Binding.Out(chunkZ!)], push, groups, (uint)chunks, (uint)B);
        else rec.Dispatch(sums, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.Out(chunkS)], push, groups, (uint)chunks, (uint)B);

        // Pass 2: sums -> start values, in place; the state in and out.
        var prefixPush = new AodPrefixPush { B = (uint)B, D = (uint)D, chunks = (uint)chunks, has_state = slots is not null ? 1u : 0u };
        var state = slots is not null ? Access.ReadWrite : Access.Read;
        var slotBinding = Binding.In(slots ?? qkv);   // never read without a state, as in the sequential form
        const int prefixWg = 64;
        var prefixGroups = (uint)((D + prefixWg - 1) / prefixWg);
        var prefix = ctx.Pipelines.Get(mean ? "aod_prefix_mean" : "aod_prefix", mean ? 5 : 3, (uint)Marshal.SizeOf<AodPrefixPush>(), prefixWg);
        if (mean)
            rec.Dispatch(prefix, [slotBinding, new Binding(s, state), new Binding(chunkS, Access.ReadWrite), new Binding(z!, state), new Binding(chunkZ!, Access.ReadWrite)],
                prefixPush, prefixGroups, (uint)B);
        else
            rec.Dispatch(prefix, [slotBinding, new Binding(s, state), new Binding(chunkS, Access.ReadWrite)], prefixPush, prefixGroups, (uint)B);

        // Pass 3: each chunk's walk from its start value.
        var walk = ctx.Pipelines.Get(mean ? "aod_chunked_mean" : "aod_chunked", mean ? 6 : 5, pushBytes, (uint)wg, (uint)L);
        if (mean) rec.Dispatch(walk, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(chunkS), Binding.In(chunkZ!), Binding.Out(y)], push, groups, (uint)chunks, (uint)B);
        else rec.Dispatch(walk, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), Binding.In(chunkS), Binding.Out(y)], push, groups, (uint)chunks, (uint)B);
    }

    static AodPush Push(int B, int T, int D, int hd, bool hasState, bool ropePerRow) => new()
    {
        B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, has_state = hasState ? 1u : 0u,
        rope_per_row = ropePerRow ? 1u : 0u, eps = RmsNorm.Eps,
    };

    // Shapes shared by both forms; returns D, hd and the channels per workgroup.
    static (int D, int hd, int wg) Validate(VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, bool ropePerRow,
        int B, int T, int H, GpuTensor? slots, GpuTensor s, GpuTensor? z, GpuTensor y)
    {
        var D = y.Shape[^1];
        if (H <= 0 || D % H != 0 || D / H % 4 != 0)
            throw new ArgumentException($"aod: D = {D} must split into H = {H} heads of a multiple of 4 channels");
        var hd = D / H;
        var ropeRows = ropePerRow ? (long)B * T : T;
        Check(qkv, (long)B * T * 3 * D, 3 * D, nameof(qkv));
        Check(y, (long)B * T * D, D, nameof(y));
        Check(cos, ropeRows * hd / 2, hd / 2, nameof(cos));
        Check(sin, ropeRows * hd / 2, hd / 2, nameof(sin));
        if (slots is not null && (slots.DType != GpuDType.I32 || slots.Count != B))
            throw new ArgumentException($"aod: slots {slots} must be i32 with B = {B} elements", nameof(slots));
        if (s.DType != GpuDType.F32 || s.Shape[^1] != D || s.Count % D != 0)
            throw new ArgumentException($"aod: s {s} must be f32 rows of D = {D}", nameof(s));
        if (z is not null && (z.DType != GpuDType.F32 || z.Shape[^1] != D || z.Count != s.Count))
            throw new ArgumentException($"aod: z {z} must be f32 shaped like s {s}", nameof(z));
        var wg = HeadsPerGroup(H, hd) * hd;
        if (wg > ctx.Capabilities.MaxWorkgroupInvocations)
            throw new NotSupportedException($"aod: head width {hd} exceeds the device's {ctx.Capabilities.MaxWorkgroupInvocations} invocations per workgroup");
        if ((uint)B > 65535) throw new ArgumentOutOfRangeException(nameof(B), "aod: at most 65535 sequences per dispatch");
        return (D, hd, wg);
    }

    static void Check(GpuTensor t, long count, int cols, string name)
    {
        if (t.DType != GpuDType.F32 || t.Count != count || t.Shape[^1] != cols)
            throw new ArgumentException($"aod: {name} {t} must be f32 with {count} elements in rows of {cols}", name);
    }

    /// <summary>The spec's hd/2 angular frequencies: hd/4 of (1/1024)^(j/(n-1)) (1 when n = 1), then hd/4 zeros.</summary>
    public static double[] RopeFrequencies(int hd)
    {
        var n = hd / 4;
        var w = new double[hd / 2];
        for (var j = 0; j < n; j++) w[j] = n == 1 ? 1.0 : Math.Pow(1.0 / 1024.0, (double)j / (n - 1));
        return w;
    }

    /// <summary>
    /// cos and sin (count, hd/2) of (pos0 + t) * w_j, formed in double and rounded once: at
    /// t = 5000 a float32 angle is off by ~2e-4 rad (the golden rope tolerance is 1e-4), and
    /// GPU sin/cos are only guaranteed to 2^-11 absolute.
    /// </summary>
    public static void RopeTables(int hd, long pos0, int count, Span<float> cos, Span<float> sin)
    {
        var w = RopeFrequencies(hd);
        var half = hd / 2;
        for (var t = 0; t < count; t++)
            for (var j = 0; j < half; j++)
            {
                var th = (pos0 + t) * w[j];
                cos[t * half + j] = (float)Math.Cos(th);
                sin[t * half + j] = (float)Math.Sin(th);
            }
    }

    /// <summary>
    /// CPU reference, the spec's AoD mix written out. qkv (B*T, 3D); cos/sin (T, hd/2) shared, or
    /// (B*T, hd/2) per row when <paramref name="ropePerRow"/>; s and z (capacity, D) running sums
    /// updated in place, sequence b's in row slots[b] (row b when <paramref name="slots"/> is
    /// empty; z null for sum mixing); y (B*T, D).
    /// </summary>
    public static void Reference(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, bool ropePerRow,
        ReadOnlySpan<int> slots, int B, int T, int D, int H, Span<float> s, Span<float> z, bool mean, Span<float> y)
    {
        if (!slots.IsEmpty && slots.Length != B) throw new ArgumentException($"slots must hold B = {B} rows", nameof(slots));
        var hd = D / H;
        var half = hd / 2;
        var q = new float[D];
        var k = new float[D];
        for (var b = 0; b < B; b++)
        {
            var at = (slots.IsEmpty ? b : slots[b]) * D;
            for (var t = 0; t < T; t++)
            {
                var row = qkv.Slice((b * T + t) * 3 * D, 3 * D);
                var r = (ropePerRow ? b * T + t : t) * half;
                for (var h = 0; h < H; h++)
                {
                    NormRope(row.Slice(h * hd, hd), cos.Slice(r, half), sin.Slice(r, half), q.AsSpan(h * hd, hd));
                    NormRope(row.Slice(D + h * hd, hd), cos.Slice(r, half), sin.Slice(r, half), k.AsSpan(h * hd, hd));
                }
                for (var j = 0; j < D; j++)
                {
                    var g = 1f / (1f + MathF.Exp(-k[j]));
                    s[at + j] += g * row[2 * D + j];
                    var o = MathF.Max(q[j], 0f) * s[at + j];
                    if (mean)
                    {
                        z[at + j] += g;
                        o /= z[at + j];
                    }
                    y[(b * T + t) * D + j] = o;
                }
            }
        }
    }

    /// <summary>
    /// CPU reference of the chunked form, the shaders' three passes in the same float32 order:
    /// per chunk of <paramref name="L"/> tokens the sums of g*v (and g) from zero; per channel the
    /// exclusive prefix over chunks from the state, whose total becomes the new state; per chunk
    /// the walk from its start value. Arguments as <see cref="Reference"/>.
    /// </summary>
    public static void ChunkedReference(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, bool ropePerRow,
        ReadOnlySpan<int> slots, int B, int T, int D, int H, int L, Span<float> s, Span<float> z, bool mean, Span<float> y)
    {
        if (!slots.IsEmpty && slots.Length != B) throw new ArgumentException($"slots must hold B = {B} rows", nameof(slots));
        if (L <= 0) throw new ArgumentOutOfRangeException(nameof(L), $"chunk length {L} must be > 0");
        var hd = D / H;
        var half = hd / 2;
        var chunks = Chunks(T, L);
        var q = new float[D];
        var k = new float[D];
        var sumS = new float[chunks * D];
        var sumZ = new float[chunks * D];

        // q (when wanted) and k of row (b, t) normalised and rotated, per head.
        void Project(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, int b, int t, bool withQ)
        {
            var row = qkv.Slice((b * T + t) * 3 * D, 3 * D);
            var r = (ropePerRow ? b * T + t : t) * half;
            for (var h = 0; h < H; h++)
            {
                if (withQ) NormRope(row.Slice(h * hd, hd), cos.Slice(r, half), sin.Slice(r, half), q.AsSpan(h * hd, hd));
                NormRope(row.Slice(D + h * hd, hd), cos.Slice(r, half), sin.Slice(r, half), k.AsSpan(h * hd, hd));
            }
        }

        for (var b = 0; b < B; b++)
        {
            var at = (slots.IsEmpty ? b : slots[b]) * D;
            // Pass 1.
            Array.Clear(sumS);
            Array.Clear(sumZ);
            for (var t = 0; t < T; t++)
            {
                Project(qkv, cos, sin, b, t, withQ: false);
                var c = t / L * D;
                for (var j = 0; j < D; j++)
                {
                    var g = 1f / (1f + MathF.Exp(-k[j]));
                    sumS[c + j] = MathF.FusedMultiplyAdd(g, qkv[(b * T + t) * 3 * D + 2 * D + j], sumS[c + j]);
                    sumZ[c + j] += g;
                }
            }
            // Pass 2.
            for (var j = 0; j < D; j++)
            {
                float runS = s[at + j], runZ = mean ? z[at + j] : 0f;
                for (var c = 0; c < chunks; c++)
                {
                    var sum = sumS[c * D + j];
                    sumS[c * D + j] = runS;
                    runS += sum;
                    var zsum = sumZ[c * D + j];
                    sumZ[c * D + j] = runZ;
                    runZ += zsum;
                }
                s[at + j] = runS;
                if (mean) z[at + j] = runZ;
            }
            // Pass 3.
            for (var c = 0; c < chunks; c++)
            {
                var runS = sumS.AsSpan(c * D, D);
                var runZ = sumZ.AsSpan(c * D, D);
                for (var t = c * L; t < Math.Min(T, (c + 1) * L); t++)
                {
                    Project(qkv, cos, sin, b, t, withQ: true);
                    for (var j = 0; j < D; j++)
                    {
                        var g = 1f / (1f + MathF.Exp(-k[j]));
                        runS[j] = MathF.FusedMultiplyAdd(g, qkv[(b * T + t) * 3 * D + 2 * D + j], runS[j]);
                        var o = MathF.Max(q[j], 0f) * runS[j];
                        if (mean)
                        {
                            runZ[j] += g;
                            o /= runZ[j];
                        }
                        y[(b * T + t) * D + j] = o;
                    }
                }
            }
        }
    }

    // out = rope(rmsnorm(x)) for one head.
    static void NormRope(ReadOnlySpan<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, Span<float> output)
    {
        var hd = x.Length;
        var half = hd / 2;
        var ss = 0f;
        foreach (var v in x) ss += v * v;
        var scale = 1f / MathF.Sqrt(ss / hd + RmsNorm.Eps);
        for (var j = 0; j < half; j++)
        {
            float a = x[j] * scale, b = x[half + j] * scale;
            output[j] = a * cos[j] + b * sin[j];
            output[half + j] = -a * sin[j] + b * cos[j];
        }
    }
}
