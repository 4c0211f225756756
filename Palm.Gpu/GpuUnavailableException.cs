namespace Palm.Gpu;

/// <summary>
/// Thrown when no usable GPU backend exists: the Vulkan loader (libvulkan.so.1) cannot be
/// loaded, no physical device offers Vulkan 1.2 with a compute queue, or the device chosen by
/// <c>PALM_VK_DEVICE</c> does not exist. Callers catch it to fall back to the CPU backend.
/// </summary>
public sealed class GpuUnavailableException : Exception
{
    /// <summary>Creates the exception with a reason that says what is missing.</summary>
    public GpuUnavailableException(string message, Exception? inner = null) : base(message, inner) { }
}
