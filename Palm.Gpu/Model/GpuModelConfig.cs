// The model description the Vulkan forward needs, as plain data: the config numbers and the
// weights by checkpoint name. Palm.Gpu knows no checkpoint format; Palm.Inference maps its
// PalmConfig / PalmParameters onto these.
namespace Palm.Gpu.Model;

/// <summary>How the L blocks are applied R times (spec: share).</summary>
internal enum GpuShare
{
    /// <summary>Blocks 0..L-1, R times over.</summary>
    Cycle,
    /// <summary>Block 0 R times, then block 1 R times, ...</summary>
    Sequence,
}

/// <summary>The spec's config numbers: V, C, H, D, r (0 = full rank), L, R, share, F (0 = no FFN), aod_mix = mean.</summary>
internal readonly record struct GpuModelConfig(
    int VocabSize, int NEmbd, int NHead, int DQkv, int DRank, int NLayer, int NRecur, GpuShare Share, int DFfn, bool MeanMix)
{
    public int HeadDim => DQkv / NHead;
    /// <summary>Block applications, L * R; each owns an AoD state.</summary>
    public int Applications => NLayer * NRecur;

    /// <summary>The block applied at application a in schedule order.</summary>
    public int BlockOfApplication(int a) => Share == GpuShare.Cycle ? a % NLayer : a / NRecur;

    /// <exception cref="ArgumentException">A size out of range or heads that do not split D into multiples of 4.</exception>
    public void Validate()
    {
        if (VocabSize <= 0 || NEmbd <= 0 || NHead <= 0 || DQkv <= 0 || DRank < 0 || NLayer <= 0 || NRecur <= 0 || DFfn < 0)
            throw new ArgumentException($"invalid model sizes: {this}");
        if (DQkv % NHead != 0 || HeadDim % 4 != 0)
            throw new ArgumentException($"d_qkv {DQkv} must split into {NHead} heads of a multiple of 4 channels");
        if (!Enum.IsDefined(Share)) throw new ArgumentException($"unknown share mode {(int)Share}");
    }
}

/// <summary>One weight matrix (rows, cols), row-major, as the spec's parameter table names it.</summary>
/// <summary>
/// One f32 weight. <paramref name="Half"/>: keep it on the device as IEEE half (2 bytes an element,
/// read by the f16 linear variant). Exact when the values came from half storage (an f16 checkpoint);
/// the embedding table is always kept as f32 (its gather has no f16 variant).
/// </summary>
internal sealed record GpuWeight(int Rows, int Cols, float[] Data, bool Half = false);

/// <summary>
/// One weight matrix (rows, cols), row-major, kept quantized: the stored level and scale bytes of a
/// .palm q8/q4 tensor (layout in <see cref="Vulkan.GpuQuantizedMatrix"/>), one scale per
/// <paramref name="GroupSize"/> consecutive elements of a row.
/// </summary>
internal sealed record GpuQuantizedWeight(int Rows, int Cols, Vulkan.GpuQuantFormat Format, int GroupSize,
    ReadOnlyMemory<byte> Data, ReadOnlyMemory<byte> Scales);
