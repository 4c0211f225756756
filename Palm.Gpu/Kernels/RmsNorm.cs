// rmsnorm over rows: y = x / sqrt(mean(x^2) + eps), no learned gain (spec: rmsnorm).
// GPU wrapper for shaders/rmsnorm.comp and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class RmsNorm
{
    /// <summary>float32 machine epsilon, as the spec fixes it.</summary>
    public const float Eps = 1.1920929e-07f;

    /// <summary>Twin of <c>RmsNormPush</c> in shaders/rmsnorm.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct RmsNormPush
    {
        public uint rows;
        public uint cols;
        public float eps;
    }

    /// <summary>
    /// Records y = rmsnorm(x) over the last axis. x, y: (rows, cols) f32; y may not alias x.
    /// <paramref name="subgroup"/>: null picks the subgroup-arithmetic variant where the device has it.
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor y, bool? subgroup = null)
    {
        if (x.DType != GpuDType.F32 || y.DType != GpuDType.F32 || x.Count != y.Count || x.Shape[^1] != y.Shape[^1])
            throw new ArgumentException($"rmsnorm: x {x} and y {y} must be f32 of the same shape");
        var cols = x.Shape[^1];
        var rows = x.Count / cols;
        // Power of two for the tree reduction; no wider than the row needs.
        var wg = Math.Min(Math.Clamp(Grid.NextPow2((uint)cols), 32u, 256u), Grid.NextPow2(ctx.Capabilities.MaxWorkgroupInvocations + 1) / 2);
        bool useSubgroup = subgroup ?? ctx.Capabilities.SubgroupArithmetic;
        if (useSubgroup && !ctx.Capabilities.SubgroupArithmetic) throw new NotSupportedException("rmsnorm: the device has no subgroup arithmetic");
        var pipeline = ctx.Pipelines.Get(useSubgroup ? "rmsnorm_subgroup" : "rmsnorm", 2, (uint)Marshal.SizeOf<RmsNormPush>(), wg);
        var push = new RmsNormPush { rows = (uint)rows, cols = (uint)cols, eps = Eps };
        var (gx, gy) = Grid.Rows(rows, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(x), Binding.Out(y)], push, gx, gy);
    }

    /// <summary>CPU reference over rows of x (rows, cols).</summary>
    public static void Reference(ReadOnlySpan<float> x, int rows, int cols, Span<float> y)
    {
        for (var r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * cols, cols);
            var ss = 0f;
            foreach (var v in xr) ss += v * v;
            var scale = 1f / MathF.Sqrt(ss / cols + Eps);
            for (var c = 0; c < cols; c++) y[r * cols + c] = xr[c] * scale;
        }
    }
}
