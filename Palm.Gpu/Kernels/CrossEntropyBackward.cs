// cross-entropy backward with the softmax fused: per-row loss and dlogits = (softmax - onehot)
// / count for counted rows (targets -1 ignored), in one pass. GPU wrapper for
// shaders/cross_entropy_backward.comp and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class CrossEntropyBackward
{
    /// <summary>Twin of <c>CrossEntropyBackwardPush</c> in shaders/cross_entropy_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct CrossEntropyBackwardPush
    {
        public uint rows;
        public uint V;
        public float inv_count;
    }

    /// <summary>Rows whose target is not -1.</summary>
    public static int Count(ReadOnlySpan<int> targets)
    {
        var n = 0;
        foreach (var t in targets)
            if (t != -1) n++;
        return n;
    }

    /// <summary>
    /// Records loss (R) and dlogits (R, V) = d(mean loss)/d logits for logits (R, V) and targets
    /// (R) i32; <paramref name="count"/> = rows with a target (see <see cref="Count"/>).
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor logits, GpuTensor targets, int count, GpuTensor loss, GpuTensor dlogits)
    {
        var v = logits.Shape[^1];
        var rows = logits.Count / v;
        if (logits.DType != GpuDType.F32 || targets.DType != GpuDType.I32 || loss.DType != GpuDType.F32 || dlogits.DType != GpuDType.F32
            || targets.Count != rows || loss.Count != rows || dlogits.Count != logits.Count)
            throw new ArgumentException($"cross_entropy backward: logits {logits}, targets {targets}, loss {loss}, dlogits {dlogits} disagree");
        var wg = Math.Min(Math.Clamp(Grid.NextPow2((uint)v), 32u, 256u), Grid.NextPow2(ctx.Capabilities.MaxWorkgroupInvocations + 1) / 2);
        var pipeline = ctx.Pipelines.Get("cross_entropy_backward", 4, (uint)Marshal.SizeOf<CrossEntropyBackwardPush>(), wg);
        var push = new CrossEntropyBackwardPush { rows = (uint)rows, V = (uint)v, inv_count = count > 0 ? 1f / count : 0f };
        var (gx, gy) = Grid.Rows(rows, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(logits), Binding.In(targets), Binding.Out(loss), Binding.Out(dlogits)], push, gx, gy);
    }

    /// <summary>CPU reference: per-row loss and dlogits = (softmax - onehot)/count, zero rows where the target is -1.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A target outside [-1, V).</exception>
    public static void Reference(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int V, Span<float> loss, Span<float> dlogits)
    {
        var count = Count(targets);
        var inv = count > 0 ? 1f / count : 0f;
        for (var r = 0; r < targets.Length; r++)
        {
            var t = targets[r];
            if (t < -1 || t >= V) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} at row {r} outside [-1, {V})");
            var d = dlogits.Slice(r * V, V);
            if (t == -1)
            {
                loss[r] = 0;
                d.Clear();
                continue;
            }
            var z = logits.Slice(r * V, V);
            var max = float.NegativeInfinity;
            foreach (var x in z) max = MathF.Max(max, x);
            var sum = 0f;
            foreach (var x in z) sum += MathF.Exp(x - max);
            var lse = max + MathF.Log(sum);
            loss[r] = lse - z[t];
            for (var c = 0; c < V; c++) d[c] = (MathF.Exp(z[c] - lse) - (c == t ? 1f : 0f)) * inv;
        }
    }
}
