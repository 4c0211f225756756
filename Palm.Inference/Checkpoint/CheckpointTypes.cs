// The in-memory pieces of a checkpoint besides the config: named tensors, the tokenizer's
// serializable form, and the training state needed to resume a run exactly.
namespace Palm.Inference.Checkpoint;

/// <summary>A named tensor of any rank &gt;= 1, held as row-major float32.</summary>
public sealed class CheckpointTensor
{
    private readonly int[] _shape;

    /// <summary>Wraps <paramref name="data"/> (not copied) as a tensor.</summary>
    /// <param name="name">Tensor name, e.g. <c>blocks.0.qkv.w1</c>.</param>
    /// <param name="shape">Dimensions, outermost first; each &gt;= 1.</param>
    /// <param name="data">Row-major elements; length must equal the product of <paramref name="shape"/>.</param>
    /// <param name="storage">How <see cref="PalmCheckpoint.Save(Stream)"/> stores the data
    /// (f16/bf16 round to nearest even; quantized types are not yet supported).</param>
    /// <exception cref="ArgumentException">Empty name, bad shape, length mismatch or unsupported storage.</exception>
    public CheckpointTensor(string name, IReadOnlyList<int> shape, float[] data, TensorDType storage = TensorDType.F32)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(data);
        if (shape.Count == 0) throw new ArgumentException($"{name}: shape must have rank >= 1", nameof(shape));
        long n = 1;
        foreach (int d in shape)
        {
            if (d <= 0) throw new ArgumentException($"{name}: every dimension must be >= 1, got [{string.Join(", ", shape)}]", nameof(shape));
            n *= d;
            if (n > Array.MaxLength) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] is too large", nameof(shape));
        }
        if (n != data.Length) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] holds {n} elements but data has {data.Length}", nameof(data));
        if (!storage.IsSupported()) throw new ArgumentException($"{name}: storage dtype {storage.SpecName()} not supported by this version", nameof(storage));
        Name = name;
        _shape = [.. shape];
        Data = data;
        Storage = storage;
    }

    /// <summary>Tensor name, unique within a checkpoint.</summary>
    public string Name { get; }
    /// <summary>Dimensions, outermost first.</summary>
    public IReadOnlyList<int> Shape => _shape;
    /// <summary>Row-major elements.</summary>
    public float[] Data { get; }
    /// <summary>The on-disk storage type (the type read from the file, or the one to write).</summary>
    public TensorDType Storage { get; }

    /// <summary>Shape as text, e.g. <c>[16, 8]</c>, for messages.</summary>
    public string ShapeText => "[" + string.Join(", ", _shape) + "]";

    internal bool ShapeEquals(ReadOnlySpan<int> other) => _shape.AsSpan().SequenceEqual(other);
}

/// <summary>
/// The tokenizer as stored in a checkpoint: its pre-tokenization regex, its BPE merges in rank
/// order (merge i joins tokens <c>Left</c> and <c>Right</c>), and its special tokens in id order.
/// </summary>
public sealed record TokenizerBlob(string Pattern, IReadOnlyList<(int Left, int Right)> Merges, IReadOnlyList<string> SpecialTokens);

/// <summary>Everything beyond the weights that a training run needs to resume bit-exactly.</summary>
public sealed class TrainingState
{
    /// <summary>Optimizer steps taken so far (&gt;= 0).</summary>
    public long Step { get; init; }

    /// <summary>The training RNG's xoshiro state (<see cref="Model.Rng.GetState"/>): 4 words, not all zero.</summary>
    public required ulong[] RngState { get; init; }

    /// <summary>Position of the next training example in the data stream (&gt;= 0).</summary>
    public long DataPosition { get; init; }

    /// <summary>Recorded training losses, oldest first.</summary>
    public float[] LossHistory { get; init; } = [];

    /// <summary>
    /// Optimizer moments: parameter name to moment name (<c>m</c>; <c>v</c> too for AdamW) to data,
    /// each with the same element count (and, on disk, the same shape) as that parameter.
    /// </summary>
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, float[]>> Optimizer { get; init; } =
        new Dictionary<string, IReadOnlyDictionary<string, float[]>>();

    /// <summary>Free-form numeric hyper-parameters and counters, e.g. <c>lr</c>.</summary>
    public IReadOnlyDictionary<string, double> Extra { get; init; } = new Dictionary<string, double>();
}
