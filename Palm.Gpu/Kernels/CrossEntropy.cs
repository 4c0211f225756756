// cross_entropy: per-row loss logsumexp(z) - z[target] (0 for target -1), and argmax per row
// (greedy decoding). GPU wrappers for shaders/cross_entropy.comp and shaders/argmax.comp and
// their CPU references. The mean over counted rows is taken on the host, in double.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class CrossEntropy
{
    /// <summary>Twin of <c>CrossEntropyPush</c> in shaders/cross_entropy.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct CrossEntropyPush
    {
        public uint rows;
        public uint V;
    }

    /// <summary>Twin of <c>ArgmaxPush</c> in shaders/argmax.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ArgmaxPush
    {
        public uint rows;
        public uint V;
    }

    static uint RowWorkgroup(int v, VulkanContext ctx) =>
        Math.Min(Math.Clamp(Grid.NextPow2((uint)v), 32u, 256u), Grid.NextPow2(ctx.Capabilities.MaxWorkgroupInvocations + 1) / 2);

    /// <summary>
    /// Records loss[r] = logsumexp(logits[r]) - logits[r, targets[r]], 0 where targets[r] = -1,
    /// NaN for a target outside [-1, V). logits (R, V) f32, targets (R) i32, loss (R) f32.
    /// <paramref name="subgroup"/>: null picks the subgroup-arithmetic variant where the device has it.
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor logits, GpuTensor targets, GpuTensor loss, bool? subgroup = null)
    {
        var v = logits.Shape[^1];
        var rows = logits.Count / v;
        if (logits.DType != GpuDType.F32 || targets.DType != GpuDType.I32 || loss.DType != GpuDType.F32 || targets.Count != rows || loss.Count != rows)
            throw new ArgumentException($"cross_entropy: logits {logits} f32, targets {targets} i32 and loss {loss} f32 must have {rows} rows");
        var wg = RowWorkgroup(v, ctx);
        bool useSubgroup = subgroup ?? ctx.Capabilities.SubgroupArithmetic;
        if (useSubgroup && !ctx.Capabilities.SubgroupArithmetic) throw new NotSupportedException("cross_entropy: the device has no subgroup arithmetic");
        var pipeline = ctx.Pipelines.Get(useSubgroup ? "cross_entropy_subgroup" : "cross_entropy", 3, (uint)Marshal.SizeOf<CrossEntropyPush>(), wg);
        var push = new CrossEntropyPush { rows = (uint)rows, V = (uint)v };
        var (gx, gy) = Grid.Rows(rows, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(logits), Binding.In(targets), Binding.Out(loss)], push, gx, gy);
    }

    /// <summary>Records idx[r] = argmax of logits[r] (lowest index among ties). logits (R, V) f32, idx (R) i32.</summary>
    public static void RecordArgmax(CommandRecorder rec, VulkanContext ctx, GpuTensor logits, GpuTensor idx)
    {
        var v = logits.Shape[^1];
        var rows = logits.Count / v;
        if (logits.DType != GpuDType.F32 || idx.DType != GpuDType.I32 || idx.Count != rows)
            throw new ArgumentException($"argmax: logits {logits} f32 and idx {idx} i32 must have {rows} rows");
        var wg = RowWorkgroup(v, ctx);
        var pipeline = ctx.Pipelines.Get("argmax", 2, (uint)Marshal.SizeOf<ArgmaxPush>(), wg);
        var push = new ArgmaxPush { rows = (uint)rows, V = (uint)v };
        var (gx, gy) = Grid.Rows(rows, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(logits), Binding.Out(idx)], push, gx, gy);
    }

    /// <summary>CPU reference of the per-row loss. logits (rows, V), targets (rows), loss (rows).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A target outside [-1, V).</exception>
    public static void Reference(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int V, Span<float> loss)
    {
        for (var r = 0; r < targets.Length; r++)
        {
            var t = targets[r];
            if (t < -1 || t >= V) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} at row {r} outside [-1, {V})");
            if (t == -1)
            {
                loss[r] = 0;
                continue;
            }
            var z = logits.Slice(r * V, V);
            var max = float.NegativeInfinity;
            foreach (var v in z) max = MathF.Max(max, v);
            var sum = 0f;
            foreach (var v in z) sum += MathF.Exp(v - max);
            loss[r] = max + MathF.Log(sum) - z[t];
        }
    }

    /// <summary>Mean of the per-row losses over rows whose target is not -1 (0 when none count).</summary>
    public static double Mean(ReadOnlySpan<float> loss, ReadOnlySpan<int> targets)
    {
        double total = 0;
        var count = 0;
        for (var r = 0; r < targets.Length; r++)
        {
            if (targets[r] == -1) continue;
            total += loss[r];
            count++;
        }
        return count == 0 ? 0 : total / count;
    }

    /// <summary>CPU reference of argmax per row (lowest index among ties).</summary>
    public static void ArgmaxReference(ReadOnlySpan<float> logits, int rows, int V, Span<int> idx)
    {
        for (var r = 0; r < rows; r++)
        {
            var best = 0;
            for (var c = 1; c < V; c++)
                if (logits[r * V + c] > logits[r * V + best]) best = c;
            idx[r] = best;
        }
    }
}
