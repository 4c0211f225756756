// The in-memory pieces of a checkpoint besides the config: named tensors, the tokenizer's
// serializable form, and the training state needed to resume a run exactly.
using Palm.Inference.Quantization;

namespace Palm.Inference.Checkpoint;

/// <summary>
/// A named tensor of any rank &gt;= 1: row-major float32 (<see cref="Data"/>), or for q8/q4 storage
/// the quantized bytes themselves (<see cref="Quantized"/>), never expanded unless asked.
/// </summary>
public sealed class CheckpointTensor
{
    private readonly int[] _shape;
    private readonly float[]? _data;

    /// <summary>Wraps <paramref name="data"/> (not copied) as a tensor.</summary>
    /// <param name="name">Tensor name, e.g. <c>blocks.0.qkv.w1</c>.</param>
    /// <param name="shape">Dimensions, outermost first; each &gt;= 1.</param>
    /// <param name="data">Row-major elements; length must equal the product of <paramref name="shape"/>.</param>
    /// <param name="storage">How <see cref="PalmCheckpoint.Save(Stream)"/> stores the data
    /// (f16/bf16 round to nearest even; q8/q4 need the other constructor).</param>
    /// <exception cref="ArgumentException">Empty name, bad shape, length mismatch or a quantized storage.</exception>
    public CheckpointTensor(string name, IReadOnlyList<int> shape, float[] data, TensorDType storage = TensorDType.F32)
    {
        ArgumentNullException.ThrowIfNull(data);
        long n = CheckShape(name, shape);
        if (n != data.Length) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] holds {n} elements but data has {data.Length}", nameof(data));
        if (storage.IsQuantized()) throw new ArgumentException($"{name}: {storage.SpecName()} storage takes a QuantizedTensor (QuantizedTensor.Quantize)", nameof(storage));
        Name = name;
        _shape = [.. shape];
        _data = data;
        Storage = storage;
    }

    /// <summary>Wraps quantized weights (not copied) as a tensor stored as <c>quantized.DType</c>.</summary>
    /// <param name="name">Tensor name, e.g. <c>blocks.0.qkv.w1</c>.</param>
    /// <param name="shape">Dimensions, outermost first; each &gt;= 1.</param>
    /// <param name="quantized">The elements; <see cref="QuantizedTensor.GroupSize"/> must divide the last dimension.</param>
    /// <exception cref="ArgumentException">Empty name, bad shape, length mismatch or a group that straddles rows.</exception>
    public CheckpointTensor(string name, IReadOnlyList<int> shape, QuantizedTensor quantized)
    {
        ArgumentNullException.ThrowIfNull(quantized);
        long n = CheckShape(name, shape);
        if (n != quantized.Length) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] holds {n} elements but the quantized data has {quantized.Length}", nameof(quantized));
        if (shape[^1] % quantized.GroupSize != 0)
            throw new ArgumentException($"{name}: group_size {quantized.GroupSize} does not divide the last dimension {shape[^1]}", nameof(quantized));
        Name = name;
        _shape = [.. shape];
        Quantized = quantized;
        Storage = quantized.DType;
    }

    private static long CheckShape(string name, IReadOnlyList<int> shape)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (shape.Count == 0) throw new ArgumentException($"{name}: shape must have rank >= 1", nameof(shape));
        long n = 1;
        foreach (int d in shape)
        {
            if (d <= 0) throw new ArgumentException($"{name}: every dimension must be >= 1, got [{string.Join(", ", shape)}]", nameof(shape));
            n *= d;
            if (n > Array.MaxLength) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] is too large", nameof(shape));
        }
        return n;
    }

    /// <summary>Tensor name, unique within a checkpoint.</summary>
    public string Name { get; }
    /// <summary>Dimensions, outermost first.</summary>
    public IReadOnlyList<int> Shape => _shape;
    /// <summary>Number of elements (the product of <see cref="Shape"/>).</summary>
    public int Length => _data?.Length ?? Quantized!.Length;
    /// <summary>Row-major elements of an f32, f16 or bf16 tensor.</summary>
    /// <exception cref="InvalidOperationException">The tensor is quantized: use <see cref="Quantized"/>,
    /// or <see cref="ToFloats"/> where floats are really needed.</exception>
    public float[] Data => _data ?? throw new InvalidOperationException(
        $"tensor '{Name}' is stored as {Storage.SpecName()}: read Quantized, or ToFloats() to dequantize a copy");
    /// <summary>The quantized elements of a q8 or q4 tensor, or null for other storage.</summary>
    public QuantizedTensor? Quantized { get; }
    /// <summary>True when the tensor is held quantized (<see cref="Quantized"/> is set).</summary>
    public bool IsQuantized => Quantized is not null;
    /// <summary>The on-disk storage type (the type read from the file, or the one to write).</summary>
    public TensorDType Storage { get; }

    /// <summary>The elements as float32: <see cref="Data"/> itself, or a new dequantized array for q8/q4.</summary>
    public float[] ToFloats() => _data ?? Quantized!.Dequantize();

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
