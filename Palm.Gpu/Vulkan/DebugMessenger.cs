// VK_EXT_debug_utils messenger: records validation messages of severity warning or error so
// that tests can fail on them (and prints them to stderr when validation is on outside tests).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Silk.NET.Core;
using Silk.NET.Vulkan;

namespace Palm.Gpu.Vulkan;

internal readonly record struct ValidationMessage(DebugUtilsMessageSeverityFlagsEXT Severity, string Text)
{
    public override string ToString() => $"[{Severity}] {Text}";
}

internal sealed unsafe class DebugMessenger : IDisposable
{
    readonly List<ValidationMessage> messages = new();
    GCHandle self;

    public const DebugUtilsMessageSeverityFlagsEXT Recorded =
        DebugUtilsMessageSeverityFlagsEXT.WarningBitExt | DebugUtilsMessageSeverityFlagsEXT.ErrorBitExt;

    public DebugMessenger() => self = GCHandle.Alloc(this);

    /// <summary>Warnings and errors seen so far (a copy; the callback may run on any thread).</summary>
    public IReadOnlyList<ValidationMessage> Messages
    {
        get { lock (messages) return messages.ToArray(); }
    }

    public int Count
    {
        get { lock (messages) return messages.Count; }
    }

    public void Clear()
    {
        lock (messages) messages.Clear();
    }

    /// <summary>The create-info, also chained into VkInstanceCreateInfo to see instance creation.</summary>
    public DebugUtilsMessengerCreateInfoEXT CreateInfo() => new()
    {
        SType = StructureType.DebugUtilsMessengerCreateInfoExt,
        MessageSeverity = Recorded,
        MessageType = DebugUtilsMessageTypeFlagsEXT.GeneralBitExt | DebugUtilsMessageTypeFlagsEXT.ValidationBitExt |
                      DebugUtilsMessageTypeFlagsEXT.PerformanceBitExt,
        PfnUserCallback = new PfnDebugUtilsMessengerCallbackEXT(&Callback),
        PUserData = (void*)GCHandle.ToIntPtr(self),
    };

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static Bool32 Callback(DebugUtilsMessageSeverityFlagsEXT severity, DebugUtilsMessageTypeFlagsEXT types,
        DebugUtilsMessengerCallbackDataEXT* data, void* user)
    {
        if (GCHandle.FromIntPtr((nint)user).Target is DebugMessenger m && (severity & Recorded) != 0)
        {
            var text = Marshal.PtrToStringUTF8((nint)data->PMessage) ?? "";
            lock (m.messages) m.messages.Add(new ValidationMessage(severity, text));
            Console.Error.WriteLine($"palm-vk {severity}: {text}");
        }
        return false; // never abort the call that triggered the message
    }

    public void Dispose()
    {
        if (self.IsAllocated) self.Free();
    }
}
