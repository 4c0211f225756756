// Vulkan throughput on whatever device is present (lavapipe here, a real GPU through
// scripts/gpu-check.sh): matmul GFLOP/s on square and decode shapes for the fp32 kernel, the
// f16-arithmetic one and (where the device has it) the cooperative-matrix one, each checked on
// sampled outputs against its CPU twin; and full-forward tokens/s of a preset beside the CPU
// reference in the same run.
using System.Diagnostics;
using System.Globalization;
using Palm.Gpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Bench;

public static class GpuBench
{
    /// <summary>
    /// Usage: <c>[--sizes 256,512,1024] [--config small] [--reps 3] [--no-forward] [--batch 8] [--aod-scans] [--matmul-tsv FILE]</c>.
    /// --aod-scans adds a Vulkan forward row with the AoD scan forced sequential, beside the default (chunked for long T).
    /// --matmul-tsv also writes the matmul rows as tab-separated values (scripts/gpu-check.sh sets them beside cuBLAS).
    /// </summary>
    public static int Run(string[] args)
    {
        var sizes = new List<int> { 256, 512, 1024 };
        string preset = "small"; int reps = 3, batch = 8; bool forward = true, scans = false;
        string? tsv = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--sizes" when i + 1 < args.Length: sizes = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToList(); break;
                case "--config" when i + 1 < args.Length: preset = args[++i]; break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-forward": forward = false; break;
                case "--batch" when i + 1 < args.Length: batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--aod-scans": scans = true; break;
                case "--matmul-tsv" when i + 1 < args.Length: tsv = args[++i]; break;
                default: Console.Error.WriteLine($"gpu bench: unknown argument '{args[i]}'. Usage: [--sizes 256,512,1024] [--config small] [--reps 3] [--no-forward] [--batch 8] [--aod-scans] [--matmul-tsv FILE]"); return 2;
            }
        }
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(); }
        catch (GpuUnavailableException e) { Console.WriteLine($"gpu bench: no Vulkan device ({e.Message}); skipped"); return 0; }
        using (ctx)
        {
            var caps = ctx.Capabilities;
            Console.WriteLine($"Palm.Bench gpu: {caps.DeviceName} ({caps.DeviceType}), Vulkan {caps.ApiVersion}, subgroup {caps.SubgroupSize}");
            Console.WriteLine($"  f16 arithmetic: {(caps.HalfArithmetic ? "yes" : "no (shaderFloat16 or storageBuffer16BitAccess missing)")}; " +
                              $"cooperative matrix: {(caps.CooperativeMatrix is { } cm ? $"NV {cm}" : "none usable")}");
            foreach (var prop in caps.CooperativeMatrixProperties) Console.WriteLine($"  reported: {prop}");
            Console.WriteLine("| shape M x N x K | kernel | GFLOP/s (wall, median) | ms per matmul | max err / Σ|x·w| (64 sampled outputs vs CPU twin) |");
            Console.WriteLine("|---|---|---|---|---|");
            var shapes = sizes.Select(s => (s, s, s)).Concat([(1, 1536, 256), (1, 4096, 256)]).ToList();
            var rows = new List<string>();
            foreach (var (m, n, k) in shapes) rows.AddRange(MatMul(ctx, m, n, k, reps));
            if (tsv is not null)
                File.WriteAllLines(tsv, rows.Prepend("m\tn\tk\tkernel\tgflops\tms\terr"));
            if (forward) Forward(ctx, preset, reps, batch, scans);
        }
        return 0;
    }

    private enum MatMulKernel { F32, Half, CoopMat }

    /// <summary>One table row per kernel the device runs; returns the same rows tab-separated.</summary>
    private static List<string> MatMul(VulkanContext ctx, int m, int n, int k, int reps)
    {
        var rng = new Rng(3);
        var x = new float[m * k]; var w = new float[n * k];
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextGaussian();
        for (int i = 0; i < w.Length; i++) w[i] = (float)rng.NextGaussian();
        var caps = ctx.Capabilities;
        var kernels = new List<MatMulKernel> { MatMulKernel.F32 };
        if (caps.HalfArithmetic) kernels.Add(MatMulKernel.Half);
        if (caps.CooperativeMatrix is not null) kernels.Add(MatMulKernel.CoopMat);
        var rows = new List<string>();
        foreach (var kernel in kernels)
        {
            // fp32 runs on f32 buffers; the half kernels on x and W both stored as f16.
            var dtype = kernel == MatMulKernel.F32 ? GpuDType.F32 : GpuDType.F16;
            using var tx = ctx.CreateTensor(x, dtype, m, k);
            using var tw = ctx.CreateTensor(w, dtype, n, k);
            using var ty = ctx.CreateTensor(GpuDType.F32, m, n);
            using var rec = new CommandRecorder(ctx);
            var coopTile = caps.CooperativeMatrix is { } shape ? Linear.ChooseCoopMatTile(m, shape, caps, n) : default;
            void Record()
            {
                switch (kernel)
                {
                    case MatMulKernel.F32: Linear.Record(rec, ctx, tx, tw, false, ty); break;
                    case MatMulKernel.Half: Linear.RecordHalf(rec, ctx, tx, tw, false, ty); break;
                    default: Linear.RecordCoopMat(rec, ctx, tx, tw, false, ty, coopTile); break;
                }
            }
            double med = MedianSecondsPerMatmul(rec, Record, m, n, k, reps);
            var y = new float[m * n];
            ty.Download(y);
            double err = SampledError(kernel, x, w, y, m, n, k);
            string name = kernel switch
            {
                MatMulKernel.F32 => "fp32 (linear)",
                MatMulKernel.Half => "f16 arithmetic (linear_half_xhalf)",
                _ => $"coopmat NV {caps.CooperativeMatrix} (linear_coopmat_xhalf, {coopTile.BM}x{coopTile.BN}x{coopTile.BK}, {coopTile.Threads} inv., {coopTile.Stages} stages)",
            };
            // Past these the kernel is wrong, not imprecise: fp32 and linear_half match their twins'
            // rounding; matrix units may also truncate inside their sums (tests: Tolerance.ForMatrixUnits).
            var bad = err > (kernel == MatMulKernel.CoopMat ? 1e-3 : 1e-4) || double.IsNaN(err);
            double gflops = 2.0 * m * n * k / med / 1e9;
            Console.WriteLine($"| {m} x {n} x {k} | {name} | {gflops:F2} | {med * 1000:F3} | {err:G2}{(bad ? " WRONG" : "")} |");
            rows.Add(string.Join('\t', m, n, k, kernel.ToString().ToLowerInvariant(), gflops.ToString("F2", CultureInfo.InvariantCulture),
                (med * 1000).ToString("F4", CultureInfo.InvariantCulture), err.ToString("G3", CultureInfo.InvariantCulture)));
        }
        // PALM_BENCH_TILES=BMxBNxBKxRMxRN,...: also time the fp32 kernel with these tiles (tuning on a GPU).
        if (Environment.GetEnvironmentVariable("PALM_BENCH_TILES") is { Length: > 0 } spec && m >= 512)
            TimeLayouts(ctx, MatMulKernel.F32, spec, x, w, m, n, k, reps, (t, d) =>
            {
                var tile = new Linear.Tile(d[0], d[1], d[2], d[3], d[4]);
                bool fits = tile.Threads <= caps.MaxWorkgroupInvocations && tile.SharedBytesOf(4) <= caps.MaxSharedMemoryBytes;
                return ($"fp32 tile {t}", fits ? (rec, tx, tw, ty) => Linear.Record(rec, ctx, tx, tw, false, ty, tile) : null);
            });
        // PALM_BENCH_COOP_TILES=SMxSNxFMxFNxBKxSTAGESxAHEAD,...: also time linear_coopmat with these layouts.
        if (Environment.GetEnvironmentVariable("PALM_BENCH_COOP_TILES") is { Length: > 0 } coopSpec && m >= 512 && caps.CooperativeMatrix is { } cm)
            TimeLayouts(ctx, MatMulKernel.CoopMat, coopSpec, x, w, m, n, k, reps, (t, d) =>
            {
                var tile = new Linear.CoopMatTile(cm.M, cm.N, cm.K, d[0], d[1], d[2], d[3], d[4], caps.SubgroupSize, d[5], d[6]);
                return ($"coopmat {tile.BM}x{tile.BN}x{tile.BK} ({t})", tile.Fits(caps) ? (rec, tx, tw, ty) => Linear.RecordCoopMat(rec, ctx, tx, tw, false, ty, tile) : null);
            });
        return rows;
    }

    /// <summary>
    /// One table row per layout of <paramref name="spec"/> (comma-separated, numbers joined by 'x'):
    /// <paramref name="layout"/> names it and gives its recorder, or null where the device cannot
    /// run it. A layout that fails is reported in its row; the others still run.
    /// </summary>
    private static void TimeLayouts(VulkanContext ctx, MatMulKernel kernel, string spec, float[] x, float[] w, int m, int n, int k, int reps,
        Func<string, uint[], (string Label, Action<CommandRecorder, GpuTensor, GpuTensor, GpuTensor>? Record)> layout)
    {
        var dtype = kernel == MatMulKernel.F32 ? GpuDType.F32 : GpuDType.F16;
        using var tx = ctx.CreateTensor(x, dtype, m, k);
        using var tw = ctx.CreateTensor(w, dtype, n, k);
        using var ty = ctx.CreateTensor(GpuDType.F32, m, n);
        using var rec = new CommandRecorder(ctx);
        foreach (var t in spec.Split(','))
        {
            var (label, record) = layout(t, t.Split('x').Select(uint.Parse).ToArray());
            if (record is null) { Console.WriteLine($"| {m} x {n} x {k} | {label} | too big for this device | | |"); continue; }
            try
            {
                double med = MedianSecondsPerMatmul(rec, () => record(rec, tx, tw, ty), m, n, k, reps);
                var y = new float[m * n];
                ty.Download(y);
                double err = SampledError(kernel, x, w, y, m, n, k);
                bool bad = err > (kernel == MatMulKernel.CoopMat ? 1e-3 : 1e-4) || double.IsNaN(err);
                Console.WriteLine($"| {m} x {n} x {k} | {label} | {2.0 * m * n * k / med / 1e9:F2} | {med * 1000:F3} | {err:G2}{(bad ? " WRONG" : "")} |");
            }
            catch (Exception e) { Console.WriteLine($"| {m} x {n} x {k} | {label} | failed: {e.GetType().Name}: {e.Message} | | |"); }
        }
    }

    /// <summary>
    /// Median seconds per matmul: <paramref name="record"/> is recorded enough times per submission
    /// (at least 2 GFLOP, and at least ~20 ms by a first timed submission) that submit + wait
    /// overhead is amortised (a 4096³ product takes 0.2-0.5 ms on a big GPU), after untimed ones.
    /// </summary>
    private static double MedianSecondsPerMatmul(CommandRecorder rec, Action record, int m, int n, int k, int reps)
    {
        int perSubmit = (int)Math.Clamp(2e9 / (2.0 * m * n * k), 1, 200);
        void Once()
        {
            for (int i = 0; i < perSubmit; i++) record();
            rec.Submit();
        }
        Once();
        var first = Stopwatch.StartNew(); Once();
        double each = first.Elapsed.TotalSeconds / perSubmit;
        perSubmit = (int)Math.Clamp(Math.Ceiling(0.02 / Math.Max(each, 1e-7)), perSubmit, Math.Max(perSubmit, 200));
        Once();
        var times = new List<double>();
        for (int r = 0; r < reps; r++) { var sw = Stopwatch.StartNew(); Once(); times.Add(sw.Elapsed.TotalSeconds / perSubmit); }
        times.Sort();
        return times[times.Count / 2];
    }

    /// <summary>
    /// The largest |y - twin| over 64 sampled outputs, each divided by Σ_k |x·w| (the scale of the
    /// rounding errors a sum of K terms can make): the twin is Linear.Reference (fp32),
    /// ReferenceHalf (f16 products) or ReferenceHalfInputs (matrix units), one output at a time.
    /// </summary>
    private static double SampledError(MatMulKernel kernel, float[] x, float[] w, float[] y, int m, int n, int k)
    {
        var pick = new Rng(11);
        var xr = new float[k]; var wr = new float[k];
        var one = new float[1];
        double worst = 0;
        for (int s = 0; s < 64; s++)
        {
            int i = pick.NextInt(m), j = pick.NextInt(n);
            x.AsSpan(i * k, k).CopyTo(xr);
            w.AsSpan(j * k, k).CopyTo(wr);
            switch (kernel)
            {
                case MatMulKernel.F32: Linear.Reference(xr, wr, 1, 1, k, false, one); break;
                case MatMulKernel.Half: Linear.ReferenceHalf(xr, wr, 1, 1, k, false, one); break;
                default: Linear.ReferenceHalfInputs(xr, wr, 1, 1, k, false, one); break;
            }
            double scale = 0;
            for (int t = 0; t < k; t++) scale += Math.Abs((double)xr[t] * wr[t]);
            double e = Math.Abs(y[i * n + j] - (double)one[0]) / Math.Max(scale, 1e-30);
            if (double.IsNaN(e)) return double.NaN;
            worst = Math.Max(worst, e);
        }
        return worst;
    }

    /// <summary>Usage: <c>gpu-train [--config tiny] [--reps 3]</c>: whole training steps (forward, backward, clip, Muon, AdamW) in tokens/s, beside the CPU reference step.</summary>
    public static int Train(string[] args)
    {
        string preset = "tiny"; int reps = 3;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--config" when i + 1 < args.Length: preset = args[++i]; break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"gpu-train bench: unknown argument '{args[i]}'. Usage: [--config tiny] [--reps 3]"); return 2;
            }
        }
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(); }
        catch (GpuUnavailableException e) { Console.WriteLine($"gpu-train bench: no Vulkan device ({e.Message}); skipped"); return 0; }
        using (ctx)
        {
            var c = PalmConfig.Preset(preset);
            var p = new PalmParameters(c);
            p.InitTraining(new Rng(5));
            var gc = Palm.Inference.Backends.GpuMapping.ToGpu(c);
            int B = 8, T = c.BlockSize;
            var rng = new Rng(9);
            var x = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(c.VocabSize)).ToArray();
            var y = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(c.VocabSize)).ToArray();
            using var vt = new Palm.Gpu.Training.VulkanTraining(ctx, gc, p.All.ToDictionary(t => t.Name, t => new GpuWeight(t.Rows, t.Cols, (float[])t.Data.Clone())));
            long step = 0;
            double Median(Action a)
            {
                a();
                var ts = new List<double>();
                for (int r = 0; r < reps; r++) { var sw = Stopwatch.StartNew(); a(); ts.Add(sw.Elapsed.TotalSeconds); }
                ts.Sort();
                return ts[ts.Count / 2];
            }
            double gpu = Median(() => vt.Step(x, y, B, T, new Palm.Gpu.Training.GpuStepHyper(0.02, 0.006, 0, 0.95, 0.9, 0.95, 1e-8, 1.0, ++step)));
            var cpu = new CpuReferenceModel(p);
            var state = Palm.Trainer.Optim.OptimizerState.For(p);
            long cstep = 0;
            double cpuS = Median(() =>
            {
                var (_, g) = Palm.Trainer.Cpu.ReferenceBackward.LossAndGradients(cpu, x, y, B, T);
                Palm.Trainer.Optim.ReferenceOptimizer.Step(p, g, state, new Palm.Trainer.Optim.StepHyper(), ++cstep);
            });
            Console.WriteLine($"| train step `{preset}` {B}x{T} | tokens/s | median ms |");
            Console.WriteLine("|---|---|---|");
            Console.WriteLine($"| vulkan ({ctx.Capabilities.DeviceName}) | {B * T / gpu:F0} | {gpu * 1000:F0} |");
            Console.WriteLine($"| csharp-cpu-reference | {B * T / cpuS:F0} | {cpuS * 1000:F0} |");
        }
        return 0;
    }

    private static void Forward(VulkanContext ctx, string preset, int reps, int B, bool scans)
    {
        var c = PalmConfig.Preset(preset);
        var p = new PalmParameters(c);
        p.InitTraining(new Rng(5));
        var gc = Palm.Inference.Backends.GpuMapping.ToGpu(c);
        using var vf = new VulkanForward(ctx, gc, Palm.Inference.Backends.GpuMapping.ToGpuWeights(p));
        int T = c.BlockSize;
        var rng = new Rng(9);
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.NextInt(c.VocabSize)).ToArray();
        var cpu = new CpuReferenceModel(p);
        double Median(Action a)
        {
            a();
            var ts = new List<double>();
            for (int r = 0; r < reps; r++) { var sw = Stopwatch.StartNew(); a(); ts.Add(sw.Elapsed.TotalSeconds); }
            ts.Sort();
            return ts[ts.Count / 2];
        }
        double gpu = Median(() => vf.Forward(tokens, B, T));
        double sequential = 0;
        if (scans)
        {
            var saved = Palm.Gpu.Kernels.Aod.ChunkedFrom;
            Palm.Gpu.Kernels.Aod.ChunkedFrom = int.MaxValue;
            try { sequential = Median(() => vf.Forward(tokens, B, T)); }
            finally { Palm.Gpu.Kernels.Aod.ChunkedFrom = saved; }
        }
        double cpuS = Median(() => cpu.Forward(tokens, B, T));
        Console.WriteLine();
        Console.WriteLine($"| forward `{preset}` {B}x{T} | tokens/s | median ms |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| vulkan ({ctx.Capabilities.DeviceName}) | {B * T / gpu:F0} | {gpu * 1000:F0} |");
        if (scans) Console.WriteLine($"| vulkan, AoD scan sequential | {B * T / sequential:F0} | {sequential * 1000:F0} |");
        Console.WriteLine($"| csharp-cpu-reference | {B * T / cpuS:F0} | {cpuS * 1000:F0} |");
    }
}
