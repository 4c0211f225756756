// Stated tolerances and a comparison that says where and by how much outputs differ.
using Xunit.Sdk;

namespace Palm.Tests.Gpu;

internal static class Tolerance
{
    // fp32: |got - ref| <= atol + rtol * |ref|. atol grows with sqrt(K) for reductions of K
    // terms, since rounding errors of a K-term sum grow like a random walk.
    public const double F32Atol = 1e-5;
    public const double F32Rtol = 1e-4;

    public static double ForReduction(int k) => F32Atol * Math.Sqrt(Math.Max(k, 1));

    // Matrix units (linear_coopmat) against f32 sums over the same half inputs: the products are
    // exact on both sides, but the units add in their own order and may truncate instead of
    // rounding inside, an error that can grow linearly in K: 2^-20 per term on top of the fp32
    // tolerance, and rtol 1e-3 (the fp16-inputs tolerance of CONVENTIONS would be 1e-2; the
    // inputs are rounded identically here, so only accumulation is being judged).
    public const double MatrixUnitsRtol = 1e-3;

    public static double ForMatrixUnits(int k) => ForReduction(k) + Math.Max(k, 1) * Math.Pow(2, -20);

    // Muon's fp16 Newton-Schulz (f16 operands and products, f32 sums) against the fp32 one. Its
    // outputs are scale-free (singular values in [0.68, 1.21], so |x| <= 1.21), hence an absolute
    // elementwise tolerance, plus one on the relative Frobenius error. Measured on the CPU twin
    // over 1x1 to 256x256 and 100x700 (square, tall, wide, not multiples of the tile; uniform,
    // rank-4-plus-noise and one-spike inputs, 3 seeds each): max elementwise error 5.4e-3,
    // relative Frobenius error 2e-5 to 6.1e-3 (bf16 operands and products, as upstream Muon
    // uses, measured 1.7e-2 to 3.1e-2). Exactly rank-deficient inputs (rank 1 to 8, no noise)
    // are worse: max 1.3e-2, relative Frobenius up to 4.9e-2, because f16 rounding puts ~2^-11
    // of noise into the null space and each iteration multiplies it by a = 3.44 (the quintic's
    // slope at 0; 3.44^5 ~ 490), where fp32 starts from ~2^-24. Bounds ~2x the worst measured.
    public const double MuonHalfAtol = 3e-2;
    public const double MuonHalfRelFro = 1.5e-2;
    public const double MuonHalfRelFroRankDeficient = 1e-1;

    /// <summary>Fails (printing the seed, max error and first mismatch) unless every element is close; NaN never is.</summary>
    public static void AssertClose(ReadOnlySpan<float> got, ReadOnlySpan<double> expected, double atol, double rtol,
        string what, int seed, int cols)
    {
        Assert.Equal(expected.Length, got.Length);
        var maxErr = 0.0;
        var maxAt = -1;
        var first = -1;
        var bad = 0;
        for (var i = 0; i < got.Length; i++)
        {
            var err = Math.Abs(got[i] - expected[i]);
            if (double.IsNaN(err)) err = double.PositiveInfinity;
            if (err > maxErr || maxAt < 0)
            {
                maxErr = err;
                maxAt = i;
            }
            if (err > atol + rtol * Math.Abs(expected[i]))
            {
                bad++;
                if (first < 0) first = i;
            }
        }
        if (bad == 0) return;
        string At(int i) => cols > 0 ? $"[{i / cols}, {i % cols}]" : $"[{i}]";
        throw new XunitException(
            $"{what}: {bad}/{got.Length} elements outside atol {atol:G3} + rtol {rtol:G3}*|ref| (seed {seed}); " +
            $"max error {maxErr:G4} at {At(maxAt)}; first mismatch at {At(first)}: got {got[first]:G9}, expected {expected[first]:G9}");
    }
}
