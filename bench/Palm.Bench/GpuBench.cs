// Vulkan throughput on whatever device is present (lavapipe here, a real GPU through
// scripts/gpu-check.sh): fp32 matmul GFLOP/s on square and decode shapes, and full-forward
// tokens/s of a preset beside the CPU reference in the same run.
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
    /// Usage: <c>[--sizes 256,512,1024] [--config small] [--reps 3] [--no-forward] [--batch 8] [--aod-scans]</c>.
    /// --aod-scans adds a Vulkan forward row with the AoD scan forced sequential, beside the default (chunked for long T).
    /// </summary>
    public static int Run(string[] args)
    {
        var sizes = new List<int> { 256, 512, 1024 };
        string preset = "small"; int reps = 3, batch = 8; bool forward = true, scans = false;
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
                default: Console.Error.WriteLine($"gpu bench: unknown argument '{args[i]}'. Usage: [--sizes 256,512,1024] [--config small] [--reps 3] [--no-forward] [--batch 8] [--aod-scans]"); return 2;
            }
        }
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(); }
        catch (GpuUnavailableException e) { Console.WriteLine($"gpu bench: no Vulkan device ({e.Message}); skipped"); return 0; }
        using (ctx)
        {
            var caps = ctx.Capabilities;
            Console.WriteLine($"Palm.Bench gpu: {caps.DeviceName} ({caps.DeviceType}), Vulkan {caps.ApiVersion}, subgroup {caps.SubgroupSize}");
            Console.WriteLine("| shape M x N x K | GFLOP/s (wall, median) | ms per matmul |");
            Console.WriteLine("|---|---|---|");
            var shapes = sizes.Select(s => (s, s, s)).Concat([(1, 1536, 256), (1, 4096, 256)]).ToList();
            foreach (var (m, n, k) in shapes) MatMul(ctx, m, n, k, reps);
            if (forward) Forward(ctx, preset, reps, batch, scans);
        }
        return 0;
    }

    private static void MatMul(VulkanContext ctx, int m, int n, int k, int reps)
    {
        var rng = new Rng(3);
        var x = new float[m * k]; var w = new float[n * k];
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextGaussian();
        for (int i = 0; i < w.Length; i++) w[i] = (float)rng.NextGaussian();
        using var tx = ctx.CreateTensor(x, GpuDType.F32, m, k);
        using var tw = ctx.CreateTensor(w, GpuDType.F32, n, k);
        using var ty = ctx.CreateTensor(GpuDType.F32, m, n);
        using var rec = new CommandRecorder(ctx);
        // Enough dispatches per submission that submit + wait overhead is amortised.
        int perSubmit = (int)Math.Clamp(2e9 / (2.0 * m * n * k), 1, 200);
        void Once()
        {
            for (int i = 0; i < perSubmit; i++) Linear.Record(rec, ctx, tx, tw, false, ty);
            rec.Submit();
        }
        Once();
        var times = new List<double>();
        for (int r = 0; r < reps; r++) { var sw = Stopwatch.StartNew(); Once(); times.Add(sw.Elapsed.TotalSeconds / perSubmit); }
        times.Sort();
        double med = times[times.Count / 2];
        Console.WriteLine($"| {m} x {n} x {k} | {2.0 * m * n * k / med / 1e9:F2} | {med * 1000:F3} |");
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
