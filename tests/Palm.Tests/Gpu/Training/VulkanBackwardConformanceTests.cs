// The backward and optimizer shaders against their CPU reference twins (which
// BackwardFiniteDifferenceTests checks by finite differences), on lavapipe in CI, validation
// layer on. Fresh random inputs (seed printed on failure, PALM_TEST_SEED replays), awkward
// shapes, outputs poisoned with NaN before the kernel runs. Tolerances: fp32 reductions of K
// terms get atol 1e-5 sqrt(K) scaled by the data's size, rtol 1e-4 (Tolerance.cs).
using Palm.Gpu.Vulkan;
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;
using Layout = Palm.Gpu.Kernels.LinearBackward.Layout;

namespace Palm.Tests.Gpu.Training;

[Collection("Vulkan")]
public sealed class VulkanBackwardConformanceTests : IDisposable
{
    // The fp16 Newton-Schulz iterations on the device against their twin from the same X: fp32
    // rounding of sums that are ordered alike (bit-identical on lavapipe).
    const double MuonHalfTwinAtol = 1e-5;

    readonly VulkanFixture fixture;
    readonly ITestOutputHelper output;
    readonly int seed;
    readonly Random rng;

    public VulkanBackwardConformanceTests(VulkanFixture fixture, ITestOutputHelper output)
    {
        this.fixture = fixture;
        this.output = output;
        fixture.Context?.Messenger?.Clear();
        seed = int.TryParse(Environment.GetEnvironmentVariable("PALM_TEST_SEED"), out var s) ? s : Random.Shared.Next();
        rng = new Random(seed);
        output.WriteLine($"seed {seed}");
    }

    VulkanContext Ctx => fixture.Require();

    public void Dispose()
    {
        if (fixture.Context is { } ctx) Validation.AssertClean(ctx, nameof(VulkanBackwardConformanceTests));
    }

    float[] Uniform(int n, double scale = 1.0) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();

    static float[] Poisoned(int n) => Enumerable.Repeat(float.NaN, n).ToArray();

    GpuTensor Tensor(float[] data, params int[] shape) => Ctx.CreateTensor(data, GpuDType.F32, shape);

    GpuTensor Ints(int[] data)
    {
        var t = Ctx.CreateTensor(GpuDType.I32, data.Length);
        t.Upload(data);
        return t;
    }

    void Submit(Action<CommandRecorder> record)
    {
        using var rec = new CommandRecorder(Ctx);
        record(rec);
        rec.Submit();
    }

    void Close(float[] got, float[] expected, double atol, string what, int cols = 0) =>
        Tolerance.AssertClose(got, Array.ConvertAll(expected, v => (double)v), atol, Tolerance.F32Rtol, what, seed, cols);

    static double MaxAbs(float[] a) => a.Length == 0 ? 0 : a.Max(v => Math.Abs((double)v));

    [VulkanTheory]
    [InlineData(1, 1, 1, false, false)]
    [InlineData(3, 5, 1, true, false)]        // K = 1 (dx gets relu2)
    [InlineData(17, 31, 67, false, true)]
    [InlineData(65, 129, 33, true, false)]    // one past the large tile in M and N
    [InlineData(64, 64, 16, false, true)]
    [InlineData(2, 97, 130, false, false)]    // few rows: the flat tile
    public void Linear_dx_and_dw_match_reference(int M, int N, int K, bool relu2, bool accumulate)
    {
        var dy = Uniform(M * N);
        var w = Uniform(N * K);
        var x = Uniform(M * K);
        var u = relu2 ? Uniform(M * K) : null;
        var dx0 = accumulate ? Uniform(M * K) : Poisoned(M * K);
        var dw0 = accumulate ? Uniform(N * K) : Poisoned(N * K);
        var dxRef = (float[])dx0.Clone();
        var dwRef = (float[])dw0.Clone();
        Kernels.LinearBackward.DxReference(dy, w, M, N, K, u, accumulate && !relu2, dxRef);
        Kernels.LinearBackward.DwReference(dy, x, M, N, K, accumulate, dwRef);

        using var tdy = Tensor(dy, M, N);
        using var tw = Tensor(w, N, K);
        using var tx = Tensor(x, M, K);
        using var tu = u is null ? null : Tensor(u, M, K);
        using var tdx = Tensor(dx0, M, K);
        using var tdw = Tensor(dw0, N, K);
        Submit(rec =>
        {
            Kernels.LinearBackward.RecordDx(rec, Ctx, tdy, tw, tu, accumulate && !relu2, tdx);
            Kernels.LinearBackward.RecordDw(rec, Ctx, tdy, tx, accumulate, tdw);
        });
        var what = $"M={M} N={N} K={K} relu2={relu2} acc={accumulate}";
        Close(tdx.ToArray(), dxRef, Tolerance.ForReduction(N) * Math.Max(1, MaxAbs(dxRef)), "linear dx " + what, K);
        Close(tdw.ToArray(), dwRef, Tolerance.ForReduction(M) * Math.Max(1, MaxAbs(dwRef)), "linear dw " + what, K);
    }

    [VulkanTheory]
    [InlineData(5, 3, 7, true, false, 0.5f, 0f)]     // A^T from a row-major (K, M)
    [InlineData(9, 9, 33, false, true, 2.0315f, -4.775f)]   // B^T (X X^T) with an epilogue
    [InlineData(70, 5, 3, true, true, 1f, 3.4445f)]
    public void Strided_gemm_matches_reference(int M, int N, int K, bool aT, bool bT, float alpha, float beta)
    {
        var a = Uniform(M * K);
        var b = Uniform(K * N);
        var e = Uniform(M * N);
        var la = aT ? Layout.Transposed(M) : Layout.RowMajor(K);
        var lb = bT ? Layout.Transposed(K) : Layout.RowMajor(N);
        var expected = new float[M * N];
        Kernels.LinearBackward.GemmReference(a, la, b, lb, M, N, K, alpha, beta, e, default, expected);
        using var ta = Tensor(a, a.Length);
        using var tb = Tensor(b, b.Length);
        using var te = Tensor(e, M, N);
        using var tc = Tensor(Poisoned(M * N), M, N);
        Submit(rec => Kernels.LinearBackward.RecordGemm(rec, Ctx, ta, la, tb, lb, M, N, K, alpha, beta, te, null, tc));
        Close(tc.ToArray(), expected, Tolerance.ForReduction(K) * Math.Max(1, MaxAbs(expected)), $"gemm M={M} N={N} K={K} aT={aT} bT={bT}", N);
    }

    [VulkanTheory(GpuFeature.HalfArithmetic)]
    [InlineData(1, 1, 1, false, false, false, 1f, 0f, 1f, 1f)]
    [InlineData(5, 3, 7, true, false, false, 0.5f, 0f, 128f, 128f)]       // A^T from a row-major (K, M)
    [InlineData(9, 9, 33, false, true, false, 1f, 0f, 128f, 128f)]        // X X^T, Newton-Schulz's first GEMM
    [InlineData(33, 33, 33, false, false, false, 2.0315f, -4.775f, 128f, 128f)]   // c A.A + b A
    [InlineData(70, 5, 3, true, true, true, 1f, 3.4445f, 64f, 128f)]      // accumulate in place (e = c)
    [InlineData(65, 129, 17, false, false, false, 1f, 3.4445f, 64f, 128f)]     // one past the large tile in M and N
    // K = 8191: 512 tile steps per invocation, enough loop iterations to notice lavapipe's
    // silent end of rolled loops after 65,535 in total.
    [InlineData(3, 5, 8191, false, true, false, 1f, 0f, 128f, 128f)]
    public void Strided_gemm_half_matches_its_twin(int M, int N, int K, bool aT, bool bT, bool inPlace, float alpha, float beta, float sa, float sb)
    {
        // Newton-Schulz-like magnitudes (~1/sqrt(K)): the scales keep the products out of f16's subnormals.
        var a = Uniform(M * K, 1 / Math.Sqrt(K));
        var b = Uniform(K * N, 1 / Math.Sqrt(K));
        var e = Uniform(M * N);
        var la = aT ? Layout.Transposed(M) : Layout.RowMajor(K);
        var lb = bT ? Layout.Transposed(K) : Layout.RowMajor(N);
        var expected = new float[M * N];
        Kernels.LinearBackward.GemmHalfReference(a, la, b, lb, M, N, K, alpha, beta, e, sa, sb, expected);
        using var ta = Tensor(a, a.Length);
        using var tb = Tensor(b, b.Length);
        using var te = Tensor(e, M, N);
        using var tc = inPlace ? null : Tensor(Poisoned(M * N), M, N);
        var c = tc ?? te;
        Submit(rec => Kernels.LinearBackward.RecordGemmHalf(rec, Ctx, ta, la, tb, lb, M, N, K, alpha, beta, beta != 0 ? te : null, sa, sb, c));
        // Same roundings and the same k order as the twin: only f32 rounding of the sums can differ.
        Close(c.ToArray(), expected, Tolerance.ForReduction(K) * Math.Max(1, MaxAbs(expected)),
            $"gemm half M={M} N={N} K={K} aT={aT} bT={bT} inPlace={inPlace}", N);
    }

    /// <summary>The orthogonalised update of U = grad (momentum 0, beta 0, clip factor 1) on the device, back in (rows, cols).</summary>
    float[] DeviceNewtonSchulz(float[] u, int rows, int cols, bool half)
    {
        using var tg = Tensor(u, rows, cols);
        using var tm = Tensor(new float[rows * cols], rows, cols);
        using var tc = Tensor([0f, 1f], 2);
        using var scratch = new Kernels.Muon.Scratch(Ctx, rows, cols);
        scratch.X.Upload(Poisoned(rows * cols));
        scratch.Xn.Upload(Poisoned(rows * cols));
        scratch.A.Upload(Poisoned(scratch.P * scratch.P));
        scratch.Bm.Upload(Poisoned(scratch.P * scratch.P));
        GpuTensor? x = null;
        Submit(rec => x = Kernels.Muon.RecordOrthogonalize(rec, Ctx, tg, tm, tc, 0f, scratch, half));
        var xs = x!.ToArray();
        var ns = new float[rows * cols];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) ns[r * cols + c] = scratch.Tall ? xs[c * rows + r] : xs[r * cols + c];
        return ns;
    }

    [VulkanTheory(GpuFeature.HalfArithmetic)]
    [InlineData(1, 1)]
    [InlineData(12, 7)]      // tall: orthogonalised as the transpose
    [InlineData(7, 12)]      // wide
    [InlineData(64, 64)]     // exactly one large tile
    [InlineData(97, 33)]     // past one GEMM tile, not a multiple of it
    [InlineData(6, 3001)]    // long rows: X X^T sums 3001 terms
    public void Muon_fp16_newton_schulz_matches_its_twin_and_fp32(int rows, int cols)
    {
        var what = $"muon fp16 newton-schulz {rows}x{cols}";
        // The iterations alone from one normalised X (p, q), against the twin: same roundings and
        // sum order, so an fp32 tolerance. Both need the same X and the same epilogue rounding:
        // an f32 value one ulp off now and then rounds to the other neighbouring half, a 2^-11
        // step that five iterations amplify (up to ~6e-4 measured). Hence the twin starts after
        // the normalisation (whose sums the device orders differently), and runs with a fused
        // and an unfused epilogue fma (Vulkan allows either): the device must match one of them.
        int p = Math.Min(rows, cols), q = Math.Max(rows, cols);
        var x0 = Uniform(p * q, 1 / Math.Sqrt((double)p * q));
        using (var scratch = new Kernels.Muon.Scratch(Ctx, rows, cols))
        {
            scratch.X.Upload(x0);
            scratch.Xn.Upload(Poisoned(p * q));
            scratch.A.Upload(Poisoned(p * p));
            scratch.Bm.Upload(Poisoned(p * p));
            GpuTensor? x = null;
            Submit(rec => x = Kernels.Muon.RecordNewtonSchulz(rec, Ctx, scratch, half: true));
            var got = x!.ToArray();
            var unfused = Kernels.Muon.NewtonSchulzIterationsReference((float[])x0.Clone(), p, q, half: true);
            var fused = Kernels.Muon.NewtonSchulzIterationsReference((float[])x0.Clone(), p, q, half: true, fusedEpilogue: true);
            var (du, df) = (Numerics.MaxAbsDiff(got, unfused), Numerics.MaxAbsDiff(got, fused));
            output.WriteLine($"{what}: iterations, max |device - twin| {du:E2} (unfused epilogue), {df:E2} (fused)");
            Close(got, du <= df ? unfused : fused, MuonHalfTwinAtol, what + $", iterations vs twin ({(du <= df ? "unfused" : "fused")} epilogue)", q);
        }

        // The whole orthogonalisation from U on the device against the fp32 reference.
        var u = Uniform(rows * cols);
        MuonHalfReferenceTests.AssertMuonHalfClose(DeviceNewtonSchulz(u, rows, cols, half: true), Kernels.Muon.NewtonSchulzReference(u, rows, cols),
            Tolerance.MuonHalfRelFro, what + " vs fp32", seed, cols, output);
    }

    [VulkanTheory]
    [InlineData(1, 1, false, 1.0)]
    [InlineData(3, 64, true, 1.0)]
    [InlineData(5, 257, false, 1.0)]        // wider than a workgroup
    [InlineData(4, 33, true, 1e-4)]         // mean(x^2) near eps
    [InlineData(65537, 3, false, 1.0)]      // more rows than maxComputeWorkGroupCount[0] may allow
    public void RmsNorm_backward_matches_reference(int rows, int cols, bool accumulate, double scale)
    {
        var x = Uniform(rows * cols, scale);
        var dy = Uniform(rows * cols);
        var dx0 = accumulate ? Uniform(rows * cols) : Poisoned(rows * cols);
        var expected = (float[])dx0.Clone();
        Kernels.RmsNormBackward.Reference(x, dy, rows, cols, accumulate, expected);
        using var tx = Tensor(x, rows, cols);
        using var tdy = Tensor(dy, rows, cols);
        using var tdx = Tensor(dx0, rows, cols);
        Submit(rec => Kernels.RmsNormBackward.Record(rec, Ctx, tx, tdy, accumulate, tdx));
        Close(tdx.ToArray(), expected, Tolerance.ForReduction(cols) * Math.Max(1, MaxAbs(expected)), $"rmsnorm backward rows={rows} cols={cols} acc={accumulate}", cols);
    }

    [VulkanTheory]
    [InlineData(1, 1, 1, false)]
    [InlineData(13, 11, 129, true)]         // a row wider than a workgroup
    [InlineData(200, 3, 5, false)]          // many repeated ids
    [InlineData(7, 40, 9, false)]           // most ids absent: their rows must be zero
    public void Embedding_backward_matches_reference(int T, int V, int C, bool accumulate)
    {
        var idx = Enumerable.Range(0, T).Select(_ => rng.Next(V)).ToArray();
        var dout = Uniform(T * C);
        var de0 = accumulate ? Uniform(V * C) : Poisoned(V * C);
        var expected = (float[])de0.Clone();
        Kernels.EmbeddingBackward.Reference(idx, dout, V, C, accumulate, expected);
        var offsets = new int[V + 1];
        var rows = new int[T];
        Kernels.EmbeddingBackward.BuildCsr(idx, V, offsets, rows);
        using var to = Ints(offsets);
        using var tr = Ints(rows);
        using var td = Tensor(dout, T, C);
        using var te = Tensor(de0, V, C);
        Submit(rec => Kernels.EmbeddingBackward.Record(rec, Ctx, to, tr, td, accumulate, te));
        // Same additions in the same order: exact.
        Close(te.ToArray(), expected, 0, $"embedding backward T={T} V={V} C={C} acc={accumulate}", C);
    }

    [VulkanTheory]
    [InlineData(1, 1)]
    [InlineData(5, 300)]
    [InlineData(257, 3)]
    public void SwiGlu_backward_matches_reference(int rows, int n)
    {
        var ab = Uniform(rows * 2 * n, 4);
        var dout = Uniform(rows * n);
        var expected = new float[rows * 2 * n];
        Kernels.SwiGluBackward.Reference(ab, dout, rows, n, expected);
        using var tab = Tensor(ab, rows, 2 * n);
        using var td = Tensor(dout, rows, n);
        using var tdab = Tensor(Poisoned(rows * 2 * n), rows, 2 * n);
        Submit(rec => Kernels.SwiGluBackward.Record(rec, Ctx, tab, td, tdab));
        Close(tdab.ToArray(), expected, Tolerance.F32Atol, $"swiglu backward rows={rows} n={n}", 2 * n);
    }

    [VulkanTheory]
    [InlineData(1, 1, 1, 4, false, 0)]
    [InlineData(2, 37, 2, 12, true, 0)]       // hd not a power of two, T prime
    [InlineData(3, 130, 1, 4, false, 4990)]   // T past a workgroup, positions near 5000
    [InlineData(2, 5, 5, 16, true, 3)]        // H prime: 5 heads in one workgroup
    [InlineData(1, 3, 3, 64, false, 0)]       // one head per workgroup, 3 workgroups
    public void Aod_backward_matches_reference(int B, int T, int nHead, int hd, bool mean, int pos0)
    {
        var D = nHead * hd;
        var qkv = Uniform(B * T * 3 * D, 2);
        var cos = new float[T * hd / 2];
        var sin = new float[T * hd / 2];
        Kernels.Aod.RopeTables(hd, pos0, T, cos, sin);
        var dy = Uniform(B * T * D);
        var expected = new float[qkv.Length];
        Kernels.AodBackward.Reference(qkv, cos, sin, dy, B, T, D, nHead, mean, expected);
        using var tq = Tensor(qkv, B * T, 3 * D);
        using var tc = Tensor(cos, T, hd / 2);
        using var ts = Tensor(sin, T, hd / 2);
        using var tdy = Tensor(dy, B * T, D);
        using var sS = Tensor(Poisoned(B * T * D), B * T, D);
        using var sZ = mean ? Tensor(Poisoned(B * T * D), B * T, D) : null;
        using var td = Tensor(Poisoned(qkv.Length), B * T, 3 * D);
        Submit(rec => Kernels.AodBackward.Record(rec, Ctx, tq, tc, ts, tdy, B, T, nHead, sS, sZ, td));
        // The carried sums add T terms; the norm backward hd more.
        Close(td.ToArray(), expected, Tolerance.ForReduction(T + hd) * Math.Max(1, MaxAbs(expected)),
            $"aod backward B={B} T={T} H={nHead} hd={hd} mean={mean} pos0={pos0}", 3 * D);
    }

    // The chunked form against its CPU twin (which CpuKernelConformanceTests checks against the
    // sequential twin): the same passes and order of float32 sums, so the same tolerance as the
    // sequential form. Scratch poisoned: a chunk value a pass forgets to write shows as NaN.
    [VulkanTheory]
    [InlineData(1, 3, 1, 4, 16, false)]      // T < L: one partial chunk
    [InlineData(1, 16, 1, 4, 16, true)]      // exactly one chunk
    [InlineData(2, 33, 2, 12, 16, true)]     // T not a multiple of L, B > 1, hd not a power of two
    [InlineData(3, 300, 5, 16, 16, false)]   // H prime: 5 heads in one workgroup
    [InlineData(2, 300, 3, 64, 16, true)]    // one head per workgroup, 3 workgroups
    [InlineData(2, 100, 1, 8, 7, false)]     // another chunk length
    public void Aod_backward_chunked_matches_its_twin(int B, int T, int nHead, int hd, int L, bool mean)
    {
        var D = nHead * hd;
        var qkv = Uniform(B * T * 3 * D, 2);
        var cos = new float[T * hd / 2];
        var sin = new float[T * hd / 2];
        Kernels.Aod.RopeTables(hd, 0, T, cos, sin);
        var dy = Uniform(B * T * D);
        var expected = new float[qkv.Length];
        Kernels.AodBackward.ChunkedReference(qkv, cos, sin, dy, B, T, D, nHead, L, mean, expected);
        using var tq = Tensor(qkv, B * T, 3 * D);
        using var tc = Tensor(cos, T, hd / 2);
        using var ts = Tensor(sin, T, hd / 2);
        using var tdy = Tensor(dy, B * T, D);
        using var sS = Tensor(Poisoned(B * T * D), B * T, D);
        using var sZ = mean ? Tensor(Poisoned(B * T * D), B * T, D) : null;
        var rows = Kernels.Aod.ChunkRows(B, T, L);
        using var chunkS = Tensor(Poisoned(rows * D), rows, D);
        using var chunkZ = mean ? Tensor(Poisoned(rows * D), rows, D) : null;
        using var td = Tensor(Poisoned(qkv.Length), B * T, 3 * D);
        Submit(rec => Kernels.AodBackward.RecordChunked(rec, Ctx, tq, tc, ts, tdy, B, T, nHead, L, sS, sZ, chunkS, chunkZ, td));
        Close(td.ToArray(), expected, Tolerance.ForReduction(T + hd) * Math.Max(1, MaxAbs(expected)),
            $"aod backward chunked B={B} T={T} H={nHead} hd={hd} L={L} mean={mean}", 3 * D);
    }

    [VulkanTheory]
    [InlineData(1, 1, 0, 1.0)]
    [InlineData(5, 1000, 2, 3.0)]      // a row wider than a workgroup, ignored rows
    [InlineData(2, 97, 0, 30.0)]       // large logits
    [InlineData(9, 7, 9, 1.0)]         // every row ignored: zero gradient, zero loss
    public void CrossEntropy_backward_matches_reference(int rows, int V, int ignored, double scale)
    {
        var logits = Uniform(rows * V, scale);
        var targets = Enumerable.Range(0, rows).Select(_ => rng.Next(V)).ToArray();
        for (var i = 0; i < ignored; i++) targets[i] = -1;
        var loss = new float[rows];
        var expected = new float[rows * V];
        Kernels.CrossEntropyBackward.Reference(logits, targets, V, loss, expected);
        using var tl = Tensor(logits, rows, V);
        using var tt = Ints(targets);
        using var tloss = Tensor(Poisoned(rows), rows);
        using var td = Tensor(Poisoned(rows * V), rows, V);
        Submit(rec => Kernels.CrossEntropyBackward.Record(rec, Ctx, tl, tt, Kernels.CrossEntropyBackward.Count(targets), tloss, td));
        var what = $"cross_entropy backward rows={rows} V={V} ignored={ignored}";
        Close(tloss.ToArray(), loss, Tolerance.ForReduction(V) * Math.Max(1, scale), what + " loss");
        Close(td.ToArray(), expected, Tolerance.F32Atol, what + " dlogits", V);
    }

    [VulkanTheory]
    [InlineData(new[] { 1 }, 0.0)]
    [InlineData(new[] { 7, 300, 70000, 5 }, 1.0)]     // more than MaxGroups workgroups' worth, clipped
    [InlineData(new[] { 3, 4 }, 1e6)]                 // clip above the norm: factor 1
    public void GradNorm_and_clip_factor_match_reference(int[] sizes, double clip)
    {
        var tensors = sizes.Select(n => Uniform(n)).ToArray();
        var (norm, factor) = Kernels.GradNorm.Reference(tensors, clip);
        var gpu = tensors.Select(t => Tensor(t, t.Length)).ToArray();
        var count = sizes.Sum(n => Kernels.GradNorm.Groups(n));
        using var partials = Tensor(Poisoned(count), count);
        using var result = Tensor(Poisoned(2), 2);
        Submit(rec =>
        {
            var offset = 0;
            foreach (var t in gpu)
            {
                Kernels.GradNorm.RecordPartial(rec, Ctx, t, partials, offset);
                offset += Kernels.GradNorm.Groups(t.Count);
            }
            Kernels.GradNorm.RecordFinish(rec, Ctx, partials, count, (float)clip, result);
        });
        foreach (var t in gpu) t.Dispose();
        var r = result.ToArray();
        Assert.True(Math.Abs(r[0] - norm) <= 1e-5 * norm, $"grad norm {r[0]:g9} vs {norm:g9} (seed {seed})");
        Assert.True(Math.Abs(r[1] - factor) <= 1e-5 * factor, $"clip factor {r[1]:g9} vs {factor:g9} (seed {seed})");
    }

    [VulkanTheory]
    [InlineData(1, 1)]
    [InlineData(5003, 7)]
    public void AdamW_matches_reference(int n, int step)
    {
        var p = Uniform(n);
        var g = Uniform(n);
        var m = Uniform(n, 0.1);
        var v = Uniform(n, 0.01).Select(Math.Abs).ToArray();
        var h = new Kernels.AdamWHyper(3e-3, 0.1, 0.9, 0.95, 1e-8, step);
        const float factor = 0.75f;
        var (pe, me, ve) = ((float[])p.Clone(), (float[])m.Clone(), (float[])v.Clone());
        Kernels.AdamW.Reference(pe, g, me, ve, factor, h);
        using var tp = Tensor(p, n);
        using var tg = Tensor(g, n);
        using var tm = Tensor(m, n);
        using var tv = Tensor(v, n);
        using var tc = Tensor([1f, factor], 2);
        Submit(rec => Kernels.AdamW.Record(rec, Ctx, tp, tg, tm, tv, tc, h));
        Close(tp.ToArray(), pe, 1e-6, $"adamw param n={n}");
        Close(tm.ToArray(), me, 1e-7, $"adamw m n={n}");
        Close(tv.ToArray(), ve, 1e-8, $"adamw v n={n}");
    }

    [VulkanTheory]
    [InlineData(1, 1)]
    [InlineData(12, 7)]      // tall: orthogonalised as the transpose
    [InlineData(7, 12)]      // wide
    [InlineData(16, 16)]
    [InlineData(97, 33)]     // past one GEMM tile
    public void Muon_step_matches_reference(int rows, int cols)
    {
        var p = Uniform(rows * cols);
        var g = Uniform(rows * cols);
        var mom = Uniform(rows * cols, 0.1);
        const float beta = 0.9f, factor = 0.5f;
        const double lr = 0.02, wd = 0.1;
        var (pe, me) = ((float[])p.Clone(), (float[])mom.Clone());
        Kernels.Muon.Reference(pe, g, me, factor, beta, rows, cols, lr, wd);
        // The orthogonalised update on its own, with the Nesterov U the reference forms.
        var u = new float[rows * cols];
        for (var i = 0; i < u.Length; i++)
        {
            var gi = g[i] * factor;
            u[i] = (1 - beta) * gi + beta * (beta * mom[i] + (1 - beta) * gi);
        }
        var nsRef = Kernels.Muon.NewtonSchulzReference(u, rows, cols);

        using var tp = Tensor(p, rows, cols);
        using var tg = Tensor(g, rows, cols);
        using var tm = Tensor(mom, rows, cols);
        using var tc = Tensor([1f, factor], 2);
        using var scratch = new Kernels.Muon.Scratch(Ctx, rows, cols);
        scratch.X.Upload(Poisoned(rows * cols));
        scratch.Xn.Upload(Poisoned(rows * cols));
        GpuTensor? x = null;
        Submit(rec =>
        {
            x = Kernels.Muon.RecordOrthogonalize(rec, Ctx, tg, tm, tc, beta, scratch);
            Kernels.Muon.RecordUpdate(rec, Ctx, tp, x, scratch, lr, wd);
        });
        var xs = x!.ToArray();
        var ns = new float[rows * cols];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) ns[r * cols + c] = scratch.Tall ? xs[c * rows + r] : xs[r * cols + c];
        var what = $"muon {rows}x{cols}";
        Close(ns, nsRef, 2e-5, what + " newton-schulz", cols);
        Close(tm.ToArray(), me, 1e-7, what + " momentum", cols);
        Close(tp.ToArray(), pe, 1e-6, what + " param", cols);
    }
}
