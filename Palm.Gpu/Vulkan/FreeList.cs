// Offset bookkeeping for one memory block: first-fit over free ranges kept sorted by offset,
// neighbours merged on free. Pure arithmetic, so it is unit-tested without a device.
namespace Palm.Gpu.Vulkan;

internal sealed class FreeList
{
    readonly List<(ulong Offset, ulong Size)> free = new();

    public FreeList(ulong capacity)
    {
        Capacity = capacity;
        free.Add((0, capacity));
    }

    public ulong Capacity { get; }
    public ulong FreeBytes => free.Aggregate(0UL, (s, r) => s + r.Size);
    public bool IsEmpty => free.Count == 1 && free[0].Size == Capacity;
    public int FragmentCount => free.Count;

    /// <summary>Reserves <paramref name="size"/> bytes at an offset that is a multiple of <paramref name="alignment"/>.</summary>
    public bool TryAllocate(ulong size, ulong alignment, out ulong offset)
    {
        for (var i = 0; i < free.Count; i++)
        {
            var (start, length) = free[i];
            var aligned = (start + alignment - 1) / alignment * alignment;
            var pad = aligned - start;
            if (pad + size > length) continue;
            // Keep the alignment padding and the tail as separate free ranges.
            free.RemoveAt(i);
            var tail = length - pad - size;
            if (tail > 0) free.Insert(i, (aligned + size, tail));
            if (pad > 0) free.Insert(i, (start, pad));
            offset = aligned;
            return true;
        }
        offset = 0;
        return false;
    }

    public void Free(ulong offset, ulong size)
    {
        var i = 0;
        while (i < free.Count && free[i].Offset < offset) i++;
        if (i > 0 && free[i - 1].Offset + free[i - 1].Size > offset)
            throw new InvalidOperationException($"double free or overlap at offset {offset}");
        if (i < free.Count && offset + size > free[i].Offset)
            throw new InvalidOperationException($"double free or overlap at offset {offset}");
        free.Insert(i, (offset, size));
        if (i + 1 < free.Count && offset + size == free[i + 1].Offset)
        {
            free[i] = (offset, size + free[i + 1].Size);
            free.RemoveAt(i + 1);
        }
        if (i > 0 && free[i - 1].Offset + free[i - 1].Size == offset)
        {
            free[i - 1] = (free[i - 1].Offset, free[i - 1].Size + free[i].Size);
            free.RemoveAt(i);
        }
    }
}
