// rmsnorm backward: dx = s (dy - y mean(dy y)) for y = x s, s = 1/sqrt(mean(x^2) + eps),
// recomputing s from the forward's input. GPU wrapper for shaders/rmsnorm_backward.comp and
// its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class RmsNormBackward
{
    /// <summary>Twin of <c>RmsNormBackwardPush</c> in shaders/rmsnorm_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct RmsNormBackwardPush
    {
        public uint rows;
        public uint cols;
        public float eps;
        public uint accumulate;
    }

    /// <summary>Records dx (+)= d rmsnorm(x)/dx . dy. x, dy, dx: (rows, cols) f32; dx may not alias x or dy.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor dy, bool accumulate, GpuTensor dx)
    {
        if (x.DType != GpuDType.F32 || dy.DType != GpuDType.F32 || dx.DType != GpuDType.F32 || x.Count != dy.Count || x.Count != dx.Count
            || x.Shape[^1] != dy.Shape[^1] || x.Shape[^1] != dx.Shape[^1])
            throw new ArgumentException($"rmsnorm backward: x {x}, dy {dy}, dx {dx} must be f32 of the same shape");
        var cols = x.Shape[^1];
        var rows = x.Count / cols;
        var wg = Math.Min(Math.Clamp(Grid.NextPow2((uint)cols), 32u, 256u), Grid.NextPow2(ctx.Capabilities.MaxWorkgroupInvocations + 1) / 2);
        var pipeline = ctx.Pipelines.Get("rmsnorm_backward", 3, (uint)Marshal.SizeOf<RmsNormBackwardPush>(), wg);
        var push = new RmsNormBackwardPush { rows = (uint)rows, cols = (uint)cols, eps = RmsNorm.Eps, accumulate = accumulate ? 1u : 0u };
        var (gx, gy) = Grid.Rows(rows, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(dy), accumulate ? Binding.InOut(dx) : Binding.Out(dx)], push, gx, gy);
    }

    /// <summary>CPU reference over rows of x (rows, cols): dx (+)= s (dy - y mean(dy y)).</summary>
    public static void Reference(ReadOnlySpan<float> x, ReadOnlySpan<float> dy, int rows, int cols, bool accumulate, Span<float> dx)
    {
        for (var r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * cols, cols);
            var dr = dy.Slice(r * cols, cols);
            float ss = 0f, sd = 0f;
            for (var c = 0; c < cols; c++)
            {
                ss += xr[c] * xr[c];
                sd += dr[c] * xr[c];
            }
            var s = 1f / MathF.Sqrt(ss / cols + RmsNorm.Eps);
            // mean(dy y) = s sum(dy x) / cols, and y = x s.
            var meanDyY = s * sd / cols;
            for (var c = 0; c < cols; c++)
            {
                var g = s * (dr[c] - xr[c] * s * meanDyY);
                dx[r * cols + c] = accumulate ? dx[r * cols + c] + g : g;
            }
        }
    }
}
