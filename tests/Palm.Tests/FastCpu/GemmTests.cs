// The packed GEMM against a float64 triple loop, for every kernel family this machine can run,
// every transpose layout, overwrite and accumulate, and shapes that are not multiples of any
// tile (1, primes, one past a block) or cross the k block (KC = 256) and the row tile.
using Palm.Inference.Cpu;
using System.Runtime.Intrinsics;

namespace Palm.Tests.FastCpu;

public class GemmTests
{
    // fp32 products of K terms in [-1, 1] in another summation order: error grows like sqrt(K)·eps.
    private const double Atol = 2e-5, Rtol = 1e-4;

    // Kernel families by name (GemmIsa is internal); those this machine cannot run are left out.
    public static TheoryData<string> Isas()
    {
        var d = new TheoryData<string> { nameof(GemmIsa.Portable128) };
        if (Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported) d.Add(nameof(GemmIsa.Avx2));
        if (Vector512.IsHardwareAccelerated) d.Add(nameof(GemmIsa.Avx512));
        return d;
    }

    private static readonly (int M, int N, int K)[] Shapes =
    [
        (1, 1, 1), (1, 37, 5), (7, 1, 3), (3, 5, 0), (5, 17, 13), (6, 16, 8), (8, 32, 16), (9, 33, 257),
        (13, 31, 64), (64, 64, 64), (129, 47, 300), (130, 65, 513), (200, 100, 7), (37, 129, 256), (260, 70, 40),
    ];

    [Theory, MemberData(nameof(Isas))]
    public void MatchesFloat64LoopOnAwkwardShapes(string isaName)
    {
        var isa = Enum.Parse<GemmIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (m, n, k) in Shapes)
            for (int op = 0; op < 3; op++)
                foreach (bool acc in new[] { false, true })
                    foreach (bool parallel in new[] { false, true })
                        Check(isa, rng, seed, m, n, k, op, acc, parallel);
    }

    [Theory, MemberData(nameof(Isas))]
    public void LargeParallelShapeMatches(string isaName)
    {
        var isa = Enum.Parse<GemmIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        // Big enough to take the parallel path (>= Gemm.SerialBelow, 4 M multiply-adds) with several row jobs and panel groups.
        Check(isa, rng, seed, 301, 515, 129, 0, false, true);
        Check(isa, rng, seed, 33, 2000, 70, 1, true, true);
        Check(isa, rng, seed, 64, 300, 1100, 2, false, true);
    }

    private static unsafe void Check(GemmIsa isa, Random rng, ulong seed, int m, int n, int k, int op, bool acc, bool parallel)
    {
        var a = Fill(rng, m * k);
        var b = Fill(rng, n * k);
        var c0 = Fill(rng, m * n);
        // A(i, kk) and B(kk, j) in each layout: 0 = A(M,K)·B(N,K)ᵀ, 1 = A(M,K)·B(K,N), 2 = A(K,M)ᵀ·B(K,N).
        float Ag(int i, int kk) => op == 2 ? a[kk * m + i] : a[i * k + kk];
        float Bg(int kk, int j) => op == 0 ? b[j * k + kk] : b[kk * n + j];
        var want = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = acc ? c0[i * n + j] : 0;
                for (int kk = 0; kk < k; kk++) s += (double)Ag(i, kk) * Bg(kk, j);
                want[i * n + j] = (float)s;
            }
        // Poison for overwrite so an unwritten element fails; the real start values for accumulate.
        var c = acc ? (float[])c0.Clone() : Enumerable.Repeat(float.NaN, m * n).ToArray();
        var guard = new float[m * n + 64];
        c.CopyTo(guard, 0);
        for (int i = m * n; i < guard.Length; i++) guard[i] = 12345f;
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = guard)
        {
            switch (op)
            {
                case 0: Gemm.Multiply(isa, pa, k, 1, pb, k, 1, pc, m, n, k, acc, parallel); break;
                case 1: Gemm.Multiply(isa, pa, k, 1, pb, 1, n, pc, m, n, k, acc, parallel); break;
                default: Gemm.Multiply(isa, pa, 1, m, pb, 1, n, pc, m, n, k, acc, parallel); break;
            }
        }
        string what = $"seed {seed} {isa} op {op} {m}x{n}x{k} acc={acc} parallel={parallel}";
        Numerics.AssertClose(guard.AsSpan(0, m * n), want, Atol * Math.Sqrt(k + 1), Rtol, what, i => $"(row {i / n}, col {i % n})");
        for (int i = m * n; i < guard.Length; i++) Assert.True(guard[i] == 12345f, $"{what}: wrote past C at {i}");
    }

    private static float[] Fill(Random rng, int len)
    {
        var x = new float[len];
        for (int i = 0; i < len; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
