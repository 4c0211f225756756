// The one kernel conformance suite. Each backend subclass supplies the kernels under test and
// the oracle it is held to: CPU twins against naive double-precision loops, Vulkan shaders
// against the CPU twins. Inputs are fresh random data each run (seed printed on failure, or
// fixed with PALM_TEST_SEED), shapes are awkward, and outputs arrive poisoned with NaN so
// that elements a kernel forgets to write fail.
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;
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
    /// <summary>y = x Wᵀ with W (N, K) quantized (q8 or q4), dequantized by the kernel.</summary>
    protected abstract void LinearQuantized(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2, float[] y);
    /// <summary>y = x W^T with W held in half precision (the f16 weight variant).</summary>
    protected abstract void LinearF16(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y);
    /// <summary>y = x W^T with f16 products and f32 sums (linear_half); x f32 rounded to half by the kernel, or stored as f16 (xHalf).</summary>
    protected abstract void LinearHalf(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y);
    /// <summary>y = x W^T with f16 operands on the matrix units and f32 accumulation (linear_coopmat); x as in <see cref="LinearHalf"/>.</summary>
    protected abstract void LinearCoopMat(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y);
    protected abstract void RmsNorm(float[] x, int rows, int cols, float[] y);
    protected abstract void Embedding(int[] idx, float[] table, int V, int C, float[] y);
    /// <summary>y = E[idx] with the table E (V, C) quantized (q8 or q4), rows decoded by the kernel.</summary>
    protected abstract void EmbeddingQuantized(int[] idx, QuantizedTensor table, int V, int C, float[] y);
    /// <summary>qkv (B*T, 3D), cos/sin (T, hd/2) or per row (B*T, hd/2); s, z (capacity, D) in/out with sequence b
    /// in row slots[b], or slots null for a fresh scan that leaves them alone (z null for sum mixing); y (B*T, D).</summary>
    protected abstract void Aod(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int[]? slots, float[] s, float[]? z, float[] y);
    /// <summary>The chunked form of <see cref="Aod"/> with chunks of L tokens (forced, whatever T is); arguments as there.</summary>
    protected abstract void AodChunked(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L, int[]? slots, float[] s, float[]? z, float[] y);
    protected abstract void SwiGlu(float[] ab, int rows, int n, bool residual, float[] output);
    protected abstract void Add(float[] y, float[] x);
    /// <summary>y = alpha x + beta y in place (beta = 0: y not read).</summary>
    protected abstract void Axpby(float alpha, float[] x, float beta, float[] y);
    protected abstract void CrossEntropy(float[] logits, int[] targets, int V, float[] loss);
    protected abstract void Argmax(float[] logits, int rows, int V, int[] idx);

    // The oracle for this backend.
    protected abstract double[] LinearExpected(float[] x, float[] w, int M, int N, int K, bool relu2);
    protected abstract double[] LinearQuantizedExpected(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2);
    protected abstract double[] LinearF16Expected(float[] x, float[] w, int M, int N, int K, bool relu2);
    protected abstract double[] LinearHalfExpected(float[] x, float[] w, int M, int N, int K, bool relu2);
    protected abstract double[] LinearCoopMatExpected(float[] x, float[] w, int M, int N, int K, bool relu2);
    protected abstract double[] RmsNormExpected(float[] x, int rows, int cols);
    protected abstract double[] EmbeddingExpected(int[] idx, float[] table, int V, int C);
    protected abstract double[] EmbeddingQuantizedExpected(int[] idx, QuantizedTensor table, int V, int C);
    /// <summary>y (B*T, D) and the state pools after the tokens (unchanged inputs when slots is null).</summary>
    protected abstract (double[] Y, double[] S, double[]? Z) AodExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H,
        int[]? slots, float[] s, float[]? z);
    /// <summary>The oracle of <see cref="AodChunked"/>: y and the state pools as <see cref="AodExpected"/>.</summary>
    protected abstract (double[] Y, double[] S, double[]? Z) AodChunkedExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L,
        int[]? slots, float[] s, float[]? z);
    protected abstract double[] SwiGluExpected(float[] ab, int rows, int n, bool residual, float[] output);
    protected abstract double[] CrossEntropyExpected(float[] logits, int[] targets, int V);
    protected abstract int[] ArgmaxExpected(float[] logits, int rows, int V);

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
    [InlineData(1, 1, 1, false)]
    [InlineData(1, 7, 13, true)]        // decoding row, odd K: halves of one row straddle words
    [InlineData(1, 257, 64, false)]     // N past one few-rows tile
    [InlineData(65, 129, 33, true)]     // past the large tile in M and N, K not a multiple of BK
    [InlineData(3, 5, 1, false)]        // K = 1
    public void LinearF16_matches_reference(int M, int N, int K, bool relu2)
    {
        // Weights beyond half's normal range would test the rounding, not the kernel: [-1, 1].
        var w = Uniform(N * K);
        var x = Uniform(M * K);
        var y = Poisoned(M * N);
        LinearF16(x, w, M, N, K, relu2, y);
        var expected = LinearF16Expected(x, w, M, N, K, relu2);
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol, $"linear f16 M={M} N={N} K={K} relu2={relu2}", Seed, N);
    }

    [ConformanceTheory]
    [RequiresGpuFeature(GpuFeature.HalfArithmetic)]
    [InlineData(1, 1, 1, false, false)]
    [InlineData(1, 7, 13, true, false)]       // decoding row (few-rows tile), primes
    [InlineData(1, 257, 64, false, true)]     // N past one few-rows tile, x stored as f16
    [InlineData(3, 5, 1, false, true)]        // K = 1
    [InlineData(65, 129, 33, true, false)]    // past the large tile in M and N, K not a multiple of BK
    [InlineData(33, 97, 131, false, true)]
    public void LinearHalf_matches_reference(int M, int N, int K, bool relu2, bool xHalf)
    {
        // [-1, 1]: products stay clear of half's overflow, and rarely reach its subnormals.
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        var y = Poisoned(M * N);
        LinearHalf(x, w, M, N, K, relu2, xHalf, y);
        var expected = LinearHalfExpected(x, w, M, N, K, relu2);
        // The twin rounds inputs and products to half as the kernel does, so only the f32 sums
        // can differ (their order): the fp32 tolerance, not an fp16 one.
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol, $"linear half M={M} N={N} K={K} relu2={relu2} xHalf={xHalf}", Seed, N);
    }

    [ConformanceTheory]
    [RequiresGpuFeature(GpuFeature.CooperativeMatrix)]
    [InlineData(1, 1, 1, false, false)]
    [InlineData(33, 7, 13, true, false)]      // primes, K below one fragment
    [InlineData(64, 64, 64, false, true)]     // whole fragments, K a multiple of 8: vector staging, x stored as f16
    [InlineData(130, 257, 40, true, false)]   // one past a 128-row block; interior blocks staged as vectors
    [InlineData(97, 131, 67, false, false)]
    public void LinearCoopMat_matches_reference(int M, int N, int K, bool relu2, bool xHalf)
    {
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        var y = Poisoned(M * N);
        LinearCoopMat(x, w, M, N, K, relu2, xHalf, y);
        var expected = LinearCoopMatExpected(x, w, M, N, K, relu2);
        Tolerance.AssertClose(y, expected, Tolerance.ForMatrixUnits(K), Tolerance.MatrixUnitsRtol, $"linear coopmat M={M} N={N} K={K} relu2={relu2} xHalf={xHalf}", Seed, N);
    }

    [ConformanceTheory]
    [InlineData("q8", 1, 1, 1, 1, false)]
    [InlineData("q8", 1, 7, 13, 13, false)]      // decoding row, primes, per-row scales
    [InlineData("q4", 1, 7, 13, 13, true)]       // odd K: nibbles of one row straddle two bytes
    [InlineData("q4", 3, 5, 1, 1, false)]        // K = 1, a scale per element
    [InlineData("q8", 1, 257, 64, 16, true)]     // N past one few-rows tile, 4 groups per row
    [InlineData("q4", 1, 257, 64, 32, false)]
    [InlineData("q8", 17, 31, 67, 67, true)]
    [InlineData("q4", 64, 64, 16, 16, false)]    // exactly one large tile
    [InlineData("q4", 65, 129, 33, 11, true)]    // past the tile in M and N, K not a multiple of BK
    [InlineData("q8", 33, 97, 130, 10, false)]   // groups not aligned to BK
    public void LinearQuantized_matches_reference(string dtype, int M, int N, int K, int group, bool relu2)
    {
        Assert.True(TensorDTypes.TryParse(dtype, out var storage));
        var w = QuantizedTensor.Quantize(Uniform(N * K), storage, group);
        var x = Uniform(M * K);
        var y = Poisoned(M * N);
        LinearQuantized(x, w, M, N, K, relu2, y);
        var expected = LinearQuantizedExpected(x, w, M, N, K, relu2);
        // Dequantized weights lie in [-1, 1] like the f32 case's: the same fp32 reduction tolerance.
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol, $"linear {dtype} M={M} N={N} K={K} G={group} relu2={relu2}", Seed, N);
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

    [ConformanceTheory]
    [InlineData("q8", 1, 1, 1, 1)]
    [InlineData("q4", 1, 1, 1, 1)]
    [InlineData("q8", 9, 5, 7, 7)]           // per-row scales, primes
    [InlineData("q4", 9, 5, 7, 7)]           // odd C: rows start on either nibble of a byte
    [InlineData("q4", 13, 11, 129, 43)]      // row wider than a workgroup, 3 groups of an odd size
    [InlineData("q8", 200, 3, 32, 8)]        // many repeated ids
    [InlineData("q4", 31, 300, 8, 8)]        // the tiny model's rank-8 table
    public void EmbeddingQuantized_matches_reference(string dtype, int T, int V, int C, int group)
    {
        Assert.True(TensorDTypes.TryParse(dtype, out var storage));
        var idx = Enumerable.Range(0, T).Select(_ => Rng.Next(V)).ToArray();
        var table = QuantizedTensor.Quantize(Uniform(V * C), storage, group);
        var y = Poisoned(T * C);
        EmbeddingQuantized(idx, table, V, C, y);
        var expected = EmbeddingQuantizedExpected(idx, table, V, C);
        // One product level * scale per element, correctly rounded in both: exact equality.
        Tolerance.AssertClose(y, expected, 0, 0, $"embedding {dtype} T={T} V={V} C={C} G={group}", Seed, C);
    }

    [ConformanceTheory]
    [InlineData(1, 1, 1, 4, false, false, 0, false)]
    [InlineData(2, 1, 3, 8, true, true, 7, false)]          // a decoding step: B sequences, one token each
    [InlineData(5, 1, 3, 8, true, true, 7, true)]           // a decoding step at five different positions
    [InlineData(3, 1, 2, 12, false, true, 4990, true)]      // positions near 5000, one per row
    [InlineData(1, 37, 2, 12, false, true, 0, false)]       // hd not a power of two, T prime
    [InlineData(2, 6, 2, 8, true, true, 11, true)]          // per-row tables with T > 1
    [InlineData(3, 130, 1, 4, true, false, 4990, false)]    // T past a workgroup, positions near 5000
    [InlineData(2, 5, 5, 16, true, true, 3, false)]         // H prime: 5 heads in one workgroup
    [InlineData(1, 3, 3, 64, false, true, 0, false)]        // one head per workgroup, 3 workgroups
    [InlineData(2, 9, 4, 48, false, false, 1, true)]        // 2 heads of 48 per workgroup
    public void Aod_matches_reference(int B, int T, int H, int hd, bool mean, bool hasState, int pos0, bool perRow)
    {
        var D = H * hd;
        var qkv = Uniform(B * T * 3 * D, 2.0);
        // Per row: sequence b starts at pos0 + 97 b, so every row needs its own angles.
        var ropeRows = perRow ? B * T : T;
        var cos = new float[ropeRows * hd / 2];
        var sin = new float[ropeRows * hd / 2];
        for (var b = 0; b < (perRow ? B : 1); b++)
            Palm.Gpu.Kernels.Aod.RopeTables(hd, pos0 + 97 * b, T, cos.AsSpan(b * T * hd / 2), sin.AsSpan(b * T * hd / 2));
        // A pool with more rows than sequences, the sequences in shuffled rows: rows outside
        // the slots must come back unchanged, and a sequence must use its own row.
        var capacity = B + 3;
        var slots = hasState ? Enumerable.Range(0, capacity).OrderBy(_ => Rng.Next()).Take(B).ToArray() : null;
        var s = Uniform(capacity * D, 3.0);
        var z = mean ? Array.ConvertAll(Uniform(capacity * D), v => 2f + v) : null;   // sums of sigmoids: positive
        var (ys, ss, zs) = AodExpected(qkv, cos, sin, perRow, B, T, D, H, slots, (float[])s.Clone(), (float[]?)z?.Clone());
        var y = Poisoned(B * T * D);
        Aod(qkv, cos, sin, perRow, B, T, D, H, slots, s, z, y);
        // The scan adds T terms: errors grow like sqrt(T) relative to the running sums' size.
        var what = $"aod B={B} T={T} H={H} hd={hd} mean={mean} state={hasState} pos0={pos0} perRow={perRow} slots=[{string.Join(",", slots ?? [])}]";
        Tolerance.AssertClose(y, ys, Tolerance.ForReduction(T + hd) * Math.Max(1, MaxAbs(ys)), Tolerance.F32Rtol, what + " y", Seed, D);
        Tolerance.AssertClose(s, ss, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(ss)), Tolerance.F32Rtol, what + " S", Seed, D);
        if (mean) Tolerance.AssertClose(z!, zs!, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(zs!)), Tolerance.F32Rtol, what + " Z", Seed, D);
    }

    [ConformanceTheory]
    [InlineData(2, 37, 2, 12, 16, false, true, 0, true)]        // T not a multiple of L, per-row tables, shuffled slots
    [InlineData(1, 5, 3, 8, 16, true, true, 7, false)]          // T < L: one short chunk
    [InlineData(2, 16, 2, 8, 16, false, false, 3, false)]       // T = exactly one chunk, fresh scan
    [InlineData(3, 50, 2, 16, 16, true, true, 11, true)]        // B > 1, mean, per-row tables, shuffled slots
    [InlineData(2, 40, 1, 4, 8, true, false, 0, true)]          // fresh mean scan, 5 whole chunks
    [InlineData(2, 23, 4, 48, 4, false, true, 1, true)]         // 2 heads of 48 per workgroup, tiny chunks
    [InlineData(1, 1000, 2, 16, 16, true, true, 4990, false)]   // long T, positions near 5000, mean
    [InlineData(2, 1000, 4, 8, 32, false, true, 4000, true)]    // long T, sum, per row near 5000
    public void Aod_chunked_matches_reference(int B, int T, int H, int hd, int L, bool mean, bool hasState, int pos0, bool perRow)
    {
        var D = H * hd;
        var qkv = Uniform(B * T * 3 * D, 2.0);
        var ropeRows = perRow ? B * T : T;
        var cos = new float[ropeRows * hd / 2];
        var sin = new float[ropeRows * hd / 2];
        for (var b = 0; b < (perRow ? B : 1); b++)
            Palm.Gpu.Kernels.Aod.RopeTables(hd, pos0 + 97 * b, T, cos.AsSpan(b * T * hd / 2), sin.AsSpan(b * T * hd / 2));
        var capacity = B + 3;
        var slots = hasState ? Enumerable.Range(0, capacity).OrderBy(_ => Rng.Next()).Take(B).ToArray() : null;
        var s = Uniform(capacity * D, 3.0);
        var z = mean ? Array.ConvertAll(Uniform(capacity * D), v => 2f + v) : null;
        var (ys, ss, zs) = AodChunkedExpected(qkv, cos, sin, perRow, B, T, D, H, L, slots, (float[])s.Clone(), (float[]?)z?.Clone());
        var y = Poisoned(B * T * D);
        AodChunked(qkv, cos, sin, perRow, B, T, D, H, L, slots, s, z, y);
        // The same sums as the sequential scan, regrouped as (state + earlier chunks) + in-chunk
        // terms: still T terms, so the sequential form's sqrt(T) bound applies unchanged.
        var what = $"aod chunked B={B} T={T} H={H} hd={hd} L={L} mean={mean} state={hasState} pos0={pos0} perRow={perRow} slots=[{string.Join(",", slots ?? [])}]";
        Tolerance.AssertClose(y, ys, Tolerance.ForReduction(T + hd) * Math.Max(1, MaxAbs(ys)), Tolerance.F32Rtol, what + " y", Seed, D);
        Tolerance.AssertClose(s, ss, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(ss)), Tolerance.F32Rtol, what + " S", Seed, D);
        if (mean) Tolerance.AssertClose(z!, zs!, Tolerance.ForReduction(T) * Math.Max(1, MaxAbs(zs!)), Tolerance.F32Rtol, what + " Z", Seed, D);
    }

    [ConformanceTheory]
    [InlineData(1, 1, false)]
    [InlineData(3, 7, true)]
    [InlineData(5, 300, false)]        // a row wider than a workgroup
    [InlineData(257, 3, true)]
    [InlineData(1, 1000, true)]
    public void SwiGlu_matches_reference(int rows, int n, bool residual)
    {
        var ab = Uniform(rows * 2 * n, 4.0);
        // The residual form adds into x, so x holds data; the plain form starts poisoned.
        var output = residual ? Uniform(rows * n) : Poisoned(rows * n);
        var expected = SwiGluExpected(ab, rows, n, residual, output);
        SwiGlu(ab, rows, n, residual, output);
        Tolerance.AssertClose(output, expected, Tolerance.F32Atol, Tolerance.F32Rtol, $"swiglu rows={rows} n={n} residual={residual}", Seed, n);
    }

    [ConformanceTheory]
    [InlineData(1)]
    [InlineData(257)]
    [InlineData(5003)]
    public void Add_matches_reference(int n)
    {
        var y = Uniform(n);
        var x = Uniform(n);
        var expected = new double[n];
        for (var i = 0; i < n; i++) expected[i] = (double)x[i] + y[i];
        Add(y, x);
        Tolerance.AssertClose(x, expected, Tolerance.F32Atol, Tolerance.F32Rtol, $"add n={n}", Seed, 0);
    }

    [ConformanceTheory]
    [InlineData(1, 0.5f, 1f)]
    [InlineData(257, 0.25f, 1f)]       // past one workgroup
    [InlineData(1000, 1f, 0.125f)]     // the last micro-batch's form: g = acc + s g
    [InlineData(300, 0.5f, 0f)]        // beta = 0 must not read y: y starts as NaN
    public void Axpby_matches_reference(int n, float alpha, float beta)
    {
        var x = Uniform(n);
        var y = beta == 0f ? Poisoned(n) : Uniform(n);
        var expected = new double[n];
        for (var i = 0; i < n; i++) expected[i] = alpha * (double)x[i] + (beta == 0f ? 0 : beta * (double)y[i]);
        Axpby(alpha, x, beta, y);
        Tolerance.AssertClose(y, expected, Tolerance.F32Atol, Tolerance.F32Rtol, $"axpby n={n} alpha={alpha} beta={beta}", Seed, 0);
    }

    [ConformanceTheory]
    [InlineData(1, 1, 1.0, 0)]
    [InlineData(3, 7, 1.0, 1)]
    [InlineData(5, 1000, 3.0, 2)]      // a row wider than a workgroup, ignored rows
    [InlineData(2, 97, 30.0, 0)]       // large logits: the max must be subtracted
    [InlineData(65537, 2, 1.0, 100)]   // more rows than maxComputeWorkGroupCount[0] may allow
    public void CrossEntropy_matches_reference(int rows, int V, double scale, int ignored)
    {
        var logits = Uniform(rows * V, scale);
        var targets = Enumerable.Range(0, rows).Select(_ => Rng.Next(V)).ToArray();
        for (var i = 0; i < ignored; i++) targets[Rng.Next(rows)] = -1;
        var loss = Poisoned(rows);
        CrossEntropy(logits, targets, V, loss);
        var expected = CrossEntropyExpected(logits, targets, V);
        Tolerance.AssertClose(loss, expected, Tolerance.ForReduction(V) * Math.Max(1, scale), Tolerance.F32Rtol, $"cross_entropy rows={rows} V={V} scale={scale}", Seed, 0);
    }

    [ConformanceTheory]
    [InlineData(1, 1)]
    [InlineData(4, 7)]
    [InlineData(3, 1000)]
    [InlineData(70000, 3)]
    public void Argmax_matches_reference(int rows, int V)
    {
        // Few distinct values, so ties are common: the lowest index must win.
        var logits = Enumerable.Range(0, rows * V).Select(_ => (float)Rng.Next(4)).ToArray();
        var idx = new int[rows];
        Array.Fill(idx, -7);
        Argmax(logits, rows, V, idx);
        var expected = ArgmaxExpected(logits, rows, V);
        for (var r = 0; r < rows; r++)
            if (idx[r] != expected[r])
                Assert.Fail($"argmax rows={rows} V={V}: row {r} got {idx[r]}, expected {expected[r]} (seed {Seed})");
    }

    protected static double MaxAbs(double[] a) => a.Length == 0 ? 0 : a.Max(Math.Abs);

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
