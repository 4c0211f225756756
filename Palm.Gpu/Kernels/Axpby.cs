// axpby: y = alpha x + beta y element-wise (beta = 0: y is written, never read). Used for
// gradient accumulation over micro-batches on the device. GPU wrapper for shaders/axpby.comp and
// its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Axpby
{
    const uint WorkgroupSize = 256;

    /// <summary>Twin of <c>AxpbyPush</c> in shaders/axpby.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AxpbyPush
    {
        public uint n;
        public float alpha;
        public float beta;
    }

    /// <summary>Records y = alpha x + beta y; both f32 with the same element count, distinct tensors.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, float alpha, GpuTensor x, float beta, GpuTensor y)
    {
        if (x.DType != GpuDType.F32 || y.DType != GpuDType.F32 || x.Count != y.Count)
            throw new ArgumentException($"axpby: x {x} and y {y} must be f32 of the same size");
        if (ReferenceEquals(x, y)) throw new ArgumentException("axpby: x and y must be different tensors");
        var pipeline = ctx.Pipelines.Get("axpby", 2, (uint)Marshal.SizeOf<AxpbyPush>(), WorkgroupSize);
        var push = new AxpbyPush { n = (uint)x.Count, alpha = alpha, beta = beta };
        var (gx, gy) = Grid.Rows(Grid.CeilDiv(x.Count, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(x), Binding.InOut(y)], push, gx, gy);
    }

    /// <summary>CPU reference: y = alpha x + beta y, y not read when beta = 0.</summary>
    public static void Reference(float alpha, ReadOnlySpan<float> x, float beta, Span<float> y)
    {
        for (var i = 0; i < y.Length; i++)
        {
            float ax = alpha * x[i];
            y[i] = beta == 0f ? ax : ax + beta * y[i];
        }
    }
}
