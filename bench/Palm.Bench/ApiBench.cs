// Engine-API speed (what a game sees): load time, time to first token, batch-1 decode and 32
// concurrent sessions, for the built-in model and a `small`-shaped model, on the backends asked for.
// On Vulkan it also reports GPU time per generated token from timestamp queries (the sum of the
// kernels' GPU times, KernelProfiler), beside wall time per token: the gap is host work,
// submission and synchronisation. Profiling stays on for the whole Vulkan row (timestamp writes
// cost some wall time); --no-gpu-time measures the wall time without them. On Vulkan a second
// table compares sampled sessions (temperature 0.8, top-p 0.9) sampled on the GPU (only ids come
// back) against the same sessions sampled on the host from downloaded logits (HostSampling).
using System.Diagnostics;
using Palm.Gpu.Vulkan;
using Palm.Inference;
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;

namespace Palm.Bench;

public static class ApiBench
{
    /// <summary>Usage: <c>api [--backend cpu|vulkan] [--tokens 256] [--sessions 32] [--no-gpu-time] [--sampling-only] [--no-peer]</c>.</summary>
    public static int Run(string[] args)
    {
        var backend = Backend.Cpu; int tokens = 256, sessions = 32; bool gpuTime = true, samplingOnly = false, peer = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--backend" when i + 1 < args.Length: backend = args[++i] == "vulkan" ? Backend.Vulkan : Backend.Cpu; break;
                case "--tokens" when i + 1 < args.Length: tokens = int.Parse(args[++i]); break;
                case "--sessions" when i + 1 < args.Length: sessions = int.Parse(args[++i]); break;
                case "--no-gpu-time": gpuTime = false; break;
                case "--no-peer": peer = false; break;
                case "--sampling-only": samplingOnly = true; break;
                default: Console.Error.WriteLine($"api bench: unknown argument '{args[i]}'"); return 2;
            }
        }
        string builtin = Path.Combine(AppContext.BaseDirectory, "models", "palm-kjv.palm");
        var ck = PalmCheckpoint.Load(builtin);
        // A `small`-shaped model with random weights and the built-in tokenizer (2,048 <= 4,096 ids).
        var p = new PalmParameters(PalmConfig.Small);
        p.InitTraining(new Rng(11));
        string small = Path.Combine(Path.GetTempPath(), $"palm-bench-small-{Environment.ProcessId}.palm");
        PalmCheckpoint.FromParameters(p, ck.Tokenizer).Save(small);
        double smallDecode = double.NaN;
        try
        {
            if (!samplingOnly)
            {
                Console.WriteLine($"| model | backend | load ms | TTFT ms (32-token prompt) | prefill tok/s (~670-token prompt) | decode tok/s, 1 session | wall ms/token, 1 session | GPU ms/token, 1 session | sampled decode tok/s, 1 session (T 0.8, top-p 0.9) | decode tok/s, {sessions} sessions (sum) | GPU ms/token, {sessions} sessions |");
                Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
                Measure("built-in palm-kjv", builtin, backend, tokens, sessions, gpuTime).GetAwaiter().GetResult();
                smallDecode = Measure("small (random)", small, backend, tokens, sessions, gpuTime).GetAwaiter().GetResult();
                Console.WriteLine();
                Console.WriteLine($"| model | backend | load ms | 1st generation: TTFT ms | 1st: tok/s | 2nd generation: TTFT ms | 2nd: tok/s |  (JIT: DOTNET_TC_QuickJit={Environment.GetEnvironmentVariable("DOTNET_TC_QuickJit") ?? "default"})");
                Console.WriteLine("|---|---|---|---|---|---|---|");
                foreach (var line in Cold) Console.WriteLine(line);
            }
            if (backend == Backend.Vulkan)
            {
                Console.WriteLine();
                Console.WriteLine($"| model | sampling (T 0.8, top-p 0.9) | wall ms/token, 1 session | bytes read/token, 1 | bytes written/token, 1 | decode tok/s, {sessions} sessions (sum) | bytes read/token, {sessions} |");
                Console.WriteLine("|---|---|---|---|---|---|---|");
                foreach (var (name, path) in new[] { ("built-in palm-kjv", builtin), ("small (random)", small) })
                    foreach (var host in new[] { false, true })
                        MeasureSampling(name, path, host, tokens, sessions).GetAwaiter().GetResult();
            }
        }
        finally { File.Delete(small); }
        if (peer && !double.IsNaN(smallDecode))
        {
            // The issue's yardstick, in the same run: PyTorch's batch-1 decode of the same preset
            // (recurrent, and the upstream full-recompute way), against our API's 1-session decode.
            foreach (var r in ModelBench.RunPeer("small", "decode,decode_full"))
                Console.WriteLine($"peer {r.Backend} {r.What}: {r.TokensPerSecond:F0} tok/s" +
                                  (r.What == "decode" ? $"; API 1-session decode of `small` above = {smallDecode / r.TokensPerSecond:F2}x" : ""));
        }
        return 0;
    }

    // Wall time and bus traffic per generated token of sampled sessions, sampled on the GPU or
    // (hostSampling) on the host. Bytes include the prompt's prefill (its last logits come back).
    private static async Task MeasureSampling(string name, string path, bool hostSampling, int tokens, int sessions)
    {
        var ck = PalmCheckpoint.Load(path);
        var parameters = ck.ToParameters();
        var vk = VulkanBackend.Create(parameters, VulkanOptions.FromEnvironment() with { HostSampling = hostSampling });
        using var model = PalmModel.Create(parameters, ck.Tokenizer!.ToTokenizer(), vk);
        var bus = vk.Context.Transfers;
        var noEot = NoEndOfText(model);
        var opts = new GenerationOptions { Temperature = 0.8f, TopP = 0.9f, MaxTokens = tokens, LogitBias = noEot };
        async Task<(double Seconds, int Tokens)> One(ulong seed)
        {
            using var s = model.CreateSession(new SessionOptions { Seed = seed });
            var t = Stopwatch.StartNew();
            await foreach (var _ in s.GenerateAsync(Prompt, opts)) { }
            return (t.Elapsed.TotalSeconds, s.LastResult!.GeneratedTokens);
        }
        // Warm-up: pipelines compile at first use, and the JIT tiers hot methods up only after
        // about a second of calls (ModelBench.MinWarmupSeconds).
        for (var w = Stopwatch.StartNew(); w.Elapsed.TotalSeconds < ModelBench.MinWarmupSeconds;) await One(1);
        var runs = new List<(double Seconds, int Tokens, long Read, long Written)>();
        for (int r = 0; r < 3; r++)
        {
            long r0 = bus.BytesRead, w0 = bus.BytesWritten;
            var (sec, n) = await One((ulong)r + 2);
            runs.Add((sec, n, bus.BytesRead - r0, bus.BytesWritten - w0));
        }
        var med = runs.OrderBy(x => x.Seconds).ElementAt(1);
        long read0 = bus.BytesRead;
        var sw = Stopwatch.StartNew();
        var all = await Task.WhenAll(Enumerable.Range(0, sessions).Select(i => One((ulong)i + 10)));
        double seconds = sw.Elapsed.TotalSeconds;
        int made = all.Sum(a => a.Tokens);
        Console.WriteLine($"| {name} | {(hostSampling ? "host (logits come back)" : "GPU (ids come back)")} | {1000 * med.Seconds / med.Tokens:F2} | " +
                          $"{(double)med.Read / med.Tokens:F0} | {(double)med.Written / med.Tokens:F0} | {made / seconds:F0} | {(double)(bus.BytesRead - read0) / made:F0} |");
    }

    // Every generation makes exactly its token budget: end-of-text is banned, and so are the ids the
    // `small` model has beyond the tokenizer it borrows.
    private static Dictionary<int, float> NoEndOfText(PalmModel model)
    {
        var ban = new Dictionary<int, float> { [model.Tokenizer.EotId] = float.NegativeInfinity };
        for (int id = model.Tokenizer.VocabSize; id < model.Config.VocabSize; id++) ban[id] = float.NegativeInfinity;
        return ban;
    }

    // The short prompt of the TTFT and decode rows (32 tokens with the built-in tokenizer).
    private static readonly string Prompt = string.Join(' ', Enumerable.Repeat("And God said unto Moses,", 6));

    // Rows of the first-generations table, printed after the main one.
    private static readonly List<string> Cold = [];

    private static async Task<double> Measure(string name, string path, Backend backend, int tokens, int sessions, bool gpuTime)
    {
        var sw = Stopwatch.StartNew();
        KernelProfiler? profiler = null;
        PalmModel Load()
        {
            if (backend != Backend.Vulkan) return PalmModel.Load(path, new ModelOptions { Backend = backend });
            // The public loader, but with timestamp queries on: the same checkpoint, tokenizer and backend.
            var ck = PalmCheckpoint.Load(path);
            var parameters = ck.ToParameters();
            var vk = VulkanBackend.Create(parameters, VulkanOptions.FromEnvironment() with { Profile = gpuTime });
            profiler = vk.Context.Profiler;
            return PalmModel.Create(parameters, ck.Tokenizer!.ToTokenizer(), vk);
        }
        using var model = Load();
        double loadMs = sw.Elapsed.TotalMilliseconds;
        // GPU milliseconds per generated token since the last reset: every kernel of the run,
        // the prompt's prefill included (amortised over the generated tokens).
        double GpuMsPerToken(int generated) => profiler is null ? double.NaN : profiler.Totals.Values.Sum(t => t.Ns) / 1e6 / generated;
        var noEot = NoEndOfText(model);
        var opts = new GenerationOptions { Temperature = 0, MaxTokens = tokens, LogitBias = noEot };
        // What a game usually asks for: sampled text (on the CPU backend, the host sampler runs every token).
        var sampledOpts = new GenerationOptions { Temperature = 0.8f, TopP = 0.9f, MaxTokens = tokens, LogitBias = noEot };

        async Task<(double Ttft, double Total, int Tokens)> One(ulong seed, GenerationOptions? o = null)
        {
            using var s = model.CreateSession(new SessionOptions { Seed = seed });
            var t = Stopwatch.StartNew();
            double ttft = -1;
            await foreach (var _ in s.GenerateAsync(Prompt, o ?? opts)) if (ttft < 0) ttft = t.Elapsed.TotalMilliseconds;
            return (ttft, t.Elapsed.TotalSeconds, s.LastResult!.GeneratedTokens);
        }
        // The first two generations after loading: what a game's first replies cost while the
        // JIT still compiles and tiers up (run with DOTNET_TC_QuickJit=0 to see a host's setting).
        var first = await One(1);
        var second = await One(1);
        Cold.Add($"| {name} | {model.BackendDescription.Split(';')[0]} | {loadMs:F0} | {first.Ttft:F1} | {first.Tokens / first.Total:F0} | {second.Ttft:F1} | {second.Tokens / second.Total:F0} |");
        // Warm-up for at least ModelBench.MinWarmupSeconds: a single generation (~0.1 s for
        // `small`) left the timed runs partly in the JIT's unoptimised tier.
        for (var w = Stopwatch.StartNew(); w.Elapsed.TotalSeconds < ModelBench.MinWarmupSeconds;) await One(1);
        var runs = new List<(double Ttft, double Total, int Tokens, double GpuMs)>();
        for (int r = 0; r < 3; r++)
        {
            profiler?.Clear();
            var (ttft, total, n) = await One((ulong)r);
            runs.Add((ttft, total, n, GpuMsPerToken(n)));
        }
        var med = runs.OrderBy(x => x.Total).ElementAt(1);
        for (var w = Stopwatch.StartNew(); w.Elapsed.TotalSeconds < 2;) await One(1, sampledOpts);
        var sampledRuns = new List<double>();
        for (int r = 0; r < 3; r++) { var (_, total, n) = await One((ulong)r, sampledOpts); sampledRuns.Add(n / total); }
        double sampled = sampledRuns.Order().ElementAt(1);
        // Prefill: a long prompt (~670 tokens) and one generated token; the session's own
        // PrefillTime (feeding the prompt, chunked), median of 5.
        string longPrompt = string.Join(' ', Enumerable.Repeat("And God said unto Moses, Speak unto the children of Israel.", 48));
        // Five warm-up prompts first: the prefill path's methods are still being tiered up by the
        // JIT after the short prompts above (measured: ~100 ms, then ~35 ms, for the same prompt).
        var prefills = new List<double>();
        for (int r = 0; r < 10; r++)
        {
            using var s = model.CreateSession();
            await foreach (var _ in s.GenerateAsync(longPrompt, new GenerationOptions { Temperature = 0, MaxTokens = 1, LogitBias = noEot })) { }
            if (r >= 5) prefills.Add(s.LastResult!.PromptTokens / s.LastResult.PrefillTime.TotalSeconds);
        }
        double prefill = prefills.Order().ElementAt(2);
        profiler?.Clear();
        sw.Restart();
        var all = await Task.WhenAll(Enumerable.Range(0, sessions).Select(i => One((ulong)i)));
        double concurrent = all.Sum(a => a.Tokens) / sw.Elapsed.TotalSeconds;
        double gpuConcurrent = GpuMsPerToken(all.Sum(a => a.Tokens));
        static string Ms(double v) => double.IsNaN(v) ? "-" : v.ToString("F3", System.Globalization.CultureInfo.InvariantCulture);
        Console.WriteLine($"| {name} | {model.BackendDescription.Split(';')[0]} | {loadMs:F0} | {runs.Select(x => x.Ttft).Order().ElementAt(1):F1} | {prefill:F0} | {med.Tokens / med.Total:F0} | " +
                          $"{Ms(1000 * med.Total / med.Tokens)} | {Ms(med.GpuMs)} | {sampled:F0} | {concurrent:F0} | {Ms(gpuConcurrent)} |");
        return med.Tokens / med.Total;
    }
    /// <summary>
    /// Usage: <c>first-reply [--warm-up] [--runs 2] [--model PATH]</c>. In this fresh process: load
    /// the model (default: the built-in one) on the CPU, optionally <see cref="PalmModel.WarmUpAsync"/>,
    /// then time the first generations (200 tokens of "And God said", default options): what a
    /// game's first replies cost. Run it several times, alternating with and without --warm-up.
    /// </summary>
    public static int FirstReply(string[] args)
    {
        bool warm = args.Contains("--warm-up");
        int runs = args.SkipWhile(a => a != "--runs").Skip(1).Select(int.Parse).FirstOrDefault(2);
        string path = args.SkipWhile(a => a != "--model").Skip(1).FirstOrDefault() ?? Path.Combine(AppContext.BaseDirectory, "models", "palm-kjv.palm");
        var clock = Stopwatch.StartNew();
        using var model = PalmModel.Load(path, new ModelOptions { Backend = Backend.Cpu });
        var line = new System.Text.StringBuilder($"load {clock.Elapsed.TotalMilliseconds:F0} ms");
        if (warm) line.Append($"; warm-up {model.WarmUpAsync().GetAwaiter().GetResult().TotalMilliseconds:F0} ms");
        for (int r = 0; r < runs; r++)
        {
            using var session = model.CreateSession();
            var t = Stopwatch.StartNew();
            double ttft = -1;
            foreach (var _ in session.GenerateAsync("And God said", new GenerationOptions { MaxTokens = 200, Seed = (ulong)r }).ToBlockingEnumerable())
                if (ttft < 0) ttft = t.Elapsed.TotalMilliseconds;
            line.Append($"; reply {r + 1}: TTFT {ttft:F1} ms, {session.LastResult!.GeneratedTokens} tokens in {t.Elapsed.TotalMilliseconds:F1} ms");
        }
        Console.WriteLine(line);
        return 0;
    }
}
