// What a device offers of cooperative matrices (matrix units: NVIDIA tensor cores, AMD WMMA,
// Intel XMX). Both extensions are queried and reported; shaders/linear_coopmat.comp is built
// against VK_NV_cooperative_matrix (the build's glslc predates GL_KHR_cooperative_matrix), so
// only an NV shape is ever enabled and used. Silk.NET.Vulkan 2.23 has the structs and enums but
// not the property queries (those live in its extension packages), so the two commands are
// fetched with vkGetInstanceProcAddr.
using System.Runtime.InteropServices;
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

/// <summary>One multiply-add a device's matrix units do: (M x K) . (K x N) + (M x N).</summary>
internal readonly record struct CoopMatShape(uint M, uint N, uint K)
{
    public override string ToString() => $"{M}x{N}x{K}";
}

/// <summary>One entry of a device's cooperative-matrix property list, as reported.</summary>
internal readonly record struct CoopMatProperty(string Extension, CoopMatShape Shape, string A, string B, string C, string Result, string Scope)
{
    /// <summary>f16 operands, f32 accumulator and result, subgroup scope: what linear_coopmat needs.</summary>
    public bool IsF16F32Subgroup => A == "Float16" && B == "Float16" && C == "Float32" && Result == "Float32" && Scope == "Subgroup";

    public override string ToString() => $"{Extension} {Shape} {A}*{B}+{C}->{Result} {Scope}";
}

internal static unsafe class CooperativeMatrix
{
    public const string NvExtension = "VK_NV_cooperative_matrix";
    public const string KhrExtension = "VK_KHR_cooperative_matrix";

    /// <summary>Names of the device extensions a physical device supports.</summary>
    public static HashSet<string> DeviceExtensions(Vk vk, PhysicalDevice pd)
    {
        uint count = 0;
        vk.EnumerateDeviceExtensionProperties(pd, (byte*)null, ref count, null).Check("vkEnumerateDeviceExtensionProperties");
        var props = new ExtensionProperties[count];
        fixed (ExtensionProperties* p = props)
            vk.EnumerateDeviceExtensionProperties(pd, (byte*)null, ref count, p).Check("vkEnumerateDeviceExtensionProperties");
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in props) names.Add(Marshal.PtrToStringUTF8((nint)e.ExtensionName) ?? "");
        return names;
    }

    /// <summary>The property lists of whichever of the two extensions the device has (empty when neither).</summary>
    public static List<CoopMatProperty> Query(Vk vk, Instance instance, PhysicalDevice pd, HashSet<string> extensions)
    {
        var all = new List<CoopMatProperty>();
        if (extensions.Contains(KhrExtension))
        {
            var f = (delegate* unmanaged[Cdecl]<PhysicalDevice, uint*, CooperativeMatrixPropertiesKHR*, Result>)
                vk.GetInstanceProcAddr(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR").Handle;
            if (f != null)
            {
                uint n = 0;
                f(pd, &n, null).Check("vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR");
                var props = new CooperativeMatrixPropertiesKHR[n];
                for (var i = 0; i < n; i++) props[i].SType = StructureType.CooperativeMatrixPropertiesKhr;
                fixed (CooperativeMatrixPropertiesKHR* p = props) f(pd, &n, p).Check("vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR");
                foreach (var q in props.AsSpan(0, (int)n))
                    all.Add(new CoopMatProperty("KHR", new CoopMatShape(q.MSize, q.NSize, q.KSize),
                        Name(q.AType), Name(q.BType), Name(q.CType), Name(q.ResultType), Name(q.Scope)));
            }
        }
        if (extensions.Contains(NvExtension))
        {
            var f = (delegate* unmanaged[Cdecl]<PhysicalDevice, uint*, CooperativeMatrixPropertiesNV*, Result>)
                vk.GetInstanceProcAddr(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV").Handle;
            if (f != null)
            {
                uint n = 0;
                f(pd, &n, null).Check("vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
                var props = new CooperativeMatrixPropertiesNV[n];
                for (var i = 0; i < n; i++) props[i].SType = StructureType.CooperativeMatrixPropertiesNV;
                fixed (CooperativeMatrixPropertiesNV* p = props) f(pd, &n, p).Check("vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
                foreach (var q in props.AsSpan(0, (int)n))
                    all.Add(new CoopMatProperty("NV", new CoopMatShape(q.MSize, q.NSize, q.KSize),
                        Name(q.AType), Name(q.BType), Name(q.CType), Name(q.DType), Name(q.Scope)));
            }
        }
        return all;
    }

    /// <summary>
    /// The NV shape linear_coopmat runs, or null: f16 x f16 + f32 -> f32 at subgroup scope, K a
    /// multiple of 8 that divides the kernel's 32-deep staging step (16-byte aligned fragment
    /// loads), 16x16x16 first (the shape the tiles were laid out for), then the largest.
    /// </summary>
    public static CoopMatShape? Choose(IEnumerable<CoopMatProperty> properties)
    {
        var usable = properties
            .Where(p => p.Extension == "NV" && p.IsF16F32Subgroup && p.Shape.K % 8 == 0 && 32 % p.Shape.K == 0
                        && p.Shape.M is >= 8 and <= 64 && p.Shape.N is >= 8 and <= 64)
            .Select(p => p.Shape)
            .ToList();
        if (usable.Count == 0) return null;
        var square = new CoopMatShape(16, 16, 16);
        return usable.Contains(square) ? square : usable.OrderByDescending(s => s.M * s.N * s.K).First();
    }

    // The NV and KHR enums share values (VkComponentTypeKHR, VkScopeKHR), and Silk's enums carry
    // several alias names per value, so ToString() is ambiguous: name the values here.
    static string Name(ComponentTypeKHR t) => (int)t switch
    {
        0 => "Float16", 1 => "Float32", 2 => "Float64",
        3 => "Sint8", 4 => "Sint16", 5 => "Sint32", 6 => "Sint64",
        7 => "Uint8", 8 => "Uint16", 9 => "Uint32", 10 => "Uint64",
        1000141000 => "BFloat16",
        var v => $"type{v}",
    };

    static string Name(ComponentTypeNV t) => Name((ComponentTypeKHR)(int)t);

    static string Name(ScopeKHR s) => (int)s switch
    {
        1 => "Device", 2 => "Workgroup", 3 => "Subgroup", 5 => "QueueFamily",
        var v => $"scope{v}",
    };

    static string Name(ScopeNV s) => Name((ScopeKHR)(int)s);
}
