// The Vulkan shaders against the CPU reference twins, on whatever device the probe finds
// (lavapipe in CI), with the validation layer on: any validation message fails the test.
using Palm.Gpu.Vulkan;
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

    protected override void RmsNorm(float[] x, int rows, int cols, float[] y)
    {
        using var tx = Ctx.CreateTensor(x, GpuDType.F32, rows, cols);
        using var ty = Ctx.CreateTensor(GpuDType.F32, rows, cols);
        Run(y, ty, rec => Kernels.RmsNorm.Record(rec, Ctx, tx, ty));
    }

    protected override void Embedding(int[] idx, float[] table, int V, int C, float[] y)
    {
        using var ti = Ctx.CreateTensor(GpuDType.I32, idx.Length);
        ti.Upload(idx);
        using var te = Ctx.CreateTensor(table, GpuDType.F32, V, C);
        using var ty = Ctx.CreateTensor(GpuDType.F32, idx.Length, C);
        Run(y, ty, rec => Kernels.Embedding.Record(rec, Ctx, ti, te, ty));
    }

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
}
