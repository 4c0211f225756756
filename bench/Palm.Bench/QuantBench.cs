// Quantized inference: (1) CPU matrix-vector GFLOP/s of the q8/q4 kernels (Cpu/QuantizedMatVec)
// beside the float32 decoder's MatVec on the built-in model's widest shapes; (2) resident weight
// bytes and decode tokens/s of the built-in model stored f32, q8 and q4, on the backend asked for.
using System.Diagnostics;
using Palm.Inference;
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Quantization;

namespace Palm.Bench;

public static class QuantBench
{
    /// <summary>Usage: <c>quant [--backend cpu|vulkan] [--tokens 128] [--reps 5] [--skip-model] [--skip-matvec]</c>.</summary>
    public static int Run(string[] args)
    {
        var backend = Backend.Vulkan; int tokens = 128, reps = 5; bool model = true, matvec = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--backend" when i + 1 < args.Length: backend = args[++i] == "cpu" ? Backend.Cpu : Backend.Vulkan; break;
                case "--tokens" when i + 1 < args.Length: tokens = int.Parse(args[++i]); break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i]); break;
                case "--skip-model": model = false; break;
                case "--skip-matvec": matvec = false; break;
                default: Console.Error.WriteLine($"quant bench: unknown argument '{args[i]}'"); return 2;
            }
        }
        Console.WriteLine($"Palm.Bench quant: {Environment.ProcessorCount} cores, quantized kernel {QuantizedMatVec.Best}, load {File.ReadAllText("/proc/loadavg").Trim()}");
        if (matvec) MatVecs();
        if (model) Models(backend, tokens, reps).GetAwaiter().GetResult();
        return 0;
    }

    private static void MatVecs()
    {
        Console.WriteLine("| W (n x k) | kernel | GFLOP/s | weight bytes |");
        Console.WriteLine("|---|---|---|---|");
        var rng = new Random(5);
        foreach (var (n, k) in new[] { (4096, 64), (1536, 64), (8192, 1024) })
        {
            var w = new float[n * k];
            for (int i = 0; i < w.Length; i++) w[i] = (float)(2 * rng.NextDouble() - 1);
            var x = new float[k];
            for (int i = 0; i < k; i++) x[i] = (float)(2 * rng.NextDouble() - 1);
            var y = new float[n];
            double flops = 2.0 * n * k;
            Row(n, k, "f32 FloatMatVec.MatVec", flops / Seconds(() => FloatMatVec.MatVec(w, n, k, x, y)), 4L * n * k);
            foreach (var (dtype, g) in new[] { (TensorDType.Q8, k), (TensorDType.Q4, 32) })
            {
                var q = QuantizedTensor.Quantize(w, dtype, g);
                foreach (var isa in new[] { QuantIsa.Avx512, QuantIsa.Avx2, QuantIsa.Scalar })
                {
                    if (!QuantizedMatVec.Supported(isa)) continue;
                    double gf = flops / Seconds(() => QuantizedMatVec.MatVec(isa, q, n, k, x, y));
                    Row(n, k, $"{dtype.SpecName()} (G={g}) {isa}", gf, q.Data.Length + q.Scales.Length);
                }
            }
        }

        static void Row(int n, int k, string kernel, double flopsPerSecond, long bytes) =>
            Console.WriteLine($"| {n} x {k} | {kernel} | {flopsPerSecond / 1e9:F1} | {bytes / 1024.0:F0} KiB |");
    }

    // Seconds per call: the fastest of 300 batches of ~1 ms. Short batches, many of them: on a
    // shared machine most batches get preempted, the fastest one shows the kernel.
    private static double Seconds(Action call)
    {
        for (int i = 0; i < 100; i++) call();
        int calls = 1;
        var sw = new Stopwatch();
        while (true)
        {
            sw.Restart();
            for (int i = 0; i < calls; i++) call();
            if (sw.Elapsed.TotalMilliseconds >= 1) break;
            calls *= 2;
        }
        double best = double.MaxValue;
        for (int rep = 0; rep < 300; rep++)
        {
            sw.Restart();
            for (int i = 0; i < calls; i++) call();
            best = Math.Min(best, sw.Elapsed.TotalSeconds / calls);
        }
        return best;
    }

    private static async Task Models(Backend backend, int tokens, int reps)
    {
        string builtin = Path.Combine(AppContext.BaseDirectory, "models", "palm-kjv.palm");
        var ck = PalmCheckpoint.Load(builtin);
        string dir = Path.Combine(Path.GetTempPath(), $"palm-bench-quant-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        Console.WriteLine();
        Console.WriteLine($"| palm-kjv stored as | backend | file | resident weights | decode tok/s (1 session, {tokens} tokens, median / best of {reps} interleaved rounds) |");
        Console.WriteLine("|---|---|---|---|---|");
        var models = new List<(string Name, string Path, PalmModel Model)>();
        try
        {
            var files = new List<(string Name, string Path)> { ("f32", builtin) };
            foreach (var (name, dtype, embed) in new[] { ("q8", TensorDType.Q8, false), ("q8 + embedding", TensorDType.Q8, true), ("q4", TensorDType.Q4, false), ("q4 + embedding", TensorDType.Q4, true) })
            {
                string path = Path.Combine(dir, name.Replace(' ', '_').Replace("+", "") + ".palm");
                CheckpointQuantizer.Quantize(ck, dtype, null, embed).Save(path);
                files.Add((name, path));
            }
            foreach (var (name, path) in files) models.Add((name, path, PalmModel.Load(path, new ModelOptions { Backend = backend })));
            // Rounds interleave the storages, so a shared machine's load changes hit them all alike.
            var rates = models.Select(_ => new List<double>()).ToArray();
            // Warm-up until the JIT has tiered the decode path up (ModelBench.MinWarmupSeconds).
            for (var w = System.Diagnostics.Stopwatch.StartNew(); w.Elapsed.TotalSeconds < ModelBench.MinWarmupSeconds;)
                foreach (var m in models) await DecodeRate(m.Model, tokens);
            for (int round = 0; round < reps; round++)
                for (int m = 0; m < models.Count; m++)
                    rates[m].Add(await DecodeRate(models[m].Model, tokens));
            for (int m = 0; m < models.Count; m++)
            {
                var (name, path, model) = models[m];
                var r = rates[m].Order().ToArray();
                Console.WriteLine($"| {name} | {model.Backend} | {new FileInfo(path).Length / 1024.0:F0} KiB | {model.WeightBytes / 1024.0:F0} KiB | {r[r.Length / 2]:F0} / {r[^1]:F0} |");
            }
        }
        finally
        {
            foreach (var m in models) m.Model.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }

    // Greedy tokens per second after the prompt: timed from the first piece on (decode only), and
    // counted in tokens, not pieces (a piece is whole UTF-8 characters; a token may give none or several).
    private static async Task<double> DecodeRate(PalmModel model, int tokens)
    {
        var noEot = new Dictionary<int, float> { [model.Tokenizer.EotId] = float.NegativeInfinity };
        var opts = new GenerationOptions { Temperature = 0, MaxTokens = tokens, LogitBias = noEot };
        using var s = model.CreateSession();
        long first = -1;
        var sw = new Stopwatch();
        await foreach (var _ in s.GenerateAsync("And God said", opts))
            if (first < 0) { sw.Start(); first = s.TokenCount; }
        sw.Stop();
        return (s.TokenCount - first) / sw.Elapsed.TotalSeconds;
    }
}
