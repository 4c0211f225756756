// AdamW (torch semantics) on the device, the clip factor read from the device. GPU wrapper for
// shaders/adamw.comp and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

/// <summary>One AdamW step's hyper-parameters; <see cref="Step"/> counts from 1 (bias correction).</summary>
internal readonly record struct AdamWHyper(double Lr, double WeightDecay, double Beta1, double Beta2, double Eps, long Step);

internal static class AdamW
{
    const uint WorkgroupSize = 256;

    /// <summary>Twin of <c>AdamWPush</c> in shaders/adamw.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AdamWPush
    {
        public uint n;
        public float decay;
        public float b1;
        public float b2;
        public float step_size;
        public float inv_sqrt_bc2;
        public float eps;
    }

    static AdamWPush Push(long n, AdamWHyper h)
    {
        if (h.Step < 1) throw new ArgumentOutOfRangeException(nameof(h), "AdamW steps count from 1");
        // Bias corrections in double, rounded once, as the CPU reference does.
        var bc1 = 1 - Math.Pow(h.Beta1, h.Step);
        var bc2 = 1 - Math.Pow(h.Beta2, h.Step);
        return new AdamWPush
        {
            n = (uint)n, decay = (float)(1 - h.Lr * h.WeightDecay), b1 = (float)h.Beta1, b2 = (float)h.Beta2,
            step_size = (float)(h.Lr / bc1), inv_sqrt_bc2 = (float)(1 / Math.Sqrt(bc2)), eps = (float)h.Eps,
        };
    }

    /// <summary>Records one AdamW update of param with grad * clip[1]; m, v updated in place. All f32 of one size; clip: 2 floats.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor param, GpuTensor grad, GpuTensor m, GpuTensor v, GpuTensor clip, AdamWHyper h)
    {
        if (grad.Count != param.Count || m.Count != param.Count || v.Count != param.Count || clip.Count != 2)
            throw new ArgumentException($"adamw: param {param}, grad {grad}, m {m}, v {v} must match; clip {clip} holds 2 floats");
        var pipeline = ctx.Pipelines.Get("adamw", 5, (uint)Marshal.SizeOf<AdamWPush>(), WorkgroupSize);
        var (gx, gy) = Grid.Rows(Grid.CeilDiv(param.Count, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.InOut(param), Binding.In(grad), Binding.InOut(m), Binding.InOut(v), Binding.In(clip)], Push(param.Count, h), gx, gy);
    }

    /// <summary>CPU reference of the same arithmetic (float32, the spec's formula).</summary>
    public static void Reference(Span<float> param, ReadOnlySpan<float> grad, Span<float> m, Span<float> v, float clipFactor, AdamWHyper h)
    {
        var p = Push(param.Length, h);
        for (var i = 0; i < param.Length; i++)
        {
            var g = grad[i] * clipFactor;
            m[i] = p.b1 * m[i] + (1f - p.b1) * g;
            v[i] = p.b2 * v[i] + (1f - p.b2) * g * g;
            param[i] = param[i] * p.decay - p.step_size * m[i] / (MathF.Sqrt(v[i]) * p.inv_sqrt_bc2 + p.eps);
        }
    }
}
