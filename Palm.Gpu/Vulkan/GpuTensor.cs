// A typed view of device memory: shape, dtype and a (buffer, offset, size) sub-allocation.
using System.Runtime.InteropServices;
using Buffer = Silk.NET.Vulkan.Buffer;

namespace Palm.Gpu.Vulkan;

internal enum GpuDType
{
    F32,
    F16,
    /// <summary>Token ids and other indices.</summary>
    I32,
}

internal sealed class GpuTensor : IDisposable
{
    readonly VulkanContext ctx;
    GpuAllocation? allocation;

    public GpuTensor(VulkanContext ctx, GpuDType dtype, int[] shape)
    {
        if (shape.Length == 0 || shape.Any(d => d <= 0))
            throw new ArgumentException($"shape ({string.Join(", ", shape)}) must have positive dimensions", nameof(shape));
        this.ctx = ctx;
        DType = dtype;
        Shape = (int[])shape.Clone();
        Count = shape.Aggregate(1L, (a, d) => a * d);
        Bytes = (ulong)Count * (ulong)ElementSize(dtype);
        allocation = ctx.Memory.Allocate(Bytes);
    }

    public int[] Shape { get; }
    public GpuDType DType { get; }
    public long Count { get; }
    /// <summary>Payload bytes (the allocation may be rounded up to 4 bytes).</summary>
    public ulong Bytes { get; }

    internal GpuAllocation Allocation => allocation ?? throw new ObjectDisposedException(nameof(GpuTensor));
    public Buffer Buffer => Allocation.Block.Buffer;
    public ulong Offset => Allocation.Offset;
    /// <summary>Bytes bound to a descriptor: the whole allocation (a multiple of 4).</summary>
    public ulong BindSize => Allocation.Size;

    public static int ElementSize(GpuDType t) => t == GpuDType.F16 ? 2 : 4;

    public void Upload(ReadOnlySpan<float> data)
    {
        CheckLength(data.Length);
        switch (DType)
        {
            case GpuDType.F32:
                ctx.Transfers.Write(Allocation, MemoryMarshal.AsBytes(data));
                break;
            case GpuDType.F16:
                var half = new Half[data.Length];
                for (var i = 0; i < data.Length; i++) half[i] = (Half)data[i];
                ctx.Transfers.Write(Allocation, MemoryMarshal.AsBytes(half.AsSpan()));
                break;
            default:
                throw new InvalidOperationException($"cannot upload floats to a {DType} tensor");
        }
    }

    public void Upload(ReadOnlySpan<int> data)
    {
        CheckLength(data.Length);
        if (DType != GpuDType.I32) throw new InvalidOperationException($"cannot upload ints to a {DType} tensor");
        ctx.Transfers.Write(Allocation, MemoryMarshal.AsBytes(data));
    }

    public void Download(Span<float> data)
    {
        CheckLength(data.Length);
        switch (DType)
        {
            case GpuDType.F32:
                ctx.Transfers.Read(Allocation, MemoryMarshal.AsBytes(data));
                break;
            case GpuDType.F16:
                var half = new Half[data.Length];
                ctx.Transfers.Read(Allocation, MemoryMarshal.AsBytes(half.AsSpan()));
                for (var i = 0; i < data.Length; i++) data[i] = (float)half[i];
                break;
            default:
                throw new InvalidOperationException($"cannot download a {DType} tensor as floats");
        }
    }

    public void Download(Span<int> data)
    {
        CheckLength(data.Length);
        if (DType != GpuDType.I32) throw new InvalidOperationException($"cannot download a {DType} tensor as ints");
        ctx.Transfers.Read(Allocation, MemoryMarshal.AsBytes(data));
    }

    /// <summary>Writes <paramref name="data"/> into elements [offset, offset + data.Length) of an f32 tensor (a row of a pool).</summary>
    public void Upload(ReadOnlySpan<float> data, long offset)
    {
        CheckRange(offset, data.Length, GpuDType.F32);
        ctx.Transfers.Write(Allocation, MemoryMarshal.AsBytes(data), (ulong)offset * sizeof(float));
    }

    /// <summary>Writes <paramref name="data"/> into elements [offset, offset + data.Length) of an i32 tensor (a used prefix of a buffer kept large).</summary>
    public void Upload(ReadOnlySpan<int> data, long offset)
    {
        CheckRange(offset, data.Length, GpuDType.I32);
        ctx.Transfers.Write(Allocation, MemoryMarshal.AsBytes(data), (ulong)offset * sizeof(int));
    }

    /// <summary>Reads elements [offset, offset + data.Length) of an f32 tensor: a part comes back, not the whole.</summary>
    public void Download(Span<float> data, long offset)
    {
        CheckRange(offset, data.Length, GpuDType.F32);
        ctx.Transfers.Read(Allocation, MemoryMarshal.AsBytes(data), (ulong)offset * sizeof(float));
    }

    /// <summary>Reads elements [offset, offset + data.Length) of an i32 tensor.</summary>
    public void Download(Span<int> data, long offset)
    {
        CheckRange(offset, data.Length, GpuDType.I32);
        ctx.Transfers.Read(Allocation, MemoryMarshal.AsBytes(data), (ulong)offset * sizeof(int));
    }

    void CheckRange(long offset, int n, GpuDType dtype)
    {
        if (DType != dtype) throw new InvalidOperationException($"a {DType} tensor accessed as {dtype}");
        if (offset < 0 || offset + n > Count)
            throw new ArgumentOutOfRangeException(nameof(offset), $"elements [{offset}, {offset + n}) outside a tensor of {Count} ({string.Join("x", Shape)})");
    }

    public float[] ToArray()
    {
        var a = new float[Count];
        Download(a);
        return a;
    }

    void CheckLength(int n)
    {
        if (n != Count) throw new ArgumentException($"span of {n} elements for a tensor of {Count} ({string.Join("x", Shape)})");
    }

    public override string ToString() => $"{DType}({string.Join(", ", Shape)})";

    public void Dispose()
    {
        if (allocation is null) return;
        ctx.Memory.Free(allocation);
        allocation = null;
    }
}
