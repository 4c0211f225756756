// swiglu: out(R, n) = a ⊙ silu(b) from rows [a | b] of ab (R, 2n), optionally added into out
// (the residual stream). GPU wrapper for shaders/swiglu.comp and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class SwiGlu
{
    const uint WorkgroupSize = 256;

    /// <summary>Twin of <c>SwiGluPush</c> in shaders/swiglu.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SwiGluPush
    {
        public uint rows;
        public uint n;
    }

    /// <summary>Records out = a ⊙ silu(b) (or out += when <paramref name="residual"/>). ab (R, 2n), out (R, n), f32.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor ab, bool residual, GpuTensor output)
    {
        var n = output.Shape[^1];
        var rows = output.Count / n;
        if (ab.DType != GpuDType.F32 || output.DType != GpuDType.F32 || ab.Shape[^1] != 2 * n || ab.Count != 2 * rows * n)
            throw new ArgumentException($"swiglu: ab {ab} must be (rows, 2n) f32 for output {output}");
        var pipeline = ctx.Pipelines.Get(residual ? "swiglu_residual" : "swiglu", 2, (uint)Marshal.SizeOf<SwiGluPush>(), WorkgroupSize);
        var push = new SwiGluPush { rows = (uint)rows, n = (uint)n };
        var (gx, gy) = Grid.Rows(Grid.CeilDiv(rows * n, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(ab), residual ? Binding.InOut(output) : Binding.Out(output)], push, gx, gy);
    }

    /// <summary>CPU reference. ab (rows, 2n), output (rows, n); adds into output when <paramref name="residual"/>.</summary>
    public static void Reference(ReadOnlySpan<float> ab, int rows, int n, bool residual, Span<float> output)
    {
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < n; c++)
            {
                var a = ab[r * 2 * n + c];
                var b = ab[r * 2 * n + n + c];
                var v = a * (b / (1f + MathF.Exp(-b)));
                output[r * n + c] = residual ? output[r * n + c] + v : v;
            }
    }
}
