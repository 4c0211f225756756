// aod: the fused AoD mix (QK-norm, RoPE, sigmoid gate, causal scan, relu(q)·S[/Z]) of one block
// application. GPU wrapper for shaders/aod.comp (and its MEAN variant), the host RoPE tables
// it reads, and its CPU reference.
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
    /// cos, sin (T, hd/2) from <see cref="RopeTables"/> for the positions of the T tokens (shared by
    /// all sequences); s, z (B, D) the running sums (z only for mean mixing, else null): read
    /// first and written back when <paramref name="hasState"/>, else the scan starts at zero
    /// and they are left alone; y (B*T, D).
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin,
        int B, int T, int H, bool hasState, GpuTensor s, GpuTensor? z, GpuTensor y)
    {
        var D = y.Shape[^1];
        if (H <= 0 || D % H != 0 || D / H % 4 != 0)
            throw new ArgumentException($"aod: D = {D} must split into H = {H} heads of a multiple of 4 channels");
        var hd = D / H;
        Check(qkv, (long)B * T * 3 * D, 3 * D, nameof(qkv));
        Check(y, (long)B * T * D, D, nameof(y));
        Check(cos, (long)T * hd / 2, hd / 2, nameof(cos));
        Check(sin, (long)T * hd / 2, hd / 2, nameof(sin));
        Check(s, (long)B * D, D, nameof(s));
        if (z is not null) Check(z, (long)B * D, D, nameof(z));
        var wg = HeadsPerGroup(H, hd) * hd;
        if (wg > ctx.Capabilities.MaxWorkgroupInvocations)
            throw new NotSupportedException($"aod: head width {hd} exceeds the device's {ctx.Capabilities.MaxWorkgroupInvocations} invocations per workgroup");
        if ((uint)B > 65535) throw new ArgumentOutOfRangeException(nameof(B), "aod: at most 65535 sequences per dispatch");

        var push = new AodPush { B = (uint)B, T = (uint)T, D = (uint)D, hd = (uint)hd, has_state = hasState ? 1u : 0u, eps = RmsNorm.Eps };
        var state = hasState ? Access.ReadWrite : Access.Read;
        var groups = (uint)(D / wg);
        if (z is null)
        {
            var pipeline = ctx.Pipelines.Get("aod", 5, (uint)Marshal.SizeOf<AodPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), new Binding(s, state), Binding.Out(y)], push, groups, (uint)B);
        }
        else
        {
            var pipeline = ctx.Pipelines.Get("aod_mean", 6, (uint)Marshal.SizeOf<AodPush>(), (uint)wg);
            rec.Dispatch(pipeline, [Binding.In(qkv), Binding.In(cos), Binding.In(sin), new Binding(s, state), new Binding(z, state), Binding.Out(y)],
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
    /// CPU reference, the spec's AoD mix written out. qkv (B*T, 3D), cos/sin (T, hd/2), s and z
    /// (B, D) running sums updated in place (z null for sum mixing), y (B*T, D).
    /// </summary>
    public static void Reference(ReadOnlySpan<float> qkv, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin,
        int B, int T, int D, int H, Span<float> s, Span<float> z, bool mean, Span<float> y)
    {
        var hd = D / H;
        var half = hd / 2;
        var q = new float[D];
        var k = new float[D];
        for (var b = 0; b < B; b++)
            for (var t = 0; t < T; t++)
            {
                var row = qkv.Slice((b * T + t) * 3 * D, 3 * D);
                for (var h = 0; h < H; h++)
                {
                    NormRope(row.Slice(h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), q.AsSpan(h * hd, hd));
                    NormRope(row.Slice(D + h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), k.AsSpan(h * hd, hd));
                }
                for (var j = 0; j < D; j++)
                {
                    var g = 1f / (1f + MathF.Exp(-k[j]));
                    s[b * D + j] += g * row[2 * D + j];
                    var o = MathF.Max(q[j], 0f) * s[b * D + j];
                    if (mean)
                    {
                        z[b * D + j] += g;
                        o /= z[b * D + j];
                    }
                    y[(b * T + t) * D + j] = o;
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
