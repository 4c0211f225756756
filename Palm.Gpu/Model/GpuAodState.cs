// The AoD running sums of B sequences resident in device memory: S (and Z for mean mixing),
// (B, D) per block application, and the position of the next token. Decoding updates them in
// place on the GPU; they come back to the host only when asked.
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Model;

internal sealed class GpuAodState : IDisposable
{
    internal GpuAodState(VulkanContext ctx, GpuModelConfig config, int batch)
    {
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch), "batch must be > 0");
        Batch = batch;
        var zeros = new float[batch * config.DQkv];
        S = new GpuTensor[config.Applications];
        Z = config.MeanMix ? new GpuTensor[config.Applications] : null;
        Slots = ctx.CreateTensor(GpuDType.I32, batch);
        Slots.Upload(Enumerable.Range(0, batch).ToArray());
        for (var a = 0; a < S.Length; a++)
        {
            S[a] = ctx.CreateTensor(zeros, GpuDType.F32, batch, config.DQkv);
            if (Z is not null) Z[a] = ctx.CreateTensor(zeros, GpuDType.F32, batch, config.DQkv);
        }
    }

    public int Batch { get; }
    /// <summary>Absolute position of the next token (shared by the B sequences).</summary>
    public long Position { get; set; }
    /// <summary>Sequence b's row in S and Z: b, (B) i32.</summary>
    internal GpuTensor Slots { get; }
    /// <summary>S per application, (B, D).</summary>
    internal GpuTensor[] S { get; }
    /// <summary>Z per application, (B, D); null for aod_mix = sum.</summary>
    internal GpuTensor[]? Z { get; }

    /// <summary>S of application <paramref name="app"/>, (B, D), copied to the host.</summary>
    public float[] DownloadS(int app) => S[app].ToArray();

    /// <summary>Z of application <paramref name="app"/>, (B, D); null for aod_mix = sum.</summary>
    public float[]? DownloadZ(int app) => Z?[app].ToArray();

    public void Dispose()
    {
        Slots.Dispose();
        foreach (var t in S) t.Dispose();
        if (Z is not null) foreach (var t in Z) t.Dispose();
    }
}
