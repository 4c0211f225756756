// The AoD states of many sequences resident in device memory: per block application S (and Z
// for mean mixing) as (capacity, D), one row per slot. A model keeps one pool for all its
// sessions; a decoding step names its members' rows (the aod kernel reads slot[b]), so a state
// never moves while its sequence lives. Growing reallocates and copies the old rows on the GPU.
// Row reads and writes exist for the rare moments the host needs a state (save, fork, restore).
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Model;

internal sealed class GpuStatePool : IDisposable
{
    readonly VulkanContext ctx;
    readonly int d;

    internal GpuStatePool(VulkanContext ctx, GpuModelConfig config, int capacity)
    {
        if (capacity <= 0) throw new ArgumentOutOfRangeException(nameof(capacity), "capacity must be > 0");
        this.ctx = ctx;
        d = config.DQkv;
        S = new GpuTensor[config.Applications];
        Z = config.MeanMix ? new GpuTensor[config.Applications] : null;
        Allocate(S, Z, capacity);
        Capacity = capacity;
    }

    /// <summary>Rows (slots) per application.</summary>
    public int Capacity { get; private set; }

    /// <summary>S per application, (capacity, D).</summary>
    internal GpuTensor[] S { get; }

    /// <summary>Z per application, (capacity, D); null for aod_mix = sum.</summary>
    internal GpuTensor[]? Z { get; }

    /// <summary>Device bytes the pool holds.</summary>
    public long Bytes => (long)Capacity * d * sizeof(float) * S.Length * (Z is null ? 1 : 2);

    // Rows are written before a sequence first reads them, so fresh memory is left as it is.
    void Allocate(GpuTensor[] s, GpuTensor[]? z, int capacity)
    {
        for (var a = 0; a < s.Length; a++)
        {
            s[a] = ctx.CreateTensor(GpuDType.F32, capacity, d);
            if (z is not null) z[a] = ctx.CreateTensor(GpuDType.F32, capacity, d);
        }
    }

    /// <summary>
    /// Reallocates every tensor with <paramref name="capacity"/> rows and copies the existing rows
    /// on the device (one submission). The caller must hold no recording that binds the old tensors.
    /// </summary>
    public void Grow(int capacity)
    {
        if (capacity <= Capacity) throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity {capacity} must exceed the current {Capacity}");
        var s = new GpuTensor[S.Length];
        var z = Z is null ? null : new GpuTensor[Z.Length];
        Allocate(s, z, capacity);
        var copies = new List<(GpuAllocation, GpuAllocation, ulong)>();
        var bytes = (ulong)Capacity * (ulong)d * sizeof(float);
        for (var a = 0; a < S.Length; a++)
        {
            copies.Add((S[a].Allocation, s[a].Allocation, bytes));
            if (Z is not null) copies.Add((Z[a].Allocation, z![a].Allocation, bytes));
        }
        ctx.Transfers.CopyOnDevice(copies);
        for (var a = 0; a < S.Length; a++)
        {
            S[a].Dispose();
            S[a] = s[a];
            if (Z is not null)
            {
                Z[a].Dispose();
                Z[a] = z![a];
            }
        }
        Capacity = capacity;
    }

    /// <summary>Writes row <paramref name="slot"/> of application <paramref name="app"/>: s (D), z (D, mean mixing only, else empty).</summary>
    public void WriteRow(int slot, int app, ReadOnlySpan<float> s, ReadOnlySpan<float> z)
    {
        CheckRow(slot, s.Length, z.Length);
        S[app].Upload(s, (long)slot * d);
        Z?[app].Upload(z, (long)slot * d);
    }

    /// <summary>Reads row <paramref name="slot"/> of application <paramref name="app"/> into s (D) and z (D, mean mixing only, else empty).</summary>
    public void ReadRow(int slot, int app, Span<float> s, Span<float> z)
    {
        CheckRow(slot, s.Length, z.Length);
        S[app].Download(s, (long)slot * d);
        Z?[app].Download(z, (long)slot * d);
    }

    void CheckRow(int slot, int sLength, int zLength)
    {
        if ((uint)slot >= (uint)Capacity) throw new ArgumentOutOfRangeException(nameof(slot), $"slot {slot} outside [0, {Capacity})");
        if (sLength != d || zLength != (Z is null ? 0 : d))
            throw new ArgumentException($"a row is D = {d} floats of S{(Z is null ? "" : " and of Z")}, got {sLength} and {zLength}");
    }

    public void Dispose()
    {
        foreach (var t in S) t.Dispose();
        if (Z is not null) foreach (var t in Z) t.Dispose();
    }
}
