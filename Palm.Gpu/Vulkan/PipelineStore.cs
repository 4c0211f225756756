// The one pipeline cache: compute pipelines created lazily, keyed by (shader variant,
// specialization constants), with descriptor-set and pipeline layouts shared by binding
// count / push-constant size. A VkPipelineCache is loaded from disk at start and saved at
// dispose so a second process start skips most of the driver's shader compilation.
using System.Diagnostics;
using System.Reflection;
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal sealed class ComputePipeline
{
    public required string Shader { get; init; }
    /// <summary>Shader plus specialization constants, also the profiler's kernel label.</summary>
    public required string Key { get; init; }
    public required Pipeline Handle { get; init; }
    public required PipelineLayout Layout { get; init; }
    public required DescriptorSetLayout SetLayout { get; init; }
    public required int Bindings { get; init; }
    public required uint PushBytes { get; init; }
    public required double CreateMs { get; init; }
    /// <summary>Driver reported a VkPipelineCache hit (pipeline creation feedback, Vulkan 1.3); null when unknown.</summary>
    public required bool? CacheHit { get; init; }
}

internal sealed unsafe class PipelineStore : IDisposable
{
    readonly VulkanContext ctx;
    readonly Dictionary<string, ComputePipeline> pipelines = new();
    readonly Dictionary<string, ShaderModule> modules = new();
    readonly Dictionary<int, DescriptorSetLayout> setLayouts = new();
    readonly Dictionary<(int, uint), PipelineLayout> layouts = new();
    readonly PipelineCache cache;

    public PipelineStore(VulkanContext ctx, string cacheDir)
    {
        this.ctx = ctx;
        var caps = ctx.Capabilities;
        CachePath = Path.Combine(cacheDir, $"pipelines-{caps.VendorId:x4}-{caps.DeviceId:x4}-{UuidHex(ctx)}.bin");
        byte[] initial = [];
        try
        {
            if (File.Exists(CachePath)) initial = File.ReadAllBytes(CachePath);
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"palm-vk: ignoring unreadable pipeline cache {CachePath}: {e.Message}");
        }
        // The driver validates the header (vendor, device, cache UUID) and ignores stale data.
        fixed (byte* p = initial)
        {
            var info = new PipelineCacheCreateInfo
            {
                SType = StructureType.PipelineCacheCreateInfo,
                InitialDataSize = (nuint)initial.Length,
                PInitialData = initial.Length > 0 ? p : null,
            };
            ctx.Vk.CreatePipelineCache(ctx.Device, &info, null, out cache).Check("vkCreatePipelineCache");
        }
        LoadedBytes = initial.Length;
    }

    public string CachePath { get; }
    /// <summary>Bytes of cache data found on disk at start.</summary>
    public int LoadedBytes { get; }
    public int Count => pipelines.Count;
    /// <summary>Wall time spent in vkCreateComputePipelines so far.</summary>
    public double CreateMs { get; private set; }

    public IReadOnlyCollection<ComputePipeline> All => pipelines.Values;

    /// <summary>The pipeline for a shader variant; <paramref name="spec"/> fills constant_id 0, 1, ... in order.</summary>
    public ComputePipeline Get(string shader, int bindings, uint pushBytes, params ReadOnlySpan<uint> spec)
    {
        var key = spec.Length == 0 ? shader : $"{shader}<{string.Join(",", spec.ToArray())}>";
        if (pipelines.TryGetValue(key, out var found))
        {
            if (found.Bindings != bindings || found.PushBytes != pushBytes)
                throw new InvalidOperationException($"{key} requested with {bindings} bindings / {pushBytes} push bytes, created with {found.Bindings} / {found.PushBytes}");
            return found;
        }
        if (pushBytes > ctx.Capabilities.MaxPushConstantsBytes)
            throw new InvalidOperationException($"{shader}: {pushBytes} push-constant bytes exceed the device's {ctx.Capabilities.MaxPushConstantsBytes}");
        // A clear error instead of a failed (or, without validation, undefined) pipeline layout on
        // a device below what the kernel binds.
        if ((uint)bindings > ctx.Capabilities.MaxStorageBuffersPerStage)
            throw new InvalidOperationException($"{shader}: {bindings} storage buffers exceed the device's per-stage limit of {ctx.Capabilities.MaxStorageBuffersPerStage} ({ctx.Capabilities.DeviceName})");
        var pipeline = Create(shader, key, bindings, pushBytes, spec);
        pipelines.Add(key, pipeline);
        return pipeline;
    }

    ComputePipeline Create(string shader, string key, int bindings, uint pushBytes, ReadOnlySpan<uint> spec)
    {
        var vk = ctx.Vk;
        var module = Module(shader);
        var layout = Layout(bindings, pushBytes, out var setLayout);

        var entries = new SpecializationMapEntry[spec.Length];
        for (var i = 0; i < spec.Length; i++)
            entries[i] = new SpecializationMapEntry { ConstantID = (uint)i, Offset = (uint)(4 * i), Size = 4 };
        var values = spec.ToArray();
        var entryName = stackalloc byte[] { (byte)'m', (byte)'a', (byte)'i', (byte)'n', 0 };

        // Creation feedback is core in 1.3 and tells whether the VkPipelineCache hit.
        var useFeedback = ctx.Capabilities.ApiVersion >= new Version(1, 3);
        var feedback = default(PipelineCreationFeedback);
        var stageFeedback = default(PipelineCreationFeedback);
        var feedbackInfo = new PipelineCreationFeedbackCreateInfo
        {
            SType = StructureType.PipelineCreationFeedbackCreateInfo,
            PPipelineCreationFeedback = &feedback,
            PipelineStageCreationFeedbackCount = 1,
            PPipelineStageCreationFeedbacks = &stageFeedback,
        };

        Pipeline handle;
        var sw = Stopwatch.StartNew();
        fixed (SpecializationMapEntry* e = entries)
        fixed (uint* v = values)
        {
            var specInfo = new SpecializationInfo
            {
                MapEntryCount = (uint)entries.Length,
                PMapEntries = e,
                DataSize = (nuint)(4 * values.Length),
                PData = v,
            };
            var info = new ComputePipelineCreateInfo
            {
                SType = StructureType.ComputePipelineCreateInfo,
                PNext = useFeedback ? &feedbackInfo : null,
                Stage = new PipelineShaderStageCreateInfo
                {
                    SType = StructureType.PipelineShaderStageCreateInfo,
                    Stage = ShaderStageFlags.ComputeBit,
                    Module = module,
                    PName = entryName,
                    PSpecializationInfo = spec.Length > 0 ? &specInfo : null,
                },
                Layout = layout,
            };
            vk.CreateComputePipelines(ctx.Device, cache, 1, &info, null, &handle).Check($"vkCreateComputePipelines({key})");
        }
        var ms = sw.Elapsed.TotalMilliseconds;
        CreateMs += ms;
        bool? hit = useFeedback && (feedback.Flags & PipelineCreationFeedbackFlags.ValidBit) != 0
            ? (feedback.Flags & PipelineCreationFeedbackFlags.ApplicationPipelineCacheHitBit) != 0
            : null;
        return new ComputePipeline
        {
            Shader = shader, Key = key, Handle = handle, Layout = layout, SetLayout = setLayout,
            Bindings = bindings, PushBytes = pushBytes, CreateMs = ms, CacheHit = hit,
        };
    }

    ShaderModule Module(string shader)
    {
        if (modules.TryGetValue(shader, out var m)) return m;
        var code = LoadSpirv(shader);
        fixed (byte* p = code)
        {
            var info = new ShaderModuleCreateInfo
            {
                SType = StructureType.ShaderModuleCreateInfo,
                CodeSize = (nuint)code.Length,
                PCode = (uint*)p,
            };
            ctx.Vk.CreateShaderModule(ctx.Device, &info, null, out m).Check($"vkCreateShaderModule({shader})");
        }
        modules.Add(shader, m);
        return m;
    }

    /// <summary>The SPIR-V that the build embedded for a shader variant (shaders/*.comp).</summary>
    public static byte[] LoadSpirv(string shader)
    {
        var name = $"Palm.Gpu.Shaders.{shader}.spv";
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new ArgumentException($"no embedded shader {name}: is it in shaders/ or a ShaderVariant item?", nameof(shader));
        var bytes = new byte[s.Length];
        s.ReadExactly(bytes);
        return bytes;
    }

    PipelineLayout Layout(int bindings, uint pushBytes, out DescriptorSetLayout setLayout)
    {
        var vk = ctx.Vk;
        if (!setLayouts.TryGetValue(bindings, out setLayout))
        {
            var b = new DescriptorSetLayoutBinding[bindings];
            for (var i = 0; i < bindings; i++)
                b[i] = new DescriptorSetLayoutBinding
                {
                    Binding = (uint)i,
                    DescriptorType = DescriptorType.StorageBuffer,
                    DescriptorCount = 1,
                    StageFlags = ShaderStageFlags.ComputeBit,
                };
            fixed (DescriptorSetLayoutBinding* p = b)
            {
                var info = new DescriptorSetLayoutCreateInfo
                {
                    SType = StructureType.DescriptorSetLayoutCreateInfo,
                    BindingCount = (uint)bindings,
                    PBindings = p,
                };
                vk.CreateDescriptorSetLayout(ctx.Device, &info, null, out setLayout).Check("vkCreateDescriptorSetLayout");
            }
            setLayouts.Add(bindings, setLayout);
        }
        if (layouts.TryGetValue((bindings, pushBytes), out var layout)) return layout;
        var range = new PushConstantRange { StageFlags = ShaderStageFlags.ComputeBit, Offset = 0, Size = pushBytes };
        var sl = setLayout;
        var layoutInfo = new PipelineLayoutCreateInfo
        {
            SType = StructureType.PipelineLayoutCreateInfo,
            SetLayoutCount = 1,
            PSetLayouts = &sl,
            PushConstantRangeCount = pushBytes > 0 ? 1u : 0u,
            PPushConstantRanges = pushBytes > 0 ? &range : null,
        };
        vk.CreatePipelineLayout(ctx.Device, &layoutInfo, null, out layout).Check("vkCreatePipelineLayout");
        layouts.Add((bindings, pushBytes), layout);
        return layout;
    }

    /// <summary>Writes the VkPipelineCache to <see cref="CachePath"/> (atomically: temp file + rename).</summary>
    public void Save()
    {
        nuint size = 0;
        ctx.Vk.GetPipelineCacheData(ctx.Device, cache, &size, null).Check("vkGetPipelineCacheData");
        var data = new byte[(int)size];
        fixed (byte* p = data) ctx.Vk.GetPipelineCacheData(ctx.Device, cache, &size, p).Check("vkGetPipelineCacheData");
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(CachePath)!);
            var tmp = $"{CachePath}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(tmp, data.AsSpan(0, (int)size).ToArray());
            File.Move(tmp, CachePath, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only cache folder costs start-up time, not correctness.
            Console.Error.WriteLine($"palm-vk: could not save pipeline cache {CachePath}: {e.Message}");
        }
    }

    static string UuidHex(VulkanContext ctx)
    {
        ctx.Vk.GetPhysicalDeviceProperties(ctx.PhysicalDevice, out var props);
        return Convert.ToHexString(new ReadOnlySpan<byte>(props.PipelineCacheUuid, 16)).ToLowerInvariant();
    }

    public void Dispose()
    {
        var vk = ctx.Vk;
        Save();
        foreach (var p in pipelines.Values) vk.DestroyPipeline(ctx.Device, p.Handle, null);
        foreach (var l in layouts.Values) vk.DestroyPipelineLayout(ctx.Device, l, null);
        foreach (var l in setLayouts.Values) vk.DestroyDescriptorSetLayout(ctx.Device, l, null);
        foreach (var m in modules.Values) vk.DestroyShaderModule(ctx.Device, m, null);
        vk.DestroyPipelineCache(ctx.Device, cache, null);
    }
}
