// Turns a float checkpoint into a quantized one for shipping: every linear weight (all parameters
// but the embedding table, which is a lookup, not a matmul) becomes q8 or q4; the embedding only
// when asked. The group size policy lives here so the command and the tests agree on it.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;

namespace Palm.Inference.Quantization;

internal static class CheckpointQuantizer
{
    public const string EmbeddingName = "embed.weight";

    /// <summary>
    /// The group size for a tensor whose rows hold <paramref name="cols"/> elements: the requested one
    /// (default: one whole row for q8, 32 for q4), or the whole row when the row is shorter than that.
    /// </summary>
    /// <exception cref="ArgumentException">The group size does not divide a row longer than it.</exception>
    public static int GroupFor(string name, int cols, TensorDType dtype, int? requested)
    {
        int g = requested ?? (dtype == TensorDType.Q8 ? cols : TensorDTypes.DefaultQ4GroupSize);
        if (g <= 0) throw new ArgumentException($"group size must be > 0, got {g}");
        if (cols <= g) return cols;
        if (cols % g != 0) throw new ArgumentException($"tensor '{name}': group size {g} does not divide its rows of {cols}");
        return g;
    }

    /// <summary>
    /// The same config and tokenizer with every linear weight stored as <paramref name="dtype"/>
    /// (and the embedding too when <paramref name="embedding"/>); other tensors keep their storage,
    /// training state is dropped.
    /// </summary>
    /// <exception cref="ArgumentException">A group size that does not fit, or a non-finite weight.</exception>
    public static PalmCheckpoint Quantize(PalmCheckpoint ck, TensorDType dtype, int? groupSize, bool embedding)
    {
        if (!dtype.IsQuantized()) throw new ArgumentException($"{dtype.SpecName()} is not a quantized dtype");
        var tensors = new List<CheckpointTensor>(ck.Tensors.Count);
        foreach (var t in ck.Tensors)
        {
            bool quantize = ParameterLayout.TryGetShape(ck.Config, t.Name, out _, out _) && (embedding || t.Name != EmbeddingName);
            if (!quantize) { tensors.Add(t); continue; }
            int g = GroupFor(t.Name, t.Shape[^1], dtype, groupSize);
            QuantizedTensor q;
            try { q = QuantizedTensor.Quantize(t.ToFloats(), dtype, g); }
            catch (ArgumentException e) { throw new ArgumentException($"tensor '{t.Name}': {e.Message}", e); }
            tensors.Add(new CheckpointTensor(t.Name, t.Shape, q));
        }
        return new PalmCheckpoint { Config = ck.Config, Tokenizer = ck.Tokenizer, Tensors = tensors };
    }
}
