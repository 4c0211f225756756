// swiglu backward: d[a | b] for out = a silu(b). GPU wrapper for shaders/swiglu_backward.comp
// and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class SwiGluBackward
{
    const uint WorkgroupSize = 256;

    /// <summary>Twin of <c>SwiGluBackwardPush</c> in shaders/swiglu_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SwiGluBackwardPush
    {
        public uint rows;
        public uint n;
    }

    /// <summary>Records dab (R, 2n) from ab (R, 2n) and dout (R, n), f32.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor ab, GpuTensor dout, GpuTensor dab)
    {
        var n = dout.Shape[^1];
        var rows = dout.Count / n;
        if (ab.DType != GpuDType.F32 || dout.DType != GpuDType.F32 || dab.DType != GpuDType.F32 || ab.Shape[^1] != 2 * n
            || ab.Count != 2 * rows * n || dab.Count != ab.Count)
            throw new ArgumentException($"swiglu backward: ab {ab} and dab {dab} must be (rows, 2n) f32 for dout {dout}");
        var pipeline = ctx.Pipelines.Get("swiglu_backward", 3, (uint)Marshal.SizeOf<SwiGluBackwardPush>(), WorkgroupSize);
        var push = new SwiGluBackwardPush { rows = (uint)rows, n = (uint)n };
        var (gx, gy) = Grid.Rows(Grid.CeilDiv(rows * n, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(ab), Binding.In(dout), Binding.Out(dab)], push, gx, gy);
    }

    /// <summary>CPU reference: da = dout silu(b), db = dout a silu'(b), silu'(b) = sig(b)(1 + b(1 - sig(b))).</summary>
    public static void Reference(ReadOnlySpan<float> ab, ReadOnlySpan<float> dout, int rows, int n, Span<float> dab)
    {
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < n; c++)
            {
                var a = ab[r * 2 * n + c];
                var b = ab[r * 2 * n + n + c];
                var d = dout[r * n + c];
                var sg = 1f / (1f + MathF.Exp(-b));
                dab[r * 2 * n + c] = d * b * sg;
                dab[r * 2 * n + n + c] = d * a * sg * (1f + b * (1f - sg));
            }
    }
}
