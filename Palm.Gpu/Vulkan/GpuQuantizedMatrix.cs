// A quantized weight matrix in device memory: the stored level bytes and scale bytes exactly as in
// a .palm file (q8: int8 + f32 scale per group; q4: nibbles + f16 scale per group), each as its own
// buffer of little-endian words. Shaders dequantize on load; no float copy exists.
using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Palm.Gpu.Vulkan;

internal enum GpuQuantFormat
{
    /// <summary>One int8 per element, one float32 scale per group.</summary>
    Q8,
    /// <summary>Two 4-bit levels (q + 8) per byte, element 2k in the low nibble; one float16 scale per group.</summary>
    Q4,
}

internal sealed class GpuQuantizedMatrix : IDisposable
{
    // data: level bytes of the (rows, cols) matrix, row-major (q8 rows*cols, q4 ceil(rows*cols/2));
    // scales: scale bytes, one per group of groupSize elements (groupSize divides cols).
    public GpuQuantizedMatrix(VulkanContext ctx, GpuQuantFormat format, int rows, int cols, int groupSize,
        ReadOnlySpan<byte> data, ReadOnlySpan<byte> scales)
    {
        if (rows <= 0 || cols <= 0) throw new ArgumentException($"shape ({rows}, {cols}) must be positive");
        if (groupSize <= 0 || cols % groupSize != 0) throw new ArgumentException($"group size {groupSize} does not divide cols = {cols}");
        long n = (long)rows * cols, groups = n / groupSize;
        long dataBytes = format == GpuQuantFormat.Q8 ? n : (n + 1) / 2;
        long scaleBytes = groups * (format == GpuQuantFormat.Q8 ? 4 : 2);
        if (data.Length != dataBytes || scales.Length != scaleBytes)
            throw new ArgumentException($"{format} ({rows}, {cols}) / {groupSize}: {data.Length} data and {scales.Length} scale bytes, expected {dataBytes} and {scaleBytes}");
        Format = format; Rows = rows; Cols = cols; GroupSize = groupSize;
        Data = Words(ctx, data);
        try { Scales = Words(ctx, scales); }
        catch { Data.Dispose(); throw; }
    }

    public GpuQuantFormat Format { get; }
    public int Rows { get; }
    public int Cols { get; }
    public int GroupSize { get; }
    /// <summary>The level bytes as I32 words (the last word zero-padded).</summary>
    public GpuTensor Data { get; }
    /// <summary>The scale bytes as I32 words (the last word zero-padded).</summary>
    public GpuTensor Scales { get; }
    /// <summary>Device bytes held (payload, before padding).</summary>
    public long Bytes => (long)Data.Bytes + (long)Scales.Bytes;

    static GpuTensor Words(VulkanContext ctx, ReadOnlySpan<byte> bytes)
    {
        var words = new int[(bytes.Length + 3) / 4];
        bytes.CopyTo(MemoryMarshal.AsBytes(words.AsSpan()));
        var t = ctx.CreateTensor(GpuDType.I32, words.Length);
        t.Upload(words);
        return t;
    }

    /// <summary>
    /// Element <paramref name="i"/> of stored quantized bytes as a float: the CPU twin of
    /// <c>load_quant</c> in shaders/quant.glsl, used by the kernels' references (q8: int8 level, f32
    /// scale; q4: nibble - 8, element 2k in the low nibble of byte k, f16 scale).
    /// </summary>
    public static float Decode(GpuQuantFormat format, ReadOnlySpan<byte> data, ReadOnlySpan<byte> scales, int groupSize, long i)
    {
        var g = (int)(i / groupSize);
        if (format == GpuQuantFormat.Q8)
            return (sbyte)data[(int)i] * BinaryPrimitives.ReadSingleLittleEndian(scales[(4 * g)..]);
        var level = ((data[(int)(i / 2)] >> (int)(4 * (i % 2))) & 0xF) - 8;
        return level * (float)BinaryPrimitives.ReadHalfLittleEndian(scales[(2 * g)..]);
    }

    public override string ToString() => $"{Format}({Rows}, {Cols})/{GroupSize}";

    public void Dispose()
    {
        Data.Dispose();
        Scales.Dispose();
    }
}
