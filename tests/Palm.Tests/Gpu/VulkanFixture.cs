// Test plumbing for the Vulkan backend: one shared context with the validation layer on, a
// probe that decides whether Vulkan tests run at all, and attributes that skip them only
// when no Vulkan device exists.
using Palm.Gpu;
using Palm.Gpu.Vulkan;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Palm.Tests.Gpu;

/// <summary>Decides once per process whether a Vulkan device exists, and what it can do.</summary>
public static class VulkanProbe
{
    static readonly Lazy<(string? Reason, GpuCapabilities? Caps)> probe = new(() =>
    {
        try
        {
            // Asks for cooperative matrices (off in a default context) so a GPU that has them runs their tests.
            using var ctx = VulkanContext.Create(new VulkanOptions { PipelineCacheDir = TempDir("probe"), CooperativeMatrix = true });
            return (null, ctx.Capabilities);
        }
        catch (GpuUnavailableException e)
        {
            return ("no Vulkan device: " + e.Message, null);
        }
    });

    /// <summary>Why Vulkan tests are skipped, or null when they run.</summary>
    public static string? UnavailableReason => probe.Value.Reason;

    /// <summary>Why a test needing <paramref name="feature"/> is skipped on this machine's device, or null when it runs.</summary>
    public static string? MissingReason(GpuFeature feature)
    {
        if (UnavailableReason is { } r) return r;
        var caps = probe.Value.Caps!;
        return feature switch
        {
            GpuFeature.HalfArithmetic when !caps.HalfArithmetic =>
                $"{caps.DeviceName} lacks shaderFloat16 ({caps.ShaderFloat16}) or storageBuffer16BitAccess ({caps.StorageBuffer16BitAccess})",
            GpuFeature.CooperativeMatrix when caps.CooperativeMatrix is null =>
                $"{caps.DeviceName} has no usable cooperative matrix (VK_NV_cooperative_matrix with f16*f16+f32->f32 at subgroup scope, " +
                $"the Vulkan memory model and half arithmetic); reported: " +
                (caps.CooperativeMatrixProperties.Count == 0 ? "none" : string.Join("; ", caps.CooperativeMatrixProperties)),
            _ => null,
        };
    }

    internal static string TempDir(string what) =>
        Path.Combine(Path.GetTempPath(), $"palm-gpu-tests-{Environment.ProcessId}", what);
}

/// <summary>One validated context shared by every test class in the "Vulkan" collection.</summary>
public sealed class VulkanFixture : IDisposable
{
    public VulkanFixture()
    {
        if (VulkanProbe.UnavailableReason is not null) return;
        Context = VulkanContext.Create(Options());
    }

    internal static VulkanOptions Options(string what = "shared") => new()
    {
        Validation = true,
        RequireValidation = true,
        PipelineCacheDir = VulkanProbe.TempDir(what),
        CooperativeMatrix = true,
    };

    internal VulkanContext? Context { get; }

    internal VulkanContext Require() => Context ?? throw new InvalidOperationException("Vulkan test ran without a device");

    public void Dispose()
    {
        Context?.Dispose();
        try
        {
            Directory.Delete(VulkanProbe.TempDir(""), recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}

[CollectionDefinition("Vulkan")]
public sealed class VulkanCollection : ICollectionFixture<VulkanFixture>;

/// <summary>Fails a test on any validation warning or error it caused.</summary>
internal static class Validation
{
    public static void AssertClean(VulkanContext ctx, string test)
    {
        var messages = ctx.Messenger?.Messages ?? [];
        ctx.Messenger?.Clear();
        if (messages.Count > 0)
            throw new XunitException($"{test}: {messages.Count} validation message(s):\n" + string.Join("\n", messages));
    }
}

/// <summary>A fact that runs only where a Vulkan device exists (and has the features named).</summary>
public sealed class VulkanFactAttribute : FactAttribute
{
    public VulkanFactAttribute(params GpuFeature[] features)
    {
        if (VulkanProbe.UnavailableReason is { } r) Skip = r;
        else if (features.Select(VulkanProbe.MissingReason).FirstOrDefault(m => m is not null) is { } missing) Skip = missing;
    }
}

/// <summary>A theory that runs only where a Vulkan device exists (and has the features named).</summary>
public sealed class VulkanTheoryAttribute : TheoryAttribute
{
    public VulkanTheoryAttribute(params GpuFeature[] features)
    {
        if (VulkanProbe.UnavailableReason is { } r) Skip = r;
        else if (features.Select(VulkanProbe.MissingReason).FirstOrDefault(m => m is not null) is { } missing) Skip = missing;
    }
}

/// <summary>Optional device features that some kernels need.</summary>
public enum GpuFeature
{
    /// <summary>shaderFloat16 and storageBuffer16BitAccess (linear_half, the emulated linear_coopmat).</summary>
    HalfArithmetic,
    /// <summary>A cooperative-matrix shape that linear_coopmat runs (GpuCapabilities.CooperativeMatrix).</summary>
    CooperativeMatrix,
}

/// <summary>
/// On a conformance test: its Vulkan case needs this device feature and is skipped, saying why,
/// where the device lacks it. Other backends run it regardless.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = true)]
public sealed class RequiresGpuFeatureAttribute(GpuFeature feature) : Attribute
{
    public GpuFeature Feature { get; } = feature;
}

/// <summary>Marks a conformance class whose backend is Vulkan: its tests skip without a device.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class RequiresVulkanAttribute : Attribute;

/// <summary>
/// A fact of the shared conformance suite. Which backend runs it is only known from the
/// concrete class, so skipping is decided by the discoverer, not by the attribute.
/// </summary>
[XunitTestCaseDiscoverer("Palm.Tests.Gpu.ConformanceFactDiscoverer", "Palm.Tests")]
public sealed class ConformanceFactAttribute : FactAttribute;

/// <inheritdoc cref="ConformanceFactAttribute"/>
[XunitTestCaseDiscoverer("Palm.Tests.Gpu.ConformanceTheoryDiscoverer", "Palm.Tests")]
public sealed class ConformanceTheoryAttribute : TheoryAttribute;

internal static class BackendSkip
{
    public static string? Reason(ITestMethod method)
    {
        if (!method.TestClass.Class.GetCustomAttributes(typeof(RequiresVulkanAttribute)).Any()) return null;
        if (VulkanProbe.UnavailableReason is { } r) return r;
        return method.Method.GetCustomAttributes(typeof(RequiresGpuFeatureAttribute))
            .Select(a => VulkanProbe.MissingReason(a.GetNamedArgument<GpuFeature>(nameof(RequiresGpuFeatureAttribute.Feature))))
            .FirstOrDefault(m => m is not null);
    }
}

/// <summary>A test case skipped because its backend is missing.</summary>
public sealed class BackendSkippedTestCase : XunitTestCase
{
    [Obsolete("Called by the de-serializer; should only be called by deriving classes for de-serialization purposes")]
    public BackendSkippedTestCase()
    {
    }

    public BackendSkippedTestCase(IMessageSink sink, ITestFrameworkDiscoveryOptions options, ITestMethod method)
        : base(sink, options.MethodDisplayOrDefault(), options.MethodDisplayOptionsOrDefault(), method)
    {
    }

    protected override string GetSkipReason(IAttributeInfo factAttribute) =>
        BackendSkip.Reason(TestMethod) ?? base.GetSkipReason(factAttribute);
}

public sealed class ConformanceFactDiscoverer(IMessageSink sink) : FactDiscoverer(sink)
{
    public override IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions options, ITestMethod method, IAttributeInfo attribute) =>
        BackendSkip.Reason(method) is null
            ? base.Discover(options, method, attribute)
            : [new BackendSkippedTestCase(DiagnosticMessageSink, options, method)];
}

public sealed class ConformanceTheoryDiscoverer(IMessageSink sink) : TheoryDiscoverer(sink)
{
    public override IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions options, ITestMethod method, IAttributeInfo attribute) =>
        BackendSkip.Reason(method) is null
            ? base.Discover(options, method, attribute)
            : [new BackendSkippedTestCase(DiagnosticMessageSink, options, method)];
}
