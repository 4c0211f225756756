// The Vulkan shaders against the CPU reference twins, on whatever device the probe finds
// (lavapipe in CI), with the validation layer on: any validation message fails the test.
using Palm.Gpu.Vulkan;
using Palm.Inference.Quantization;
using Xunit.Abstractions;
using Kernels = Palm.Gpu.Kernels;

namespace Palm.Tests.Gpu;

[Collection("Vulkan")]
[RequiresVulkan]
public sealed class VulkanKernelConformanceTests : KernelConformance, IDisposable
{
    readonly VulkanFixture fixture;

    public VulkanKernelConformanceTests(VulkanFixture fixture, ITestOutputHelper output) : base(output)
    {
        this.fixture = fixture;
        Ctx.Messenger?.Clear();
    }

    VulkanContext Ctx => fixture.Require();

    public void Dispose() => Validation.AssertClean(Ctx, nameof(VulkanKernelConformanceTests));

    /// <summary>Uploads the (poisoned) output too, so unwritten elements come back as NaN.</summary>
    void Run(float[] y, GpuTensor output, Action<CommandRecorder> record)
    {
        output.Upload(y);
        using var rec = new CommandRecorder(Ctx);
        record(rec);
        rec.Submit();
        output.Download(y);
    }

    protected override void Linear(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, M, K);
        using var tw = Ctx.CreateTensor(w, GpuDType.F32, N, K);
        using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
        Run(y, ty, rec => Kernels.Linear.Record(rec, Ctx, tx, tw, relu2, ty));
    }

    protected override void LinearQuantized(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, M, K);
        using var tw = new GpuQuantizedMatrix(Ctx, CpuKernelConformanceTests.GpuFormat(w), N, K, w.GroupSize, w.Data.Span, w.Scales.Span);
        using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
        Run(y, ty, rec => Kernels.Linear.RecordQuantized(rec, Ctx, tx, tw, relu2, ty));
    }

    protected override void LinearF16(float[] x, float[] w, int M, int N, int K, bool relu2, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, M, K);
        using var tw = Ctx.CreateTensor(w, GpuDType.F16, N, K);
        using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
        Run(y, ty, rec => Kernels.Linear.Record(rec, Ctx, tx, tw, relu2, ty));
    }

    protected override double[] LinearF16Expected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new float[M * N];
        Kernels.Linear.ReferenceF16(x, w, M, N, K, relu2, y);
        return D2(y);
    }

    protected override void LinearHalf(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, xHalf ? GpuDType.F16 : GpuDType.F32, M, K);
        using var tw = Ctx.CreateTensor(w, GpuDType.F16, N, K);
        using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
        Run(y, ty, rec => Kernels.Linear.RecordHalf(rec, Ctx, tx, tw, relu2, ty));
    }

    protected override double[] LinearHalfExpected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new float[M * N];
        Kernels.Linear.ReferenceHalf(x, w, M, N, K, relu2, y);
        return D2(y);
    }

    protected override void LinearCoopMat(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, float[] y)
    {
        var caps = Ctx.Capabilities;
        var tile = Kernels.Linear.ChooseCoopMatTile(M, caps.CooperativeMatrix!.Value, caps, N);
        Output.WriteLine($"{caps.DeviceName}: cooperative matrix {caps.CooperativeMatrix}, tile {tile}");
        LinearCoopMatWith(x, w, M, N, K, relu2, xHalf, tile, emulated: false, y);
    }

    void LinearCoopMatWith(float[] x, float[] w, int M, int N, int K, bool relu2, bool xHalf, Kernels.Linear.CoopMatTile tile, bool emulated, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, xHalf ? GpuDType.F16 : GpuDType.F32, M, K);
        using var tw = Ctx.CreateTensor(w, GpuDType.F16, N, K);
        using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
        Run(y, ty, rec => Kernels.Linear.RecordCoopMat(rec, Ctx, tx, tw, relu2, ty, tile, emulated));
    }

    protected override double[] LinearCoopMatExpected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new float[M * N];
        Kernels.Linear.ReferenceHalfInputs(x, w, M, N, K, relu2, y);
        return D2(y);
    }

    /// <summary>
    /// linear_coopmat with its fragments emulated by plain arithmetic (same semantics: A row-major,
    /// B column-major, exact products, f32 sums), so that a device without cooperative matrices
    /// (lavapipe) checks everything around them: staging (vector and element paths), fragment
    /// offsets, several subgroups and fragments per workgroup, bounds, relu2, the epilogue. What it
    /// cannot check is the real fragments' layout semantics; LinearCoopMat_matches_reference does,
    /// where the device has them. Plain f32 sums: the fp32 tolerance.
    /// </summary>
    [ConformanceTheory]
    [RequiresGpuFeature(GpuFeature.HalfArithmetic)]
    //          M    N    K  relu2  xHalf  TM  TN  TK SM SN FM FN  BK stages ahead
    [InlineData(1, 1, 1, false, false, 16, 16, 16, 1, 1, 1, 1, 32, 1, 1)]
    [InlineData(1, 1, 1, false, false, 16, 16, 16, 1, 1, 1, 1, 32, 2, 2)]   // one step: nothing to fetch ahead
    [InlineData(33, 40, 64, true, false, 16, 16, 16, 2, 1, 1, 2, 32, 2, 1)]    // rows 0-31 interior: vector fetches of f32 x and of W
    [InlineData(64, 64, 64, false, true, 16, 16, 16, 2, 2, 2, 2, 32, 1, 1)]    // one whole block, f16 x as vectors
    [InlineData(64, 64, 64, false, true, 16, 16, 16, 2, 2, 2, 2, 16, 2, 1)]    // the same in four pipelined steps
    [InlineData(64, 64, 80, false, true, 16, 16, 16, 2, 2, 2, 2, 16, 2, 2)]    // five steps, two fetched ahead
    [InlineData(65, 129, 33, false, true, 16, 8, 16, 2, 2, 2, 1, 32, 2, 2)]    // a 16x8 shape; K not a multiple of 8: element fetches
    [InlineData(17, 31, 67, true, false, 16, 16, 16, 2, 2, 1, 1, 16, 1, 2)]    // one stage, two ahead
    [InlineData(130, 48, 40, false, false, 16, 16, 16, 2, 1, 2, 1, 16, 2, 1)]  // BK 16: K in three steps, the last partial
    [InlineData(160, 144, 96, true, false, 16, 16, 16, 2, 2, 2, 2, 32, 2, 1)]  // whole fragments stored straight to y (relu2 on them), edge ones through the scratch
    [InlineData(160, 144, 96, false, true, 16, 16, 16, 2, 2, 2, 2, 32, 1, 2)]
    [InlineData(64, 66, 32, false, false, 16, 16, 16, 2, 2, 2, 2, 32, 2, 1)]   // N not a multiple of 4: every fragment through the scratch
    [InlineData(130, 40, 264, false, true, 16, 16, 16, 2, 2, 4, 4, 32, 1, 1)]  // the large GPU layout (4 x 4 fragments), 9 K steps (one stage: lavapipe has 32 KiB of shared memory)
    [InlineData(130, 40, 264, true, false, 16, 16, 16, 2, 2, 4, 4, 16, 2, 2)]  // 4 x 4 fragments, two stages of BK 16, 17 steps, two ahead
    public void LinearCoopMat_emulated_matches_reference(int M, int N, int K, bool relu2, bool xHalf,
        int TM, int TN, int TK, int SM, int SN, int FM, int FN, int BK, int stages, int ahead)
    {
        var tile = new Kernels.Linear.CoopMatTile((uint)TM, (uint)TN, (uint)TK, (uint)SM, (uint)SN, (uint)FM, (uint)FN, (uint)BK, Ctx.Capabilities.SubgroupSize, (uint)stages, (uint)ahead);
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        var y = Poisoned(M * N);
        LinearCoopMatWith(x, w, M, N, K, relu2, xHalf, tile, emulated: true, y);
        var expected = LinearCoopMatExpected(x, w, M, N, K, relu2);
        Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol,
            $"linear coopmat emulated M={M} N={N} K={K} relu2={relu2} xHalf={xHalf} tile {tile}", Seed, N);
    }

    /// <summary>
    /// Every fp32 tile the wrappers choose, forced on shapes that cut it (the 128x128 one is picked
    /// only from M, N >= Linear.HugeFrom, beyond the shared conformance shapes), f32 and f16 weights.
    /// </summary>
    [ConformanceTheory]
    [InlineData(1, 1, 1, false)]
    [InlineData(129, 131, 17, true)]     // one past a 128 block in M and N; K one past BK
    [InlineData(200, 300, 40, false)]
    [InlineData(128, 128, 16, true)]     // exactly one block, one K step
    [InlineData(7, 260, 33, false)]
    public void Linear_with_every_tile_matches_reference(int M, int N, int K, bool relu2)
    {
        var x = Uniform(M * K);
        var w = Uniform(N * K);
        foreach (var tile in new[] { Kernels.Linear.Huge, Kernels.Linear.Large, Kernels.Linear.FewRows, Kernels.Linear.Small })
            foreach (var f16 in new[] { false, true })
            {
                var y = Poisoned(M * N);
                using var tx = Ctx.CreateTensor(x, GpuDType.F32, M, K);
                using var tw = Ctx.CreateTensor(w, f16 ? GpuDType.F16 : GpuDType.F32, N, K);
                using var ty = Ctx.CreateTensor(GpuDType.F32, M, N);
                Run(y, ty, rec => Kernels.Linear.Record(rec, Ctx, tx, tw, relu2, ty, tile));
                var expected = f16 ? LinearF16Expected(x, w, M, N, K, relu2) : LinearExpected(x, w, M, N, K, relu2);
                Tolerance.AssertClose(y, expected, Tolerance.ForReduction(K), Tolerance.F32Rtol,
                    $"linear M={M} N={N} K={K} relu2={relu2} f16 weights={f16} tile {tile}", Seed, N);
            }
    }

    protected override double[] LinearQuantizedExpected(float[] x, QuantizedTensor w, int M, int N, int K, bool relu2)
    {
        var y = new float[M * N];
        Kernels.Linear.QuantizedReference(x, CpuKernelConformanceTests.GpuFormat(w), w.Data.Span, w.Scales.Span, w.GroupSize, M, N, K, relu2, y);
        return D2(y);
    }

    protected override void RmsNorm(float[] x, int rows, int cols, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, rows, cols);
        using var ty = Ctx.CreateTensor(GpuDType.F32, rows, cols);
        Run(y, ty, rec => Kernels.RmsNorm.Record(rec, Ctx, tx, ty));
    }

    /// <summary>
    /// The suite's rmsnorm cases run the variant the device prefers (subgroup arithmetic on
    /// lavapipe and most GPUs); this runs the shared-memory fallback that other devices get.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(5, 257)]
    [InlineData(4, 33)]
    [InlineData(3, 1000)]
    public void RmsNorm_shared_memory_fallback_matches_reference(int rows, int cols)
    {
        var x = Uniform(rows * cols, 1.0);
        var y = Poisoned(rows * cols);
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, rows, cols);
        using var ty = Ctx.CreateTensor(GpuDType.F32, rows, cols);
        Run(y, ty, rec => Kernels.RmsNorm.Record(rec, Ctx, tx, ty, subgroup: false));
        Tolerance.AssertClose(y, RmsNormExpected(x, rows, cols), Tolerance.ForReduction(cols), Tolerance.F32Rtol, $"rmsnorm fallback rows={rows} cols={cols}", Seed, cols);
    }

    /// <summary>The suite runs the subgroup cross-entropy where the device has it; this runs the shared-memory fallback.</summary>
    [Theory]
    [InlineData(3, 7, 1.0)]
    [InlineData(5, 1000, 3.0)]
    [InlineData(2, 97, 30.0)]
    public void CrossEntropy_shared_memory_fallback_matches_reference(int rows, int V, double scale)
    {
        var logits = Uniform(rows * V, scale);
        var targets = Enumerable.Range(0, rows).Select(i => i == 0 ? -1 : Rng.Next(V)).ToArray();
        var loss = Poisoned(rows);
        using var tl = Ctx.CreateTensor(logits, GpuDType.F32, rows, V);
        using var tt = Ctx.CreateTensor(GpuDType.I32, rows);
        tt.Upload(targets);
        using var to = Ctx.CreateTensor(GpuDType.F32, rows);
        Run(loss, to, rec => Kernels.CrossEntropy.Record(rec, Ctx, tl, tt, to, subgroup: false));
        Tolerance.AssertClose(loss, CrossEntropyExpected(logits, targets, V), Tolerance.ForReduction(V) * Math.Max(1, scale), Tolerance.F32Rtol, $"cross_entropy fallback rows={rows} V={V}", Seed, 0);
    }

    protected override void Embedding(int[] idx, float[] table, int V, int C, float[] y)
    {
        using var ti = Ctx.CreateTensor(GpuDType.I32, idx.Length);
        ti.Upload(idx);
        using var te = Ctx.CreateTensor(table, GpuDType.F32, V, C);
        using var ty = Ctx.CreateTensor(GpuDType.F32, idx.Length, C);
        Run(y, ty, rec => Kernels.Embedding.Record(rec, Ctx, ti, te, ty));
    }

    protected override void EmbeddingQuantized(int[] idx, QuantizedTensor table, int V, int C, float[] y)
    {
        using var ti = Ctx.CreateTensor(GpuDType.I32, idx.Length);
        ti.Upload(idx);
        using var te = new GpuQuantizedMatrix(Ctx, CpuKernelConformanceTests.GpuFormat(table), V, C, table.GroupSize, table.Data.Span, table.Scales.Span);
        using var ty = Ctx.CreateTensor(GpuDType.F32, idx.Length, C);
        Run(y, ty, rec => Kernels.Embedding.RecordQuantized(rec, Ctx, ti, te, ty));
    }

    /// <summary>A shader cannot throw: an id outside [0, V) must come out as a NaN row, never as another row's data.</summary>
    [VulkanTheory]
    [InlineData("q8")]
    [InlineData("q4")]
    public void EmbeddingQuantized_writes_NaN_for_out_of_range_ids(string dtype)
    {
        Assert.True(Palm.Inference.Checkpoint.TensorDTypes.TryParse(dtype, out var storage));
        const int V = 5, C = 6;
        var table = QuantizedTensor.Quantize(Uniform(V * C), storage, 3);
        int[] idx = [2, V, -1, 0];
        var y = new float[idx.Length * C];
        EmbeddingQuantized(idx, table, V, C, y);
        var rows = table.Dequantize();
        for (var c = 0; c < C; c++)
        {
            Assert.Equal(rows[2 * C + c], y[c]);
            Assert.True(float.IsNaN(y[C + c]) && float.IsNaN(y[2 * C + c]), $"{dtype}: out-of-range id gave {y[C + c]}, {y[2 * C + c]} at column {c}");
            Assert.Equal(rows[c], y[3 * C + c]);
        }
    }

    protected override void Aod(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int[]? slots, float[] s, float[]? z, float[] y)
    {
        var hd = D / H;
        var ropeRows = ropePerRow ? B * T : T;
        using var tq = Ctx.CreateTensor(qkv, GpuDType.F32, B * T, 3 * D);
        using var tc = Ctx.CreateTensor(cos, GpuDType.F32, ropeRows, hd / 2);
        using var ts = Ctx.CreateTensor(sin, GpuDType.F32, ropeRows, hd / 2);
        using var tSlots = slots is null ? null : Ctx.CreateTensor(GpuDType.I32, B);
        tSlots?.Upload(slots!);
        using var tS = Ctx.CreateTensor(s, GpuDType.F32, s.Length / D, D);
        using var tZ = z is null ? null : Ctx.CreateTensor(z, GpuDType.F32, z.Length / D, D);
        using var ty = Ctx.CreateTensor(GpuDType.F32, B * T, D);
        Run(y, ty, rec => Kernels.Aod.Record(rec, Ctx, tq, tc, ts, ropePerRow, B, T, H, tSlots, tS, tZ, ty));
        tS.Download(s);
        tZ?.Download(z);
    }

    protected override void AodChunked(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L, int[]? slots, float[] s, float[]? z, float[] y)
    {
        var hd = D / H;
        var ropeRows = ropePerRow ? B * T : T;
        using var tq = Ctx.CreateTensor(qkv, GpuDType.F32, B * T, 3 * D);
        using var tc = Ctx.CreateTensor(cos, GpuDType.F32, ropeRows, hd / 2);
        using var ts = Ctx.CreateTensor(sin, GpuDType.F32, ropeRows, hd / 2);
        using var tSlots = slots is null ? null : Ctx.CreateTensor(GpuDType.I32, B);
        tSlots?.Upload(slots!);
        using var tS = Ctx.CreateTensor(s, GpuDType.F32, s.Length / D, D);
        using var tZ = z is null ? null : Ctx.CreateTensor(z, GpuDType.F32, z.Length / D, D);
        // Scratch poisoned: a start value the prefix pass forgets to write shows as NaN in y.
        var rows = Kernels.Aod.ChunkRows(B, T, L);
        using var chunkS = Ctx.CreateTensor(Poisoned(rows * D), GpuDType.F32, rows, D);
        using var chunkZ = z is null ? null : Ctx.CreateTensor(Poisoned(rows * D), GpuDType.F32, rows, D);
        using var ty = Ctx.CreateTensor(GpuDType.F32, B * T, D);
        Run(y, ty, rec => Kernels.Aod.RecordChunked(rec, Ctx, tq, tc, ts, ropePerRow, B, T, H, L, tSlots, tS, tZ, chunkS, chunkZ, ty));
        tS.Download(s);
        tZ?.Download(z);
    }

    /// <summary>The chunked CPU twin: the same three passes, the same order of float32 sums.</summary>
    protected override (double[] Y, double[] S, double[]? Z) AodChunkedExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H, int L,
        int[]? slots, float[] s, float[]? z)
    {
        var hasState = slots is not null;
        var y = new float[B * T * D];
        var sRun = hasState ? (float[])s.Clone() : new float[B * D];
        var zRun = z is null ? null : hasState ? (float[])z.Clone() : new float[B * D];
        Kernels.Aod.ChunkedReference(qkv, cos, sin, ropePerRow, slots, B, T, D, H, L, sRun, zRun, z is not null, y);
        return (D2(y), D2(hasState ? sRun : s), z is null ? null : D2(hasState ? zRun! : z));
    }

    protected override void SwiGlu(float[] ab, int rows, int n, bool residual, float[] output)
    {
        using var tab = Ctx.CreateTensor(ab, GpuDType.F32, rows, 2 * n);
        using var to = Ctx.CreateTensor(GpuDType.F32, rows, n);
        Run(output, to, rec => Kernels.SwiGlu.Record(rec, Ctx, tab, residual, to));
    }

    protected override void Axpby(float alpha, float[] x, float beta, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, x.Length);
        using var ty = Ctx.CreateTensor(GpuDType.F32, y.Length);
        Run(y, ty, rec => Kernels.Axpby.Record(rec, Ctx, alpha, tx, beta, ty));
    }

    protected override void Add(float[] y, float[] x)
    {
        using var ty = Ctx.CreateTensor(y, GpuDType.F32, y.Length);
        using var tx = Ctx.CreateTensor(GpuDType.F32, x.Length);
        Run(x, tx, rec => Kernels.Add.Record(rec, Ctx, ty, tx));
    }

    protected override void CrossEntropy(float[] logits, int[] targets, int V, float[] loss)
    {
        using var tl = Ctx.CreateTensor(logits, GpuDType.F32, targets.Length, V);
        using var tt = Ctx.CreateTensor(GpuDType.I32, targets.Length);
        tt.Upload(targets);
        using var to = Ctx.CreateTensor(GpuDType.F32, targets.Length);
        Run(loss, to, rec => Kernels.CrossEntropy.Record(rec, Ctx, tl, tt, to));
    }

    protected override void Argmax(float[] logits, int rows, int V, int[] idx)
    {
        using var tl = Ctx.CreateTensor(logits, GpuDType.F32, rows, V);
        using var ti = Ctx.CreateTensor(GpuDType.I32, rows);
        ti.Upload(idx);
        using var rec = new CommandRecorder(Ctx);
        Kernels.CrossEntropy.RecordArgmax(rec, Ctx, tl, ti);
        rec.Submit();
        ti.Download(idx);
    }

    protected override (double[] Y, double[] S, double[]? Z) AodExpected(float[] qkv, float[] cos, float[] sin, bool ropePerRow, int B, int T, int D, int H,
        int[]? slots, float[] s, float[]? z)
    {
        var hasState = slots is not null;
        var y = new float[B * T * D];
        var sRun = hasState ? (float[])s.Clone() : new float[B * D];
        var zRun = z is null ? null : hasState ? (float[])z.Clone() : new float[B * D];
        Kernels.Aod.Reference(qkv, cos, sin, ropePerRow, slots, B, T, D, H, sRun, zRun, z is not null, y);
        return (D2(y), D2(hasState ? sRun : s), z is null ? null : D2(hasState ? zRun! : z));
    }

    protected override double[] SwiGluExpected(float[] ab, int rows, int n, bool residual, float[] output)
    {
        var y = (float[])output.Clone();
        Kernels.SwiGlu.Reference(ab, rows, n, residual, y);
        return D2(y);
    }

    protected override double[] CrossEntropyExpected(float[] logits, int[] targets, int V)
    {
        var loss = new float[targets.Length];
        Kernels.CrossEntropy.Reference(logits, targets, V, loss);
        return D2(loss);
    }

    protected override int[] ArgmaxExpected(float[] logits, int rows, int V)
    {
        var idx = new int[rows];
        Kernels.CrossEntropy.ArgmaxReference(logits, rows, V, idx);
        return idx;
    }

    static double[] D2(float[] a) => Array.ConvertAll(a, v => (double)v);

    protected override double[] LinearExpected(float[] x, float[] w, int M, int N, int K, bool relu2)
    {
        var y = new float[M * N];
        Kernels.Linear.Reference(x, w, M, N, K, relu2, y);
        return Array.ConvertAll(y, v => (double)v);
    }

    protected override double[] RmsNormExpected(float[] x, int rows, int cols)
    {
        var y = new float[rows * cols];
        Kernels.RmsNorm.Reference(x, rows, cols, y);
        return Array.ConvertAll(y, v => (double)v);
    }

    protected override double[] EmbeddingExpected(int[] idx, float[] table, int V, int C)
    {
        var y = new float[idx.Length * C];
        Kernels.Embedding.Reference(idx, table, V, C, y);
        return Array.ConvertAll(y, v => (double)v);
    }

    protected override double[] EmbeddingQuantizedExpected(int[] idx, QuantizedTensor table, int V, int C)
    {
        var y = new float[idx.Length * C];
        Kernels.Embedding.QuantizedReference(idx, CpuKernelConformanceTests.GpuFormat(table), table.Data.Span, table.Scales.Span, table.GroupSize, V, C, y);
        return D2(y);
    }
}
