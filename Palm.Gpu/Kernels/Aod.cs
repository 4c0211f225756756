// aod: the fused AoD mix (QK-norm, RoPE, sigmoid gate, causal scan, relu(q)·S[/Z]) of one block
// application. GPU wrapper for shaders/aod.comp (and its MEAN variant), the host RoPE tables
// it reads, and its CPU reference. RoPE tables are shared by the batch or given per row (the
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
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, bool ropePerRow,
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
        var hasState = slots is not null;
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

        var push = new AodPush
        {
            B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, has_state = hasState ? 1u : 0u,
            rope_per_row = ropePerRow ? 1u : 0u, eps = RmsNorm.Eps,
        };
        var state = hasState ? Access.ReadWrite : Access.Read;
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
