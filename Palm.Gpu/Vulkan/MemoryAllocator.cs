// Device memory: large blocks (one VkDeviceMemory + one VkBuffer each, 64 MiB by default) that
// tensors are sub-allocated from, never one vkAllocateMemory per tensor (drivers cap the
// number of allocations, e.g. 4096, and each one is slow).
using Silk.NET.Vulkan;
using Buffer = Silk.NET.Vulkan.Buffer;

namespace Palm.Gpu.Vulkan;

internal enum MemoryKind
{
    /// <summary>Tensors: device-local; mapped only when device-local memory is host-visible.</summary>
    Device,
    /// <summary>Staging for uploads/downloads: host-visible, coherent, cached when possible.</summary>
    Staging,
}

internal sealed unsafe class MemoryBlock
{
    public required Buffer Buffer { get; init; }
    public required DeviceMemory Memory { get; init; }
    public required ulong Size { get; init; }
    /// <summary>Host pointer to the block's start when it is mapped (host-visible + coherent), else null.</summary>
    public required byte* Mapped { get; init; }
    /// <summary>Whether the CPU reads the mapping through its caches (UMA); false for a discrete GPU's BAR.</summary>
    public bool Cached { get; init; }
    public required FreeList Free { get; init; }
}

internal sealed record GpuAllocation(MemoryBlock Block, ulong Offset, ulong Size);

internal sealed unsafe class MemoryAllocator : IDisposable
{
    const BufferUsageFlags Usage = BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit;

    readonly VulkanContext ctx;
    readonly MemoryKind kind;
    readonly ulong blockBytes;
    readonly ulong alignment;
    readonly List<MemoryBlock> blocks = new();

    public MemoryAllocator(VulkanContext ctx, MemoryKind kind, ulong blockBytes, ulong alignment)
    {
        this.ctx = ctx;
        this.kind = kind;
        this.blockBytes = blockBytes;
        this.alignment = alignment;
    }

    public int BlockCount => blocks.Count;
    /// <summary>Bytes of the allocations currently held (each rounded up to 4 bytes, alignment gaps not counted).</summary>
    public ulong LiveBytes { get; private set; }
    public ulong Alignment => alignment;

    public GpuAllocation Allocate(ulong bytes)
    {
        if (bytes == 0) throw new ArgumentOutOfRangeException(nameof(bytes), "empty allocation");
        bytes = (bytes + 3) & ~3UL; // storage buffers are read in 4-byte words
        foreach (var b in blocks)
            if (b.Free.TryAllocate(bytes, alignment, out var offset))
            {
                LiveBytes += bytes;
                return new GpuAllocation(b, offset, bytes);
            }
        // Oversized requests get a block of their own, sized to fit.
        var block = CreateBlock(Math.Max(blockBytes, bytes));
        blocks.Add(block);
        if (!block.Free.TryAllocate(bytes, alignment, out var o)) throw new InvalidOperationException("fresh block too small");
        LiveBytes += bytes;
        return new GpuAllocation(block, o, bytes);
    }

    public void Free(GpuAllocation a)
    {
        a.Block.Free.Free(a.Offset, a.Size);
        LiveBytes -= a.Size;
    }

    MemoryBlock CreateBlock(ulong size)
    {
        var vk = ctx.Vk;
        var info = new BufferCreateInfo
        {
            SType = StructureType.BufferCreateInfo,
            Size = size,
            Usage = Usage,
            SharingMode = SharingMode.Exclusive,
        };
        vk.CreateBuffer(ctx.Device, &info, null, out var buffer).Check("vkCreateBuffer");
        vk.GetBufferMemoryRequirements(ctx.Device, buffer, out var req);
        var type = ChooseType(ctx.MemoryProperties, req.MemoryTypeBits, kind, ctx.Options.ForceStaging, out var mapped, out var cached);
        // Tests take the uncached (discrete-GPU BAR) read path on a UMA device.
        if (ctx.Options.UncachedMapping && kind == MemoryKind.Device) cached = false;
        var alloc = new MemoryAllocateInfo
        {
            SType = StructureType.MemoryAllocateInfo,
            AllocationSize = req.Size,
            MemoryTypeIndex = type,
        };
        var r = vk.AllocateMemory(ctx.Device, &alloc, null, out var memory);
        if (r != Result.Success)
        {
            vk.DestroyBuffer(ctx.Device, buffer, null);
            throw new VulkanException($"vkAllocateMemory({size >> 20} MiB, {kind})", r);
        }
        vk.BindBufferMemory(ctx.Device, buffer, memory, 0).Check("vkBindBufferMemory");
        void* ptr = null;
        if (mapped) vk.MapMemory(ctx.Device, memory, 0, Vk.WholeSize, 0, &ptr).Check("vkMapMemory");
        return new MemoryBlock { Buffer = buffer, Memory = memory, Size = size, Mapped = (byte*)ptr, Cached = cached, Free = new FreeList(size) };
    }

    /// <summary>
    /// The memory type index for <paramref name="kind"/> among <paramref name="allowedTypes"/>;
    /// <paramref name="mapped"/> says whether it is host-visible and coherent (used by direct mapping).
    /// </summary>
    public static uint ChooseType(PhysicalDeviceMemoryProperties props, uint allowedTypes, MemoryKind kind, bool forceStaging, out bool mapped, out bool cached)
    {
        const MemoryPropertyFlags hostCoherent = MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit;
        var types = new List<(uint Index, MemoryPropertyFlags Flags, ulong HeapSize)>();
        for (var i = 0; i < (int)props.MemoryTypeCount; i++)
        {
            if ((allowedTypes & (1u << i)) == 0) continue;
            var t = props.MemoryTypes[i];
            types.Add(((uint)i, t.PropertyFlags, props.MemoryHeaps[(int)t.HeapIndex].Size));
        }
        bool Has(MemoryPropertyFlags f, MemoryPropertyFlags want) => (f & want) == want;

        int pick;
        if (kind == MemoryKind.Staging)
        {
            // The spec guarantees a host-visible + coherent type; cached makes downloads fast.
            pick = types.FindIndex(t => Has(t.Flags, hostCoherent | MemoryPropertyFlags.HostCachedBit));
            if (pick < 0) pick = types.FindIndex(t => Has(t.Flags, hostCoherent));
        }
        else
        {
            var deviceLocal = types.Where(t => Has(t.Flags, MemoryPropertyFlags.DeviceLocalBit)).ToList();
            var largest = deviceLocal.Count > 0 ? deviceLocal.Max(t => t.HeapSize) : 0;
            // Map device memory directly only when it is not a small BAR window (256 MiB on
            // discrete GPUs without resizable BAR): UMA devices and full ReBAR qualify. A ReBAR
            // mapping is uncached, which Transfers.Read allows for small reads only.
            pick = forceStaging ? -1 : types.FindIndex(t =>
                Has(t.Flags, MemoryPropertyFlags.DeviceLocalBit | hostCoherent) && t.HeapSize >= largest);
            if (pick < 0) pick = types.FindIndex(t => Has(t.Flags, MemoryPropertyFlags.DeviceLocalBit));
            if (pick < 0) pick = 0; // no device-local type at all: take what the buffer allows
        }
        if (pick < 0 || types.Count == 0) throw new GpuUnavailableException($"no suitable memory type for {kind}");
        mapped = Has(types[pick].Flags, hostCoherent) && (kind == MemoryKind.Staging || !forceStaging);
        cached = mapped && Has(types[pick].Flags, MemoryPropertyFlags.HostCachedBit);
        return types[pick].Index;
    }

    public void Dispose()
    {
        foreach (var b in blocks)
        {
            if (b.Mapped != null) ctx.Vk.UnmapMemory(ctx.Device, b.Memory);
            ctx.Vk.DestroyBuffer(ctx.Device, b.Buffer, null);
            ctx.Vk.FreeMemory(ctx.Device, b.Memory, null);
        }
        blocks.Clear();
    }
}
