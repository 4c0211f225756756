// Model throughput of the CPU reference (forward+loss and one full training step) on a preset,
// beside the PyTorch peer (../shared/bench/torch_palm_bench.py) run in the same invocation.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Runtime.Intrinsics;
using Palm.Inference.Cpu;
using Palm.Inference.Cpu.Fast;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Quantization;
using Palm.Trainer.Cpu;
using Palm.Trainer.FastCpu;
using Palm.Trainer.Optim;

namespace Palm.Bench;

public static class ModelBench
{
    /// <summary>One measurement; <paramref name="ForeignLoad"/>: the peer's share of the CPUs other processes used while it was timed.</summary>
    public sealed record Row(string Backend, string What, double TokensPerSecond, double MedianMs, int Reps, double? ForeignLoad = null);

    private const string Usage = "[--config small] [--reps 7] [--warmup 2] [--warmup-seconds 5] [--no-peer] [--decode-only] [--pairs N] [--write PATH]";

    /// <summary>Usage: <c>[--config small] [--reps 7] [--warmup 2] [--warmup-seconds 5] [--no-peer] [--decode-only] [--pairs N] [--write PATH]</c>.
    /// <c>--pairs N</c>: only the float32 batch-1 decode, N times alternated with the peer's (see <see cref="DecodePairs"/>).</summary>
    public static int Run(string[] args)
    {
        string preset = "small"; int reps = 7, warmup = 2, pairs = 0; bool peer = true, decodeOnly = false; string? write = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--config" when i + 1 < args.Length: preset = args[++i]; break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup" when i + 1 < args.Length: warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup-seconds" when i + 1 < args.Length: MinWarmupSeconds = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-peer": peer = false; break;
                case "--decode-only": decodeOnly = true; break;
                case "--pairs" when i + 1 < args.Length: pairs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--write" when i + 1 < args.Length: write = args[++i]; break;
                default: Console.Error.WriteLine($"model bench: unknown argument '{args[i]}'. Usage: {Usage}"); return 2;
            }
        }
        if (pairs < 0 || reps < 1) { Console.Error.WriteLine($"model bench: --pairs must be >= 0 and --reps >= 1. Usage: {Usage}"); return 2; }
        if (pairs > 0) return DecodePairs(preset, pairs, reps, warmup, write);
        var config = PalmConfig.Preset(preset);
        int batch = 8, t = config.BlockSize, V = config.VocabSize;
        var rng = new Rng(7);
        var p = new PalmParameters(config);
        p.InitTraining(rng);
        var model = new CpuReferenceModel(p);
        var x = Enumerable.Range(0, batch * t).Select(_ => rng.NextInt(V)).ToArray();
        var y = Enumerable.Range(0, batch * t).Select(_ => rng.NextInt(V)).ToArray();
        Console.WriteLine($"Palm.Bench model: preset {preset} ({p.Count:N0} params), batch {batch} x {t}, {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSArchitecture}, .NET {Environment.Version}, GEMM kernel {Gemm.Best}, load {GemmBench.LoadAverage()}");

        var rows = new List<Row>();
        int tokens = batch * t;
        var fastModel = new FastCpuModel(p);
        if (!decodeOnly)
        {
            var fastTrain = new FastCpuBackward(p);
            rows.Add(Time("csharp-cpu-fast", "forward", tokens, warmup, reps, () => CpuOps.CrossEntropy(fastModel.Forward(x, batch, t).AsSpan(0, tokens * V), y, V)));
            rows.Add(Time("csharp-cpu-reference", "forward", tokens, warmup, reps, () => CpuOps.CrossEntropy(model.Forward(x, batch, t), y, V)));
            var state = OptimizerState.For(p);
            long step = 0;
            var fastState = OptimizerState.For(p);
            var fastOpt = new FastOptimizer(p);
            long fastStep = 0;
            rows.Add(Time("csharp-cpu-fast", "train", tokens, warmup, reps, () =>
            {
                fastTrain.LossAndGradients(x, y, batch, t);
                fastOpt.Step(p, fastTrain.Grads, fastState, new StepHyper { MuonBeta = ReferenceOptimizer.MuonBeta(fastStep) }, ++fastStep);
            }));
            // Where a fast step's time goes: forward+backward, and the optimizer alone.
            var fb = Time("csharp-cpu-fast", "fwd+bwd", tokens, 1, reps, () => fastTrain.LossAndGradients(x, y, batch, t));
            var opt = Time("csharp-cpu-fast", "optim", tokens, 1, reps, () => fastOpt.Step(p, fastTrain.Grads, fastState, new StepHyper(), ++fastStep));
            Console.WriteLine($"  fast train step split: forward+backward {fb.MedianMs:F1} ms, optimizer {opt.MedianMs:F1} ms");
            rows.Add(Time("csharp-cpu-reference", "train", tokens, warmup, Math.Min(reps, 3), () =>
            {
                var (_, g) = ReferenceBackward.LossAndGradients(model, x, y, batch, t);
                ReferenceOptimizer.Step(p, g, state, new StepHyper { MuonBeta = ReferenceOptimizer.MuonBeta(step) }, ++step);
            }));
        }

        // Batch-1 generation the peer's way: parallel prefill of a 32-token prompt (which yields
        // the first new token), then greedy O(1) steps until 256 new tokens exist.
        const int PrefillLen = 256;
        var prompt = Enumerable.Range(0, Prompt).Select(_ => rng.NextInt(V)).ToArray();
        using var fast = new FastCpuDecoder(p);
        using var fastOne = new FastCpuDecoder(p, threads: 1);
        int Generate(Func<int, AodStateSet, float[], int> step, bool fastPrefill) =>
            GenerateGreedy(config, prompt, NewTokens, step, fastPrefill ? fastModel : null, fastPrefill ? null : model);
        // Two cores (adaptive) and one, timed alternately after the same warm-up, so JIT tiering
        // and the machine's load drift hit both alike.
        var (two, one) = TimeInterleaved(NewTokens, Math.Max(warmup, 3), reps,
            () => Generate((t, s, l) => fast.StepArgMax(t, s, l), true), () => Generate((t, s, l) => fastOne.StepArgMax(t, s, l), true));
        rows.Add(two with { Backend = "csharp-cpu-fast", What = "decode" });
        Console.WriteLine($"  two-core decoder: {fast.TeamSteps} of its batch-1 steps ran on both cores (the rest on one: adaptive)");
        rows.Add(one with { Backend = "csharp-cpu-fast-1core", What = "decode" });
        // The same model with q8 linears (round to nearest, the default groups; the embedding stays
        // float32), as `quantize --dtype q8` stores it: a different precision from the peer's, so a
        // row of its own, not the fp32 decode ratio. Its weights fit the two cores' L2 caches.
        // q4 likewise (groups of 32).
        CpuWeights Quantized(TensorDType dtype) => new(config, e => e.Name == "embed.weight" ? CpuMatrix.From(p[e.Name]) :
            new CpuMatrix(e.Name, e.Rows, e.Cols, QuantizedTensor.Quantize(p[e.Name].Data, dtype, CheckpointQuantizer.GroupFor(e.Name, e.Cols, dtype, null))));
        foreach (var dtype in new[] { TensorDType.Q8, TensorDType.Q4 })
        {
            var qw = Quantized(dtype);
            using var fastQ = new FastCpuDecoder(qw);
            string name = dtype.SpecName();
            rows.Add(Time($"csharp-cpu-fast-{name}", "decode", NewTokens, Math.Max(warmup, 3), reps, () => Generate((t, s, l) => fastQ.StepArgMax(t, s, l), true)));
            Console.WriteLine($"  {name} decoder: {qw.Bytes / 1024} KiB of weights (+{fastQ.CopyBytes / 1024} KiB of transposed copies) against {CpuWeights.From(p).Bytes / 1024} KiB float32");
        }
        rows.Add(Time("csharp-cpu-reference", "decode", NewTokens, 1, Math.Min(reps, 3), () => Generate((t, s, l) => { model.Step([t], s, l); return Palm.Inference.Sampling.Sampler.ArgMax(l); }, false)));
        if (!decodeOnly)
        {
            var longPrompt = Enumerable.Range(0, PrefillLen).Select(_ => rng.NextInt(V)).ToArray();
            rows.Add(Time("csharp-cpu-fast", "prefill", PrefillLen, warmup, reps, () => fastModel.Forward(longPrompt, 1, PrefillLen, new AodStateSet(config, 1), lastOnly: true)));
            rows.Add(Time("csharp-cpu-reference", "prefill", PrefillLen, warmup, reps, () => model.Forward(longPrompt, 1, PrefillLen, new AodStateSet(config, 1))));
        }
        foreach (var r in rows) Console.WriteLine($"  {r.Backend,-22} {r.What,-8} {r.TokensPerSecond,10:F0} tok/s  median {r.MedianMs,8:F1} ms ({r.Reps} reps)");
        Console.WriteLine($"  load after: {GemmBench.LoadAverage()}");
        DecodeRoofline(config, p, rows.First(r => r.Backend == "csharp-cpu-fast" && r.What == "decode").TokensPerSecond);

        if (peer) rows.AddRange(RunPeer(preset, decodeOnly ? "decode" : "train,forward,decode,decode_full"));
        var table = Table(preset, rows);
        Console.WriteLine();
        Console.WriteLine(table);
        if (write is not null) { File.AppendAllText(write, table + "\n"); Console.WriteLine($"appended to {write}"); }
        return 0;
    }

    // Batch-1 generation the peer's way (torch_palm_bench.py's PROMPT_LEN and NEW_TOKENS).
    private const int Prompt = 32, NewTokens = 256;

    // A prompt's prefill (fast or reference forward), which yields the first new token, then
    // greedy steps until `newTokens` exist; returns the last token (so nothing is optimised away).
    // Each step returns the next token: the fast decoders take the argmax inside the step
    // (StepArgMax, as the CPU backend does for a session's greedy request), the reference after it.
    private static int GenerateGreedy(PalmConfig config, int[] prompt, int newTokens, Func<int, AodStateSet, float[], int> step,
        FastCpuModel? fastModel, CpuReferenceModel? model)
    {
        int V = config.VocabSize;
        var st = new AodStateSet(config, 1);
        var logits = fastModel is not null
            ? fastModel.Forward(prompt, 1, prompt.Length, st, lastOnly: true).AsSpan(0, V).ToArray()
            : model!.Forward(prompt, 1, prompt.Length, st).AsSpan((prompt.Length - 1) * V, V).ToArray();
        int tok = Palm.Inference.Sampling.Sampler.ArgMax(logits);
        for (int i = 1; i < newTokens; i++) tok = step(tok, st, logits);
        return tok;
    }

    /// <summary>
    /// The float32 batch-1 decode ratio, measured in pairs: N times, our decode (the two-core
    /// adaptive decoder, the median of at least 101 generations, ~2 s) is timed right before and right after one run of the
    /// peer's decode, and the pair's ratio is the mean of ours over the peer's. On a shared
    /// machine whose speed drifts by 1.5x within minutes, a ratio from one run of each, a minute
    /// apart (the plain `model` run), measures the drift as much as the code; bracketing each peer
    /// run and taking the median pair cancels slow drift. Pairs where the peer reports other
    /// processes on the CPUs (foreign load over 5 %) are listed but left out of the median.
    /// </summary>
    private static int DecodePairs(string preset, int pairs, int reps, int warmup, string? write)
    {
        var config = PalmConfig.Preset(preset);
        var rng = new Rng(7);
        var p = new PalmParameters(config);
        p.InitTraining(rng);
        var fastModel = new FastCpuModel(p);
        // The same prompt as Run's: it draws its training batch (inputs and targets) first.
        for (int i = 0; i < 2 * 8 * config.BlockSize; i++) rng.NextInt(config.VocabSize);
        var prompt = Enumerable.Range(0, Prompt).Select(_ => rng.NextInt(config.VocabSize)).ToArray();
        using var fast = new FastCpuDecoder(p);
        Action gen = () => GenerateGreedy(config, prompt, NewTokens, (t, s, l) => fast.StepArgMax(t, s, l), fastModel, null);
        // ~2 s a side (at ~20 ms a generation): a window nearer the peer run's several seconds.
        int side = Math.Max(reps, 101);
        Console.WriteLine($"Palm.Bench model --pairs {pairs}: preset {preset}, float32 batch-1 decode ({Prompt}-token prompt, {NewTokens} new tokens), median of {side} generations each side of each peer run, {Environment.ProcessorCount} cores, load {GemmBench.LoadAverage()}");
        var sb = new StringBuilder();
        sb.AppendLine($"| {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC `{preset}` pair | ours before (tok/s) | peer (tok/s) | ours after (tok/s) | peer foreign load | ratio |");
        sb.AppendLine("|---|---|---|---|---|---|");
        var kept = new List<double>();
        var all = new List<double>();
        for (int i = 0; i < pairs; i++)
        {
            var before = Time("csharp-cpu-fast", "decode", NewTokens, i == 0 ? Math.Max(warmup, 3) : 1, side, gen);
            var peerRow = RunPeer(preset, "decode").FirstOrDefault(r => r.What == "decode");
            var after = Time("csharp-cpu-fast", "decode", NewTokens, 1, side, gen);
            if (peerRow is null) { Console.WriteLine("pairs: the peer gave no decode row; stopping"); return 1; }
            double ours = (before.TokensPerSecond + after.TokensPerSecond) / 2, ratio = ours / peerRow.TokensPerSecond;
            bool disturbed = peerRow.ForeignLoad is > 0.05;
            all.Add(ratio);
            if (!disturbed) kept.Add(ratio);
            string fl = peerRow.ForeignLoad is { } f ? $"{f:F2}" : "n/a";
            string line = $"| {i + 1} | {before.TokensPerSecond:F0} | {peerRow.TokensPerSecond:F0} | {after.TokensPerSecond:F0} | {fl} | {(disturbed ? $"({ratio:F1}x)" : $"{ratio:F1}x")} |";
            Console.WriteLine(line);
            sb.AppendLine(line);
        }
        static double Median(List<double> v) { var o = v.Order().ToList(); return o.Count % 2 == 1 ? o[o.Count / 2] : (o[o.Count / 2 - 1] + o[o.Count / 2]) / 2; }
        string summary = kept.Count > 0
            ? $"median ratio {Median(kept):F1}x over {kept.Count} undisturbed pairs (range {kept.Min():F1}-{kept.Max():F1}x); all {all.Count} pairs: {Median(all):F1}x"
            : $"every pair's peer run was disturbed; median of all {all.Count}: {Median(all):F1}x";
        sb.AppendLine();
        sb.AppendLine(summary);
        Console.WriteLine(summary);
        if (write is not null) { File.AppendAllText(write, sb.ToString() + "\n"); Console.WriteLine($"appended to {write}"); }
        return 0;
    }

    /// <summary>Achieved decode GFLOP/s against this machine's GEMM peak, and weight bytes per token against copy bandwidth.</summary>
    private static void DecodeRoofline(PalmConfig c, PalmParameters p, double tokensPerSecond)
    {
        // Multiply-adds per token: every weight once per use; block weights once per recursion step.
        long blockWeights = p.All.Where(t => t.IsMuon).Sum(t => (long)t.Length);
        long other = (p.EmbedProj?.Length ?? 0) + (p.Unembed.Factorized ? p.Unembed.W1!.Length + p.Unembed.W2!.Length : p.Unembed.W!.Length);
        long macs = blockWeights * c.NRecur + other;
        // Weights touched per token (each block's weights once per application, as a cold cache would).
        double bytes = 4.0 * (blockWeights * c.NRecur + other + (p.Embed.Cols));
        // Less what the decoder skips: the weights of zero inputs to each block's QKV second factor
        // and projection input factor (FastCpuDecoder), at the densities of 64 decoded tokens.
        var counts = new long[4];
        using (var dec = new FastCpuDecoder(p, threads: 1) { DensityCounts = counts })
        {
            var st = new AodStateSet(c, 1);
            var lg = new float[c.VocabSize];
            for (int t = 0; t < 64; t++) dec.Step([(t * 37 + 11) % c.VocabSize], st, lg);
        }
        double dQkv = counts[1] == 0 ? 1 : (double)counts[0] / counts[1], dProj = counts[3] == 0 ? 1 : (double)counts[2] / counts[3];
        long qkvSkippable = c.DRank > 0 ? p.Blocks.Sum(b => (long)b.Qkv.W2!.Length) : 0;
        long projSkippable = p.Blocks.Sum(b => (long)(b.Proj.Factorized ? b.Proj.W1! : b.Proj.W!).Length);
        double skipped = c.NRecur * ((1 - dQkv) * qkvSkippable + (1 - dProj) * projSkippable);
        bytes -= 4.0 * skipped;
        macs -= (long)skipped;
        double gflops = 2.0 * macs * tokensPerSecond / 1e9;
        Console.WriteLine($"  decode skips zero inputs: {100 * dQkv:F0}% of the QKV second factors' inputs and {100 * dProj:F0}% of the projections' are nonzero");
        int n = 1024;
        var a = new float[n * n]; var b = new float[n * n]; var cc = new float[n * n];
        for (int i = 0; i < a.Length; i++) { a[i] = (i % 17) * 0.01f; b[i] = (i % 13) * 0.01f; }
        CpuOps.MatMulABt(a, b, n, n, n, cc);
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 3; i++) CpuOps.MatMulABt(a, b, n, n, n, cc);
        double peak = 3 * 2.0 * n * n * n / sw.Elapsed.TotalSeconds / 1e9;
        var big = new byte[256 << 20]; var dst = new byte[256 << 20];
        big.AsSpan().CopyTo(dst);
        sw.Restart();
        for (int i = 0; i < 3; i++) big.AsSpan().CopyTo(dst);
        double bw = 3 * 2.0 * big.Length / sw.Elapsed.TotalSeconds / 1e9;   // read + write
        // What the weights' streaming really meets: reading a buffer of their size from cache (L3
        // here: too big for L2), with 64-byte loads from a 64-byte boundary as the decoder's, on one
        // core and on both at once (the two-core decoder's case: both stream from the same cache).
        long weightBytes = 4L * p.All.Where(t => t.Name != p.Embed.Name).Sum(t => (long)t.Length);
        double one = StreamReadGBs(weightBytes, 1), two = StreamReadGBs(weightBytes, 2);
        Console.WriteLine($"  decode roofline: {macs / 1e6:F2} M multiply-adds/token done -> {gflops:F1} GFLOP/s achieved vs {peak:F1} GFLOP/s GEMM 1024^3 here ({100 * gflops / peak:F0}%);");
        Console.WriteLine($"                   {bytes / 1e6:F2} MB of weights read/token -> {bytes * tokensPerSecond / 1e9:F1} GB/s vs {bw:F1} GB/s memcpy (read+write) here; the weights ({4.0 * p.Count / 1e6:F1} MB) mostly stay in cache");
        Console.WriteLine($"                   reading {weightBytes / 1e6:F1} MB from cache: {one:F1} GB/s on one core, {two:F1} GB/s per core on both at once -> at best {1e6 * bytes / (one * 1e9):F1} us/token on one core, {1e6 * bytes / (2 * two * 1e9):F1} on two (weights only)");
        // The same products with their weights hot in L1/L2 (each repeated): the token's time
        // if nothing but the matrix-vector arithmetic counted. The gap to the measured token time
        // is cache traffic (weights streamed from L3 each token) plus the element-wise glue.
        double hotSeconds = 0;
        foreach (var w in p.All.Where(t => t.Name != p.Embed.Name))
        {
            int uses = w.IsMuon ? c.NRecur : 1;
            var x = new float[w.Cols]; var yv = new float[w.Rows];
            x.AsSpan().Fill(0.01f);
            var m = CpuMatrix.From(w).Aligned();   // as the decoder reads them
            Action product = () => m.MatVec(x, yv);
            bool qkv2 = c.DRank > 0 && w.Name.EndsWith(".qkv.w2", StringComparison.Ordinal);
            if (qkv2 || w.Name.EndsWith(c.DRank > 0 ? ".proj.w1" : ".proj.w", StringComparison.Ordinal))
            {
                // Transposed, skipping zeros: an input with the measured share of nonzeros.
                var t = new TransposedMatrix(m);
                int k = w.Cols, nnz = (int)Math.Round((qkv2 ? dQkv : dProj) * k);
                var nz = Enumerable.Range(0, k).Select(i => (int)((long)i * k / Math.Max(1, nnz))).Take(nnz).Distinct().ToArray();
                product = () => t.MatVec(0, w.Rows, 0, x, nz, yv);
            }
            for (int i = 0; i < 20; i++) product();
            int reps = Math.Max(20, (int)(2e8 / Math.Max(1, (long)w.Rows * w.Cols)));
            sw.Restart();
            for (int i = 0; i < reps; i++) product();
            hotSeconds += uses * sw.Elapsed.TotalSeconds / reps;
        }
        Console.WriteLine($"                   the same matrix-vector products with hot weights: {hotSeconds * 1e6:F1} us/token ({2.0 * macs / hotSeconds / 1e9:F1} GFLOP/s, one core) vs {1e6 / tokensPerSecond:F1} us/token measured");
    }

    /// <summary>GB/s per thread reading (summing) one aligned buffer of <paramref name="bytes"/> over and over, on <paramref name="threads"/> threads at once (all the same buffer, as the two-core decoder's threads share the weights).</summary>
    private static unsafe double StreamReadGBs(long bytes, int threads)
    {
        long n = Math.Max(64, bytes / 4 / 64 * 64);
        var rates = new double[threads];
        var pb = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(n * 4), 64);
        new Span<float>(pb, (int)n).Fill(1f);
        nint buf = (nint)pb;
        try
        {
            var go = new Barrier(threads);
            var ts = Enumerable.Range(0, threads).Select(t => new Thread(() =>
            {
                float* a = (float*)buf;
                go.SignalAndWait();
                float sink = 0;
                var best = double.MaxValue;
                for (int rep = 0; rep < 5; rep++)
                {
                    var sw = Stopwatch.StartNew();
                    int passes = (int)Math.Max(4, 4e8 / (n * 4));
                    for (int pass = 0; pass < passes; pass++)
                    {
                        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                        for (long i = 0; i < n; i += 64)
                        {
                            s0 += Vector512.LoadAligned(a + i); s1 += Vector512.LoadAligned(a + i + 16);
                            s2 += Vector512.LoadAligned(a + i + 32); s3 += Vector512.LoadAligned(a + i + 48);
                        }
                        sink += Vector512.Sum(s0 + s1 + s2 + s3);
                    }
                    best = Math.Min(best, sw.Elapsed.TotalSeconds / passes);
                }
                rates[t] = n * 4 / best / 1e9 + (sink == -1 ? 1 : 0);
            })).ToArray();
            foreach (var th in ts) th.Start();
            foreach (var th in ts) th.Join();
            return rates.Average();
        }
        finally { System.Runtime.InteropServices.NativeMemory.AlignedFree(pb); }
    }

    /// <summary>
    /// Least wall time of warm-up runs before timing. .NET's tiered JIT first runs methods
    /// unoptimised and recompiles hot ones in the background: measured here, a `small` forward took
    /// 700, 220, 130, 80-115 ms over its first 8 calls and 45-50 ms from about the 10th (1 s in)
    /// on an idle machine; inside this bench, 2 s of warm-up still left it at 88 ms and 6 s gave
    /// 48 ms (the background compiles share the two cores). A warm-up counted in runs alone timed
    /// the tier-0 code. Steady state is what a running game sees after its first seconds, and the
    /// peer is timed after its own warm-up too.
    /// </summary>
    internal static double MinWarmupSeconds = 5.0;

    internal static void WarmUp(int warmup, Action fn)
    {
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < warmup || sw.Elapsed.TotalSeconds < MinWarmupSeconds; i++) fn();
    }

    private static (Row A, Row B) TimeInterleaved(int tokens, int warmup, int reps, Action a, Action b)
    {
        WarmUp(warmup, () => { a(); b(); });
        var ta = new List<double>();
        var tb = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            a();
            ta.Add(sw.Elapsed.TotalSeconds);
            sw.Restart();
            b();
            tb.Add(sw.Elapsed.TotalSeconds);
        }
        ta.Sort();
        tb.Sort();
        double ma = ta[ta.Count / 2], mb = tb[tb.Count / 2];
        return (new Row("", "", tokens / ma, ma * 1000, reps), new Row("", "", tokens / mb, mb * 1000, reps));
    }

    private static Row Time(string backend, string what, int tokens, int warmup, int reps, Action fn)
    {
        WarmUp(warmup, fn);
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
    internal static IEnumerable<Row> RunPeer(string preset, string what)
    {
        var script = FindPeerScript();
        if (script is null) { Console.WriteLine("peer: ../shared/bench/torch_palm_bench.py not found; skipped"); return []; }
        var psi = new ProcessStartInfo("/usr/bin/python3", [script, "--config", preset, "--what", what, "--json", "--threads", "2"])
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
            double? foreign = r.TryGetProperty("foreign_load", out var fl) && fl.ValueKind == JsonValueKind.Number ? fl.GetDouble() : null;
            rows.Add(new Row($"pytorch-cpu ({blas})", r.GetProperty("what").GetString()!, r.GetProperty("tokens_per_s").GetDouble(), r.GetProperty("median_s").GetDouble() * 1000, r.GetProperty("reps").GetInt32(), foreign));
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
