// The GPU conformance check for machines without the .NET SDK (scripts/gpu-check.sh runs it from
// a self-contained publish): the half-arithmetic and cooperative-matrix linears against their CPU
// twins (the tests' cases and tolerances; on a GPU this is where linear_coopmat first runs),
// Muon's fp16 Newton-Schulz (linear_backward_half) against its twin and the fp32 reference, the
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
            MuonHalfChecks(ctx, ref passed, ref failed);
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
            (256, 384, 96, true, false), (256, 256, 160, false, true),   // whole blocks and fragments: stores straight to y
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
            // Coopmat: the layout the wrapper picks for the shape and the large one (picked only for
            // big products, and only where it fits), each on every case.
            foreach (var tile in coop ? new Linear.CoopMatTile?[] { Linear.ChooseCoopMatTile(m, shape, caps, n), Linear.LargeCoopMatTile(shape, caps) }
                         .Distinct().Where(t => t!.Value.Fits(caps)) : [null])
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
                        if (coop) Linear.RecordCoopMat(rec, ctx, tx, tw, relu2 && !xHalf, ty, tile!.Value, emulated);
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
                var label = $"{what} M={m} N={n} K={k} relu2={relu2 && !xHalf} xHalf={xHalf}{(tile is { } t ? $" tile {t.BM}x{t.BN}x{t.BK}/{t.Stages}" : "")} (seed {seed})";
                if (err is null) { passed++; Console.WriteLine($"PASS {label}"); }
                else { failed++; Console.WriteLine($"FAIL {label}: {err}"); }
            }
        }
    }

    /// <summary>
    /// Muon's fp16 Newton-Schulz (muon_fp16) as the tests check it on lavapipe
    /// (VulkanBackwardConformanceTests, MuonHalfReferenceTests): linear_backward_half against
    /// LinearBackward.GemmHalfReference at the fp32 tolerance; the five iterations from one X
    /// against their twin (1e-5); the whole orthogonalisation from U against the fp32 reference
    /// within the fp16 tolerance (Tolerance.MuonHalfAtol 3e-2, MuonHalfRelFro 1.5e-2). The twins
    /// run with an unfused and a fused epilogue fma (Vulkan allows either); the line says which
    /// one the device matched.
    /// </summary>
    private static void MuonHalfChecks(VulkanContext ctx, ref int passed, ref int failed)
    {
        if (!ctx.Capabilities.ShaderFloat16) { Console.WriteLine("SKIP muon fp16: no shaderFloat16"); return; }
        const ulong seed = 20261201;
        var rng = new Rng(seed);
        float[] Uniform(int n, double scale) { var v = new float[n]; for (int i = 0; i < n; i++) v[i] = (float)((2 * rng.NextDouble() - 1) * scale); return v; }
        int ok = 0, bad = 0;
        void Report(string label, string? err)
        {
            if (err is null) { ok++; Console.WriteLine($"PASS {label} (seed {seed})"); }
            else { bad++; Console.WriteLine($"FAIL {label} (seed {seed}): {err}"); }
        }
        // Closer of the two twins, or the error against the unfused one.
        static (string? Err, string Which) EitherTwin(float[] got, float[] unfused, float[] fused, double atol, double rtol)
        {
            var u = CompareWith(got, unfused, atol, rtol);
            if (u is null) return (null, "unfused epilogue");
            return CompareWith(got, fused, atol, rtol) is null ? (null, "fused epilogue") : (u, "neither");
        }

        (int M, int N, int K, bool AT, bool BT, float Alpha, float Beta, float Sa, float Sb)[] gemms =
        [
            (9, 9, 33, false, true, 1f, 0f, 128f, 128f), (33, 33, 33, false, false, Muon.NsC, Muon.NsB, 128f, 128f),
            (65, 129, 17, false, false, 1f, Muon.NsA, 64f, 128f), (5, 3, 7, true, false, 0.5f, 0f, 128f, 128f), (3, 5, 8191, false, true, 1f, 0f, 128f, 128f),
        ];
        foreach (var (m, n, k, aT, bT, alpha, beta, sa, sb) in gemms)
        {
            var label = $"linear_backward_half M={m} N={n} K={k} aT={aT} bT={bT} beta={beta}";
            try
            {
                var a = Uniform(m * k, 1 / Math.Sqrt(k));
                var b = Uniform(k * n, 1 / Math.Sqrt(k));
                var e = Uniform(m * n, 1);
                var la = aT ? LinearBackward.Layout.Transposed(m) : LinearBackward.Layout.RowMajor(k);
                var lb = bT ? LinearBackward.Layout.Transposed(k) : LinearBackward.Layout.RowMajor(n);
                var c = new float[m * n];
                Array.Fill(c, float.NaN);
                using var ta = ctx.CreateTensor(a, GpuDType.F32, a.Length);
                using var tb = ctx.CreateTensor(b, GpuDType.F32, b.Length);
                using var te = ctx.CreateTensor(e, GpuDType.F32, m, n);
                using var tc = ctx.CreateTensor(c, GpuDType.F32, m, n);
                using (var rec = new CommandRecorder(ctx))
                {
                    LinearBackward.RecordGemmHalf(rec, ctx, ta, la, tb, lb, m, n, k, alpha, beta, beta != 0 ? te : null, sa, sb, tc);
                    rec.Submit();
                }
                tc.Download(c);
                var unfused = new float[m * n];
                var fused = new float[m * n];
                LinearBackward.GemmHalfReference(a, la, b, lb, m, n, k, alpha, beta, e, sa, sb, unfused);
                LinearBackward.GemmHalfReference(a, la, b, lb, m, n, k, alpha, beta, e, sa, sb, fused, fusedEpilogue: true);
                double maxRef = unfused.Max(v => Math.Abs((double)v));
                var (err, which) = EitherTwin(c, unfused, fused, 1e-5 * Math.Sqrt(k) * Math.Max(1, maxRef), 1e-4);
                Report($"{label} vs twin ({which})", err);
            }
            catch (Exception ex) { Report(label, ex.GetType().Name + ": " + ex.Message); }
        }

        foreach (var (rows, cols) in new[] { (1, 1), (12, 7), (7, 12), (64, 64), (97, 33), (130, 67), (6, 3001), (64, 256) })
        {
            var label = $"muon fp16 newton-schulz {rows}x{cols}";
            try
            {
                int p = Math.Min(rows, cols), q = Math.Max(rows, cols);
                var x0 = Uniform(p * q, 1 / Math.Sqrt((double)p * q));
                using var scratch = new Muon.Scratch(ctx, rows, cols);
                scratch.X.Upload(x0);
                GpuTensor? x = null;
                using (var rec = new CommandRecorder(ctx))
                {
                    x = Muon.RecordNewtonSchulz(rec, ctx, scratch, half: true);
                    rec.Submit();
                }
                var got = x.ToArray();
                var unfused = Muon.NewtonSchulzIterationsReference((float[])x0.Clone(), p, q, half: true);
                var fused = Muon.NewtonSchulzIterationsReference((float[])x0.Clone(), p, q, half: true, fusedEpilogue: true);
                var (err, which) = EitherTwin(got, unfused, fused, 1e-5, 1e-4);
                Report($"{label}, iterations vs twin ({which})", err);

                // From U through momentum (beta 0), the device's normalisation and the iterations, against fp32.
                var u = Uniform(rows * cols, 1);
                using var tg = ctx.CreateTensor(u, GpuDType.F32, rows, cols);
                using var tm = ctx.CreateTensor(new float[rows * cols], GpuDType.F32, rows, cols);
                using var tclip = ctx.CreateTensor([0f, 1f], GpuDType.F32, 2);
                using (var rec = new CommandRecorder(ctx))
                {
                    x = Muon.RecordOrthogonalize(rec, ctx, tg, tm, tclip, 0f, scratch, half: true);
                    rec.Submit();
                }
                var xs = x.ToArray();
                var ns = new float[rows * cols];
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) ns[r * cols + c] = scratch.Tall ? xs[c * rows + r] : xs[r * cols + c];
                var f32 = Muon.NewtonSchulzReference(u, rows, cols);
                double se = 0, sr = 0;
                for (int i = 0; i < ns.Length; i++) { double d = (double)ns[i] - f32[i]; se += d * d; sr += (double)f32[i] * f32[i]; }
                double rel = Math.Sqrt(se / Math.Max(sr, double.Epsilon));
                var err2 = CompareWith(ns, f32, 3e-2, 0) ?? (rel <= 1.5e-2 ? null : $"relative Frobenius error {rel:E2} > 1.5e-2");
                double maxErr = 0;
                for (int i = 0; i < ns.Length; i++) maxErr = Math.Max(maxErr, Math.Abs((double)ns[i] - f32[i]));
                Report($"{label} vs fp32 (max error {maxErr:E2}, relative Frobenius {rel:E2})", err2);
            }
            catch (Exception ex) { Report(label, ex.GetType().Name + ": " + ex.Message); }
        }
        passed += ok;
        failed += bad;
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
