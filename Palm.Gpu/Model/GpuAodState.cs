// The AoD running sums of B sequences that start and advance together, resident in device
// memory: a state pool of B rows (sequence b in row b) and the position of the next token.
// Decoding updates them in place on the GPU; they come back to the host only when asked.
// Sessions at different positions use GpuStatePool with explicit slots and positions instead.
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Model;

internal sealed class GpuAodState : IDisposable
{
    internal GpuAodState(VulkanContext ctx, GpuModelConfig config, int batch)
    {
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch), "batch must be > 0");
        Batch = batch;
        Pool = new GpuStatePool(ctx, config, batch);
        var zeros = new float[config.DQkv];
        for (var a = 0; a < config.Applications; a++)
            for (var b = 0; b < batch; b++)
                Pool.WriteRow(b, a, zeros, config.MeanMix ? zeros : []);
        Slots = Enumerable.Range(0, batch).ToArray();
        Starts = new long[batch];
    }

    public int Batch { get; }
    /// <summary>Absolute position of the next token (shared by the B sequences).</summary>
    public long Position { get; set; }
    internal GpuStatePool Pool { get; }
    /// <summary>0..B-1: sequence b lives in row b.</summary>
    internal int[] Slots { get; }
    /// <summary>Reused buffer for the per-sequence start positions (all <see cref="Position"/>).</summary>
    internal long[] Starts { get; }
    /// <summary>S per application, (B, D).</summary>
    internal GpuTensor[] S => Pool.S;
    /// <summary>Z per application, (B, D); null for aod_mix = sum.</summary>
    internal GpuTensor[]? Z => Pool.Z;

    /// <summary>S of application <paramref name="app"/>, (B, D), copied to the host.</summary>
    public float[] DownloadS(int app) => S[app].ToArray();

    /// <summary>Z of application <paramref name="app"/>, (B, D); null for aod_mix = sum.</summary>
    public float[]? DownloadZ(int app) => Z?[app].ToArray();

    public void Dispose() => Pool.Dispose();
}
