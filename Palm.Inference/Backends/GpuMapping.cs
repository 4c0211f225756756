// The one mapping from the model's config and weights onto Palm.Gpu's plain descriptors
// (Palm.Gpu knows no PalmConfig). Inference, the trainer, benches and tests all use it.
using Palm.Gpu.Model;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

internal static class GpuMapping
{
    public static GpuModelConfig ToGpu(PalmConfig c) => new(c.VocabSize, c.NEmbd, c.NHead, c.DQkv, c.DRank, c.NLayer, c.NRecur,
        c.Share == ShareMode.Cycle ? GpuShare.Cycle : GpuShare.Sequence, c.DFfn, c.Mix == AodMix.Mean);

    /// <summary>The weights by checkpoint name; the arrays are shared, not copied.</summary>
    public static Dictionary<string, GpuWeight> ToGpuWeights(PalmParameters p) =>
        p.All.ToDictionary(t => t.Name, t => new GpuWeight(t.Rows, t.Cols, t.Data), StringComparer.Ordinal);
}
