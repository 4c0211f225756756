// Global L2 norm of many tensors and the spec's clip factor, on the device in two
// deterministic passes (per-tensor partial sums, then one finishing workgroup). GPU wrapper
// for shaders/grad_norm.comp (and its FINISH variant) and its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class GradNorm
{
    const uint WorkgroupSize = 256;
    /// <summary>At most this many partial sums per tensor (workgroups of one partial dispatch).</summary>
    public const int MaxGroups = 64;

    /// <summary>Twin of <c>GradNormPartialPush</c> in shaders/grad_norm.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct GradNormPartialPush
    {
        public uint n;
        public uint offset;
    }

    /// <summary>Twin of <c>GradNormFinishPush</c> in shaders/grad_norm.comp (-D FINISH).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct GradNormFinishPush
    {
        public uint count;
        public float clip;
    }

    /// <summary>Partial sums one tensor of <paramref name="n"/> elements writes.</summary>
    public static int Groups(long n) => (int)Math.Min(Grid.CeilDiv(n, WorkgroupSize), MaxGroups);

    /// <summary>Records partials[offset .. offset + Groups(x.Count)) = partial sums of x^2.</summary>
    public static void RecordPartial(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor partials, int offset)
    {
        var groups = Groups(x.Count);
        if (x.DType != GpuDType.F32 || partials.DType != GpuDType.F32 || offset < 0 || offset + groups > partials.Count)
            throw new ArgumentException($"grad_norm: x {x} needs {groups} partials at {offset} in {partials}");
        var pipeline = ctx.Pipelines.Get("grad_norm", 2, (uint)Marshal.SizeOf<GradNormPartialPush>(), WorkgroupSize);
        var push = new GradNormPartialPush { n = (uint)x.Count, offset = (uint)offset };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.InOut(partials)], push, (uint)groups);
    }

    /// <summary>
    /// Records result[0] = sqrt(sum of partials[0 .. count)), result[1] = the clip factor
    /// (clip/(norm + 1e-6) when clip &gt; 0 and norm &gt; clip, else 1). result: 2 floats.
    /// </summary>
    public static void RecordFinish(CommandRecorder rec, VulkanContext ctx, GpuTensor partials, int count, float clip, GpuTensor result)
    {
        if (count <= 0 || count > partials.Count || result.Count != 2)
            throw new ArgumentException($"grad_norm finish: {count} of {partials} partials into {result} (2 floats)");
        var pipeline = ctx.Pipelines.Get("grad_norm_finish", 2, (uint)Marshal.SizeOf<GradNormFinishPush>(), WorkgroupSize);
        var push = new GradNormFinishPush { count = (uint)count, clip = clip };
        rec.Dispatch(pipeline, [Binding.In(partials), Binding.Out(result)], push, 1);
    }

    /// <summary>CPU reference: the total L2 norm (accumulated in double) and the spec's clip factor.</summary>
    public static (double Norm, float Factor) Reference(IEnumerable<float[]> tensors, double clip)
    {
        double ss = 0;
        foreach (var t in tensors)
            foreach (var v in t) ss += (double)v * v;
        var norm = Math.Sqrt(ss);
        return (norm, clip > 0 && norm > clip ? (float)(clip / (norm + 1e-6)) : 1f);
    }
}
