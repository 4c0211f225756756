// Turns a float checkpoint into a quantized one for shipping: every linear weight (all parameters
// but the embedding table, which is a lookup, not a matmul) becomes q8 or q4; the embedding only
// when asked. Rounding is to nearest, or GPTQ when calibration windows are given. The group size
// policy lives here so the command and the tests agree on it.
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
    /// training state is dropped. Without <paramref name="calibration"/> each group is rounded to
    /// nearest on max|w|/MaxLevel; with it, every linear weight is rounded by GPTQ against its inputs
    /// on the calibration windows (all measured on the float model), and with d_rank &gt; 0 the
    /// embedding too, against embed.proj.w (see <see cref="LayerInputHessians"/>).
    /// </summary>
    /// <param name="ck">The float checkpoint.</param>
    /// <param name="dtype">q8 or q4.</param>
    /// <param name="groupSize">Elements per scale, or null for the default (<see cref="GroupFor"/>).</param>
    /// <param name="embedding">Quantize the embedding table too.</param>
    /// <param name="calibration">GPTQ calibration windows, or null for round-to-nearest.</param>
    /// <param name="progress">Receives one line per calibrated tensor (its output error against round-to-nearest).</param>
    /// <exception cref="ArgumentException">A group size that does not fit, a non-finite weight, or bad calibration windows.</exception>
    public static PalmCheckpoint Quantize(PalmCheckpoint ck, TensorDType dtype, int? groupSize, bool embedding,
                                          GptqCalibration? calibration = null, Action<string>? progress = null)
    {
        if (!dtype.IsQuantized()) throw new ArgumentException($"{dtype.SpecName()} is not a quantized dtype");
        var hessians = calibration is null ? null : LayerInputHessians.Collect(ck.ToParameters(), calibration.Windows);
        var tensors = new List<CheckpointTensor>(ck.Tensors.Count);
        foreach (var t in ck.Tensors)
        {
            bool quantize = ParameterLayout.TryGetShape(ck.Config, t.Name, out _, out _) && (embedding || t.Name != EmbeddingName);
            if (!quantize) { tensors.Add(t); continue; }
            int cols = t.Shape[^1], g = GroupFor(t.Name, cols, dtype, groupSize);
            var w = t.ToFloats();
            QuantizedTensor q;
            try
            {
                if (hessians is not null && hessians.TryGet(t.Name, out var h))
                {
                    q = GptqQuantizer.Quantize(w, w.Length / cols, cols, h, dtype, g, calibration!.Damping);
                    if (progress is not null)
                    {
                        double rtn = GptqQuantizer.OutputError(w, QuantizedTensor.Quantize(w, dtype, g), h, cols);
                        progress($"  {t.Name,-22} ({w.Length / cols} x {cols}): GPTQ output error {GptqQuantizer.OutputError(w, q, h, cols) / rtn:F2} x round-to-nearest");
                    }
                }
                else q = QuantizedTensor.Quantize(w, dtype, g);
            }
            catch (ArgumentException e) { throw new ArgumentException($"tensor '{t.Name}': {e.Message}", e); }
            tensors.Add(new CheckpointTensor(t.Name, t.Shape, q));
        }
        return new PalmCheckpoint { Config = ck.Config, Tokenizer = ck.Tokenizer, Tensors = tensors };
    }
}

/// <summary>How <see cref="CheckpointQuantizer"/> calibrates GPTQ.</summary>
/// <param name="Windows">Token windows from training data (never the split quality is reported on),
/// all of one length.</param>
/// <param name="Damping">Fraction of each H's mean diagonal added to its diagonal.</param>
internal sealed record GptqCalibration(IReadOnlyList<int[]> Windows, double Damping = GptqQuantizer.DefaultDamping);
