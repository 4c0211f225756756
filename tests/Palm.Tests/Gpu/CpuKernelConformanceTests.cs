// The CPU reference twins (Palm.Gpu.Kernels.*.Reference) against naive float64 loops.
using Palm.Gpu.Vulkan;
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;

namespace Palm.Tests.Gpu;

public sealed class CpuKernelConformanceTests(ITestOutputHelper output) : KernelConformance(output)
{
    protected override void Linear(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y) =>
        Kernels.Linear.Reference(x, w, M, N, K, relu2, y);

    protected override void LinearQuantized(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2, float[] y) =>
        Kernels.Linear.QuantizedReference(x, GpuFormat(w), w.Data.Span, w.Scales.Span, w.GroupSize, M, N, K, relu2, y);

    protected override void LinearF16(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y) =>
        Kernels.Linear.ReferenceF16(x, w, M, N, K, relu2, y);

    /// <summary>Float64 over the weights rounded to half by .NET's own conversion.</summary>
    protected override double[] LinearF16Expected(float[] x, float[] w, int M, int N, int K, bool relu2) =>
        LinearExpected(x, Array.ConvertAll(w, v => (float)(Half)v), M, N, K, relu2);

    protected override void LinearHalf(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y) =>
        Kernels.Linear.ReferenceHalf(x, w, M, N, K, relu2, y);

    protected override void LinearCoopMat(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y) =>
        Kernels.Linear.ReferenceHalfInputs(x, w, M, N, K, relu2, y);

    /// <summary>Float64 sums of products rounded to half from double (.NET's own conversions), over inputs rounded to half.</summary>
    protected override double[] LinearHalfExpected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new double[M * N];
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                double acc = 0;
                for (var k = 0; k < K; k++) acc += (double)(Half)((double)(Half)x[m * K + k] * (double)(Half)w[n * K + k]);
                y[m * N + n] = relu2 ? Math.Pow(Math.Max(acc, 0), 2) : acc;
            }
        return y;
    }

    /// <summary>Float64 over both operands rounded to half.</summary>
    protected override double[] LinearCoopMatExpected(float[] x, float[] w, int M, int N, int K, bool relu2) =>
        LinearExpected(Array.ConvertAll(x, v => (float)(Half)v), Array.ConvertAll(w, v => (float)(Half)v), M, N, K, relu2);

    internal static GpuQuantFormat GpuFormat(QuantizedTensor w) => w.DType == TensorDType.Q8 ? GpuQuantFormat.Q8 : GpuQuantFormat.Q4;

    /// <summary>Float64 over the weights as Palm.Inference decodes them: the kernel's own byte decoding is checked against it.</summary>
    protected override double[] LinearQuantizedExpected(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2) =>
        LinearExpected(x, w.Dequantize(), M, N, K, relu2);

    protected override void RmsNorm(float[] x, int rows, int cols, float[] y) => Kernels.RmsNorm.Reference(x, rows, cols, y);

    protected override void Embedding(int[] idx, float[] table, int V, int C, float[] y) => Kernels.Embedding.Reference(idx, table, V, C, y);

    protected override void EmbeddingQuantized(int[] idx, QuantizedTensor table, int V, int C, float[] y) =>
        Kernels.Embedding.QuantizedReference(idx, GpuFormat(table), table.Data.Span, table.Scales.Span, table.GroupSize, V, C, y);

    /// <summary>The rows of the table as Palm.Inference dequantizes it: the twin's own byte decoding is checked against it.</summary>
    protected override double[] EmbeddingQuantizedExpected(int[] idx, QuantizedTensor table, int V, int C) =>
        EmbeddingExpected(idx, table.Dequantize(), V, C);

    protected override void Aod(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int[]? slots, float[] s, float[]? z, float[] y)
    {
        // The reference always carries a state; a fresh scan is a zero state that is discarded.
        var sRun = slots is not null ? s : new float[B * D];
        var zRun = z is null ? null : slots is not null ? z : new float[B * D];
        Kernels.Aod.Reference(qkv, cos, sin, ropePerRow, slots, B, T, D, H, sRun, zRun, z is not null, y);
    }

    protected override void AodChunked(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L, int[]? slots, float[] s, float[]? z, float[] y)
    {
        var sRun = slots is not null ? s : new float[B * D];
        var zRun = z is null ? null : slots is not null ? z : new float[B * D];
        Kernels.Aod.ChunkedReference(qkv, cos, sin, ropePerRow, slots, B, T, D, H, L, sRun, zRun, z is not null, y);
    }

    /// <summary>The chunked twin is held to the same float64 oracle as the sequential one.</summary>
    protected override (double[] Y, double[] S, double[]? Z) AodChunkedExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L,
        int[]? slots, float[] s, float[]? z) => AodExpected(qkv, cos, sin, ropePerRow, B, T, D, H, slots, s, z);

    // The two float32 twins side by side: the chunked one regroups the sequential one's sums, so
    // they agree to float32 rounding of T-term sums (ForReduction(T) relative to the sums' size).
    [Theory]
    [InlineData(1, 3, 1, 4, 16, false)]
    [InlineData(2, 33, 2, 8, 16, true)]
    [InlineData(3, 257, 3, 12, 32, false)]
    [InlineData(2, 100, 1, 16, 7, true)]
    public void Aod_chunked_twin_matches_the_sequential_twin(int B, int T, int H, int hd, int L, bool mean)
    {
        var D = H * hd;
        var qkv = Uniform(B * T * 3 * D, 2.0);
        var cos = new float[T * hd / 2];
        var sin = new float[T * hd / 2];
        Kernels.Aod.RopeTables(hd, 5, T, cos, sin);
        var s0 = Uniform(B * D, 3.0);
        var z0 = Array.ConvertAll(Uniform(B * D), v => 2f + v);
        float[] sSeq = (float[])s0.Clone(), zSeq = (float[])z0.Clone(), ySeq = Poisoned(B * T * D);
        float[] sChk = (float[])s0.Clone(), zChk = (float[])z0.Clone(), yChk = Poisoned(B * T * D);
        Kernels.Aod.Reference(qkv, cos, sin, false, [], B, T, D, H, sSeq, mean ? zSeq : null, mean, ySeq);
        Kernels.Aod.ChunkedReference(qkv, cos, sin, false, [], B, T, D, H, L, sChk, mean ? zChk : null, mean, yChk);
        var what = $"aod chunked vs sequential twin B={B} T={T} H={H} hd={hd} L={L} mean={mean}";
        var yRef = Array.ConvertAll(ySeq, v => (double)v);
        var sRef = Array.ConvertAll(sSeq, v => (double)v);
        Tolerance.AssertClose(yChk, yRef, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(yRef)), Tolerance.F32Rtol, what + " y", Seed, D);
        Tolerance.AssertClose(sChk, sRef, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(sRef)), Tolerance.F32Rtol, what + " S", Seed, D);
        if (mean)
        {
            var zRef = Array.ConvertAll(zSeq, v => (double)v);
            Tolerance.AssertClose(zChk, zRef, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(zRef)), Tolerance.F32Rtol, what + " Z", Seed, D);
        }
    }

    // The backward's two float32 twins side by side: the chunked one regroups the carried
    // gradients' sums (and the forward's), so they agree to float32 rounding of the T-term sums
    // and the hd-term norm backward, relative to the gradients' size (as the GPU backward test).
    [Theory]
    [InlineData(1, 3, 1, 4, 16, false)]      // T < L: one partial chunk
    [InlineData(1, 16, 1, 4, 16, true)]      // exactly one chunk
    [InlineData(2, 33, 2, 8, 16, true)]      // T not a multiple of L, B > 1
    [InlineData(3, 300, 3, 12, 16, false)]
    [InlineData(2, 300, 1, 16, 16, true)]
    [InlineData(2, 100, 1, 16, 7, false)]
    public void Aod_backward_chunked_twin_matches_the_sequential_twin(int B, int T, int H, int hd, int L, bool mean)
    {
        var D = H * hd;
        var qkv = Uniform(B * T * 3 * D, 2.0);
        var cos = new float[T * hd / 2];
        var sin = new float[T * hd / 2];
        Kernels.Aod.RopeTables(hd, 5, T, cos, sin);
        var dy = Uniform(B * T * D);
        float[] seq = Poisoned(qkv.Length), chk = Poisoned(qkv.Length);
        Kernels.AodBackward.Reference(qkv, cos, sin, dy, B, T, D, H, mean, seq);
        Kernels.AodBackward.ChunkedReference(qkv, cos, sin, dy, B, T, D, H, L, mean, chk);
        var expected = Array.ConvertAll(seq, v => (double)v);
        Tolerance.AssertClose(chk, expected, Tolerance.ForReduction(T + hd) * Math.Max(1, MaxAbs(expected)), Tolerance.F32Rtol,
            $"aod backward chunked vs sequential twin B={B} T={T} H={H} hd={hd} L={L} mean={mean}", Seed, 3 * D);
    }

    protected override void SwiGlu(float[] ab, int rows, int n, bool residual, float[] output) =>
        Kernels.SwiGlu.Reference(ab, rows, n, residual, output);

    protected override void Add(float[] y, float[] x) => Kernels.Add.Reference(y, x);

    protected override void Axpby(float alpha, float[] x, float beta, float[] y) => Kernels.Axpby.Reference(alpha, x, beta, y);

    protected override void CrossEntropy(float[] logits, int[] targets, int V, float[] loss) =>
        Kernels.CrossEntropy.Reference(logits, targets, V, loss);

    protected override void Argmax(float[] logits, int rows, int V, int[] idx) =>
        Kernels.CrossEntropy.ArgmaxReference(logits, rows, V, idx);

    protected override (double[] Y, double[] S, double[]? Z) AodExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H,
        int[]? slots, float[] s, float[]? z)
    {
        var hasState = slots is not null;
        // The spec's order in float64: rmsnorm, then rope, per head; then gate and scan.
        int hd = D / H, half = hd / 2;
        var y = new double[B * T * D];
        var sOut = Array.ConvertAll(s, v => (double)v);
        var zOut = z is null ? null : Array.ConvertAll(z, v => (double)v);
        for (var b = 0; b < B; b++)
        {
            var sRun = new double[D];
            var zRun = new double[D];
            var at = hasState ? slots![b] * D : 0;
            if (hasState)
                for (var j = 0; j < D; j++)
                {
                    sRun[j] = s[at + j];
                    if (z is not null) zRun[j] = z[at + j];
                }
            for (var t = 0; t < T; t++)
            {
                var row = (b * T + t) * 3 * D;
                var q = new double[D];
                var k = new double[D];
                for (var h = 0; h < H; h++)
                    foreach (var (src, dst) in new[] { (row + h * hd, q), (row + D + h * hd, k) })
                    {
                        double ss = 0;
                        for (var c = 0; c < hd; c++) ss += (double)qkv[src + c] * qkv[src + c];
                        var scale = 1 / Math.Sqrt(ss / hd + Kernels.RmsNorm.Eps);
                        for (var c = 0; c < half; c++)
                        {
                            double a = qkv[src + c] * scale, bb = qkv[src + half + c] * scale;
                            var r = (ropePerRow ? b * T + t : t) * half;
                            double cs = cos[r + c], sn = sin[r + c];
                            dst[h * hd + c] = a * cs + bb * sn;
                            dst[h * hd + half + c] = -a * sn + bb * cs;
                        }
                    }
                for (var j = 0; j < D; j++)
                {
                    var g = 1 / (1 + Math.Exp(-k[j]));
                    sRun[j] += g * qkv[row + 2 * D + j];
                    zRun[j] += g;
                    var o = Math.Max(q[j], 0) * sRun[j];
                    y[(b * T + t) * D + j] = z is null ? o : o / zRun[j];
                }
            }
            if (hasState)
                for (var j = 0; j < D; j++)
                {
                    sOut[at + j] = sRun[j];
                    if (zOut is not null) zOut[at + j] = zRun[j];
                }
        }
        return (y, sOut, zOut);
    }

    protected override double[] SwiGluExpected(float[] ab, int rows, int n, bool residual, float[] output)
    {
        var y = new double[rows * n];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < n; c++)
            {
                double a = ab[r * 2 * n + c], b = ab[r * 2 * n + n + c];
                var v = a * b / (1 + Math.Exp(-b));
                y[r * n + c] = residual ? output[r * n + c] + v : v;
            }
        return y;
    }

    protected override double[] CrossEntropyExpected(float[] logits, int[] targets, int V)
    {
        var loss = new double[targets.Length];
        for (var r = 0; r < targets.Length; r++)
        {
            if (targets[r] == -1) continue;
            var max = double.NegativeInfinity;
            for (var c = 0; c < V; c++) max = Math.Max(max, logits[r * V + c]);
            double sum = 0;
            for (var c = 0; c < V; c++) sum += Math.Exp(logits[r * V + c] - max);
            loss[r] = max + Math.Log(sum) - logits[r * V + targets[r]];
        }
        return loss;
    }

    protected override int[] ArgmaxExpected(float[] logits, int rows, int V) =>
        Enumerable.Range(0, rows).Select(r =>
        {
            var row = logits.AsSpan(r * V, V);
            return row.IndexOf(RowMax(row));
        }).ToArray();

    static float RowMax(ReadOnlySpan<float> row)
    {
        var m = float.NegativeInfinity;
        foreach (var v in row) m = Math.Max(m, v);
        return m;
    }

    [Fact]
    public void CrossEntropy_reference_rejects_out_of_range_targets() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.CrossEntropy.Reference(new float[4], [0, 2], 2, new float[2]));

    [Fact]
    public void CrossEntropy_mean_counts_only_targets_that_are_not_ignored() =>
        Assert.Equal(2.0, Kernels.CrossEntropy.Mean([1f, 5f, 3f], [0, -1, 1]));

    protected override double[] LinearExpected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new double[M * N];
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                double acc = 0;
                for (var k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
                y[m * N + n] = relu2 ? Math.Pow(Math.Max(acc, 0), 2) : acc;
            }
        return y;
    }

    protected override double[] RmsNormExpected(float[] x, int rows, int cols)
    {
        var y = new double[rows * cols];
        for (var r = 0; r < rows; r++)
        {
            double ss = 0;
            for (var c = 0; c < cols; c++) ss += (double)x[r * cols + c] * x[r * cols + c];
            var scale = 1 / Math.Sqrt(ss / cols + Kernels.RmsNorm.Eps);
            for (var c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * scale;
        }
        return y;
    }

    protected override double[] EmbeddingExpected(int[] idx, float[] table, int V, int C)
    {
        var y = new double[idx.Length * C];
        for (var t = 0; t < idx.Length; t++)
            for (var c = 0; c < C; c++) y[t * C + c] = table[idx[t] * C + c];
        return y;
    }

    [Fact]
    public void Embedding_reference_rejects_out_of_range_ids()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Embedding.Reference([0, 3], new float[6], 3, 2, new float[4]));
        var q = QuantizedTensor.Quantize(new float[6], TensorDType.Q4, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Kernels.Embedding.QuantizedReference([0, -1], GpuQuantFormat.Q4, q.Data.Span, q.Scales.Span, 2, 3, 2, new float[4]));
    }
}
