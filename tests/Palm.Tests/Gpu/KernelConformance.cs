// The one kernel conformance suite. Each backend subclass supplies the kernels under test and
// the oracle it is held to: CPU twins against naive double-precision loops, Vulkan shaders
// against the CPU twins. Inputs are fresh random data each run (seed printed on failure, or
// fixed with PALM_TEST_SEED), shapes are awkward, and outputs arrive poisoned with NaN so
// that elements a kernel forgets to write fail.
using Xunit.Abstractions;

namespace Palm.Tests.Gpu;

public abstract class KernelConformance
{
    protected KernelConformance(ITestOutputHelper output)
    {
        Output = output;
        Seed = int.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out var s) ? s : Random.Shared.Next();
        Rng = new Random(Seed);
    }

    protected ITestOutputHelper Output { get; }
    protected int Seed { get; }
    protected Random Rng { get; }

    // Kernels under test. The output array arrives filled with NaN.
    protected abstract void Linear(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y);
    protected abstract void RmsNorm(float[] x, int rows, int cols, float[] y);
    protected abstract void Embedding(int[] idx, float[] table, int V, int C, float[] y);

    // The oracle for this backend.
    protected abstract double[] LinearExpected(float[] x, float[] w, int M, int N, int K, bool relu2);
    protected abstract double[] RmsNormExpected(float[] x, int rows, int cols);
    protected abstract double[] EmbeddingExpected(int[] idx, float[] table, int V, int C);

    [ConformanceTheory]
    [InlineData(1, 1, 1, false)]
    [InlineData(1, 7, 13, false)]      // one row (decoding), primes
    [InlineData(3, 5, 1, true)]        // K = 1
    [InlineData(1, 257, 64, true)]     // N past one few-rows tile
    [InlineData(17, 31, 67, false)]
    [InlineData(64, 64, 16, false)]    // exactly one large tile
    [InlineData(65, 129, 33, true)]    // one past the tile in M and N, K not a multiple of BK
    [InlineData(33, 97, 131, false)]
    public void Linear_matches_reference(int M, int N, int K, bool relu2)
    {
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        var y = Poisoned(M * N);
        Linear(x, w, M, N, K, relu2, y);
        var expected = LinearExpected(x, w, M, N, K, relu2);
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol, $"linear M={M} N={N} K={K} relu2={relu2}", Seed, N);
    }

    [ConformanceTheory]
    [InlineData(1, 1, 1.0)]
    [InlineData(1, 7, 1.0)]
    [InlineData(3, 64, 1.0)]
    [InlineData(5, 257, 1.0)]          // wider than a workgroup
    [InlineData(2, 1000, 30.0)]
    [InlineData(4, 33, 1e-4)]          // mean(x^2) near eps: eps must be added as specified
    [InlineData(65537, 3, 1.0)]        // more rows than maxComputeWorkGroupCount[0] may allow
    public void RmsNorm_matches_reference(int rows, int cols, double scale)
    {
        var x = Uniform(rows * cols, scale);
        var y = Poisoned(rows * cols);
        RmsNorm(x, rows, cols, y);
        var expected = RmsNormExpected(x, rows, cols);
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(cols), Tolerance.F32Rtol, $"rmsnorm rows={rows} cols={cols} scale={scale}", Seed, cols);
    }

    [ConformanceTheory]
    [InlineData(1, 1, 1)]
    [InlineData(1, 5, 7)]
    [InlineData(13, 11, 129)]          // row wider than a workgroup
    [InlineData(200, 3, 5)]            // many repeated ids
    public void Embedding_matches_reference(int T, int V, int C)
    {
        var idx = Enumerable.Range(0, T).Select(_ => Rng.Next(V)).ToArray();
        var table = Uniform(V * C);
        var y = Poisoned(T * C);
        Embedding(idx, table, V, C, y);
        var expected = EmbeddingExpected(idx, table, V, C);
        // A gather copies: exact equality is the right tolerance here.
        Tolerance.AssertClose(y, expected, 0, 0, $"embedding T={T} V={V} C={C}", Seed, C);
    }

    protected float[] Uniform(int n, double scale = 1.0)
    {
        var a = new float[n];
        for (var i = 0; i < n; i++) a[i] = (float)((Rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    protected static float[] Poisoned(int n)
    {
        var a = new float[n];
        Array.Fill(a, float.NaN);
        return a;
    }
}
