// The decoder's zero-skipping products (SparseMatVec, TransposedMatrix) against float64 sums,
// with the weights of zero inputs poisoned with NaN: a product that read one would be NaN.
using Palm.Inference.Cpu;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Quantization;

namespace Palm.Tests.FastCpu;

public class SparseMatVecTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(64)]
    [InlineData(100)]
    [InlineData(512)]
    public void NonzeroListsExactlyTheNonzeroAndNaNInputsInOrder(int k)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var x = new float[k];
        for (int i = 0; i < k; i++)
        {
            double r = rng.NextDouble();
            x[i] = r < 0.45 ? 0f : r < 0.5 ? -0f : r < 0.52 ? float.NaN : (float)(rng.NextDouble() - 0.5);
        }
        var expected = Enumerable.Range(0, k).Where(i => x[i] != 0f || float.IsNaN(x[i])).ToArray();
        var got = new int[k + SparseMatVec.Slack];
        int n = SparseMatVec.Nonzero(x, got);
        Assert.True(expected.AsSpan().SequenceEqual(got.AsSpan(0, n)),
            $"seed {seed}: expected [{string.Join(",", expected)}], got [{string.Join(",", got.Take(n))}]");
        Assert.Throws<ArgumentException>(() => SparseMatVec.Nonzero(x, new int[k + SparseMatVec.Slack - 1]));
    }

    [Theory]
    // rows, cols, row0, n, col0, k: the decoder's two uses, then tails of every vector width.
    [InlineData(1536, 64, 256, 256, 0, 64)]     // QKV second factor, one part's q rows
    [InlineData(64, 512, 0, 64, 256, 256)]      // projection input factor, one part's columns
    [InlineData(512, 512, 0, 512, 0, 512)]      // full-rank projection
    [InlineData(300, 40, 17, 150, 3, 30)]       // 128 + 16 + tail outputs, offsets everywhere
    [InlineData(13, 7, 0, 13, 0, 7)]
    [InlineData(1, 1, 0, 1, 0, 1)]
    [InlineData(200, 20, 5, 0, 0, 20)]          // nothing asked
    public void MatchesFloat64AndNeverReadsTheWeightsOfZeroInputs(int rows, int cols, int row0, int n, int col0, int k)
    {
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var w = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var x = Enumerable.Range(0, k).Select(_ => rng.NextDouble() < 0.5 ? 0f : (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var expected = new float[n];
        for (int i = 0; i < n; i++)
        {
            double e = 0;
            for (int j = 0; j < k; j++) if (x[j] != 0f) e += (double)w[(row0 + i) * cols + col0 + j] * x[j];
            expected[i] = (float)e;
        }
        for (int j = 0; j < k; j++)
            if (x[j] == 0f)
                for (int i = 0; i < rows; i++) w[i * cols + col0 + j] = float.NaN;
        var t = new TransposedMatrix(new CpuMatrix("w", rows, cols, w));
        var nz = new int[k + SparseMatVec.Slack];
        int nnz = SparseMatVec.Nonzero(x, nz);
        var y = Enumerable.Repeat(float.NaN, n + 3).ToArray();
        t.MatVec(row0, n, col0, x, nz.AsSpan(0, nnz), y);
        // |terms| <= 1: float32 summation error stays below k * 2^-24 * k.
        Numerics.AssertClose(y.AsSpan(0, n), expected, 1e-6 * k, 1e-5, $"seed {seed} sparse matvec {rows}x{cols} rows {row0}+{n} cols {col0}+{k}, {nnz} nonzero");
        Assert.True(y.AsSpan(n).ToArray().All(float.IsNaN), "wrote past the n outputs asked for");
    }

    [Theory]
    // dtype, group (0: the default), rows, cols, row0, n, col0, k
    [InlineData("q8", 0, 1536, 64, 256, 256, 0, 64)]       // one scale per row (shared)
    [InlineData("q8", 0, 64, 512, 0, 64, 256, 256)]
    [InlineData("q8", 16, 64, 512, 0, 64, 259, 200)]       // slice starting and ending inside groups
    [InlineData("q4", 0, 1536, 64, 256, 256, 0, 64)]       // q4's default group of 32
    [InlineData("q4", 0, 32, 256, 0, 32, 128, 128)]        // rank 32 (the built-in model): 16-output chunks
    [InlineData("q4", 8, 300, 40, 17, 150, 3, 30)]         // 64 + 16 + tail outputs, groups of 8 from column 3
    [InlineData("q4", 0, 13, 7, 0, 13, 0, 7)]
    public void QuantizedMatchesTheDequantizedFloat64Product(string dtypeName, int group, int rows, int cols, int row0, int n, int col0, int k)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        var w = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var q = QuantizedTensor.Quantize(w, dtype, CheckpointQuantizer.GroupFor("w", cols, dtype, group == 0 ? null : group));
        var dq = q.Dequantize();
        var x = Enumerable.Range(0, k).Select(_ => rng.NextDouble() < 0.5 ? 0f : (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var expected = new float[n];
        for (int i = 0; i < n; i++)
        {
            double e = 0;
            for (int j = 0; j < k; j++) e += (double)dq[(row0 + i) * cols + col0 + j] * x[j];
            expected[i] = (float)e;
        }
        var m = new CpuMatrix("w", rows, cols, q);
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported, TransposedMatrix.Supports(m));
        var t = new TransposedMatrix(m);
        var nz = new int[k + SparseMatVec.Slack];
        int nnz = SparseMatVec.Nonzero(x, nz);
        var y = Enumerable.Repeat(float.NaN, n).ToArray();
        t.MatVec(row0, n, col0, x, nz.AsSpan(0, nnz), y);
        Numerics.AssertClose(y, expected, 1e-6 * k, 1e-5, $"seed {seed} sparse {dtypeName} group {q.GroupSize} matvec {rows}x{cols} rows {row0}+{n} cols {col0}+{k}, {nnz} nonzero");
    }

    [Fact]
    public void CopiesCountTheirBytesAndShareOneScalePerRowQ8Scales()
    {
        var w = Enumerable.Range(0, 8 * 64).Select(i => (float)Math.Sin(i)).ToArray();
        Assert.True(TransposedMatrix.Supports(new CpuMatrix("w", 8, 64, w)));
        Assert.Equal(4L * 8 * 64, new TransposedMatrix(new CpuMatrix("w", 8, 64, w)).Bytes);
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return;
        // Levels one byte each; scales by group as floats, except q8's own one-per-row scales.
        Assert.Equal(8L * 64, new TransposedMatrix(new CpuMatrix("w", 8, 64, QuantizedTensor.Quantize(w, TensorDType.Q8, 64))).Bytes);
        Assert.Equal(8L * 64 + 4 * 8 * 2, new TransposedMatrix(new CpuMatrix("w", 8, 64, QuantizedTensor.Quantize(w, TensorDType.Q8, 32))).Bytes);
        Assert.Equal(8L * 64 + 4 * 8 * 2, new TransposedMatrix(new CpuMatrix("w", 8, 64, QuantizedTensor.Quantize(w, TensorDType.Q4, 32))).Bytes);
    }

    [Fact]
    public void OutputBitsDoNotDependOnWhereTheOutputsAreCut()
    {
        // The decoder's two parts ask for different row ranges; a row's value must not depend on
        // which call (and so which vector chunk or scalar tail) computed it.
        ulong seed = TestSeed.Next();
        var rng = new Rng(seed);
        const int rows = 300, cols = 64;
        var w = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var x = Enumerable.Range(0, cols).Select(_ => rng.NextDouble() < 0.5 ? 0f : (float)(rng.NextDouble() * 2 - 1)).ToArray();
        foreach (var m in new[] { new CpuMatrix("w", rows, cols, w), new CpuMatrix("w", rows, cols, QuantizedTensor.Quantize(w, TensorDType.Q8, cols)),
                                  new CpuMatrix("w", rows, cols, QuantizedTensor.Quantize(w, TensorDType.Q4, 16)) })
            AssertCutsAreBitIdentical(seed, new TransposedMatrix(m), x);
    }

    private static void AssertCutsAreBitIdentical(ulong seed, TransposedMatrix t, float[] x)
    {
        int rows = t.Rows, cols = t.Cols;
        var nz = new int[cols + SparseMatVec.Slack];
        var idx = nz.AsSpan(0, SparseMatVec.Nonzero(x, nz));
        var whole = new float[rows];
        t.MatVec(0, rows, 0, x, idx, whole);
        foreach (int cut in new[] { 1, 7, 37, 129, 250 })
        {
            var parts = new float[rows];
            t.MatVec(0, cut, 0, x, idx, parts);
            t.MatVec(cut, rows - cut, 0, x, idx, parts.AsSpan(cut));
            for (int i = 0; i < rows; i++)
                Assert.True(BitConverter.SingleToInt32Bits(whole[i]) == BitConverter.SingleToInt32Bits(parts[i]),
                    $"seed {seed} cut {cut}: row {i} is {whole[i]:R} whole, {parts[i]:R} cut");
        }
    }

    [Fact]
    public void BadShapesAndIndicesThrow()
    {
        var t = new TransposedMatrix(new CpuMatrix("w", 8, 4, new float[32]));
        var x = new float[4];
        var y = new float[8];
        Assert.Throws<ArgumentException>(() => t.MatVec(4, 5, 0, x, [0], y));      // rows past the end
        Assert.Throws<ArgumentException>(() => t.MatVec(0, 8, 2, x, [2], y));      // column 4 of 4
        Assert.Throws<ArgumentException>(() => t.MatVec(0, 8, 0, x, [4], y));      // index past x
        Assert.Throws<ArgumentException>(() => t.MatVec(0, 8, 0, x, [0], new float[7]));
    }
}
