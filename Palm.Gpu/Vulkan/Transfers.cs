// Host <-> device copies. Mapped (host-visible, coherent) blocks are plain memcpy; otherwise
// the bytes go through a reusable staging buffer and a one-shot copy command, chunked so the
// staging buffer stays small. Synchronous: each call returns when the copy is done. A copy may
// cover part of an allocation (one row of a state pool); device-to-device copies (growing a
// pool) run as one command buffer. Byte counters let tests prove what crosses the bus.
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal sealed unsafe class Transfers : IDisposable
{
    const ulong StagingBytes = 16UL << 20;
    /// <summary>The largest read served straight from an uncached mapping (per-token ids, a session's state row).</summary>
    internal const int UncachedReadBytes = 16 << 10;

    readonly VulkanContext ctx;
    readonly CommandPool pool;
    readonly CommandBuffer cmd;
    readonly Fence fence;
    readonly MemoryAllocator stagingMemory;
    GpuAllocation? staging;

    public Transfers(VulkanContext ctx)
    {
        this.ctx = ctx;
        var vk = ctx.Vk;
        var poolInfo = new CommandPoolCreateInfo
        {
            SType = StructureType.CommandPoolCreateInfo,
            QueueFamilyIndex = ctx.QueueFamily,
            Flags = CommandPoolCreateFlags.ResetCommandBufferBit | CommandPoolCreateFlags.TransientBit,
        };
        vk.CreateCommandPool(ctx.Device, &poolInfo, null, out pool).Check("vkCreateCommandPool");
        var alloc = new CommandBufferAllocateInfo
        {
            SType = StructureType.CommandBufferAllocateInfo,
            CommandPool = pool,
            Level = CommandBufferLevel.Primary,
            CommandBufferCount = 1,
        };
        vk.AllocateCommandBuffers(ctx.Device, &alloc, out cmd).Check("vkAllocateCommandBuffers");
        var fenceInfo = new FenceCreateInfo { SType = StructureType.FenceCreateInfo };
        vk.CreateFence(ctx.Device, &fenceInfo, null, out fence).Check("vkCreateFence");
        stagingMemory = new MemoryAllocator(ctx, MemoryKind.Staging, StagingBytes, 16);
    }

    /// <summary>How many one-shot copy submissions ran: staged copies (0 when every block is mapped) and device-to-device copies.</summary>
    public int StagedCopies { get; private set; }

    /// <summary>Bytes written host -> device over this context's lifetime.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Bytes read device -> host over this context's lifetime.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Writes <paramref name="src"/> at <paramref name="byteOffset"/> inside <paramref name="dst"/>.</summary>
    public void Write(GpuAllocation dst, ReadOnlySpan<byte> src, ulong byteOffset = 0)
    {
        if (byteOffset + (ulong)src.Length > dst.Size) throw new ArgumentException("source runs past the end of the allocation");
        BytesWritten += src.Length;
        if (dst.Block.Mapped != null)
        {
            // Coherent memory: the next vkQueueSubmit makes these writes visible to the device.
            src.CopyTo(new Span<byte>(dst.Block.Mapped + dst.Offset + byteOffset, src.Length));
            return;
        }
        var s = Staging();
        for (var done = 0; done < src.Length;)
        {
            var n = (int)Math.Min((ulong)(src.Length - done), s.Size);
            src.Slice(done, n).CopyTo(new Span<byte>(s.Block.Mapped + s.Offset, n));
            Copy(s.Block.Buffer, s.Offset, dst.Block.Buffer, dst.Offset + byteOffset + (ulong)done, (ulong)n, toDevice: true);
            done += n;
        }
    }

    /// <summary>Reads <paramref name="dst"/>.Length bytes from <paramref name="byteOffset"/> inside <paramref name="src"/>.</summary>
    public void Read(GpuAllocation src, Span<byte> dst, ulong byteOffset = 0)
    {
        if (byteOffset + (ulong)dst.Length > src.Size) throw new ArgumentException("destination runs past the end of the allocation");
        BytesRead += dst.Length;
        // Uncached mappings (a discrete GPU's resizable BAR) are read by the CPU at tens of MB/s:
        // measured on an H200, a 32 MB logits download took ~1 s. Above a few pages the copy
        // engine and a cached staging buffer win despite their submission and fence wait.
        if (src.Block.Mapped != null && (src.Block.Cached || dst.Length <= UncachedReadBytes))
        {
            // Recordings end with a shader-write -> host-read barrier and a fence wait.
            new ReadOnlySpan<byte>(src.Block.Mapped + src.Offset + byteOffset, dst.Length).CopyTo(dst);
            return;
        }
        var s = Staging();
        for (var done = 0; done < dst.Length;)
        {
            var n = (int)Math.Min((ulong)(dst.Length - done), s.Size);
            Copy(src.Block.Buffer, src.Offset + byteOffset + (ulong)done, s.Block.Buffer, s.Offset, (ulong)n, toDevice: false);
            new ReadOnlySpan<byte>(s.Block.Mapped + s.Offset, n).CopyTo(dst.Slice(done, n));
            done += n;
        }
    }

    /// <summary>
    /// Copies device to device: each pair's first <c>Bytes</c> bytes, all in one command buffer
    /// and one fence wait; nothing crosses to the host.
    /// </summary>
    public void CopyOnDevice(IReadOnlyList<(GpuAllocation Src, GpuAllocation Dst, ulong Bytes)> copies)
    {
        if (copies.Count == 0) return;
        foreach (var c in copies)
            if (c.Bytes > c.Src.Size || c.Bytes > c.Dst.Size) throw new ArgumentException("copy larger than its source or destination");
        var vk = ctx.Vk;
        var begin = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = CommandBufferUsageFlags.OneTimeSubmitBit };
        vk.BeginCommandBuffer(cmd, &begin).Check("vkBeginCommandBuffer");
        var before = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier,
            SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.ShaderReadBit,
            DstAccessMask = AccessFlags.TransferReadBit | AccessFlags.TransferWriteBit,
        };
        vk.CmdPipelineBarrier(cmd, PipelineStageFlags.ComputeShaderBit, PipelineStageFlags.TransferBit, 0, 1, &before, 0, null, 0, null);
        foreach (var c in copies)
        {
            var region = new BufferCopy { SrcOffset = c.Src.Offset, DstOffset = c.Dst.Offset, Size = c.Bytes };
            vk.CmdCopyBuffer(cmd, c.Src.Block.Buffer, c.Dst.Block.Buffer, 1, &region);
        }
        var after = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier,
            SrcAccessMask = AccessFlags.TransferWriteBit,
            DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit | AccessFlags.HostReadBit,
        };
        vk.CmdPipelineBarrier(cmd, PipelineStageFlags.TransferBit, PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.HostBit, 0, 1, &after, 0, null, 0, null);
        SubmitAndWait();
    }

    GpuAllocation Staging() => staging ??= stagingMemory.Allocate(StagingBytes);

    void Copy(Silk.NET.Vulkan.Buffer from, ulong fromOffset, Silk.NET.Vulkan.Buffer to, ulong toOffset, ulong bytes, bool toDevice)
    {
        var vk = ctx.Vk;
        var begin = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = CommandBufferUsageFlags.OneTimeSubmitBit };
        vk.BeginCommandBuffer(cmd, &begin).Check("vkBeginCommandBuffer");
        // Earlier submissions may still be writing (download) or reading (upload) this range.
        var before = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier,
            SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.ShaderReadBit,
            DstAccessMask = toDevice ? AccessFlags.TransferWriteBit : AccessFlags.TransferReadBit,
        };
        vk.CmdPipelineBarrier(cmd, PipelineStageFlags.ComputeShaderBit, PipelineStageFlags.TransferBit, 0, 1, &before, 0, null, 0, null);
        var region = new BufferCopy { SrcOffset = fromOffset, DstOffset = toOffset, Size = bytes };
        vk.CmdCopyBuffer(cmd, from, to, 1, &region);
        var after = toDevice
            ? new MemoryBarrier
            {
                SType = StructureType.MemoryBarrier,
                SrcAccessMask = AccessFlags.TransferWriteBit,
                DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit,
            }
            : new MemoryBarrier
            {
                SType = StructureType.MemoryBarrier,
                SrcAccessMask = AccessFlags.TransferWriteBit,
                DstAccessMask = AccessFlags.HostReadBit,
            };
        vk.CmdPipelineBarrier(cmd, PipelineStageFlags.TransferBit,
            toDevice ? PipelineStageFlags.ComputeShaderBit : PipelineStageFlags.HostBit, 0, 1, &after, 0, null, 0, null);
        SubmitAndWait();
    }

    void SubmitAndWait()
    {
        var vk = ctx.Vk;
        vk.EndCommandBuffer(cmd).Check("vkEndCommandBuffer");
        var c = cmd;
        var submit = new SubmitInfo { SType = StructureType.SubmitInfo, CommandBufferCount = 1, PCommandBuffers = &c };
        vk.QueueSubmit(ctx.Queue, 1, &submit, fence).Check("vkQueueSubmit");
        var f = fence;
        vk.WaitForFences(ctx.Device, 1, &f, true, ulong.MaxValue).Check("vkWaitForFences");
        vk.ResetFences(ctx.Device, 1, &f).Check("vkResetFences");
        vk.ResetCommandBuffer(cmd, 0).Check("vkResetCommandBuffer");
        StagedCopies++;
    }

    public void Dispose()
    {
        var vk = ctx.Vk;
        vk.DestroyFence(ctx.Device, fence, null);
        vk.DestroyCommandPool(ctx.Device, pool, null);
        stagingMemory.Dispose();
    }
}
