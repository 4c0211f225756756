// embedding backward: dE[v] (+)= sum of dOut rows of the tokens with id v, deterministic (no
// atomics): the host sorts token positions by id (CSR, stable) and each vocabulary row sums
// its own tokens in order. GPU wrapper for shaders/embedding_backward.comp, the CSR builder
// and the CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class EmbeddingBackward
{
    const uint WorkgroupSize = 128;

    /// <summary>Twin of <c>EmbeddingBackwardPush</c> in shaders/embedding_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct EmbeddingBackwardPush
    {
        public uint V;
        public uint C;
        public uint accumulate;
    }

    /// <summary>
    /// Token positions grouped by id: rows[offsets[v] .. offsets[v+1]) are the positions t with
    /// idx[t] = v, ascending. offsets (V+1), rows (T).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id outside [0, V).</exception>
    public static void BuildCsr(ReadOnlySpan<int> idx, int V, Span<int> offsets, Span<int> rows)
    {
        if (offsets.Length != V + 1 || rows.Length != idx.Length) throw new ArgumentException("embedding backward: offsets must hold V+1 and rows T entries");
        offsets.Clear();
        for (var t = 0; t < idx.Length; t++)
        {
            if ((uint)idx[t] >= (uint)V) throw new ArgumentOutOfRangeException(nameof(idx), $"token {idx[t]} at {t} outside [0, {V})");
            offsets[idx[t] + 1]++;
        }
        for (var v = 0; v < V; v++) offsets[v + 1] += offsets[v];
        var next = offsets[..V].ToArray();
        for (var t = 0; t < idx.Length; t++) rows[next[idx[t]]++] = t;
    }

    /// <summary>Records dE (V, C) (+)= scatter of dout (T, C) by the CSR of <see cref="BuildCsr"/> (i32 tensors).</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor offsets, GpuTensor rows, GpuTensor dout, bool accumulate, GpuTensor dE)
    {
        if (dE.DType != GpuDType.F32 || dE.Shape.Length != 2 || dout.DType != GpuDType.F32 || offsets.DType != GpuDType.I32 || rows.DType != GpuDType.I32)
            throw new ArgumentException($"embedding backward: dE {dE} 2D f32, dout {dout} f32, offsets {offsets} and rows {rows} i32");
        var (v, c) = (dE.Shape[0], dE.Shape[1]);
        if (offsets.Count != v + 1 || dout.Count != rows.Count * c || dout.Shape[^1] != c)
            throw new ArgumentException($"embedding backward: offsets {offsets} must be (V+1), dout {dout} (T, {c}) for rows {rows}");
        var pipeline = ctx.Pipelines.Get("embedding_backward", 4, (uint)Marshal.SizeOf<EmbeddingBackwardPush>(), WorkgroupSize);
        var push = new EmbeddingBackwardPush { V = (uint)v, C = (uint)c, accumulate = accumulate ? 1u : 0u };
        var (gx, gy) = Grid.Rows(v, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(offsets), Binding.In(rows), Binding.In(dout), accumulate ? Binding.InOut(dE) : Binding.Out(dE)], push, gx, gy);
    }

    /// <summary>CPU reference: dE (V, C) (+)= sum over t of dout[t] into row idx[t], in token order.</summary>
    public static void Reference(ReadOnlySpan<int> idx, ReadOnlySpan<float> dout, int V, int C, bool accumulate, Span<float> dE)
    {
        if (!accumulate) dE[..(V * C)].Clear();
        for (var t = 0; t < idx.Length; t++)
        {
            if ((uint)idx[t] >= (uint)V) throw new ArgumentOutOfRangeException(nameof(idx), $"token {idx[t]} at {t} outside [0, {V})");
            for (var c = 0; c < C; c++) dE[idx[t] * C + c] += dout[t * C + c];
        }
    }
}
