// The CPU quantized kernels (Cpu/QuantizedMatVec) against QuantizedTensor.Dequantize and a float64
// loop, for every kernel family this machine runs: awkward k (1, primes), odd group sizes and odd
// group counts, q4 rows and groups that start on the high nibble of a byte (odd k or odd G), and
// the last rows of a matrix where a vector step would read past the data; row ranges and column
// slices that cut groups and bytes (the two-core decoder's parts). Outputs arrive NaN-poisoned.
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
        // Whole groups of multiples of 32 (the split-nibble kernel), row counts past 4-row passes.
        ("q4", 37, 128, 32), ("q4", 9, 64, 64), ("q4", 6, 192, 96),
        // q8 sixteen-row passes: 64-column rows in one group (the rank-64 kernel, scales one vector
        // load), 64-column slices of two-group rows (its gathered scales), and the general kernel.
        ("q8", 37, 64, 64), ("q8", 35, 128, 64), ("q8", 20, 96, 96),
        // q4 sixteen-row passes over 64 columns: two groups of 32, one of 64, and 64-column slices.
        ("q4", 37, 64, 32), ("q4", 20, 64, 64), ("q4", 35, 128, 64), ("q4", 33, 128, 32),
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

    // Slices of [0, k) for a row of k with groups of g: whole, empty, one element, group-aligned,
    // starting and ending inside a group, odd starts (q4: the high nibble of a byte), the decoder's
    // halves at multiples of 16, and a last short piece.
    private static IEnumerable<(int Col0, int Cols)> Slices(int k, int g)
    {
        var s = new List<(int, int)> { (0, k), (0, 0), (k - 1, 1), (k / 2, 0), (0, k / 2), (k / 2, k - k / 2) };
        if (k >= 3) s.Add((1, k - 2));
        if (g > 1 && k > g) s.Add((g / 2, k - g / 2 - 1));              // starts and ends mid-group
        if (g < k) s.Add((g, k - g));                                   // group-aligned start
        if (k >= 32) { s.Add((16, k - 32)); s.Add((k / 32 * 16, k - k / 32 * 16)); }
        if (k >= 7) s.Add((3, 3));                                      // inside one group (when g > 5)
        return s.Where(t => t.Item1 >= 0 && t.Item2 >= 0 && t.Item1 + t.Item2 <= k).Distinct();
    }

    [Theory, MemberData(nameof(Isas))]
    public void MatVecCols_matches_float64_on_column_slices_that_cut_groups_and_bytes(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, n, k, g) in Shapes.Concat([("q8", 12, 256, 256), ("q4", 9, 256, 32), ("q8", 33, 128, 128), ("q4", 8, 96, 96)]))
        {
            var w = Random(rng, dtype, n, k, g);
            var wf = w.Dequantize();
            foreach (var (col0, cols) in Slices(k, g))
            {
                var x = Vector(rng, cols);
                var y = new float[n];
                Array.Fill(y, float.NaN);
                QuantizedMatVec.MatVecCols(isa, w, n, k, col0, cols, x, y);
                var expected = new double[n];
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < cols; j++) expected[r] += (double)wf[r * k + col0 + j] * x[j];
                Tolerance.AssertClose(y, expected, Tolerance.ForReduction(Math.Max(cols, 1)), Tolerance.F32Rtol,
                    $"{isa} matvec cols [{col0}, {col0 + cols}) {dtype} n={n} k={k} G={g} (PALM_TEST_SEED={seed})", 0, n);
                // The same slice again gives the same bits: what the two-core decoder relies on.
                var again = new float[n];
                QuantizedMatVec.MatVecCols(isa, w, n, k, col0, cols, x, again);
                Assert.Equal(y, again);
            }
        }
    }

    [Theory, MemberData(nameof(Isas))]
    public void MatVecRows_matches_float64_on_row_ranges(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, n, k, g) in Shapes)
        {
            var w = Random(rng, dtype, n, k, g);
            var x = Vector(rng, k);
            var all = Expected(w, x, 1, n, k);
            foreach (var (row0, rows) in new[] { (0, n), (n / 2, n - n / 2), (n - 1, 1), (1, Math.Max(0, n - 2)), (n / 3, Math.Min(5, n - n / 3)), (n, 0) })
            {
                var y = new float[rows];
                Array.Fill(y, float.NaN);
                QuantizedMatVec.MatVecRows(isa, w, n, k, row0, rows, x, y);
                Tolerance.AssertClose(y, all.AsSpan(row0, rows), Tolerance.ForReduction(k), Tolerance.F32Rtol,
                    $"{isa} matvec rows [{row0}, {row0 + rows}) {dtype} n={n} k={k} G={g} (PALM_TEST_SEED={seed})", 0, rows);
            }
        }
    }

    [Theory, MemberData(nameof(Isas))]
    public void MatMul_accumulate_adds_onto_y(string isaName)
    {
        var isa = Enum.Parse<QuantIsa>(isaName);
        ulong seed = TestSeed.Next();
        var rng = new Random((int)(seed & 0x7fffffff));
        foreach (var (dtype, m, n, k, g, block) in new[] { ("q8", 1, 7, 13, 13, 0), ("q4", 1, 9, 64, 32, 0), ("q4", 5, 33, 35, 7, 8), ("q8", 37, 70, 64, 64, 0) })
        {
            var w = Random(rng, dtype, n, k, g);
            var x = Vector(rng, m * k);
            var y0 = Vector(rng, m * n);
            var y = (float[])y0.Clone();
            QuantizedMatVec.MatMul(isa, w, x, m, n, k, y, parallel: true, rowsPerBlock: block, accumulate: true);
            var expected = Expected(w, x, m, n, k);
            for (int i = 0; i < expected.Length; i++) expected[i] += y0[i];
            Tolerance.AssertClose(y, expected, Tolerance.ForReduction(k + 1), Tolerance.F32Rtol,
                $"{isa} matmul accumulate {dtype} m={m} n={n} k={k} G={g} (PALM_TEST_SEED={seed})", 0, n);
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

    [Theory]
    [InlineData("f32")]
    [InlineData("q8")]
    [InlineData("q4")]
    public void MatVecBlock_rows_are_the_bits_of_MatVecCols(string dtype)
    {
        // The batched decode step cuts an input factor's column-slice product into 16-row blocks
        // (the last taking a tail under 32 rows); every row must come out as in the whole call.
        ulong seed = TestSeed.Next();
        var rng = new Palm.Inference.Model.Rng(seed);
        foreach (var (rows, cols, c0, k) in new[] { (64, 256, 128, 128), (64, 256, 0, 128), (37, 96, 32, 64), (50, 64, 0, 64), (20, 48, 16, 32) })
        {
            var w = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            var m = dtype == "f32" ? new CpuMatrix("w", rows, cols, w).Aligned()
                : new CpuMatrix("w", rows, cols, QuantizedTensor.Quantize(w, dtype == "q8" ? TensorDType.Q8 : TensorDType.Q4, dtype == "q8" ? cols : 16));
            var x = Enumerable.Range(0, k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            var whole = new float[rows];
            m.MatVecCols(c0, k, x, whole);
            var blocks = new float[rows];
            for (int i = 0; i < rows; i += 16)
            {
                int nb = rows - i < 32 ? rows - i : 16;
                m.MatVecBlock(i, nb, c0, k, x, blocks.AsSpan(i, nb));
                if (nb > 16) break;
            }
            for (int i = 0; i < rows; i++)
                Assert.True(BitConverter.SingleToInt32Bits(whole[i]) == BitConverter.SingleToInt32Bits(blocks[i]),
                    $"seed {seed} {dtype} ({rows}x{cols}, cols [{c0}, {c0 + k})): row {i} is {blocks[i]:R} in blocks, {whole[i]:R} whole");
        }
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
        // The decoder's per-part products too: a row range and a column slice that cuts groups.
        QuantizedMatVec.MatVecRows(w, 256, 64, 100, 56, x, y.AsSpan(0, 56));
        QuantizedMatVec.MatVecCols(w, 256, 64, 7, 40, x.AsSpan(0, 40), y);
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
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedMatVec.MatVecRows(w, 3, 8, 2, 2, new float[8], new float[2]));  // rows [2, 4) of 3
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedMatVec.MatVecRows(w, 3, 8, -1, 1, new float[8], new float[1]));
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVecRows(w, 3, 8, 0, 2, new float[8], new float[3]));          // y not rows long
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedMatVec.MatVecCols(w, 3, 8, 5, 4, new float[4], new float[3]));  // columns [5, 9) of 8
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVecCols(w, 3, 8, 2, 4, new float[5], new float[3]));          // x not cols long
        Assert.Throws<ArgumentException>(() => QuantizedMatVec.MatVecCols(w, 3, 8, 2, 4, new float[4], new float[2]));          // y not n long
    }
}
