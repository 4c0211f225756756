// Every SPIR-V module the build embeds passes spirv-val (Vulkan 1.2 rules, as glslc targets).
// The tests create pipelines only for what lavapipe runs; the cooperative-matrix variants and any
// other path a GPU takes are otherwise first validated on a GPU, where a malformed module costs a
// device session. spirv-val comes with Debian's spirv-tools, which scripts/setup.sh installs.
using System.Diagnostics;
using Palm.Gpu.Vulkan;
using Palm.Tests.Trainer;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu;

public sealed class SpirvValidationTests(ITestOutputHelper output)
{
    const string Prefix = "Palm.Gpu.Shaders.", Suffix = ".spv";

    [Fact]
    public void Every_embedded_shader_passes_spirv_val()
    {
        var names = typeof(VulkanContext).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(Suffix, StringComparison.Ordinal))
            .Select(n => n[Prefix.Length..^Suffix.Length]).Order(StringComparer.Ordinal).ToList();
        // The cooperative-matrix kernel is the one lavapipe never compiles: it must be among them.
        Assert.Contains("linear_coopmat", names);
        using var dir = new TempDir();
        var failures = new List<string>();
        foreach (var shader in names)
        {
            string path = Path.Combine(dir.Path, shader + Suffix);
            File.WriteAllBytes(path, PipelineStore.LoadSpirv(shader));
            var (code, text) = Run("spirv-val", "--target-env", "vulkan1.2", path);
            if (code != 0) failures.Add($"{shader}: {text.Trim()}");
        }
        output.WriteLine($"{names.Count} modules checked");
        Assert.True(failures.Count == 0, $"{failures.Count} of {names.Count} embedded SPIR-V modules fail spirv-val:\n" + string.Join("\n", failures));
    }

    static (int Code, string Text) Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{tool} not found ({e.Message}): run scripts/setup.sh (Debian package spirv-tools)");
        }
        using (p)
        {
            var err = p.StandardError.ReadToEndAsync();
            string text = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, text + err.Result);
        }
    }
}
