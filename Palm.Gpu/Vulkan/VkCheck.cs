// Turns VkResult codes into exceptions that name the call that failed.
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal sealed class VulkanException(string call, Result result)
    : Exception($"{call} failed: {result}")
{
    public Result Result { get; } = result;
}

internal static class VkCheck
{
    public static void Check(this Result result, string call)
    {
        if (result != Result.Success) throw new VulkanException(call, result);
    }
}
