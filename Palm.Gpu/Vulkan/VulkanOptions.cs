// Run-time options of the Vulkan backend; defaults come from PALM_VK_* environment variables.
namespace Palm.Gpu.Vulkan;

internal sealed record VulkanOptions
{
    /// <summary>Enable VK_LAYER_KHRONOS_validation (PALM_VK_VALIDATION=1).</summary>
    public bool Validation { get; init; }

    /// <summary>Fail instead of running without validation when the layer is missing (tests).</summary>
    public bool RequireValidation { get; init; }

    /// <summary>Device index or case-insensitive name substring (PALM_VK_DEVICE); null = best.</summary>
    public string? Device { get; init; }

    /// <summary>Folder of the persisted VkPipelineCache (PALM_VK_CACHE_DIR).</summary>
    public string PipelineCacheDir { get; init; } = DefaultCacheDir();

    /// <summary>Per-kernel GPU timestamps, printed as a table at dispose (PALM_VK_PROFILE=1).</summary>
    public bool Profile { get; init; }

    /// <summary>Use staging copies even when device memory is host-visible (tests the discrete-GPU path).</summary>
    public bool ForceStaging { get; init; }

    /// <summary>Tests: treat mapped device memory as uncached (a discrete GPU's BAR), so large reads stage.</summary>
    internal bool UncachedMapping { get; init; }

    /// <summary>
    /// Where non-greedy rows are sampled: true = on the host from their downloaded logits, false =
    /// on the GPU (only ids come back), null = on the host only when the device is the CPU itself
    /// (lavapipe: no bus to spare, and the host sampler measured faster there; `gpu-sample` bench).
    /// PALM_VK_HOST_SAMPLING=1 or 0 sets it; forcing either side is also how the two are compared.
    /// </summary>
    public bool? HostSampling { get; init; }

    /// <summary>
    /// Linears with f16 weights multiply in half precision (f32 sums): through cooperative matrices
    /// where the device has them (M of at least <c>Linear.CoopMatMinRows</c>), else the f16 SIMT
    /// kernel where it has shaderFloat16 and 16-bit storage, else as before (PALM_VK_HALF_ARITH=1).
    /// Off by default: activations rounded to half cost accuracy (about 1e-3 relative), and neither
    /// kernel has been measured faster than the f32-arithmetic one on a real GPU yet.
    /// </summary>
    public bool HalfArithmetic { get; init; }

    /// <summary>
    /// Enable VK_NV_cooperative_matrix at device creation where it is usable (PALM_VK_COOPMAT=1;
    /// implied by <see cref="HalfArithmetic"/>). Off by default: only the half-arithmetic linears
    /// (themselves off by default) use it, and it has run on one GPU so far (an H200, where
    /// linear_coopmat passed its conformance checks at 5 % of cuBLAS fp16). scripts/gpu-check.sh and
    /// the GPU tests turn it on.
    /// </summary>
    public bool CooperativeMatrix { get; init; }

    /// <summary>Whether the context asks for cooperative matrices (either option above).</summary>
    internal bool WantsCooperativeMatrix => CooperativeMatrix || HalfArithmetic;

    /// <summary>Size of the device memory blocks that tensors are sub-allocated from.</summary>
    public ulong BlockBytes { get; init; } = 64UL << 20;

    public static VulkanOptions FromEnvironment() => new()
    {
        Validation = Environment.GetEnvironmentVariable("PALM_VK_VALIDATION") == "1",
        Device = NullIfEmpty(Environment.GetEnvironmentVariable("PALM_VK_DEVICE")),
        PipelineCacheDir = NullIfEmpty(Environment.GetEnvironmentVariable("PALM_VK_CACHE_DIR")) ?? DefaultCacheDir(),
        Profile = Environment.GetEnvironmentVariable("PALM_VK_PROFILE") == "1",
        HostSampling = Environment.GetEnvironmentVariable("PALM_VK_HOST_SAMPLING") switch { "1" => true, "0" => false, _ => null },
        HalfArithmetic = Environment.GetEnvironmentVariable("PALM_VK_HALF_ARITH") == "1",
        CooperativeMatrix = Environment.GetEnvironmentVariable("PALM_VK_COOPMAT") == "1",
    };

    static string? NullIfEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;

    static string DefaultCacheDir()
    {
        // XDG on Linux, LocalApplicationData elsewhere (~/.cache is its Linux value anyway).
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        var root = !string.IsNullOrEmpty(xdg) ? xdg
            : OperatingSystem.IsWindows() ? Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData)
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "palm-native");
    }
}
