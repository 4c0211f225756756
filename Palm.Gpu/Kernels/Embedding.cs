// embedding: out(T, C) = E[idx[t]] (row gather). GPU wrapper for shaders/embedding.comp and
// its CPU reference.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Embedding
{
    const uint WorkgroupSize = 128;

    /// <summary>Twin of <c>EmbeddingPush</c> in shaders/embedding.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct EmbeddingPush
    {
        public uint T;
        public uint V;
        public uint C;
    }

    /// <summary>Twin of <c>EmbeddingQuantPush</c> in shaders/embedding.comp (-D Q8 / -D Q4).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct EmbeddingQuantPush
    {
        public uint T;
        public uint V;
        public uint C;
        public uint G;
    }

    /// <summary>
    /// Records output = E[idx]. idx (T) i32, table (V, C) f32, output (T, C) f32. Out-of-range
    /// ids produce NaN rows (a shader cannot throw).
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor idx, GpuTensor table, GpuTensor output)
    {
        if (idx.DType != GpuDType.I32 || table.DType != GpuDType.F32 || output.DType != GpuDType.F32 || table.Shape.Length != 2)
            throw new ArgumentException($"embedding: idx {idx} must be i32, table {table} 2D f32, output {output} f32");
        var (v, c) = (table.Shape[0], table.Shape[1]);
        var t = idx.Count;
        if (output.Count != t * c || output.Shape[^1] != c)
            throw new ArgumentException($"embedding: output {output} must be ({t}, {c})");
        var pipeline = ctx.Pipelines.Get("embedding", 3, (uint)Marshal.SizeOf<EmbeddingPush>(), WorkgroupSize);
        var push = new EmbeddingPush { T = (uint)t, V = (uint)v, C = (uint)c };
        var (gx, gy) = Grid.Rows(t, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(idx), Binding.In(table), Binding.Out(output)], push, gx, gy);
    }

    /// <summary>
    /// Records output = E[idx] with E quantized. idx (T) i32, table (V, C) q8/q4, output (T, C) f32.
    /// Out-of-range ids produce NaN rows.
    /// </summary>
    public static void RecordQuantized(CommandRecorder rec, VulkanContext ctx, GpuTensor idx, GpuQuantizedMatrix table, GpuTensor output)
    {
        if (idx.DType != GpuDType.I32 || output.DType != GpuDType.F32)
            throw new ArgumentException($"embedding: idx {idx} must be i32, output {output} f32");
        var (v, c) = (table.Rows, table.Cols);
        var t = idx.Count;
        if (output.Count != t * c || output.Shape[^1] != c)
            throw new ArgumentException($"embedding: output {output} must be ({t}, {c})");
        var shader = table.Format == GpuQuantFormat.Q8 ? "embedding_q8" : "embedding_q4";
        var pipeline = ctx.Pipelines.Get(shader, 4, (uint)Marshal.SizeOf<EmbeddingQuantPush>(), WorkgroupSize);
        var push = new EmbeddingQuantPush { T = (uint)t, V = (uint)v, C = (uint)c, G = (uint)table.GroupSize };
        var (gx, gy) = Grid.Rows(t, ctx.Capabilities.MaxWorkgroupCountX);
        rec.Dispatch(pipeline, [Binding.In(idx), Binding.In(table.Data), Binding.In(table.Scales), Binding.Out(output)], push, gx, gy);
    }

    /// <summary>CPU reference. idx (T), table (V, C), output (T, C).</summary>
    /// <exception cref="ArgumentOutOfRangeException">An id outside [0, V).</exception>
    public static void Reference(ReadOnlySpan<int> idx, ReadOnlySpan<float> table, int V, int C, Span<float> output)
    {
        for (var t = 0; t < idx.Length; t++)
        {
            var id = idx[t];
            if ((uint)id >= (uint)V) throw new ArgumentOutOfRangeException(nameof(idx), $"token {id} at position {t} is outside [0, {V})");
            table.Slice(id * C, C).CopyTo(output.Slice(t * C, C));
        }
    }

    /// <summary>
    /// CPU reference of the quantized gather: row idx[t] of the (V, C) table decoded element by element
    /// from the stored bytes (<see cref="GpuQuantizedMatrix.Decode"/>). idx (T), output (T, C).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id outside [0, V).</exception>
    public static void QuantizedReference(ReadOnlySpan<int> idx, GpuQuantFormat format, ReadOnlySpan<byte> data, ReadOnlySpan<byte> scales,
        int groupSize, int V, int C, Span<float> output)
    {
        for (var t = 0; t < idx.Length; t++)
        {
            var id = idx[t];
            if ((uint)id >= (uint)V) throw new ArgumentOutOfRangeException(nameof(idx), $"token {id} at position {t} is outside [0, {V})");
            for (var c = 0; c < C; c++) output[t * C + c] = GpuQuantizedMatrix.Decode(format, data, scales, groupSize, (long)id * C + c);
        }
    }
}
