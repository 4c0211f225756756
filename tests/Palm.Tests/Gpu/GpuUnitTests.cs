// Device-free parts of the Vulkan backend: device choice and the block free list.
using Palm.Gpu;
using Palm.Gpu.Vulkan;
using Silk.NET.Vulkan;

namespace Palm.Tests.Gpu;

public sealed class DeviceSelectionTests
{
    static readonly DeviceCandidate[] Devices =
    [
        new("llvmpipe (LLVM 15.0.6, 256 bits)", PhysicalDeviceType.Cpu),
        new("Intel(R) UHD Graphics 770", PhysicalDeviceType.IntegratedGpu),
        new("NVIDIA GeForce RTX 4090", PhysicalDeviceType.DiscreteGpu),
        new("Virtio-GPU Venus", PhysicalDeviceType.VirtualGpu),
    ];

    [Fact]
    public void Prefers_discrete_then_integrated_then_virtual_then_cpu()
    {
        Assert.Equal(2, DeviceSelection.Choose(Devices, null));
        Assert.Equal(1, DeviceSelection.Choose([Devices[0], Devices[1], Devices[3]], null));
        Assert.Equal(1, DeviceSelection.Choose([Devices[0], Devices[3]], null));
        Assert.Equal(0, DeviceSelection.Choose([Devices[0]], null));
    }

    [Theory]
    [InlineData("0", 0)]
    [InlineData("3", 3)]
    [InlineData("LLVMPIPE", 0)]
    [InlineData("uhd", 1)]
    public void Env_selector_is_an_index_or_a_name_substring(string selector, int expected) =>
        Assert.Equal(expected, DeviceSelection.Choose(Devices, selector));

    [Theory]
    [InlineData("4")]
    [InlineData("radeon")]
    public void Unmatched_selector_throws(string selector) =>
        Assert.Throws<GpuUnavailableException>(() => DeviceSelection.Choose(Devices, selector));

    [Fact]
    public void No_device_throws() => Assert.Throws<GpuUnavailableException>(() => DeviceSelection.Choose([], null));
}

public sealed class FreeListTests
{
    [Fact]
    public void Allocations_are_aligned_disjoint_and_coalesce_when_freed()
    {
        var fl = new FreeList(1024);
        Assert.True(fl.TryAllocate(10, 64, out var a));
        Assert.True(fl.TryAllocate(100, 64, out var b));
        Assert.True(fl.TryAllocate(64, 256, out var c));
        Assert.Equal(0UL, a);
        Assert.Equal(64UL, b);
        Assert.Equal(256UL, c);
        Assert.False(fl.TryAllocate(1024, 16, out _));

        fl.Free(b, 100);
        Assert.True(fl.TryAllocate(100, 64, out var b2)); // the hole is reused
        Assert.Equal(b, b2);
        fl.Free(a, 10);
        fl.Free(c, 64);
        fl.Free(b2, 100);
        Assert.True(fl.IsEmpty);
        Assert.Equal(1024UL, fl.FreeBytes);
    }

    [Fact]
    public void Double_free_is_detected()
    {
        var fl = new FreeList(256);
        Assert.True(fl.TryAllocate(32, 16, out var a));
        fl.Free(a, 32);
        Assert.Throws<InvalidOperationException>(() => fl.Free(a, 32));
    }
}
