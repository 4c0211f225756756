// The CPU reference twins (Palm.Gpu.Kernels.*.Reference) against naive float64 loops.
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;

namespace Palm.Tests.Gpu;

public sealed class CpuKernelConformanceTests(ITestOutputHelper output) : KernelConformance(output)
{
    protected override void Linear(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y) =>
        Kernels.Linear.Reference(x, w, M, N, K, relu2, y);

    protected override void RmsNorm(float[] x, int rows, int cols, float[] y) => Kernels.RmsNorm.Reference(x, rows, cols, y);

    protected override void Embedding(int[] idx, float[] table, int V, int C, float[] y) => Kernels.Embedding.Reference(idx, table, V, C, y);

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
    public void Embedding_reference_rejects_out_of_range_ids() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Embedding.Reference([0, 3], new float[6], 3, 2, new float[4]));
}
