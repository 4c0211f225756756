// Tensor storage types of the .palm format and their byte-size rules. The layout admits half and
// quantized types from version 1 on, so that adding their codecs later needs no format change.
namespace Palm.Inference.Checkpoint;

/// <summary>How a tensor's elements are stored on disk. In memory, f32/f16/bf16 tensors are float32 and
/// q8/q4 tensors stay quantized (<see cref="Quantization.QuantizedTensor"/>).</summary>
public enum TensorDType
{
    /// <summary><c>"f32"</c>: IEEE binary32, little-endian, 4 bytes per element.</summary>
    F32,
    /// <summary><c>"f16"</c>: IEEE binary16, little-endian, 2 bytes per element.</summary>
    F16,
    /// <summary><c>"bf16"</c>: bfloat16 (upper half of a binary32), little-endian, 2 bytes per element.</summary>
    BF16,
    /// <summary>
    /// <c>"q8"</c>: one signed byte per element; <c>scales</c> holds one float32 (little-endian) per
    /// group of <c>group_size</c> consecutive elements (default: the whole last dimension, one per row).
    /// </summary>
    Q8,
    /// <summary>
    /// <c>"q4"</c>: 4-bit values <c>q + 8</c> packed two per byte (element 2k in the low nibble);
    /// <c>scales</c> holds one float16 (little-endian) per group of <c>group_size</c> (default 32).
    /// </summary>
    Q4,
}

/// <summary>Names and byte-size rules of <see cref="TensorDType"/>.</summary>
public static class TensorDTypes
{
    /// <summary>The group size of <see cref="TensorDType.Q4"/> when the file does not name one.</summary>
    public const int DefaultQ4GroupSize = 32;

    /// <summary>The on-disk name: <c>f32</c>, <c>f16</c>, <c>bf16</c>, <c>q8</c>, <c>q4</c>.</summary>
    public static string SpecName(this TensorDType t) => t switch
    {
        TensorDType.F32 => "f32",
        TensorDType.F16 => "f16",
        TensorDType.BF16 => "bf16",
        TensorDType.Q8 => "q8",
        TensorDType.Q4 => "q4",
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown dtype"),
    };

    /// <summary>Parses an on-disk dtype name (exact, lower case).</summary>
    public static bool TryParse(string name, out TensorDType dtype)
    {
        switch (name)
        {
            case "f32": dtype = TensorDType.F32; return true;
            case "f16": dtype = TensorDType.F16; return true;
            case "bf16": dtype = TensorDType.BF16; return true;
            case "q8": dtype = TensorDType.Q8; return true;
            case "q4": dtype = TensorDType.Q4; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>True for the grouped types that carry <c>scales</c> and <c>group_size</c>.</summary>
    public static bool IsQuantized(this TensorDType t) => t is TensorDType.Q8 or TensorDType.Q4;

    /// <summary>True when this version of the library can read and write the type.</summary>
    public static bool IsSupported(this TensorDType t) => t is >= TensorDType.F32 and <= TensorDType.Q4;

    /// <summary>
    /// Bytes of the <c>data</c> field for <paramref name="elements"/> elements:
    /// f32 4n, f16/bf16 2n, q8 n, q4 ceil(n/2).
    /// </summary>
    public static long DataByteLength(this TensorDType t, long elements)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elements);
        return t switch
        {
            TensorDType.F32 => checked(4 * elements),
            TensorDType.F16 or TensorDType.BF16 => checked(2 * elements),
            TensorDType.Q8 => elements,
            TensorDType.Q4 => (elements + 1) / 2,
            _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown dtype"),
        };
    }

    /// <summary>
    /// Bytes of the <c>scales</c> field: 0 for unquantized types; q8 4 per group, q4 2 per group,
    /// with ceil(n / group_size) groups.
    /// </summary>
    public static long ScaleByteLength(this TensorDType t, long elements, int groupSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elements);
        if (!t.IsQuantized()) return 0;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(groupSize);
        long groups = (elements + groupSize - 1) / groupSize;
        return t == TensorDType.Q8 ? 4 * groups : 2 * groups;
    }
}
