// The CPU twins of Muon's optional fp16 Newton-Schulz: the half GEMM (LinearBackward.
// GemmHalfReference) against naive float64 loops over the same roundings, and the whole fp16
// Newton-Schulz against the fp32 one (Muon.NewtonSchulzReference) with the fp16 tolerance
// (Tolerance.MuonHalf*), on tall, wide, square and awkward shapes. The shader side is
// VulkanBackwardConformanceTests. Fresh random inputs, seed printed on failure (PALM_TEST_SEED).
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;
using Layout = Palm.Gpu.Kernels.LinearBackward.Layout;

namespace Palm.Tests.Gpu;

public sealed class MuonHalfReferenceTests
{
    readonly ITestOutputHelper output;
    readonly int seed;
    readonly Random rng;

    public MuonHalfReferenceTests(ITestOutputHelper output)
    {
        this.output = output;
        seed = int.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out var s) ? s : Random.Shared.Next();
        rng = new Random(seed);
        output.WriteLine($"seed {seed}");
    }

    float[] Uniform(int n, double scale = 1.0) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    [Theory]
    [InlineData(1, 1, 1, false, false, 1f, 0f, 1f, 1f)]
    [InlineData(5, 3, 7, true, false, 0.5f, 0f, 128f, 128f)]
    [InlineData(9, 9, 33, false, true, 2.0315f, -4.775f, 128f, 64f)]
    [InlineData(17, 6, 70, true, true, 1f, 3.4445f, 0.25f, 4f)]
    public void Gemm_half_twin_matches_float64_over_the_same_roundings(int M, int N, int K, bool aT, bool bT, float alpha, float beta, float sa, float sb)
    {
        // Magnitudes like Newton-Schulz operands (~1/sqrt(K)), some products in f16's subnormal range before scaling.
        var a = Uniform(M * K, 1 / Math.Sqrt(K));
        var b = Uniform(K * N, 1 / Math.Sqrt(K));
        var e = Uniform(M * N);
        var la = aT ? Layout.Transposed(M) : Layout.RowMajor(K);
        var lb = bT ? Layout.Transposed(K) : Layout.RowMajor(N);
        var got = Enumerable.Repeat(float.NaN, M * N).ToArray();
        Kernels.LinearBackward.GemmHalfReference(a, la, b, lb, M, N, K, alpha, beta, e, sa, sb, got);

        // .NET's double -> Half conversion rounds to nearest even: the staged operands and the
        // products, summed in float64. Only the twin's f32 sum order differs.
        var expected = new double[M * N];
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                double acc = 0;
                for (var k = 0; k < K; k++)
                {
                    var ah = (double)(Half)((double)a[m * la.RowStride + k * la.ColStride] * sa);
                    var bh = (double)(Half)((double)b[k * lb.RowStride + n * lb.ColStride] * sb);
                    acc += (double)(Half)(ah * bh);
                }
                expected[m * N + n] = alpha / ((double)sa * sb) * acc + beta * (double)e[m * N + n];
            }
        var atol = Tolerance.ForReduction(K) * Math.Max(1, expected.Max(Math.Abs));
        Tolerance.AssertClose(got, expected, atol, Tolerance.F32Rtol, $"gemm half twin M={M} N={N} K={K} aT={aT} bT={bT}", seed, N);
    }

    [Fact]
    public void Gemm_half_rejects_scales_that_are_not_powers_of_two()
    {
        var c = new float[1];
        Assert.Throws<ArgumentException>(() => Kernels.LinearBackward.GemmHalfReference([1f], Layout.RowMajor(1), [1f], Layout.RowMajor(1), 1, 1, 1, 1f, 0f, default, 3f, 1f, c));
        Assert.Throws<ArgumentException>(() => Kernels.LinearBackward.GemmHalfReference([1f], Layout.RowMajor(1), [1f], Layout.RowMajor(1), 1, 1, 1, 1f, 0f, default, 1f, 0f, c));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(1, 40)]      // a row vector
    [InlineData(12, 7)]      // tall: orthogonalised as the transpose
    [InlineData(7, 12)]      // wide
    [InlineData(16, 16)]
    [InlineData(97, 33)]     // past one GEMM tile, not a multiple of it
    [InlineData(33, 97)]
    [InlineData(64, 64)]     // exactly one large tile
    [InlineData(130, 67)]    // tall, two tiles and a bit
    [InlineData(6, 3001)]    // long rows: products of ~1/sqrt(pq) would be f16 subnormals unscaled
    public void Newton_schulz_half_is_within_the_fp16_tolerance_of_fp32(int rows, int cols)
    {
        var u = Uniform(rows * cols);
        var f32 = Kernels.Muon.NewtonSchulzReference(u, rows, cols);
        var f16 = Kernels.Muon.NewtonSchulzReference(u, rows, cols, half: true);
        AssertMuonHalfClose(f16, f32, Tolerance.MuonHalfRelFro, $"newton-schulz twin fp16 vs fp32 {rows}x{cols}", seed, cols, output);
    }

    [Fact]
    public void Newton_schulz_half_handles_a_spike_and_a_low_rank_input()
    {
        // Two kinds of gradient that stress the fp16 path: one entry far above the rest (X's
        // largest entry near 1, the case the overflow bound is about) and an exactly rank-2
        // matrix (a null space, where the quintic's slope 3.44 amplifies rounding noise most;
        // hence its looser Frobenius tolerance).
        const int rows = 40, cols = 24;
        var spike = Uniform(rows * cols, 0.01);
        spike[rng.Next(spike.Length)] = 50f;
        var lowRank = new float[rows * cols];
        for (var r = 0; r < 2; r++)
        {
            var a = Uniform(rows);
            var b = Uniform(cols);
            for (var i = 0; i < rows; i++)
                for (var j = 0; j < cols; j++) lowRank[i * cols + j] += (float)Math.Pow(0.3, r) * a[i] * b[j];
        }
        foreach (var (name, u, relFro) in new[] { ("spike", spike, Tolerance.MuonHalfRelFro), ("rank 2", lowRank, Tolerance.MuonHalfRelFroRankDeficient) })
        {
            var f32 = Kernels.Muon.NewtonSchulzReference(u, rows, cols);
            var f16 = Kernels.Muon.NewtonSchulzReference(u, rows, cols, half: true);
            AssertMuonHalfClose(f16, f32, relFro, $"newton-schulz twin fp16 vs fp32, {name}", seed, cols, output);
        }
    }

    /// <summary>The fp16 Newton-Schulz tolerance: elementwise (Tolerance.MuonHalfAtol) and in relative Frobenius norm (<paramref name="relFro"/>).</summary>
    internal static void AssertMuonHalfClose(float[] got, float[] fp32, double relFro, string what, int seed, int cols, ITestOutputHelper output)
    {
        double se = 0, sr = 0;
        for (var i = 0; i < got.Length; i++)
        {
            var d = (double)got[i] - fp32[i];
            se += d * d;
            sr += (double)fp32[i] * fp32[i];
        }
        var rel = Math.Sqrt(se / Math.Max(sr, double.Epsilon));
        output.WriteLine($"{what}: max error {Numerics.MaxAbsDiff(got, fp32):E2}, relative Frobenius error {rel:E2}");
        Tolerance.AssertClose(got, Array.ConvertAll(fp32, v => (double)v), Tolerance.MuonHalfAtol, 0, what, seed, cols);
        Assert.True(rel <= relFro, $"{what}: relative Frobenius error {rel:E3} > {relFro} (seed {seed})");
    }
}
