// aod backward: d qkv of the fused AoD mix (aod.comp) for a scan from a zero state: the forward
// is recomputed, then the reverse scan carries d/dS (and d/dZ for mean mixing) backwards over
// T, followed by the transposed RoPE and the per-head rmsnorm backward. GPU wrapper for
// shaders/aod_backward.comp (and its MEAN variant) and its CPU reference.
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
    /// Records dqkv (B*T, 3D) from qkv (B*T, 3D), the RoPE tables cos, sin (T, hd/2) and dy
    /// (B*T, D). sScratch (and zScratch for mean mixing, else null), (B*T, D), hold the forward's
    /// running sums between the kernel's two passes.
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor qkv, GpuTensor cos, GpuTensor sin, GpuTensor dy,
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
        int hd = D / H, half = hd / 2;
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
                for (var h = 0; h < H; h++)
                {
                    rq[t * H + h] = NormRope(row.Slice(h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), qn.AsSpan(t * D + h * hd, hd), q.AsSpan(t * D + h * hd, hd));
                    rk[t * H + h] = NormRope(row.Slice(D + h * hd, hd), cos.Slice(t * half, half), sin.Slice(t * half, half), kn.AsSpan(t * D + h * hd, hd), k.AsSpan(h * hd, hd));
                }
                for (var j = 0; j < D; j++)
                {
                    var gj = 1f / (1f + MathF.Exp(-k[j]));
                    g[t * D + j] = gj;
                    s[t * D + j] = (t > 0 ? s[(t - 1) * D + j] : 0f) + gj * row[2 * D + j];
                    z[t * D + j] = (t > 0 ? z[(t - 1) * D + j] : 0f) + gj;
                }
            }

            var cS = new float[D];
            var cZ = new float[D];
            for (var t = T - 1; t >= 0; t--)
            {
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
        }
    }

    // normed = rmsnorm(x), output = rope(normed); returns 1/rms.
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
