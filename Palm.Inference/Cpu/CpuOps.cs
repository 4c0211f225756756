// Float32 building blocks of the CPU reference model: matmul in the one layout every linear
// reduces to (A·Bᵀ, rows of both contiguous), row-wise rmsnorm, RoPE, activations and
// cross-entropy. Written for clarity; the matmul is blocked and multithreaded because
// the reference also serves as the CPU fallback and has to train the `small` preset.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Inference.Cpu;

internal static class CpuOps
{
    /// <summary>float32 machine epsilon, the spec's rmsnorm eps.</summary>
    public const float RmsEps = 1.1920929e-07f;

    // Work below this many multiply-adds runs on the calling thread: thread hand-off costs
    // tens of microseconds, more than a small matmul (recurrent decoding is all small ones).
    private const long ParallelThreshold = 1 << 16;

    /// <summary>C(M, N) = A(M, K) · B(N, K)ᵀ, or C += when <paramref name="accumulate"/>.</summary>
    public static void MatMulABt(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int m, int n, int k, Span<float> c, bool accumulate = false)
    {
        if (a.Length < (long)m * k || b.Length < (long)n * k || c.Length < (long)m * n)
            throw new ArgumentException($"matmul shapes: A {a.Length} < {m}x{k} or B {b.Length} < {n}x{k} or C {c.Length} < {m}x{n}");
        bool parallel = (long)m * n * k >= ParallelThreshold && Environment.ProcessorCount > 1;
        // One to three rows (a prefill's last-position unembedding, the reference's decoding)
        // read the whole of B for few multiply-adds: handing them to the pool costs more than
        // they do (a `small` unembedding, 0.26 M, ~10 us here), and the pool thread it wakes
        // then spins on the second core while a decoder's team wants it. Same bound as Gemm's.
        if (m < 4 && (long)m * n * k < Gemm.SerialBelow) parallel = false;
        if (m >= 4 && Gemm.Supported)
        {
            unsafe
            {
                fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                    Gemm.MatMulABt(pa, pb, pc, m, n, k, accumulate, parallel);
            }
            return;
        }
        if (!parallel)
        {
            unsafe
            {
                fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                    MatMulRows(pa, pb, pc, 0, m, n, k, accumulate);
            }
            return;
        }
        unsafe
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            {
                nint ia = (nint)pa, ib = (nint)pb, ic = (nint)pc;
                // Split over rows of C when there are enough, else over columns (decoding: m = 1).
                if (m >= 8)
                {
                    int chunks = Math.Min(m / 4, Environment.ProcessorCount * 4);
                    Parallel.For(0, chunks, ci =>
                    {
                        int r0 = (int)((long)m * ci / chunks), r1 = (int)((long)m * (ci + 1) / chunks);
                        MatMulRows((float*)ia, (float*)ib, (float*)ic, r0, r1, n, k, accumulate);
                    });
                }
                else
                {
                    int chunks = Math.Min(Math.Max(1, n / 16), Environment.ProcessorCount * 4);
                    Parallel.For(0, chunks, ci =>
                    {
                        int c0 = (int)((long)n * ci / chunks), c1 = (int)((long)n * (ci + 1) / chunks);
                        MatMulCols((float*)ia, (float*)ib, (float*)ic, m, c0, c1, n, k, accumulate);
                    });
                }
            }
        }
    }

    // Rows r0..r1 of C. Four rows of A against one row of B at a time, so each B row loaded
    // from cache feeds four dot products; B panels of 64 rows keep B hot across row groups.
    private static unsafe void MatMulRows(float* a, float* b, float* c, int r0, int r1, int n, int k, bool acc)
    {
        const int NB = 64;
        for (int n0 = 0; n0 < n; n0 += NB)
        {
            int n1 = Math.Min(n, n0 + NB);
            int i = r0;
            for (; i + 4 <= r1; i += 4)
            {
                float* a0 = a + (long)i * k, a1 = a0 + k, a2 = a1 + k, a3 = a2 + k;
                for (int j = n0; j < n1; j++)
                {
                    float* bj = b + (long)j * k;
                    Dot4(a0, a1, a2, a3, bj, k, out float s0, out float s1, out float s2, out float s3);
                    long o = (long)i * n + j;
                    if (acc) { c[o] += s0; c[o + n] += s1; c[o + 2 * n] += s2; c[o + 3 * n] += s3; }
                    else { c[o] = s0; c[o + n] = s1; c[o + 2 * n] = s2; c[o + 3 * n] = s3; }
                }
            }
            for (; i < r1; i++)
            {
                var ai = new ReadOnlySpan<float>(a + (long)i * k, k);
                for (int j = n0; j < n1; j++)
                {
                    float s = TensorPrimitives.Dot(ai, new ReadOnlySpan<float>(b + (long)j * k, k));
                    if (acc) c[(long)i * n + j] += s; else c[(long)i * n + j] = s;
                }
            }
        }
    }

    private static unsafe void MatMulCols(float* a, float* b, float* c, int m, int c0, int c1, int n, int k, bool acc)
    {
        for (int i = 0; i < m; i++)
        {
            var ai = new ReadOnlySpan<float>(a + (long)i * k, k);
            for (int j = c0; j < c1; j++)
            {
                float s = TensorPrimitives.Dot(ai, new ReadOnlySpan<float>(b + (long)j * k, k));
                if (acc) c[(long)i * n + j] += s; else c[(long)i * n + j] = s;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Dot4(float* a0, float* a1, float* a2, float* a3, float* b, int k,
        out float s0, out float s1, out float s2, out float s3)
    {
        int p = 0;
        if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            Vector256<float> v0 = default, v1 = default, v2 = default, v3 = default;
            for (; p + 8 <= k; p += 8)
            {
                var bv = Vector256.Load(b + p);
                v0 = Vector256.FusedMultiplyAdd(Vector256.Load(a0 + p), bv, v0);
                v1 = Vector256.FusedMultiplyAdd(Vector256.Load(a1 + p), bv, v1);
                v2 = Vector256.FusedMultiplyAdd(Vector256.Load(a2 + p), bv, v2);
                v3 = Vector256.FusedMultiplyAdd(Vector256.Load(a3 + p), bv, v3);
            }
            s0 = Vector256.Sum(v0); s1 = Vector256.Sum(v1); s2 = Vector256.Sum(v2); s3 = Vector256.Sum(v3);
        }
        else { s0 = s1 = s2 = s3 = 0; }
        for (; p < k; p++)
        {
            float bv = b[p];
            s0 += a0[p] * bv; s1 += a1[p] * bv; s2 += a2[p] * bv; s3 += a3[p] * bv;
        }
    }

    /// <summary>Bᵀ: (rows, cols) → (cols, rows).</summary>
    public static float[] Transpose(ReadOnlySpan<float> src, int rows, int cols)
    {
        var dst = new float[(long)rows * cols];
        Transpose(src, rows, cols, dst);
        return dst;
    }

    /// <summary>dst(cols, rows) = src(rows, cols)ᵀ.</summary>
    public static void Transpose(ReadOnlySpan<float> src, int rows, int cols, Span<float> dst)
    {
        const int TB = 32;
        for (int r0 = 0; r0 < rows; r0 += TB)
            for (int c0 = 0; c0 < cols; c0 += TB)
            {
                int r1 = Math.Min(rows, r0 + TB), c1 = Math.Min(cols, c0 + TB);
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++)
                        dst[c * rows + r] = src[r * cols + c];
            }
    }

    /// <summary>C(M, N) (+)= A(M, K) · B(K, N).</summary>
    public static void MatMulAB(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int m, int n, int k, Span<float> c, bool accumulate = false)
    {
        CheckShapes(a.Length, (long)m * k, b.Length, (long)k * n, c.Length, (long)m * n);
        if (!Gemm.Supported) { MatMulABt(a, Transpose(b[..(k * n)], k, n), m, n, k, c, accumulate); return; }
        unsafe
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                Gemm.MatMulAB(pa, pb, pc, m, n, k, accumulate, Parallelize(m, n, k));
        }
    }

    /// <summary>C(M, N) (+)= A(K, M)ᵀ · B(K, N): the weight-gradient layout dW = dYᵀ X.</summary>
    public static void MatMulAtB(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int m, int n, int k, Span<float> c, bool accumulate = false)
    {
        CheckShapes(a.Length, (long)k * m, b.Length, (long)k * n, c.Length, (long)m * n);
        if (!Gemm.Supported) { MatMulABt(Transpose(a[..(k * m)], k, m), Transpose(b[..(k * n)], k, n), m, n, k, c, accumulate); return; }
        unsafe
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                Gemm.MatMulAtB(pa, pb, pc, m, n, k, accumulate, Parallelize(m, n, k));
        }
    }

    private static bool Parallelize(int m, int n, int k) => (long)m * n * k >= ParallelThreshold && Environment.ProcessorCount > 1;

    private static void CheckShapes(long a, long needA, long b, long needB, long c, long needC)
    {
        if (a < needA || b < needB || c < needC)
            throw new ArgumentException($"matmul shapes: A holds {a} (needs {needA}), B {b} ({needB}), C {c} ({needC})");
    }

    /// <summary>rmsnorm of each row of x (rows, n) into y; returns 1/rms per row in <paramref name="invRms"/> if given.</summary>
    public static void RmsNormRows(ReadOnlySpan<float> x, int rows, int n, Span<float> y, Span<float> invRms = default)
    {
        for (int i = 0; i < rows; i++)
        {
            var xi = x.Slice(i * n, n);
            float s = (float)(1.0 / Math.Sqrt(SumOfSquares(xi) / n + RmsEps));
            TensorPrimitives.Multiply(xi, s, y.Slice(i * n, n));
            if (!invRms.IsEmpty) invRms[i] = s;
        }
    }

    // Vectorised float partial sums per 64 elements, added in double: a row of thousands of
    // channels then stays as close to the float64 golden values as a double loop would.
    private static double SumOfSquares(ReadOnlySpan<float> x)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i += 64)
            ss += TensorPrimitives.SumOfSquares(x.Slice(i, Math.Min(64, x.Length - i)));
        return ss;
    }

    /// <summary>Backward of y = x·s(x) per row: dx = s·(dy − y·mean(dy·y)).</summary>
    public static void RmsNormRowsBackward(ReadOnlySpan<float> y, ReadOnlySpan<float> invRms, ReadOnlySpan<float> dy, int rows, int n, Span<float> dx, bool accumulate)
    {
        for (int i = 0; i < rows; i++)
        {
            var yi = y.Slice(i * n, n);
            var dyi = dy.Slice(i * n, n);
            var dxi = dx.Slice(i * n, n);
            float mean = TensorPrimitives.Dot(dyi, yi) / n;
            float s = invRms[i];
            for (int j = 0; j < n; j++)
            {
                float g = s * (dyi[j] - yi[j] * mean);
                dxi[j] = accumulate ? dxi[j] + g : g;
            }
        }
    }

    /// <summary>The spec's hd/2 RoPE angular frequencies: hd/4 of (1/1024)^(j/(n-1)), then hd/4 zeros.</summary>
    public static double[] RopeFrequencies(int hd)
    {
        int n = hd / 4;
        var w = new double[hd / 2];
        for (int j = 0; j < n; j++) w[j] = n == 1 ? 1.0 : Math.Pow(1.0 / 1024.0, (double)j / (n - 1));
        return w;
    }

    /// <summary>
    /// cos/sin tables for positions pos0..pos0+count-1, (count, hd/2) each. Angles are formed in
    /// double: at t = 5000 a float32 angle is off by ~2e-4 rad, beyond the golden tolerance.
    /// </summary>
    public static (float[] Cos, float[] Sin) RopeTables(int hd, long pos0, int count)
    {
        var w = RopeFrequencies(hd);
        int half = hd / 2;
        var cos = new float[count * half];
        var sin = new float[count * half];
        for (int t = 0; t < count; t++)
            for (int j = 0; j < half; j++)
            {
                double th = (pos0 + t) * w[j];
                cos[t * half + j] = (float)Math.Cos(th);
                sin[t * half + j] = (float)Math.Sin(th);
            }
        return (cos, sin);
    }

    /// <summary>In place: x (hd) ← rope(x) with the given cos/sin rows (hd/2 each).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RopeInPlace(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = x.Length / 2;
        for (int j = 0; j < half; j++)
        {
            float a = x[j], b = x[half + j], c = cos[j], s = sin[j];
            x[j] = a * c + b * s;
            x[half + j] = -a * s + b * c;
        }
    }

    /// <summary>In place: the transpose rotation, i.e. the backward of <see cref="RopeInPlace"/>.</summary>
    public static void RopeBackwardInPlace(Span<float> d, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = d.Length / 2;
        for (int j = 0; j < half; j++)
        {
            float da = d[j], db = d[half + j], c = cos[j], s = sin[j];
            d[j] = da * c - db * s;
            d[half + j] = da * s + db * c;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sigmoid(float x) => 1f / (1f + MathF.Exp(-x));

    /// <summary>
    /// y = exp(x) for x &lt;= 0 (max-shifted logits), as σ(x) / (1 − σ(x)). TensorPrimitives.Exp
    /// measured 6-9 ns per float here (not vectorised on this runtime) against 0.6-0.9 ns for
    /// its Sigmoid; with x &lt;= 0, σ(x) &lt;= 1/2, so 1 − σ(x) never cancels and the result
    /// keeps float32 accuracy (a few ulp).
    /// </summary>
    public static void ExpOfNonPositive(ReadOnlySpan<float> x, Span<float> y, Span<float> scratch)
    {
        TensorPrimitives.Sigmoid(x, y);
        TensorPrimitives.Subtract(1f, y, scratch);
        TensorPrimitives.Divide(y, scratch, y);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Silu(float x) => x * Sigmoid(x);

    /// <summary>d silu(x)/dx = σ(x)·(1 + x·(1 − σ(x))).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SiluGrad(float x) { float s = Sigmoid(x); return s * (1 + x * (1 - s)); }

    /// <summary>out(rows, n) = a ⊙ silu(b) where each row of <paramref name="ab"/> is [a (n) | b (n)].</summary>
    public static void SwiGlu(ReadOnlySpan<float> ab, int rows, int n, Span<float> output, bool accumulate)
    {
        var tmp = new float[n];
        for (int i = 0; i < rows; i++)
        {
            var a = ab.Slice(i * 2 * n, n);
            var b = ab.Slice(i * 2 * n + n, n);
            var o = output.Slice(i * n, n);
            TensorPrimitives.Sigmoid(b, tmp);
            TensorPrimitives.Multiply(tmp, b, tmp);          // silu(b)
            if (accumulate) TensorPrimitives.FusedMultiplyAdd(a, tmp, o, o);
            else TensorPrimitives.Multiply(a, tmp, o);
        }
    }

    /// <summary>Backward of <see cref="SwiGlu"/>: d[a | b] from dout.</summary>
    public static void SwiGluBackward(ReadOnlySpan<float> ab, ReadOnlySpan<float> dout, int rows, int n, Span<float> dab)
    {
        for (int i = 0; i < rows; i++)
        {
            var r = ab.Slice(i * 2 * n, 2 * n);
            var d = dout.Slice(i * n, n);
            var g = dab.Slice(i * 2 * n, 2 * n);
            for (int j = 0; j < n; j++)
            {
                float a = r[j], b = r[n + j];
                g[j] = d[j] * Silu(b);
                g[n + j] = d[j] * a * SiluGrad(b);
            }
        }
    }

    /// <summary>
    /// Mean cross-entropy over rows whose target is not -1, and optionally its gradient
    /// (softmax − onehot)/count into <paramref name="dLogits"/> (ignored rows get zeros).
    /// An input with no counted row has loss 0 and a zero gradient.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A target outside [-1, V).</exception>
    public static double CrossEntropy(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int v, Span<float> dLogits = default)
    {
        int rows = targets.Length, count = 0;
        if (logits.Length < (long)rows * v) throw new ArgumentException($"logits hold {logits.Length} floats, expected {rows}x{v}", nameof(logits));
        foreach (var t in targets)
        {
            if (t < -1 || t >= v) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} outside [-1, {v})");
            if (t != -1) count++;
        }
        var perRow = new double[rows];
        bool grad = !dLogits.IsEmpty;
        unsafe
        {
            fixed (float* pl = logits) fixed (int* pt = targets) fixed (float* pd = dLogits)
            {
                nint il = (nint)pl, it = (nint)pt, id = (nint)pd;
                int cnt = count;
                Parallel.For(0, rows, () => new float[2 * v], (i, _, buf) =>
                {
                    var z = new ReadOnlySpan<float>((float*)il + (long)i * v, v);
                    int t = ((int*)it)[i];
                    var d = grad ? new Span<float>((float*)id + (long)i * v, v) : default;
                    if (t == -1) { if (grad) d.Clear(); return buf; }
                    var tmp = buf.AsSpan(0, v);
                    // Max-shifted exponentials, summed in double blocks, as a log-sum-exp.
                    float max = TensorPrimitives.Max(z);
                    TensorPrimitives.Subtract(z, max, tmp);
                    ExpOfNonPositive(tmp, tmp, buf.AsSpan(v, v));
                    double sum = 0;
                    for (int j = 0; j < v; j += 256) sum += TensorPrimitives.Sum(tmp.Slice(j, Math.Min(256, v - j)));
                    perRow[i] = max + Math.Log(sum) - z[t];
                    if (grad)
                    {
                        TensorPrimitives.Multiply(tmp, (float)(1.0 / (sum * cnt)), d);
                        d[t] -= 1f / cnt;
                    }
                    return buf;
                }, _ => { });
            }
        }
        if (count == 0) return 0;
        double total = 0;
        foreach (var r in perRow) total += r;
        return total / count;
    }
}
