// Where to sample a decoded token: the sample kernel (both variants) against the host's
// TokenSampler over the same rows, with what the host path also pays first (downloading the
// logits). Peaked random logits (N(0, 3^2)), temperature 0.8, top-p 0.9, no penalties.
using System.Diagnostics;
using System.Globalization;
using Palm.Gpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Vulkan;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Bench;

public static class SampleBench
{
    /// <summary>Usage: <c>gpu-sample [--vocab 2048,4096,65536] [--rows 1,8] [--reps 7]</c>.</summary>
    public static int Run(string[] args)
    {
        var vocabs = new List<int> { 2048, 4096, 65536 };
        var rowCounts = new List<int> { 1, 8 };
        int reps = 7;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--vocab" when i + 1 < args.Length: vocabs = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToList(); break;
                case "--rows" when i + 1 < args.Length: rowCounts = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToList(); break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine($"gpu-sample bench: unknown argument '{args[i]}'. Usage: [--vocab 2048,4096,65536] [--rows 1,8] [--reps 7]"); return 2;
            }
        }
        VulkanContext ctx;
        try { ctx = VulkanContext.Create(); }
        catch (GpuUnavailableException e) { Console.WriteLine($"gpu-sample bench: no Vulkan device ({e.Message}); skipped"); return 0; }
        using (ctx)
        {
            var caps = ctx.Capabilities;
            Console.WriteLine($"Palm.Bench gpu-sample: {caps.DeviceName} ({caps.DeviceType}), subgroup {caps.SubgroupSize}, medians of {reps}");
            Console.WriteLine("| V | rows | GPU ms (shared-memory sums) | GPU ms (subgroup sums) | host: download logits ms | host: TokenSampler ms |");
            Console.WriteLine("|---|---|---|---|---|---|");
            foreach (var v in vocabs)
                foreach (var rows in rowCounts)
                    Measure(ctx, v, rows, reps);
        }
        return 0;
    }

    private static void Measure(VulkanContext ctx, int V, int rows, int reps)
    {
        var rng = new Rng(7);
        var logits = new float[rows * V];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(3 * rng.NextGaussian());
        var settings = new SamplingSettings(0.8f, 0, 0.9f, 0f, 1f, 0f, 0f, null);
        var rowSettings = Enumerable.Range(0, rows).Select(_ => Sample.Row(0.8f, 0, 0.9f, 0f, 1f, 0f, 0f, rng.NextDouble(), 0, 0, 0, 0)).ToArray();
        using var tl = ctx.CreateTensor(logits, GpuDType.F32, rows, V);
        using var tr = ctx.CreateTensor(GpuDType.I32, rows * Sample.RowInts);
        using var tp = ctx.CreateTensor(GpuDType.I32, 2);
        using var ti = ctx.CreateTensor(GpuDType.I32, rows);
        tr.Upload(System.Runtime.InteropServices.MemoryMarshal.Cast<Sample.SampleRow, int>(rowSettings));
        var ids = new int[rows];

        string Gpu(bool subgroup)
        {
            if (subgroup && !ctx.Capabilities.SubgroupArithmetic) return "-";
            using var rec = new CommandRecorder(ctx);
            var times = new List<double>();
            for (int r = 0; r < reps + 1; r++)   // the first compiles the pipeline
            {
                var t = Stopwatch.StartNew();
                Sample.Record(rec, ctx, tl, tr, tp, 0, rows, ti, subgroup);
                rec.Submit();
                ti.Download(ids);
                if (r > 0) times.Add(t.Elapsed.TotalMilliseconds);
            }
            return Median(times).ToString("F3", CultureInfo.InvariantCulture);
        }

        var download = new List<double>();
        var host = new List<double>();
        var back = new float[rows * V];
        var sampler = new TokenSampler(V);
        var none = new RecentTokens(0);
        // The host sampler timed in steady state: the JIT tiers it up only after a second or so of calls.
        tl.Download(back);
        ModelBench.WarmUp(1, () => { for (int b = 0; b < rows; b++) ids[b] = sampler.Sample(back.AsSpan(b * V, V), settings, none, rowSettings[b].draw); });
        for (int r = 0; r < reps + 1; r++)
        {
            var t = Stopwatch.StartNew();
            tl.Download(back);
            double d = t.Elapsed.TotalMilliseconds;
            t.Restart();
            for (int b = 0; b < rows; b++) ids[b] = sampler.Sample(back.AsSpan(b * V, V), settings, none, rowSettings[b].draw);
            if (r > 0)
            {
                download.Add(d);
                host.Add(t.Elapsed.TotalMilliseconds);
            }
        }
        Console.WriteLine($"| {V} | {rows} | {Gpu(false)} | {Gpu(true)} | {Median(download):F3} | {Median(host):F3} |");
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}
