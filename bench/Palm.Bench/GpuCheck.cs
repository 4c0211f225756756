// The GPU conformance check for machines without the .NET SDK (scripts/gpu-check.sh runs it from
// a self-contained publish): the half-arithmetic and cooperative-matrix linears against their CPU
// twins (the tests' cases and tolerances; on a GPU this is where linear_coopmat first runs), the
// whole Vulkan forward against every golden file's logits and loss, and single-step decoding
// against the parallel forward, with the tests' tolerances.
using Palm.Gpu;
using Palm.Gpu.Kernels;
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
            LinearChecks(ctx, ref passed, ref failed);
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

    /// <summary>
    /// linear_half and linear_coopmat against Linear.ReferenceHalf / ReferenceHalfInputs on awkward
    /// shapes, outputs poisoned with NaN. Tolerances as in the tests (Tolerance.ForReduction,
    /// ForMatrixUnits): the fp32 one for linear_half, whose twin rounds as it does; for the matrix
    /// units 2^-20 per term more and rtol 1e-3. A kernel the device lacks is reported as skipped.
    /// </summary>
    private static void LinearChecks(VulkanContext ctx, ref int passed, ref int failed)
    {
        var caps = ctx.Capabilities;
        (int M, int N, int K, bool Relu2, bool XHalf)[] cases =
        [
            (1, 1, 1, false, false), (1, 7, 13, true, false), (3, 5, 1, false, true), (33, 97, 131, false, true),
            (65, 129, 33, true, false), (64, 64, 64, false, true), (130, 257, 40, true, false), (300, 200, 136, false, true),
        ];
        const ulong seed = 20261128;
        var rng = new Rng(seed);
        // The emulated coopmat kernel (plain arithmetic in place of the fragments) runs wherever
        // half arithmetic does: should linear_coopmat fail on a GPU, whether the emulated one
        // passes with the same tile tells the fragments' semantics from the code around them.
        foreach (var kernel in new[] { "linear_half", "linear_coopmat_emulated", "linear_coopmat" })
        {
            bool coop = kernel != "linear_half", emulated = kernel == "linear_coopmat_emulated";
            var shape = caps.CooperativeMatrix ?? new CoopMatShape(16, 16, 16);
            string what = coop ? $"{kernel} ({shape})" : kernel;
            string? missing = !caps.HalfArithmetic ? "no shaderFloat16 or storageBuffer16BitAccess"
                : coop && !emulated && caps.CooperativeMatrix is null ? "no usable cooperative matrix; reported: " +
                  (caps.CooperativeMatrixProperties.Count == 0 ? "none" : string.Join("; ", caps.CooperativeMatrixProperties))
                : null;
            if (missing is not null) { Console.WriteLine($"SKIP {what}: {missing}"); continue; }
            foreach (var (m, n, k, relu2, xHalf) in cases)
            {
                var x = new float[m * k]; var w = new float[n * k];
                for (int i = 0; i < x.Length; i++) x[i] = (float)(2 * rng.NextDouble() - 1);
                for (int i = 0; i < w.Length; i++) w[i] = (float)(2 * rng.NextDouble() - 1);
                var y = new float[m * n];
                Array.Fill(y, float.NaN);
                string? err;
                try
                {
                    using var tx = ctx.CreateTensor(x, xHalf ? GpuDType.F16 : GpuDType.F32, m, k);
                    using var tw = ctx.CreateTensor(w, GpuDType.F16, n, k);
                    using var ty = ctx.CreateTensor(y, GpuDType.F32, m, n);
                    using (var rec = new CommandRecorder(ctx))
                    {
                        if (coop) Linear.RecordCoopMat(rec, ctx, tx, tw, relu2 && !xHalf, ty, Linear.ChooseCoopMatTile(m, shape, caps), emulated);
                        else Linear.RecordHalf(rec, ctx, tx, tw, relu2 && !xHalf, ty);
                        rec.Submit();
                    }
                    ty.Download(y);
                    var want = new float[m * n];
                    if (coop) Linear.ReferenceHalfInputs(x, w, m, n, k, relu2 && !xHalf, want);
                    else Linear.ReferenceHalf(x, w, m, n, k, relu2 && !xHalf, want);
                    double atol = 1e-5 * Math.Sqrt(k) + (coop ? k * Math.Pow(2, -20) : 0), rtol = coop ? 1e-3 : 1e-4;
                    err = CompareWith(y, want, atol, rtol);
                }
                catch (Exception e) { err = e.GetType().Name + ": " + e.Message; }
                var label = $"{what} M={m} N={n} K={k} relu2={relu2 && !xHalf} xHalf={xHalf} (seed {seed})";
                if (err is null) { passed++; Console.WriteLine($"PASS {label}"); }
                else { failed++; Console.WriteLine($"FAIL {label}: {err}"); }
            }
        }
    }

    private static string? CompareWith(float[] got, float[] expected, double atol, double rtol)
    {
        double worst = 0; int at = -1, bad = 0, first = -1;
        for (int i = 0; i < got.Length; i++)
        {
            double e = Math.Abs((double)got[i] - expected[i]);
            if (double.IsNaN(e)) e = double.PositiveInfinity;
            if (e > atol + rtol * Math.Abs(expected[i])) { bad++; if (first < 0) first = i; }
            if (e > worst || at < 0) { worst = e; at = i; }
        }
        return bad == 0 ? null : $"{bad}/{got.Length} outside atol {atol:g3} + rtol {rtol:g3}*|ref|; worst {worst:g3} at [{at}]; first [{first}]: got {got[first]:g9}, expected {expected[first]:g9}";
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
