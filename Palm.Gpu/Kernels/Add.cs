// add: x += y element-wise (the FFN branch's residual add). GPU wrapper for shaders/add.comp
// and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Add
{
    const uint WorkgroupSize = 256;

    /// <summary>Twin of <c>AddPush</c> in shaders/add.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AddPush
    {
        public uint n;
    }

    /// <summary>Records x += y; both f32 with the same element count.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor y, GpuTensor x)
    {
        if (x.DType != GpuDType.F32 || y.DType != GpuDType.F32 || x.Count != y.Count)
            throw new ArgumentException($"add: x {x} and y {y} must be f32 of the same size");
        var pipeline = ctx.Pipelines.Get("add", 2, (uint)Marshal.SizeOf<AddPush>(), WorkgroupSize);
        var push = new AddPush { n = (uint)x.Count };
        var (gx, gy) = Grid.Rows(Grid.CeilDiv(x.Count, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(y), Binding.InOut(x)], push, gx, gy);
    }

    /// <summary>CPU reference: x += y.</summary>
    public static void Reference(ReadOnlySpan<float> y, Span<float> x)
    {
        for (var i = 0; i < x.Length; i++) x[i] += y[i];
    }
}
