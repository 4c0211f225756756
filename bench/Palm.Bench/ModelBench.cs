// Model throughput of the CPU reference (forward+loss and one full training step) on a preset,
// beside the PyTorch peer (../shared/bench/torch_palm_bench.py) run in the same invocation.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Trainer.Cpu;
using Palm.Trainer.Optim;

namespace Palm.Bench;

public static class ModelBench
{
    public sealed record Row(string Backend, string What, double TokensPerSecond, double MedianMs, int Reps);

    /// <summary>Usage: <c>[--config small] [--reps 7] [--warmup 2] [--no-peer] [--write PATH]</c>.</summary>
    public static int Run(string[] args)
    {
        string preset = "small"; int reps = 7, warmup = 2; bool peer = true; string? write = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--config" when i + 1 < args.Length: preset = args[++i]; break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup" when i + 1 < args.Length: warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-peer": peer = false; break;
                case "--write" when i + 1 < args.Length: write = args[++i]; break;
                default: Console.Error.WriteLine($"model bench: unknown argument '{args[i]}'. Usage: [--config small] [--reps 7] [--warmup 2] [--no-peer] [--write PATH]"); return 2;
            }
        }
        var config = PalmConfig.Preset(preset);
        int batch = 8, t = config.BlockSize, V = config.VocabSize;
        var rng = new Rng(7);
        var p = new PalmParameters(config);
        p.InitTraining(rng);
        var model = new CpuReferenceModel(p);
        var x = Enumerable.Range(0, batch * t).Select(_ => rng.NextInt(V)).ToArray();
        var y = Enumerable.Range(0, batch * t).Select(_ => rng.NextInt(V)).ToArray();
        Console.WriteLine($"Palm.Bench model: preset {preset} ({p.Count:N0} params), batch {batch} x {t}, {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSArchitecture}, .NET {Environment.Version}");

        var rows = new List<Row>();
        int tokens = batch * t;
        rows.Add(Time("csharp-cpu-reference", "forward", tokens, warmup, reps, () => CpuOps.CrossEntropy(model.Forward(x, batch, t), y, V)));
        var state = OptimizerState.For(p);
        long step = 0;
        rows.Add(Time("csharp-cpu-reference", "train", tokens, warmup, reps, () =>
        {
            var (_, g) = ReferenceBackward.LossAndGradients(model, x, y, batch, t);
            ReferenceOptimizer.Step(p, g, state, new StepHyper { MuonBeta = ReferenceOptimizer.MuonBeta(step) }, ++step);
        }));
        foreach (var r in rows) Console.WriteLine($"  {r.Backend,-22} {r.What,-8} {r.TokensPerSecond,10:F0} tok/s  median {r.MedianMs,8:F1} ms ({r.Reps} reps)");

        if (peer) rows.AddRange(RunPeer(preset));
        var table = Table(preset, rows);
        Console.WriteLine();
        Console.WriteLine(table);
        if (write is not null) { File.AppendAllText(write, table + "\n"); Console.WriteLine($"appended to {write}"); }
        return 0;
    }

    private static Row Time(string backend, string what, int tokens, int warmup, int reps, Action fn)
    {
        for (int i = 0; i < warmup; i++) fn();
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            fn();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        double med = times[times.Count / 2];
        return new Row(backend, what, tokens / med, med * 1000, reps);
    }

    /// <summary>Runs the PyTorch peer with --json; rows it prints become peer rows.</summary>
    private static IEnumerable<Row> RunPeer(string preset)
    {
        var script = FindPeerScript();
        if (script is null) { Console.WriteLine("peer: ../shared/bench/torch_palm_bench.py not found; skipped"); return []; }
        var psi = new ProcessStartInfo("/usr/bin/python3", [script, "--config", preset, "--what", "train,forward", "--json", "--threads", "2"])
        { RedirectStandardOutput = true, RedirectStandardError = true };
        Console.WriteLine($"peer: {string.Join(' ', psi.ArgumentList)}");
        Process? proc;
        try { proc = Process.Start(psi); }
        catch (Exception e) { Console.WriteLine($"peer: could not start python3 ({e.Message}); run PALM_SETUP_PEERS=1 scripts/setup.sh"); return []; }
        if (proc is null) return [];
        var err = proc.StandardError.ReadToEndAsync();
        var rows = new List<Row>();
        string? line;
        while ((line = proc.StandardOutput.ReadLine()) is not null)
        {
            if (!line.StartsWith('{')) continue;
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            string blas = r.TryGetProperty("blas", out var b) ? b.GetString() ?? "?" : "?";
            rows.Add(new Row($"pytorch-cpu ({blas})", r.GetProperty("what").GetString()!, r.GetProperty("tokens_per_s").GetDouble(), r.GetProperty("median_s").GetDouble() * 1000, r.GetProperty("reps").GetInt32()));
        }
        proc.WaitForExit();
        var errText = err.Result;
        foreach (var l in errText.Split('\n').Where(l => l.Contains("torch ") || l.Contains("WARNING") || l.Contains("Error"))) Console.WriteLine("peer: " + l.Trim());
        if (proc.ExitCode != 0) Console.WriteLine($"peer exited {proc.ExitCode}: {errText[^Math.Min(errText.Length, 400)..]}");
        return rows;
    }

    private static string? FindPeerScript()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Palm.Native.sln")))
            {
                var s = Path.GetFullPath(Path.Combine(d.FullName, "..", "shared", "bench", "torch_palm_bench.py"));
                return File.Exists(s) ? s : null;
            }
        return null;
    }

    private static string Table(string preset, List<Row> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"| {DateTime.UtcNow:yyyy-MM-dd} `{preset}` | what | tokens/s | median ms | vs PyTorch |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var r in rows)
        {
            var peer = rows.FirstOrDefault(q => q.Backend.StartsWith("pytorch", StringComparison.Ordinal) && q.What == r.What);
            string ratio = peer is null ? "n/a" : $"{r.TokensPerSecond / peer.TokensPerSecond:F2}x";
            sb.AppendLine($"| {r.Backend} | {r.What} | {r.TokensPerSecond:F0} | {r.MedianMs:F1} | {ratio} |");
        }
        return sb.ToString().TrimEnd();
    }
}
