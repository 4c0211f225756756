// What the chosen device can do, queried once at start; kernels pick variants from it.
namespace Palm.Gpu.Vulkan;

internal sealed record GpuCapabilities
{
    public required string DeviceName { get; init; }
    public required string DeviceType { get; init; }
    public required uint VendorId { get; init; }
    public required uint DeviceId { get; init; }
    public required Version ApiVersion { get; init; }

    public required uint SubgroupSize { get; init; }
    public required uint MinSubgroupSize { get; init; }
    public required uint MaxSubgroupSize { get; init; }
    public required bool SubgroupSizeControl { get; init; }
    public required bool SubgroupArithmetic { get; init; }
    public required bool SubgroupShuffle { get; init; }
    public required bool SubgroupBallot { get; init; }

    public required bool ShaderFloat16 { get; init; }
    public required bool StorageBuffer16BitAccess { get; init; }
    /// <summary>f16 arithmetic on f16 buffers (linear_half, and a prerequisite of linear_coopmat); both features are enabled when present.</summary>
    public bool HalfArithmetic => ShaderFloat16 && StorageBuffer16BitAccess;
    public required bool VulkanMemoryModel { get; init; }

    /// <summary>Every cooperative-matrix shape the device reports (KHR and NV lists), for the record.</summary>
    public required IReadOnlyList<CoopMatProperty> CooperativeMatrixProperties { get; init; }
    /// <summary>
    /// The VK_NV_cooperative_matrix shape (f16 * f16 + f32 -> f32, subgroup scope) that linear_coopmat
    /// runs, enabled at device creation; null when the device lacks one or a prerequisite
    /// (half arithmetic, the Vulkan memory model, compute-stage support).
    /// </summary>
    public required CoopMatShape? CooperativeMatrix { get; init; }

    public required bool Timestamps { get; init; }
    /// <summary>Nanoseconds per timestamp tick.</summary>
    public required float TimestampPeriodNs { get; init; }
    public required uint TimestampValidBits { get; init; }

    public required uint MaxWorkgroupInvocations { get; init; }
    public required uint MaxWorkgroupCountX { get; init; }
    public required uint MaxSharedMemoryBytes { get; init; }
    public required ulong MaxStorageBufferRange { get; init; }
    public required uint MaxPushConstantsBytes { get; init; }
    /// <summary>Storage buffers one compute shader may bind (Vulkan guarantees only 4; desktop drivers and lavapipe allow far more; the MEAN AoD backward needs 9).</summary>
    public required uint MaxStorageBuffersPerStage { get; init; }
    public required ulong MinStorageBufferOffsetAlignment { get; init; }

    /// <summary>Device-local memory is also host-visible (UMA, resizable BAR): tensors are mapped, no staging.</summary>
    public required bool DeviceLocalIsHostVisible { get; init; }

    public override string ToString() =>
        $"{DeviceName} ({DeviceType}, Vulkan {ApiVersion}), subgroup {SubgroupSize} [{MinSubgroupSize}..{MaxSubgroupSize}]" +
        $"{(SubgroupArithmetic ? " arith" : "")}{(SubgroupShuffle ? " shuffle" : "")}, fp16 {ShaderFloat16}, 16-bit storage {StorageBuffer16BitAccess}, " +
        $"cooperative matrix {(CooperativeMatrix is { } s ? "NV " + s : "none")}, " +
        $"timestamps {Timestamps}, shared {MaxSharedMemoryBytes / 1024} KiB, mapped device memory {DeviceLocalIsHostVisible}";
}
