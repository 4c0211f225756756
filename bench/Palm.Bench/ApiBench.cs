// Engine-API speed (what a game sees): load time, time to first token, batch-1 decode and 32
// concurrent sessions, for the built-in model and a `small`-shaped model, on the backends asked for.
using System.Diagnostics;
using Palm.Inference;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;

namespace Palm.Bench;

public static class ApiBench
{
    /// <summary>Usage: <c>api [--backend cpu|vulkan] [--tokens 256] [--sessions 32]</c>.</summary>
    public static int Run(string[] args)
    {
        var backend = Backend.Cpu; int tokens = 256, sessions = 32;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--backend" when i + 1 < args.Length: backend = args[++i] == "vulkan" ? Backend.Vulkan : Backend.Cpu; break;
                case "--tokens" when i + 1 < args.Length: tokens = int.Parse(args[++i]); break;
                case "--sessions" when i + 1 < args.Length: sessions = int.Parse(args[++i]); break;
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
        Console.WriteLine($"| model | backend | load ms | TTFT ms (32-token prompt) | decode tok/s, 1 session | decode tok/s, {sessions} sessions (sum) |");
        Console.WriteLine("|---|---|---|---|---|---|");
        try
        {
            foreach (var (name, path) in new[] { ("built-in palm-kjv", builtin), ("small (random)", small) })
                Measure(name, path, backend, tokens, sessions).GetAwaiter().GetResult();
        }
        finally { File.Delete(small); }
        return 0;
    }

    private static async Task Measure(string name, string path, Backend backend, int tokens, int sessions)
    {
        var sw = Stopwatch.StartNew();
        using var model = PalmModel.Load(path, new ModelOptions { Backend = backend });
        double loadMs = sw.Elapsed.TotalMilliseconds;
        // Never stop at end-of-text, so every run generates exactly `tokens` tokens.
        var noEot = new Dictionary<int, float> { [model.Tokenizer.EotId] = float.NegativeInfinity };
        // The `small` model has more ids than the tokenizer it borrows: never sample those.
        for (int id = model.Tokenizer.VocabSize; id < model.Config.VocabSize; id++) noEot[id] = float.NegativeInfinity;
        string prompt = string.Join(' ', Enumerable.Repeat("And God said unto Moses,", 6));
        var opts = new GenerationOptions { Temperature = 0, MaxTokens = tokens, LogitBias = noEot };

        async Task<(double Ttft, double Total, int Tokens)> One(ulong seed)
        {
            using var s = model.CreateSession(new SessionOptions { Seed = seed });
            var t = Stopwatch.StartNew();
            double ttft = -1;
            await foreach (var _ in s.GenerateAsync(prompt, opts)) if (ttft < 0) ttft = t.Elapsed.TotalMilliseconds;
            return (ttft, t.Elapsed.TotalSeconds, s.LastResult!.GeneratedTokens);
        }
        await One(1);                                   // warm-up
        var runs = new List<(double Ttft, double Total, int Tokens)>();
        for (int r = 0; r < 3; r++) runs.Add(await One((ulong)r));
        var med = runs.OrderBy(x => x.Total).ElementAt(1);
        sw.Restart();
        var all = await Task.WhenAll(Enumerable.Range(0, sessions).Select(i => One((ulong)i)));
        double concurrent = all.Sum(a => a.Tokens) / sw.Elapsed.TotalSeconds;
        Console.WriteLine($"| {name} | {model.BackendDescription.Split(';')[0]} | {loadMs:F0} | {runs.Select(x => x.Ttft).Order().ElementAt(1):F1} | {med.Tokens / med.Total:F0} | {concurrent:F0} |");
    }
}
