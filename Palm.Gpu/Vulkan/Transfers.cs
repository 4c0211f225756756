// Host <-> device copies. Mapped (host-visible, coherent) blocks are plain memcpy; otherwise
// the bytes go through a reusable staging buffer and a one-shot copy command, chunked so the
// staging buffer stays small. Synchronous: each call returns when the copy is done.
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal sealed unsafe class Transfers : IDisposable
{
    const ulong StagingBytes = 16UL << 20;

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

    /// <summary>How many staged copies ran (0 when every block is mapped).</summary>
    public int StagedCopies { get; private set; }

    public void Write(GpuAllocation dst, ReadOnlySpan<byte> src)
    {
        if ((ulong)src.Length > dst.Size) throw new ArgumentException("source larger than the allocation");
        if (dst.Block.Mapped != null)
        {
            // Coherent memory: the next vkQueueSubmit makes these writes visible to the device.
            src.CopyTo(new Span<byte>(dst.Block.Mapped + dst.Offset, src.Length));
            return;
        }
        var s = Staging();
        for (var done = 0; done < src.Length;)
        {
            var n = (int)Math.Min((ulong)(src.Length - done), s.Size);
            src.Slice(done, n).CopyTo(new Span<byte>(s.Block.Mapped + s.Offset, n));
            Copy(s.Block.Buffer, s.Offset, dst.Block.Buffer, dst.Offset + (ulong)done, (ulong)n, toDevice: true);
            done += n;
        }
    }

    public void Read(GpuAllocation src, Span<byte> dst)
    {
        if ((ulong)dst.Length > src.Size) throw new ArgumentException("destination larger than the allocation");
        if (src.Block.Mapped != null)
        {
            // Recordings end with a shader-write -> host-read barrier and a fence wait.
            new ReadOnlySpan<byte>(src.Block.Mapped + src.Offset, dst.Length).CopyTo(dst);
            return;
        }
        var s = Staging();
        for (var done = 0; done < dst.Length;)
        {
            var n = (int)Math.Min((ulong)(dst.Length - done), s.Size);
            Copy(src.Block.Buffer, src.Offset + (ulong)done, s.Block.Buffer, s.Offset, (ulong)n, toDevice: false);
            new ReadOnlySpan<byte>(s.Block.Mapped + s.Offset, n).CopyTo(dst.Slice(done, n));
            done += n;
        }
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
