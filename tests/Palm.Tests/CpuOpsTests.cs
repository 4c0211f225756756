// The CPU matmuls (packed GEMM and the skinny-row path) against a float64 triple loop, in all
// three layouts, on awkward shapes; outputs are poisoned so unwritten elements fail.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Tests;

public class CpuOpsTests
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 1, 1, 1 }, { 1, 37, 5 }, { 3, 7, 2 }, { 4, 16, 8 }, { 5, 17, 3 }, { 67, 33, 513 }, { 130, 65, 64 }, { 8, 4096, 9 },
    };

    private static float[] Rand(Rng rng, int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)rng.NextGaussian(); return a; }

    [Theory, MemberData(nameof(Shapes))]
    public void MatMulsMatchFloat64(int m, int n, int k)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var a = Rand(rng, m * k);      // (M, K)
        var bt = Rand(rng, n * k);     // (N, K)
        var init = Rand(rng, m * n);
        var expect = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)a[i * k + p] * bt[j * k + p];
                expect[i * n + j] = (float)s;
            }
        double atol = 1e-5 * Math.Sqrt(k) * 4, rtol = 1e-5;
        var b = CpuOps.Transpose(bt, n, k);   // (K, N)
        var at = CpuOps.Transpose(a, m, k);   // (K, M)
        foreach (bool acc in new[] { false, true })
        {
            var want = acc ? expect.Select((v, i) => v + init[i]).ToArray() : expect;
            float[] Fresh() => acc ? (float[])init.Clone() : Enumerable.Repeat(float.NaN, m * n).ToArray();
            var c1 = Fresh(); CpuOps.MatMulABt(a, bt, m, n, k, c1, acc);
            Numerics.AssertClose(c1, want, atol, rtol, $"seed {seed} ABt {m}x{n}x{k} acc={acc}", i => $"({i / n},{i % n})");
            var c2 = Fresh(); CpuOps.MatMulAB(a, b, m, n, k, c2, acc);
            Numerics.AssertClose(c2, want, atol, rtol, $"seed {seed} AB {m}x{n}x{k} acc={acc}", i => $"({i / n},{i % n})");
            var c3 = Fresh(); CpuOps.MatMulAtB(at, b, m, n, k, c3, acc);
            Numerics.AssertClose(c3, want, atol, rtol, $"seed {seed} AtB {m}x{n}x{k} acc={acc}", i => $"({i / n},{i % n})");
        }
    }
}

public class ExpTests
{
    [Fact]
    public void ExpOfNonPositiveMatchesMathExp()
    {
        // Max-shifted logits lie in (-inf, 0]: check the whole float range that matters.
        var x = Enumerable.Range(0, 20001).Select(i => -i * 0.005f).Concat([-87f, -100f, -1e-7f, 0f, float.NegativeInfinity]).ToArray();
        var y = new float[x.Length];
        CpuOps.ExpOfNonPositive(x, y, new float[x.Length]);
        var expect = x.Select(v => (float)Math.Exp(v)).ToArray();
        Numerics.AssertClose(y, expect, 1e-38, 2e-6, "exp via sigmoid", i => $"x={x[i]}");
    }
}
