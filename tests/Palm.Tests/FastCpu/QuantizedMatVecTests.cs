// The CPU quantized kernels (Cpu/QuantizedMatVec) against QuantizedTensor.Dequantize and a float64
// loop, for every kernel family this machine runs: awkward k (1, primes), odd group sizes and odd
// group counts, q4 rows and groups that start on the high nibble of a byte (odd k or odd G), and
// the last rows of a matrix where a vector step would read past the data. Outputs arrive NaN-poisoned.
using Palm.Inference.Checkpoint;
using Palm.Inference.Cpu;
using Palm.Inference.Quantization;
using Palm.Tests.Gpu;

namespace Palm.Tests.FastCpu;

public sealed class QuantizedMatVecTests
{
    public static TheoryData<string> Isas()
    {
        var d = new TheoryData<string>();
        foreach (var isa in Enum.GetValues<QuantIsa>())
            if (QuantizedMatVec.Supported(isa)) d.Add(isa.ToString());
        return d;
    }

    // (dtype, n, k, group)
    private static readonly (string DType, int N, int K, int G)[] Shapes =
    [
        ("q8", 1, 1, 1), ("q8", 7, 13, 13), ("q8", 3, 130, 10), ("q8", 17, 67, 67), ("q8", 5, 64, 64),
        ("q8", 4, 96, 32), ("q8", 9, 48, 16), ("q8", 2, 256, 256), ("q8", 33, 100, 20), ("q8", 6, 51, 17),
        ("q4", 1, 1, 1), ("q4", 9, 1, 1), ("q4", 7, 13, 13), ("q4", 5, 33, 11), ("q4", 4, 64, 32),
        ("q4", 31, 48, 16), ("q4", 3, 96, 32), ("q4", 11, 35, 7), ("q4", 6, 130, 26), ("q4", 13, 75, 25),
        ("q4", 2, 512, 32), ("q4", 5, 49, 49), ("q4", 7, 33, 33), ("q4", 5, 99, 33), ("q4", 3, 65, 65),
        ("q4", 4, 34, 17), ("q4", 64, 32, 32),
    ];

    private static QuantizedTensor Random(Random rng, string dtype, int n, int k, int g)
    {
        Assert.True(TensorDTypes.TryParse(dtype, out var storage));
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(2 * rng.NextDouble() - 1);
        return QuantizedTensor.Quantize(w, storage, g);
    }

    private static float[] Vector(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(2 * rng.NextDouble() - 1);
        return x;
    }

    // y (m, n) = x (m, k) · Wᵀ in float64 over the weights as QuantizedTensor decodes them.
    private static double[] Expected(QuantizedTensor w, float[] x, int m, int n, int k)
    {
        var wf = w.Dequantize();
        var y = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int r = 0; r < n; r++)
            {
                double acc = 0;
                for (int j = 0; j < k; j++) acc += (double)wf[r * k + j] * x[i * k + j];
                y[i * n + r] = acc;
            }
        return y;
    }

    [Theory, MemberData(nameof(Isas))]
    public void MatVec_matches_float64_over_the_dequantized_weights(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, n, k, g) in Shapes)
        {
            var w = Random(rng, dtype, n, k, g);
            var x = Vector(rng, k);
            var y = new float[n];
            Array.Fill(y, float.NaN);
            QuantizedMatVec.MatVec(isa, w, n, k, x, y);
            // Levels times x in [-1, 1], summed in another order than float64: the fp32 reduction tolerance.
            Tolerance.AssertClose(y, Expected(w, x, 1, n, k), Tolerance.ForReduction(k), Tolerance.F32Rtol,
                $"{isa} matvec {dtype} n={n} k={k} G={g} (PALM_TEST_SEED={seed})", 0, n);
        }
    }

    [Theory, MemberData(nameof(Isas))]
    public void DequantizeRows_equals_QuantizedTensor_Dequantize(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, n, k, g) in Shapes)
        {
            var w = Random(rng, dtype, n, k, g);
            var all = w.Dequantize();
            int row0 = n / 3, rows = n - row0;
            var got = new float[rows * k];
            Array.Fill(got, float.NaN);
            QuantizedMatVec.DequantizeRows(isa, w, k, row0, rows, got);
            // One product level * scale per element on both sides: exact.
            for (int i = 0; i < got.Length; i++)
                Assert.True(all[row0 * k + i].Equals(got[i]),
                    $"{isa} dequantize {dtype} n={n} k={k} G={g}: element {row0 * k + i} is {got[i]}, expected {all[row0 * k + i]} (PALM_TEST_SEED={seed})");
        }
    }

    [Theory, MemberData(nameof(Isas))]
    public void MatMul_matches_float64_in_blocks_of_rows(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, n, k, g) in Shapes.Where((_, i) => i % 3 == 0))
            foreach (int m in new[] { 1, 2, 37 })
                foreach (int block in new[] { 0, 1, 3, 32 })
                    Check(isa, rng, seed, dtype, m, n, k, g, block, parallel: block != 3);
        // Big enough for the parallel path (m*n*k >= 2^19), several blocks, a short last one.
        Check(isa, rng, seed, "q4", 64, 300, 64, 32, 32, parallel: true);
        Check(isa, rng, seed, "q8", 40, 200, 99, 33, 0, parallel: true);
    }

    private static void Check(QuantIsa isa, Random rng, ulong seed, string dtype, int m, int n, int k, int g, int block, bool parallel)
    {
        var w = Random(rng, dtype, n, k, g);
        var x = Vector(rng, m * k);
        var y = new float[m * n];
        Array.Fill(y, float.NaN);
        QuantizedMatVec.MatMul(isa, w, x, m, n, k, y, parallel, block);
        Tolerance.AssertClose(y, Expected(w, x, m, n, k), Tolerance.ForReduction(k), Tolerance.F32Rtol,
            $"{isa} matmul {dtype} m={m} n={n} k={k} G={g} block={block} parallel={parallel} (PALM_TEST_SEED={seed})", 0, n);
    }

    [Fact]
    public void HalfToSingle_equals_the_Half_cast_for_every_finite_value()
    {
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            var h = BitConverter.UInt16BitsToHalf((ushort)bits);
            if (!Half.IsFinite(h)) continue;
            float got = QuantizedMatVec.HalfToSingle((ushort)bits), expected = (float)h;
            Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(expected), $"0x{bits:x4}: {got:R}, expected {expected:R}");
        }
    }

    [Fact]
    public void MatVec_allocates_nothing()
    {
        var rng = new Random(1);
        var w = Random(rng, "q4", 256, 64, 32);
        var x = Vector(rng, 64);
        var y = new float[256];
        QuantizedMatVec.MatVec(w, 256, 64, x, y);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) QuantizedMatVec.MatVec(w, 256, 64, x, y);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void Bad_sizes_are_rejected()
    {
        var w = QuantizedTensor.Quantize(new float[24], TensorDType.Q4, 4);   // (4, 6) or (6, 4) or (3, 8) ...
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVec(w, 5, 6, new float[6], new float[5]));     // 30 != 24
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVec(w, 8, 3, new float[3], new float[8]));     // G = 4 does not divide k = 3
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVec(w, 3, 8, new float[7], new float[3]));     // x too short
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVec(w, 3, 8, new float[8], new float[4]));     // y too long
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatMul(w, new float[16], 2, 3, 8, new float[5]));
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatMul(w, new float[0], 0, 3, 8, new float[0]));
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedMatVec.DequantizeRows(QuantIsa.Scalar, w, 8, 2, 2, new float[16]));
    }
}
