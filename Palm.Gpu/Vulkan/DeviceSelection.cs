// Which physical device to use: PALM_VK_DEVICE when set, else the most capable kind.
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal readonly record struct DeviceCandidate(string Name, PhysicalDeviceType Type);

internal static class DeviceSelection
{
    /// <summary>
    /// Index into <paramref name="devices"/>: the selector as an index or as a case-insensitive
    /// name substring; without one, discrete > integrated > virtual > CPU > other, first wins.
    /// </summary>
    /// <exception cref="GpuUnavailableException">No device, or the selector matches none.</exception>
    public static int Choose(IReadOnlyList<DeviceCandidate> devices, string? selector)
    {
        if (devices.Count == 0) throw new GpuUnavailableException("no Vulkan 1.2 device with a compute queue was found");
        var names = string.Join(", ", devices.Select((d, i) => $"{i}: {d.Name}"));
        if (!string.IsNullOrWhiteSpace(selector))
        {
            if (int.TryParse(selector, out var index))
            {
                if (index < 0 || index >= devices.Count)
                    throw new GpuUnavailableException($"PALM_VK_DEVICE={selector} is out of range (devices: {names})");
                return index;
            }
            for (var i = 0; i < devices.Count; i++)
                if (devices[i].Name.Contains(selector, StringComparison.OrdinalIgnoreCase)) return i;
            throw new GpuUnavailableException($"PALM_VK_DEVICE={selector} matches no device (devices: {names})");
        }
        var best = 0;
        for (var i = 1; i < devices.Count; i++)
            if (Rank(devices[i].Type) < Rank(devices[best].Type)) best = i;
        return best;
    }

    static int Rank(PhysicalDeviceType t) => t switch
    {
        PhysicalDeviceType.DiscreteGpu => 0,
        PhysicalDeviceType.IntegratedGpu => 1,
        PhysicalDeviceType.VirtualGpu => 2,
        PhysicalDeviceType.Cpu => 3,
        _ => 4,
    };
}
