// The CPU reference twins of the backward kernels (Palm.Gpu.Kernels.*Backward.Reference)
// against central finite differences of independent float64 forwards written from the spec,
// on small shapes: L = sum(w * f(x)) with random w, so dL/dx is the twin's output for dy = w.
// Inputs are fresh random floats (seed printed). Tolerance: |twin - fd| <= 2e-4 max|fd| + 1e-6 + 1e-3 |fd|
// (the twins run in float32; the differences are float64 with h = 1e-5, error ~1e-10).
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;

namespace Palm.Tests.Gpu.Training;

public sealed class BackwardFiniteDifferenceTests
{
    // AtolFloor: a float32 twin cannot resolve derivatives below ~1e-7 (rmsnorm of one column is flat).
    const double RelMax = 2e-4, Rtol = 1e-3, H = 1e-5, AtolFloor = 1e-6;
    const double Eps = Kernels.RmsNorm.Eps;

    readonly int seed;
    readonly Random rng;

    public BackwardFiniteDifferenceTests(ITestOutputHelper output)
    {
        seed = int.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out var s) ? s : Random.Shared.Next();
        rng = new Random(seed);
        output.WriteLine($"seed {seed}");
    }

    float[] Uniform(int n, double scale = 1.0) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    /// <summary>d/dx of sum(w * f(x)) by central differences, in double.</summary>
    static double[] Fd(Func<double[], double[]> f, float[] x, float[] w)
    {
        var xd = Array.ConvertAll(x, v => (double)v);
        var g = new double[x.Length];
        for (var i = 0; i < x.Length; i++)
        {
            var keep = xd[i];
            xd[i] = keep + H;
            var plus = Dot(f(xd), w);
            xd[i] = keep - H;
            var minus = Dot(f(xd), w);
            xd[i] = keep;
            g[i] = (plus - minus) / (2 * H);
        }
        return g;
    }

    static double Dot(double[] a, float[] w)
    {
        double s = 0;
        for (var i = 0; i < a.Length; i++) s += a[i] * w[i];
        return s;
    }

    void AssertMatches(float[] twin, double[] fd, string what) =>
        Tolerance.AssertClose(twin, fd, RelMax * fd.Max(Math.Abs) + AtolFloor, Rtol, $"{what} (finite differences)", seed, 0);

    static double[] MatMulBt(double[] x, double[] w, int M, int N, int K)
    {
        var y = new double[M * N];
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
                for (var k = 0; k < K; k++) y[m * N + n] += x[m * K + k] * w[n * K + k];
        return y;
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(3, 5, 4)]
    [InlineData(7, 2, 6)]
    public void Linear_dx_and_dw(int M, int N, int K)
    {
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        var dy = Uniform(M * N);
        var wd = Array.ConvertAll(w, v => (double)v);
        var xd = Array.ConvertAll(x, v => (double)v);
        var dx = new float[M * K];
        Kernels.LinearBackward.DxReference(dy, w, M, N, K, default, false, dx);
        AssertMatches(dx, Fd(xs => MatMulBt(xs, wd, M, N, K), x, dy), $"linear dx M={M} N={N} K={K}");
        var dw = new float[N * K];
        Kernels.LinearBackward.DwReference(dy, x, M, N, K, false, dw);
        AssertMatches(dw, Fd(ws => MatMulBt(xd, ws, M, N, K), w, dy), $"linear dw M={M} N={N} K={K}");
    }

    [Theory]
    [InlineData(2, 3, 5)]
    [InlineData(4, 6, 3)]
    public void Relu2_factor_du(int M, int N, int R)
    {
        // y = relu2(u) W2^T: du = (dy W2) * 2 max(u, 0). Keep u away from the kink at 0.
        var u = Uniform(M * R).Select(v => v + MathF.Sign(v) * 0.05f).ToArray();
        var w2 = Uniform(N * R);
        var dy = Uniform(M * N);
        var w2d = Array.ConvertAll(w2, v => (double)v);
        var du = new float[M * R];
        Kernels.LinearBackward.DxReference(dy, w2, M, N, R, u, false, du);
        AssertMatches(du, Fd(us => MatMulBt(us.Select(v => Math.Max(v, 0) * Math.Max(v, 0)).ToArray(), w2d, M, N, R), u, dy), "relu2 factor du");
    }

    static double[] RmsNormD(double[] x, int rows, int cols)
    {
        var y = new double[x.Length];
        for (var r = 0; r < rows; r++)
        {
            double ss = 0;
            for (var c = 0; c < cols; c++) ss += x[r * cols + c] * x[r * cols + c];
            var s = 1 / Math.Sqrt(ss / cols + Eps);
            for (var c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * s;
        }
        return y;
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(2, 16)]
    public void RmsNorm(int rows, int cols)
    {
        var x = Uniform(rows * cols, 2);
        var dy = Uniform(rows * cols);
        var dx = new float[rows * cols];
        Kernels.RmsNormBackward.Reference(x, dy, rows, cols, false, dx);
        AssertMatches(dx, Fd(xs => RmsNormD(xs, rows, cols), x, dy), $"rmsnorm rows={rows} cols={cols}");
    }

    [Fact]
    public void Embedding()
    {
        int T = 9, V = 4, C = 3;
        var idx = Enumerable.Range(0, T).Select(_ => rng.Next(V)).ToArray();
        var table = Uniform(V * C);
        var dy = Uniform(T * C);
        var dE = new float[V * C];
        Kernels.EmbeddingBackward.Reference(idx, dy, V, C, false, dE);
        AssertMatches(dE, Fd(e => Enumerable.Range(0, T * C).Select(i => e[idx[i / C] * C + i % C]).ToArray(), table, dy), "embedding");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 5)]
    public void SwiGlu(int rows, int n)
    {
        var ab = Uniform(rows * 2 * n, 3);
        var dy = Uniform(rows * n);
        var dab = new float[rows * 2 * n];
        Kernels.SwiGluBackward.Reference(ab, dy, rows, n, dab);
        AssertMatches(dab, Fd(a => Enumerable.Range(0, rows * n).Select(i =>
        {
            int r = i / n, c = i % n;
            double x = a[r * 2 * n + c], b = a[r * 2 * n + n + c];
            return x * b / (1 + Math.Exp(-b));
        }).ToArray(), ab, dy), $"swiglu rows={rows} n={n}");
    }

    [Theory]
    [InlineData(3, 5, 0)]
    [InlineData(4, 7, 2)]
    public void CrossEntropy(int rows, int V, int ignored)
    {
        var logits = Uniform(rows * V, 3);
        var targets = Enumerable.Range(0, rows).Select(_ => rng.Next(V)).ToArray();
        for (var i = 0; i < ignored; i++) targets[i * 2 % rows] = -1;
        var loss = new float[rows];
        var dz = new float[rows * V];
        Kernels.CrossEntropyBackward.Reference(logits, targets, V, loss, dz);
        var count = targets.Count(t => t != -1);
        AssertMatches(dz, Fd(z =>
        {
            double total = 0;
            for (var r = 0; r < rows; r++)
            {
                if (targets[r] == -1) continue;
                var max = Enumerable.Range(0, V).Max(c => z[r * V + c]);
                var lse = max + Math.Log(Enumerable.Range(0, V).Sum(c => Math.Exp(z[r * V + c] - max)));
                total += lse - z[r * V + targets[r]];
            }
            return [total / count];
        }, logits, [1f]), $"cross_entropy rows={rows} V={V} ignored={ignored}");
    }

    /// <summary>The spec's AoD mix in double from a zero state: y (B*T, D).</summary>
    internal static double[] AodD(double[] qkv, float[] cos, float[] sin, int B, int T, int D, int nHead, bool mean)
    {
        int hd = D / nHead, half = hd / 2;
        var y = new double[B * T * D];
        for (var b = 0; b < B; b++)
        {
            var s = new double[D];
            var z = new double[D];
            for (var t = 0; t < T; t++)
            {
                var row = (b * T + t) * 3 * D;
                var q = new double[D];
                var k = new double[D];
                for (var h = 0; h < nHead; h++)
                    foreach (var (src, dst) in new[] { (row + h * hd, q), (row + D + h * hd, k) })
                    {
                        double ss = 0;
                        for (var c = 0; c < hd; c++) ss += qkv[src + c] * qkv[src + c];
                        var scale = 1 / Math.Sqrt(ss / hd + Eps);
                        for (var c = 0; c < half; c++)
                        {
                            double a = qkv[src + c] * scale, bb = qkv[src + half + c] * scale;
                            double cs = cos[t * half + c], sn = sin[t * half + c];
                            dst[h * hd + c] = a * cs + bb * sn;
                            dst[h * hd + half + c] = -a * sn + bb * cs;
                        }
                    }
                for (var j = 0; j < D; j++)
                {
                    var g = 1 / (1 + Math.Exp(-k[j]));
                    s[j] += g * qkv[row + 2 * D + j];
                    z[j] += g;
                    var o = Math.Max(q[j], 0) * s[j];
                    y[(b * T + t) * D + j] = mean ? o / z[j] : o;
                }
            }
        }
        return y;
    }

    [Theory]
    [InlineData(1, 1, 1, 4, false, 0)]
    [InlineData(2, 5, 2, 4, false, 3)]
    [InlineData(2, 5, 2, 8, true, 0)]
    [InlineData(1, 6, 1, 12, true, 4990)]
    public void Aod(int B, int T, int nHead, int hd, bool mean, int pos0)
    {
        var D = nHead * hd;
        var qkv = Uniform(B * T * 3 * D, 2);
        // relu(q) has a kink at 0: finite differences across it disagree with any derivative.
        for (var i = 0; i < qkv.Length; i++)
            if (Math.Abs(qkv[i]) < 0.02f) qkv[i] = 0.02f;
        var cos = new float[T * hd / 2];
        var sin = new float[T * hd / 2];
        Kernels.Aod.RopeTables(hd, pos0, T, cos, sin);
        var dy = Uniform(B * T * D);
        var dqkv = new float[qkv.Length];
        Kernels.AodBackward.Reference(qkv, cos, sin, dy, B, T, D, nHead, mean, dqkv);
        var fd = Fd(x => AodD(x, cos, sin, B, T, D, nHead, mean), qkv, dy);
        AssertMatches(dqkv, fd, $"aod B={B} T={T} H={nHead} hd={hd} mean={mean} pos0={pos0}");
    }
}
