// The GPU conformance check for machines without the .NET SDK (scripts/gpu-check.sh runs it from
// a self-contained publish): the whole Vulkan forward against every golden file's logits and
// loss, and single-step decoding against the parallel forward, with the tests' tolerances.
using Palm.Gpu;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Tests.Golden;

namespace Palm.Bench;

public static class GpuCheck
{
    private const double LogitsAtol = 1e-4, LogitsRtol = 1e-5, LossAtol = 1e-5;

    /// <summary>Usage: <c>gpu-check</c> (golden folders: ../shared/golden and $PALM_GOLDEN_DIR). Exit 1 on any failure.</summary>
    public static int Run(string[] args)
    {
        _ = args;
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(); }
        catch (GpuUnavailableException e) { Console.WriteLine($"gpu-check: no Vulkan device: {e.Message}"); return 1; }
        int passed = 0, failed = 0;
        using (ctx)
        {
            Console.WriteLine($"gpu-check on {ctx.Capabilities.DeviceName} ({ctx.Capabilities.DeviceType})");
            var files = GoldenCase.Directories().SelectMany(d => Directory.EnumerateFiles(d, "*.msgpack")).Order(StringComparer.Ordinal).ToList();
            if (files.Count == 0) { Console.WriteLine("gpu-check: no golden files (set PALM_GOLDEN_DIR)"); return 1; }
            foreach (var f in files)
            {
                var g = GoldenCase.Load(f);
                var c = g.Config;
                var gc = Palm.Inference.Backends.GpuMapping.ToGpu(c);
                using var vf = new VulkanForward(ctx, gc, g.Params.ToDictionary(kv => kv.Key, kv => new GpuWeight(kv.Value.Shape[0], kv.Value.Shape[1], kv.Value.Data)));
                void Check(string what, Func<string?> body)
                {
                    string? err;
                    try { err = body(); } catch (Exception e) { err = e.GetType().Name + ": " + e.Message; }
                    if (err is null) { passed++; Console.WriteLine($"PASS {g.Name} {what}"); }
                    else { failed++; Console.WriteLine($"FAIL {g.Name} {what}: {err}"); }
                }
                int B = g.B, T = g.T, V = c.VocabSize;
                var logits = vf.Forward(g.FlatTokens, B, T);
                Check("parallel logits", () => Compare(logits, g.Logits.Data));
                Check("loss", () =>
                {
                    double loss = vf.Loss(g.FlatTokens, g.FlatTargets, B, T);
                    return Math.Abs(loss - g.Loss) <= LossAtol ? null : $"loss {loss:g9} vs {g.Loss:g9}";
                });
                Check("recurrent logits", () =>
                {
                    var state = vf.CreateState(B);
                    var got = new float[B * T * V];
                    var step = new float[B * V];
                    var tok = new int[B];
                    for (int t = 0; t < T; t++)
                    {
                        for (int b = 0; b < B; b++) tok[b] = g.Tokens[b][t];
                        vf.Step(tok, state, step);
                        for (int b = 0; b < B; b++) step.AsSpan(b * V, V).CopyTo(got.AsSpan((b * T + t) * V, V));
                    }
                    return Compare(got, g.Logits.Data);
                });
            }
        }
        Console.WriteLine($"{passed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }

    private static string? Compare(float[] got, float[] expected)
    {
        if (got.Length != expected.Length) return $"length {got.Length} vs {expected.Length}";
        double worst = 0; int at = -1, bad = 0;
        for (int i = 0; i < got.Length; i++)
        {
            double e = Math.Abs((double)got[i] - expected[i]);
            if (double.IsNaN(e)) e = double.PositiveInfinity;
            if (e > LogitsAtol + LogitsRtol * Math.Abs(expected[i])) bad++;
            if (e > worst) { worst = e; at = i; }
        }
        return bad == 0 ? null : $"{bad} elements outside atol {LogitsAtol} rtol {LogitsRtol}; worst {worst:g3} at [{at}]";
    }
}
