// The Vulkan backend's root object: instance (+ validation), physical device choice, logical
// device with one compute queue, and the services hanging off it (memory, pipelines,
// transfers, profiling). Not thread-safe: one thread drives a context, as with a CUDA stream.
using System.Runtime.InteropServices;
using Silk.NET.Core;
using Silk.NET.Core.Native;
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal sealed unsafe class VulkanContext : IDisposable
{
    const string ValidationLayer = "VK_LAYER_KHRONOS_validation";
    const string DebugUtilsExtension = "VK_EXT_debug_utils";
    const string ValidationFeaturesExtension = "VK_EXT_validation_features";

    public Vk Vk { get; }
    public Instance Instance { get; }
    public PhysicalDevice PhysicalDevice { get; }
    public Device Device { get; }
    public Queue Queue { get; }
    public uint QueueFamily { get; }
    public VulkanOptions Options { get; }
    public GpuCapabilities Capabilities { get; }
    /// <summary>Null unless validation is on.</summary>
    public DebugMessenger? Messenger { get; }
    public PhysicalDeviceMemoryProperties MemoryProperties { get; }

    internal MemoryAllocator Memory { get; }
    internal Transfers Transfers { get; }
    internal PipelineStore Pipelines { get; }
    internal KernelProfiler? Profiler { get; }

    readonly DebugUtilsMessengerEXT messenger;
    bool disposed;

    VulkanContext(Vk vk, Instance instance, DebugMessenger? debug, DebugUtilsMessengerEXT messengerHandle,
        PhysicalDevice physical, uint family, VulkanOptions options)
    {
        Vk = vk;
        Instance = instance;
        Messenger = debug;
        messenger = messengerHandle;
        PhysicalDevice = physical;
        QueueFamily = family;
        Options = options;

        vk.GetPhysicalDeviceMemoryProperties(physical, out var memProps);
        MemoryProperties = memProps;
        Capabilities = QueryCapabilities(vk, instance, physical, family, memProps, options.ForceStaging, options.WantsCooperativeMatrix);
        Device = CreateDevice(vk, physical, family, Capabilities);
        vk.GetDeviceQueue(Device, family, 0, out var queue);
        Queue = queue;

        var alignment = Math.Max(Capabilities.MinStorageBufferOffsetAlignment, 16);
        Memory = new MemoryAllocator(this, MemoryKind.Device, options.BlockBytes, alignment);
        Transfers = new Transfers(this);
        Pipelines = new PipelineStore(this, options.PipelineCacheDir);
        Profiler = options.Profile && Capabilities.Timestamps ? new KernelProfiler() : null;
    }

    /// <summary>Creates the backend.</summary>
    /// <exception cref="GpuUnavailableException">No Vulkan loader or no usable device.</exception>
    public static VulkanContext Create(VulkanOptions? options = null)
    {
        options ??= VulkanOptions.FromEnvironment();
        Vk vk;
        try
        {
            vk = Vk.GetApi();
        }
        catch (Exception e)
        {
            throw new GpuUnavailableException("the Vulkan loader (libvulkan.so.1) could not be loaded: run scripts/setup.sh", e);
        }

        var validation = options.Validation || options.RequireValidation;
        if (validation && !HasLayer(vk, ValidationLayer))
        {
            if (options.RequireValidation)
                throw new InvalidOperationException($"{ValidationLayer} is not installed: run scripts/setup.sh (Debian package vulkan-validationlayers)");
            Console.Error.WriteLine($"palm-vk: {ValidationLayer} not installed; running without validation");
            validation = false;
        }

        var debug = validation ? new DebugMessenger() : null;
        Instance instance;
        try
        {
            instance = CreateInstance(vk, debug);
        }
        catch (VulkanException e) when (e.Result is Result.ErrorIncompatibleDriver or Result.ErrorInitializationFailed)
        {
            debug?.Dispose();
            throw new GpuUnavailableException("no Vulkan driver is installed (vkCreateInstance: " + e.Result + ")", e);
        }

        var messengerHandle = default(DebugUtilsMessengerEXT);
        if (debug is not null)
        {
            var create = (delegate* unmanaged[Cdecl]<Instance, DebugUtilsMessengerCreateInfoEXT*, AllocationCallbacks*, DebugUtilsMessengerEXT*, Result>)
                vk.GetInstanceProcAddr(instance, "vkCreateDebugUtilsMessengerEXT").Handle;
            var info = debug.CreateInfo();
            create(instance, &info, null, &messengerHandle).Check("vkCreateDebugUtilsMessengerEXT");
        }

        try
        {
            var (physical, family) = PickDevice(vk, instance, options.Device);
            return new VulkanContext(vk, instance, debug, messengerHandle, physical, family, options);
        }
        catch
        {
            DestroyInstance(vk, instance, messengerHandle, debug);
            throw;
        }
    }

    static bool HasLayer(Vk vk, string name)
    {
        uint count = 0;
        vk.EnumerateInstanceLayerProperties(ref count, null).Check("vkEnumerateInstanceLayerProperties");
        var layers = new LayerProperties[count];
        fixed (LayerProperties* p = layers) vk.EnumerateInstanceLayerProperties(ref count, p).Check("vkEnumerateInstanceLayerProperties");
        foreach (var l in layers)
            if (Marshal.PtrToStringUTF8((nint)l.LayerName) == name) return true;
        return false;
    }

    static Instance CreateInstance(Vk vk, DebugMessenger? debug)
    {
        uint loaderVersion = Vk.Version11;
        vk.EnumerateInstanceVersion(ref loaderVersion);
        var appName = (byte*)SilkMarshal.StringToPtr("Palm.Native");
        var layers = (byte**)SilkMarshal.StringArrayToPtr(new[] { ValidationLayer });
        var extensions = (byte**)SilkMarshal.StringArrayToPtr(new[] { DebugUtilsExtension, ValidationFeaturesExtension });
        try
        {
            var app = new ApplicationInfo
            {
                SType = StructureType.ApplicationInfo,
                PApplicationName = appName,
                PEngineName = appName,
                // Ask for 1.3 where the loader knows it; devices are still filtered for >= 1.2.
                ApiVersion = Math.Min(loaderVersion, (uint)Vk.Version13),
            };
            var info = new InstanceCreateInfo { SType = StructureType.InstanceCreateInfo, PApplicationInfo = &app };
            var debugInfo = default(DebugUtilsMessengerCreateInfoEXT);
            // Synchronization validation checks every barrier the recorder inserts (and misses).
            var enabled = ValidationFeatureEnableEXT.SynchronizationValidationExt;
            var features = new ValidationFeaturesEXT
            {
                SType = StructureType.ValidationFeaturesExt,
                EnabledValidationFeatureCount = 1,
                PEnabledValidationFeatures = &enabled,
            };
            if (debug is not null)
            {
                debugInfo = debug.CreateInfo();
                info.PNext = &debugInfo;
                info.EnabledLayerCount = 1;
                info.PpEnabledLayerNames = layers;
                info.EnabledExtensionCount = 2;
                info.PpEnabledExtensionNames = extensions;
                debugInfo.PNext = &features;
            }
            vk.CreateInstance(&info, null, out var instance).Check("vkCreateInstance");
            return instance;
        }
        finally
        {
            SilkMarshal.Free((nint)appName);
            SilkMarshal.Free((nint)layers);
            SilkMarshal.Free((nint)extensions);
        }
    }

    static (PhysicalDevice, uint) PickDevice(Vk vk, Instance instance, string? selector)
    {
        uint count = 0;
        vk.EnumeratePhysicalDevices(instance, ref count, null).Check("vkEnumeratePhysicalDevices");
        var all = new PhysicalDevice[count];
        if (count > 0)
            fixed (PhysicalDevice* p = all) vk.EnumeratePhysicalDevices(instance, ref count, p).Check("vkEnumeratePhysicalDevices");

        var usable = new List<(PhysicalDevice Device, uint Family, DeviceCandidate Candidate)>();
        foreach (var pd in all)
        {
            vk.GetPhysicalDeviceProperties(pd, out var props);
            // Shaders are compiled for Vulkan 1.2 (SPIR-V 1.5).
            if (props.ApiVersion < Vk.Version12) continue;
            var family = ComputeFamily(vk, pd);
            if (family is null) continue;
            usable.Add((pd, family.Value, new DeviceCandidate(Marshal.PtrToStringUTF8((nint)props.DeviceName) ?? "?", props.DeviceType)));
        }
        var chosen = DeviceSelection.Choose(usable.Select(u => u.Candidate).ToList(), selector);
        return (usable[chosen].Device, usable[chosen].Family);
    }

    static uint? ComputeFamily(Vk vk, PhysicalDevice pd)
    {
        uint count = 0;
        vk.GetPhysicalDeviceQueueFamilyProperties(pd, ref count, null);
        var families = new QueueFamilyProperties[count];
        fixed (QueueFamilyProperties* p = families) vk.GetPhysicalDeviceQueueFamilyProperties(pd, ref count, p);
        uint? any = null;
        for (uint i = 0; i < count; i++)
        {
            if ((families[i].QueueFlags & QueueFlags.ComputeBit) == 0) continue;
            // Prefer a family that can write timestamps, so PALM_VK_PROFILE works.
            if (families[i].TimestampValidBits > 0) return i;
            any ??= i;
        }
        return any;
    }

    static GpuCapabilities QueryCapabilities(Vk vk, Instance instance, PhysicalDevice pd, uint family, PhysicalDeviceMemoryProperties mem, bool forceStaging, bool wantCoopMat)
    {
        var extensions = CooperativeMatrix.DeviceExtensions(vk, pd);
        var hasNvCoopMat = extensions.Contains(CooperativeMatrix.NvExtension);
        var subgroup = new PhysicalDeviceSubgroupProperties { SType = StructureType.PhysicalDeviceSubgroupProperties };
        var sizeControl = new PhysicalDeviceSubgroupSizeControlProperties { SType = StructureType.PhysicalDeviceSubgroupSizeControlProperties };
        var coopProps = new PhysicalDeviceCooperativeMatrixPropertiesNV { SType = StructureType.PhysicalDeviceCooperativeMatrixPropertiesNV };
        vk.GetPhysicalDeviceProperties(pd, out var basic);
        var v13 = basic.ApiVersion >= Vk.Version13;
        subgroup.PNext = v13 ? &sizeControl : null;
        if (hasNvCoopMat)
        {
            coopProps.PNext = subgroup.PNext;
            subgroup.PNext = &coopProps;
        }
        var props2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &subgroup };
        vk.GetPhysicalDeviceProperties2(pd, &props2);
        var props = props2.Properties;
        var limits = props.Limits;

        var f11 = new PhysicalDeviceVulkan11Features { SType = StructureType.PhysicalDeviceVulkan11Features };
        var f12 = new PhysicalDeviceVulkan12Features { SType = StructureType.PhysicalDeviceVulkan12Features, PNext = &f11 };
        var f13 = new PhysicalDeviceVulkan13Features { SType = StructureType.PhysicalDeviceVulkan13Features, PNext = &f12 };
        var coopFeatures = new PhysicalDeviceCooperativeMatrixFeaturesNV { SType = StructureType.PhysicalDeviceCooperativeMatrixFeaturesNV };
        var features = new PhysicalDeviceFeatures2 { SType = StructureType.PhysicalDeviceFeatures2, PNext = v13 ? &f13 : &f12 };
        if (hasNvCoopMat)
        {
            coopFeatures.PNext = features.PNext;
            features.PNext = &coopFeatures;
        }
        vk.GetPhysicalDeviceFeatures2(pd, &features);

        // linear_coopmat also needs half arithmetic (its staging), the Vulkan memory model
        // (GL_NV_cooperative_matrix requires it in SPIR-V) and one fixed subgroup size (its
        // indexing is laid out for the size the host passes).
        var coopList = CooperativeMatrix.Query(vk, instance, pd, extensions);
        var coopUsable = hasNvCoopMat && coopFeatures.CooperativeMatrix && f12.VulkanMemoryModel && f12.ShaderFloat16
                         && f11.StorageBuffer16BitAccess && (coopProps.CooperativeMatrixSupportedStages & ShaderStageFlags.ComputeBit) != 0
                         && (!v13 || sizeControl.MinSubgroupSize == sizeControl.MaxSubgroupSize);

        uint count = 0;
        vk.GetPhysicalDeviceQueueFamilyProperties(pd, ref count, null);
        var families = new QueueFamilyProperties[count];
        fixed (QueueFamilyProperties* p = families) vk.GetPhysicalDeviceQueueFamilyProperties(pd, ref count, p);
        var tsBits = families[family].TimestampValidBits;

        var ops = subgroup.SupportedOperations;
        var computeStage = (subgroup.SupportedStages & ShaderStageFlags.ComputeBit) != 0;
        MemoryAllocator.ChooseType(mem, uint.MaxValue, MemoryKind.Device, forceStaging, out var mapped, out _);
        return new GpuCapabilities
        {
            DeviceName = Marshal.PtrToStringUTF8((nint)props.DeviceName) ?? "?",
            DeviceType = props.DeviceType.ToString(),
            VendorId = props.VendorID,
            DeviceId = props.DeviceID,
            ApiVersion = new Version((int)(props.ApiVersion >> 22), (int)((props.ApiVersion >> 12) & 0x3ff), (int)(props.ApiVersion & 0xfff)),
            SubgroupSize = subgroup.SubgroupSize,
            MinSubgroupSize = v13 ? sizeControl.MinSubgroupSize : subgroup.SubgroupSize,
            MaxSubgroupSize = v13 ? sizeControl.MaxSubgroupSize : subgroup.SubgroupSize,
            SubgroupSizeControl = v13 && (bool)f13.SubgroupSizeControl && (bool)f13.ComputeFullSubgroups,
            SubgroupArithmetic = computeStage && (ops & SubgroupFeatureFlags.ArithmeticBit) != 0,
            SubgroupShuffle = computeStage && (ops & SubgroupFeatureFlags.ShuffleBit) != 0,
            SubgroupBallot = computeStage && (ops & SubgroupFeatureFlags.BallotBit) != 0,
            ShaderFloat16 = f12.ShaderFloat16,
            StorageBuffer16BitAccess = f11.StorageBuffer16BitAccess,
            VulkanMemoryModel = f12.VulkanMemoryModel,
            CooperativeMatrixProperties = coopList,
            // Usable and asked for (VulkanOptions.CooperativeMatrix): CreateDevice enables it only then.
            CooperativeMatrix = coopUsable && wantCoopMat ? CooperativeMatrix.Choose(coopList) : null,
            Timestamps = tsBits > 0 && limits.TimestampPeriod > 0,
            TimestampPeriodNs = limits.TimestampPeriod,
            TimestampValidBits = tsBits,
            MaxWorkgroupInvocations = limits.MaxComputeWorkGroupInvocations,
            MaxWorkgroupCountX = limits.MaxComputeWorkGroupCount[0],
            MaxSharedMemoryBytes = limits.MaxComputeSharedMemorySize,
            MaxStorageBufferRange = limits.MaxStorageBufferRange,
            MaxPushConstantsBytes = limits.MaxPushConstantsSize,
            MaxStorageBuffersPerStage = Math.Min(limits.MaxPerStageDescriptorStorageBuffers, limits.MaxDescriptorSetStorageBuffers),
            MinStorageBufferOffsetAlignment = limits.MinStorageBufferOffsetAlignment,
            DeviceLocalIsHostVisible = mapped,
        };
    }

    static Device CreateDevice(Vk vk, PhysicalDevice pd, uint family, GpuCapabilities caps)
    {
        var priority = 1f;
        var queueInfo = new DeviceQueueCreateInfo
        {
            SType = StructureType.DeviceQueueCreateInfo,
            QueueFamilyIndex = family,
            QueueCount = 1,
            PQueuePriorities = &priority,
        };
        // Enable only what is both supported and useful to later kernels (fp16 weights and f16
        // arithmetic, subgroup-size control, cooperative matrices); an unsupported feature would
        // fail device creation.
        var coop = caps.CooperativeMatrix is not null;
        var f11 = new PhysicalDeviceVulkan11Features
        {
            SType = StructureType.PhysicalDeviceVulkan11Features,
            StorageBuffer16BitAccess = caps.StorageBuffer16BitAccess,
        };
        var f12 = new PhysicalDeviceVulkan12Features
        {
            SType = StructureType.PhysicalDeviceVulkan12Features,
            PNext = &f11,
            ShaderFloat16 = caps.ShaderFloat16,
            VulkanMemoryModel = coop,
        };
        var f13 = new PhysicalDeviceVulkan13Features
        {
            SType = StructureType.PhysicalDeviceVulkan13Features,
            PNext = &f12,
            SubgroupSizeControl = caps.SubgroupSizeControl,
            ComputeFullSubgroups = caps.SubgroupSizeControl,
        };
        var coopFeatures = new PhysicalDeviceCooperativeMatrixFeaturesNV
        {
            SType = StructureType.PhysicalDeviceCooperativeMatrixFeaturesNV,
            PNext = caps.ApiVersion >= new Version(1, 3) ? &f13 : &f12,
            CooperativeMatrix = true,
        };
        var extensions = (byte**)SilkMarshal.StringArrayToPtr(coop ? new[] { CooperativeMatrix.NvExtension } : []);
        try
        {
            var info = new DeviceCreateInfo
            {
                SType = StructureType.DeviceCreateInfo,
                PNext = coop ? &coopFeatures : coopFeatures.PNext,
                QueueCreateInfoCount = 1,
                PQueueCreateInfos = &queueInfo,
                EnabledExtensionCount = coop ? 1u : 0u,
                PpEnabledExtensionNames = coop ? extensions : null,
            };
            vk.CreateDevice(pd, &info, null, out var device).Check("vkCreateDevice");
            return device;
        }
        finally
        {
            SilkMarshal.Free((nint)extensions);
        }
    }

    /// <summary>A tensor in device memory, sub-allocated from a shared block. Contents undefined.</summary>
    public GpuTensor CreateTensor(GpuDType dtype, params int[] shape) => new(this, dtype, shape);

    /// <summary>Creates a tensor holding <paramref name="data"/> (f32 or, converted, f16).</summary>
    public GpuTensor CreateTensor(ReadOnlySpan<float> data, GpuDType dtype, params int[] shape)
    {
        var t = new GpuTensor(this, dtype, shape);
        t.Upload(data);
        return t;
    }

    public void WaitIdle() => Vk.DeviceWaitIdle(Device).Check("vkDeviceWaitIdle");

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        Vk.DeviceWaitIdle(Device);
        if (Profiler is not null && Profiler.Count > 0) Console.Error.WriteLine(Profiler.FormatTable());
        Pipelines.Dispose();
        Transfers.Dispose();
        Memory.Dispose();
        Vk.DestroyDevice(Device, null);
        DestroyInstance(Vk, Instance, messenger, Messenger);
    }

    static void DestroyInstance(Vk vk, Instance instance, DebugUtilsMessengerEXT messenger, DebugMessenger? debug)
    {
        if (messenger.Handle != 0)
        {
            var destroy = (delegate* unmanaged[Cdecl]<Instance, DebugUtilsMessengerEXT, AllocationCallbacks*, void>)
                vk.GetInstanceProcAddr(instance, "vkDestroyDebugUtilsMessengerEXT").Handle;
            destroy(instance, messenger, null);
        }
        vk.DestroyInstance(instance, null);
        debug?.Dispose();
    }
}
