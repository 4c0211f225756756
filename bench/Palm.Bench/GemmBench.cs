// fp32 GEMM throughput of Palm.Inference's packed GEMM (square sizes and the shapes the `small`
// preset trains with, each transpose), beside numpy's sgemm (OpenBLAS here) run in the same
// invocation so both see the same machine load.
using System.Diagnostics;
using System.Globalization;
using Palm.Inference.Cpu;

namespace Palm.Bench;

public static class GemmBench
{
    /// <summary>Usage: <c>[--sizes 256,512,1024] [--reps 9] [--isa avx512|avx2|portable] [--serial] [--no-peer]</c>.</summary>
    public static int Run(string[] args)
    {
        int[] sizes = [256, 512, 1024]; int reps = 9; bool peer = true, parallel = true; GemmIsa isa = Gemm.Best;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--sizes" when i + 1 < args.Length: sizes = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--reps" when i + 1 < args.Length: reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--isa" when i + 1 < args.Length:
                    isa = args[++i] switch { "avx512" => GemmIsa.Avx512, "avx2" => GemmIsa.Avx2, "portable" => GemmIsa.Portable128, var s => throw new ArgumentException($"unknown isa '{s}'") };
                    break;
                case "--serial": parallel = false; break;
                case "--no-peer": peer = false; break;
                default: Console.Error.WriteLine($"gemm bench: unknown argument '{args[i]}'"); return 2;
            }
        }
        Console.WriteLine($"Palm.Bench gemm: kernel {isa} (best here {Gemm.Best}), {(parallel ? "parallel" : "serial")}, {Environment.ProcessorCount} cores, load {LoadAverage()}");
        var shapes = new List<(string Name, int M, int N, int K, int Op)>();
        foreach (var s in sizes) shapes.Add(($"{s}^3 A.Bt", s, s, s, 0));
        foreach (var s in sizes) shapes.Add(($"{s}^3 A.B", s, s, s, 1));
        foreach (var s in sizes) shapes.Add(($"{s}^3 At.B", s, s, s, 2));
        // `small` training shapes (B*T = 2048 rows, rank 64): unembed W2, qkv W2, qkv W1, their gradients.
        shapes.Add(("2048x4096x64 A.Bt (unembed)", 2048, 4096, 64, 0));
        shapes.Add(("2048x64x4096 A.B (d unembed)", 2048, 64, 4096, 1));
        shapes.Add(("4096x64x2048 At.B (dW2 unembed)", 4096, 64, 2048, 2));
        shapes.Add(("2048x1536x64 A.Bt (qkv W2)", 2048, 1536, 64, 0));
        shapes.Add(("2048x64x256 A.Bt (qkv W1)", 2048, 64, 256, 0));
        shapes.Add(("64x256x2048 At.B (dW1 qkv)", 64, 256, 2048, 2));

        foreach (var (name, m, n, k, op) in shapes)
        {
            double gf = Measure(isa, m, n, k, op, reps, parallel);
            Console.WriteLine($"  csharp {name,-34} {gf,7:F1} GFLOP/s");
        }
        if (peer)
        {
            string list = string.Join(",", sizes);
            string py = "import numpy as np, time\n" +
                        "for n in [" + list + "]:\n" +
                        "  a=np.random.rand(n,n).astype(np.float32); b=np.random.rand(n,n).astype(np.float32)\n" +
                        "  for _ in range(2): a@b\n" +
                        "  ts=[]\n" +
                        "  for _ in range(" + reps + "):\n" +
                        "    t=time.perf_counter(); a@b; ts.append(time.perf_counter()-t)\n" +
                        "  ts.sort(); print('  numpy  %d^3 sgemm %38.1f GFLOP/s' % (n, 2*n**3/ts[len(ts)//2]/1e9))\n" +
                        "import numpy; cfg=numpy.__config__.CONFIG if hasattr(numpy.__config__,'CONFIG') else {}\n" +
                        "print('  numpy BLAS:', cfg.get('Build Dependencies',{}).get('blas',{}).get('name','?'))\n";
            var psi = new ProcessStartInfo("/usr/bin/python3", ["-c", py]) { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.Environment["OMP_NUM_THREADS"] = Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture);
            try
            {
                using var proc = Process.Start(psi)!;
                Console.Write(proc.StandardOutput.ReadToEnd());
                var err = proc.StandardError.ReadToEnd();
                proc.WaitForExit();
                if (proc.ExitCode != 0) Console.WriteLine($"  numpy peer failed: {err.Trim()}");
            }
            catch (Exception e) { Console.WriteLine($"  numpy peer not run: {e.Message}"); }
        }
        Console.WriteLine($"  load after: {LoadAverage()}");
        return 0;
    }

    private static unsafe double Measure(GemmIsa isa, int m, int n, int k, int op, int reps, bool parallel)
    {
        var rng = new Random(1);
        var a = new float[(long)m * k]; var b = new float[(long)n * k]; var c = new float[(long)m * n];
        for (int i = 0; i < a.Length; i++) a[i] = (float)rng.NextDouble() - 0.5f;
        for (int i = 0; i < b.Length; i++) b[i] = (float)rng.NextDouble() - 0.5f;
        var times = new List<double>();
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
        {
            // Time-bounded warm-up (ModelBench.MinWarmupSeconds): the JIT tiers the kernels up in the background.
            var warm = Stopwatch.StartNew();
            for (int i = 0; i < 2 || warm.Elapsed.TotalSeconds < ModelBench.MinWarmupSeconds; i++) Once(isa, pa, pb, pc, m, n, k, op, parallel);
            for (int i = 0; i < reps; i++) { var sw = Stopwatch.StartNew(); Once(isa, pa, pb, pc, m, n, k, op, parallel); times.Add(sw.Elapsed.TotalSeconds); }
        }
        times.Sort();
        return 2.0 * m * n * k / times[times.Count / 2] / 1e9;
    }

    private static unsafe void Once(GemmIsa isa, float* pa, float* pb, float* pc, int m, int n, int k, int op, bool parallel)
    {
        switch (op)
        {
            case 0: Gemm.Multiply(isa, pa, k, 1, pb, k, 1, pc, m, n, k, false, parallel); break;   // A(M,K)·B(N,K)ᵀ
            case 1: Gemm.Multiply(isa, pa, k, 1, pb, 1, n, pc, m, n, k, false, parallel); break;   // A(M,K)·B(K,N)
            default: Gemm.Multiply(isa, pa, 1, m, pb, 1, n, pc, m, n, k, false, parallel); break;  // A(K,M)ᵀ·B(K,N)
        }
    }

    internal static string LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "?"; }
    }
}
