// Records many dispatches into ONE command buffer and submits them with one fence wait.
// It tracks which buffer ranges earlier dispatches wrote (and read) since the last barrier and
// inserts a compute->compute barrier only before a dispatch that depends on them (RAW, WAW,
// WAR); independent dispatches stay free to overlap. Descriptor sets come from pools that are
// reset per recording, so steady-state recording allocates nothing from the driver.
using System.Runtime.CompilerServices;
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal enum Access
{
    Read,
    Write,
    ReadWrite,
}

internal readonly record struct Binding(GpuTensor Tensor, Access Access)
{
    public static Binding In(GpuTensor t) => new(t, Access.Read);
    public static Binding Out(GpuTensor t) => new(t, Access.Write);
    public static Binding InOut(GpuTensor t) => new(t, Access.ReadWrite);
}

internal sealed unsafe class CommandRecorder : IDisposable
{
    const uint SetsPerPool = 256;
    // The widest shader: the chunked AoD backward's MEAN walk (aod_backward.comp) binds 9.
    const uint DescriptorsPerSet = 9;

    readonly VulkanContext ctx;
    readonly CommandPool commandPool;
    readonly CommandBuffer cmd;
    readonly Fence fence;
    readonly List<(DescriptorPool Pool, uint Sets, uint Descriptors)> pools = new();
    int currentPool;

    readonly List<(ulong Buffer, ulong Offset, ulong Size)> pendingWrites = new();
    readonly List<(ulong Buffer, ulong Offset, ulong Size)> pendingReads = new();

    QueryPool queryPool;
    uint queryCapacity;
    uint queriesUsed;
    bool queryOverflow;
    readonly List<string> timedKernels = new();

    bool recording;

    public CommandRecorder(VulkanContext ctx)
    {
        this.ctx = ctx;
        var vk = ctx.Vk;
        var poolInfo = new CommandPoolCreateInfo
        {
            SType = StructureType.CommandPoolCreateInfo,
            QueueFamilyIndex = ctx.QueueFamily,
            Flags = CommandPoolCreateFlags.ResetCommandBufferBit,
        };
        vk.CreateCommandPool(ctx.Device, &poolInfo, null, out commandPool).Check("vkCreateCommandPool");
        var alloc = new CommandBufferAllocateInfo
        {
            SType = StructureType.CommandBufferAllocateInfo,
            CommandPool = commandPool,
            Level = CommandBufferLevel.Primary,
            CommandBufferCount = 1,
        };
        vk.AllocateCommandBuffers(ctx.Device, &alloc, out cmd).Check("vkAllocateCommandBuffers");
        var fenceInfo = new FenceCreateInfo { SType = StructureType.FenceCreateInfo };
        vk.CreateFence(ctx.Device, &fenceInfo, null, out fence).Check("vkCreateFence");
        if (ctx.Profiler is not null) CreateQueryPool(256);
    }

    /// <summary>Dispatches in the current recording.</summary>
    public int DispatchCount { get; private set; }
    /// <summary>Pipeline barriers inserted in the current recording (dependencies found).</summary>
    public int BarrierCount { get; private set; }
    /// <summary>Queue submissions made by this recorder over its lifetime.</summary>
    public int Submissions { get; private set; }

    void Begin()
    {
        var vk = ctx.Vk;
        foreach (var p in pools) vk.ResetDescriptorPool(ctx.Device, p.Pool, 0).Check("vkResetDescriptorPool");
        for (var i = 0; i < pools.Count; i++) pools[i] = (pools[i].Pool, 0, 0);
        currentPool = 0;
        pendingWrites.Clear();
        pendingReads.Clear();
        DispatchCount = 0;
        BarrierCount = 0;
        var begin = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = CommandBufferUsageFlags.OneTimeSubmitBit };
        vk.BeginCommandBuffer(cmd, &begin).Check("vkBeginCommandBuffer");
        if (ctx.Profiler is not null)
        {
            if (queryOverflow) CreateQueryPool(queryCapacity * 2);
            vk.CmdResetQueryPool(cmd, queryPool, 0, queryCapacity);
            queriesUsed = 0;
            queryOverflow = false;
            timedKernels.Clear();
        }
        recording = true;
    }

    /// <summary>Records one dispatch of <paramref name="pipeline"/>; binding i is the shader's binding i.</summary>
    public void Dispatch<TPush>(ComputePipeline pipeline, ReadOnlySpan<Binding> bindings, in TPush push,
        uint groupsX, uint groupsY = 1, uint groupsZ = 1) where TPush : unmanaged
    {
        if (bindings.Length != pipeline.Bindings)
            throw new ArgumentException($"{pipeline.Key} takes {pipeline.Bindings} bindings, got {bindings.Length}");
        if ((uint)Unsafe.SizeOf<TPush>() != pipeline.PushBytes)
            throw new ArgumentException($"{pipeline.Key}: push constants are {Unsafe.SizeOf<TPush>()} bytes, pipeline expects {pipeline.PushBytes}");
        if (groupsX == 0 || groupsY == 0 || groupsZ == 0) return;
        if (!recording) Begin();
        var vk = ctx.Vk;

        InsertBarrierIfDependent(bindings);

        var set = AllocateSet(pipeline);
        var infos = stackalloc DescriptorBufferInfo[bindings.Length];
        var writes = stackalloc WriteDescriptorSet[bindings.Length];
        for (var i = 0; i < bindings.Length; i++)
        {
            var t = bindings[i].Tensor;
            if (t.BindSize > ctx.Capabilities.MaxStorageBufferRange)
                throw new ArgumentException($"{pipeline.Key} binding {i}: {t.BindSize} bytes exceed maxStorageBufferRange {ctx.Capabilities.MaxStorageBufferRange}; split the tensor");
            infos[i] = new DescriptorBufferInfo { Buffer = t.Buffer, Offset = t.Offset, Range = t.BindSize };
            writes[i] = new WriteDescriptorSet
            {
                SType = StructureType.WriteDescriptorSet,
                DstSet = set,
                DstBinding = (uint)i,
                DescriptorCount = 1,
                DescriptorType = DescriptorType.StorageBuffer,
                PBufferInfo = &infos[i],
            };
        }
        vk.UpdateDescriptorSets(ctx.Device, (uint)bindings.Length, writes, 0, null);

        vk.CmdBindPipeline(cmd, PipelineBindPoint.Compute, pipeline.Handle);
        vk.CmdBindDescriptorSets(cmd, PipelineBindPoint.Compute, pipeline.Layout, 0, 1, &set, 0, null);
        if (pipeline.PushBytes > 0)
        {
            var copy = push;
            vk.CmdPushConstants(cmd, pipeline.Layout, ShaderStageFlags.ComputeBit, 0, pipeline.PushBytes, &copy);
        }

        var timed = ctx.Profiler is not null && queriesUsed + 2 <= queryCapacity;
        if (ctx.Profiler is not null && !timed) queryOverflow = true;
        if (timed) vk.CmdWriteTimestamp(cmd, PipelineStageFlags.ComputeShaderBit, queryPool, queriesUsed);
        vk.CmdDispatch(cmd, groupsX, groupsY, groupsZ);
        if (timed)
        {
            vk.CmdWriteTimestamp(cmd, PipelineStageFlags.BottomOfPipeBit, queryPool, queriesUsed + 1);
            queriesUsed += 2;
            timedKernels.Add(pipeline.Key);
        }
        DispatchCount++;

        foreach (var b in bindings)
        {
            var range = (b.Tensor.Buffer.Handle, b.Tensor.Offset, b.Tensor.BindSize);
            if (b.Access != Access.Write) pendingReads.Add(range);
            if (b.Access != Access.Read) pendingWrites.Add(range);
        }
    }

    void InsertBarrierIfDependent(ReadOnlySpan<Binding> bindings)
    {
        var hazard = false;
        foreach (var b in bindings)
        {
            var (buf, off, size) = (b.Tensor.Buffer.Handle, b.Tensor.Offset, b.Tensor.BindSize);
            // Read after write and write after write need the earlier writes made visible;
            // write after read only needs the earlier reads finished (execution dependency).
            if (Overlaps(pendingWrites, buf, off, size)) hazard = true;
            if (b.Access != Access.Read && Overlaps(pendingReads, buf, off, size)) hazard = true;
            if (hazard) break;
        }
        if (!hazard) return;

        var count = pendingWrites.Count;
        var barriers = stackalloc BufferMemoryBarrier[Math.Max(count, 1)];
        for (var i = 0; i < count; i++)
        {
            var (buf, off, size) = pendingWrites[i];
            barriers[i] = new BufferMemoryBarrier
            {
                SType = StructureType.BufferMemoryBarrier,
                SrcAccessMask = AccessFlags.ShaderWriteBit,
                DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit,
                SrcQueueFamilyIndex = Vk.QueueFamilyIgnored,
                DstQueueFamilyIndex = Vk.QueueFamilyIgnored,
                Buffer = new Silk.NET.Vulkan.Buffer(buf),
                Offset = off,
                Size = size,
            };
        }
        ctx.Vk.CmdPipelineBarrier(cmd, PipelineStageFlags.ComputeShaderBit, PipelineStageFlags.ComputeShaderBit, 0,
            0, null, (uint)count, count > 0 ? barriers : null, 0, null);
        BarrierCount++;
        pendingWrites.Clear();
        pendingReads.Clear();
    }

    static bool Overlaps(List<(ulong Buffer, ulong Offset, ulong Size)> ranges, ulong buffer, ulong offset, ulong size)
    {
        foreach (var r in ranges)
            if (r.Buffer == buffer && r.Offset < offset + size && offset < r.Offset + r.Size) return true;
        return false;
    }

    DescriptorSet AllocateSet(ComputePipeline pipeline)
    {
        var need = (uint)pipeline.Bindings;
        if (need > DescriptorsPerSet) throw new ArgumentException($"{pipeline.Key}: more than {DescriptorsPerSet} bindings");
        // Switch pools before one runs out, instead of relying on VK_ERROR_OUT_OF_POOL_MEMORY.
        while (currentPool < pools.Count &&
               (pools[currentPool].Sets + 1 > SetsPerPool || pools[currentPool].Descriptors + need > SetsPerPool * DescriptorsPerSet))
            currentPool++;
        if (currentPool == pools.Count) pools.Add((CreateDescriptorPool(), 0, 0));
        var (pool, sets, descriptors) = pools[currentPool];
        pools[currentPool] = (pool, sets + 1, descriptors + need);

        var layout = pipeline.SetLayout;
        var info = new DescriptorSetAllocateInfo
        {
            SType = StructureType.DescriptorSetAllocateInfo,
            DescriptorPool = pool,
            DescriptorSetCount = 1,
            PSetLayouts = &layout,
        };
        ctx.Vk.AllocateDescriptorSets(ctx.Device, &info, out var set).Check("vkAllocateDescriptorSets");
        return set;
    }

    DescriptorPool CreateDescriptorPool()
    {
        var size = new DescriptorPoolSize { Type = DescriptorType.StorageBuffer, DescriptorCount = SetsPerPool * DescriptorsPerSet };
        var info = new DescriptorPoolCreateInfo
        {
            SType = StructureType.DescriptorPoolCreateInfo,
            MaxSets = SetsPerPool,
            PoolSizeCount = 1,
            PPoolSizes = &size,
        };
        ctx.Vk.CreateDescriptorPool(ctx.Device, &info, null, out var pool).Check("vkCreateDescriptorPool");
        return pool;
    }

    void CreateQueryPool(uint capacity)
    {
        if (queryPool.Handle != 0) ctx.Vk.DestroyQueryPool(ctx.Device, queryPool, null);
        var info = new QueryPoolCreateInfo
        {
            SType = StructureType.QueryPoolCreateInfo,
            QueryType = QueryType.Timestamp,
            QueryCount = capacity,
        };
        ctx.Vk.CreateQueryPool(ctx.Device, &info, null, out queryPool).Check("vkCreateQueryPool");
        queryCapacity = capacity;
    }

    /// <summary>Submits everything recorded since the last submit and waits for it (one fence wait).</summary>
    public void Submit()
    {
        if (!recording) return;
        var vk = ctx.Vk;
        // Make shader writes visible to the host for mapped downloads after the fence.
        var toHost = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier,
            SrcAccessMask = AccessFlags.ShaderWriteBit,
            DstAccessMask = AccessFlags.HostReadBit,
        };
        vk.CmdPipelineBarrier(cmd, PipelineStageFlags.ComputeShaderBit, PipelineStageFlags.HostBit, 0, 1, &toHost, 0, null, 0, null);
        vk.EndCommandBuffer(cmd).Check("vkEndCommandBuffer");
        recording = false;

        var c = cmd;
        var submit = new SubmitInfo { SType = StructureType.SubmitInfo, CommandBufferCount = 1, PCommandBuffers = &c };
        vk.QueueSubmit(ctx.Queue, 1, &submit, fence).Check("vkQueueSubmit");
        var f = fence;
        vk.WaitForFences(ctx.Device, 1, &f, true, ulong.MaxValue).Check("vkWaitForFences");
        vk.ResetFences(ctx.Device, 1, &f).Check("vkResetFences");
        vk.ResetCommandBuffer(cmd, 0).Check("vkResetCommandBuffer");
        Submissions++;
        if (ctx.Profiler is not null && queriesUsed > 0) CollectTimestamps();
    }

    void CollectTimestamps()
    {
        var stamps = new ulong[queriesUsed];
        fixed (ulong* p = stamps)
            ctx.Vk.GetQueryPoolResults(ctx.Device, queryPool, 0, queriesUsed, (nuint)(8 * queriesUsed), p, 8,
                QueryResultFlags.Result64Bit | QueryResultFlags.ResultWaitBit).Check("vkGetQueryPoolResults");
        var bits = ctx.Capabilities.TimestampValidBits;
        var mask = bits >= 64 ? ulong.MaxValue : (1UL << (int)bits) - 1;
        for (var i = 0; i < timedKernels.Count; i++)
        {
            var ticks = (stamps[2 * i + 1] - stamps[2 * i]) & mask;
            ctx.Profiler!.Add(timedKernels[i], ticks * (double)ctx.Capabilities.TimestampPeriodNs);
        }
    }

    public void Dispose()
    {
        var vk = ctx.Vk;
        if (recording)
        {
            vk.EndCommandBuffer(cmd);
            recording = false;
        }
        foreach (var p in pools) vk.DestroyDescriptorPool(ctx.Device, p.Pool, null);
        if (queryPool.Handle != 0) vk.DestroyQueryPool(ctx.Device, queryPool, null);
        vk.DestroyFence(ctx.Device, fence, null);
        vk.DestroyCommandPool(ctx.Device, commandPool, null);
    }
}
