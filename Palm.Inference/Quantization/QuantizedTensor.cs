// Symmetric weight quantization: the math of the q8 and q4 storage types. A quantized tensor keeps
// the exact on-disk bytes (values and scales, little-endian), so it goes from file to GPU buffer
// without ever existing as a float copy; floats appear only where a caller asks for them.
using System.Buffers.Binary;
using Palm.Inference.Checkpoint;

namespace Palm.Inference.Quantization;

/// <summary>
/// A flat run of weights stored as <see cref="TensorDType.Q8"/> or <see cref="TensorDType.Q4"/>:
/// integer values <c>q</c> and one scale <c>s</c> per group of <see cref="GroupSize"/> consecutive
/// elements; element <c>i</c> stands for <c>q[i] * s[i / GroupSize]</c>.
/// </summary>
/// <remarks>
/// <para><b>q8</b>: <c>s = max|w| / 127</c> over the group (float32), <c>q = round(w / s)</c> clamped to
/// [-127, 127], one signed byte per element.</para>
/// <para><b>q4</b>: <c>s = max|w| / 7</c> rounded to float16, <c>q = round(w / s)</c> clamped to [-7, 7]
/// (the format admits -8, which decoders accept), stored as the unsigned nibble <c>q + 8</c>, two per byte, element <c>2k</c> in the low nibble of
/// byte <c>k</c>.</para>
/// <para>Rounding is to nearest, ties to even. A group of zeros has scale 0. With a normal (not
/// subnormal) scale, every element satisfies <c>|w - q*s| &lt;= s/2</c>.</para>
/// </remarks>
public sealed class QuantizedTensor
{
    private readonly byte[] _data;
    private readonly byte[] _scales;

    private QuantizedTensor(TensorDType dtype, int length, int groupSize, byte[] data, byte[] scales)
    {
        DType = dtype;
        Length = length;
        GroupSize = groupSize;
        _data = data;
        _scales = scales;
    }

    /// <summary><see cref="TensorDType.Q8"/> or <see cref="TensorDType.Q4"/>.</summary>
    public TensorDType DType { get; }
    /// <summary>Number of elements.</summary>
    public int Length { get; }
    /// <summary>Consecutive elements sharing one scale; divides <see cref="Length"/>.</summary>
    public int GroupSize { get; }
    /// <summary>Number of scales, <c>Length / GroupSize</c>.</summary>
    public int Groups => Length / GroupSize;
    /// <summary>The values in the on-disk layout: q8 one int8 per element; q4 <c>ceil(n/2)</c> bytes of nibbles.</summary>
    public ReadOnlyMemory<byte> Data => _data;
    /// <summary>The scales in the on-disk layout: q8 float32, q4 float16, little-endian, one per group.</summary>
    public ReadOnlyMemory<byte> Scales => _scales;

    /// <summary>The largest |q| the type produces: 127 for q8, 7 for q4 (q4 decodes -8 too).</summary>
    public static int MaxLevel(TensorDType dtype) => dtype switch
    {
        TensorDType.Q8 => 127,
        TensorDType.Q4 => 7,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a quantized dtype"),
    };

    /// <summary>Quantizes <paramref name="values"/> with one symmetric scale per group.</summary>
    /// <param name="values">Elements, row-major; all finite.</param>
    /// <param name="dtype"><see cref="TensorDType.Q8"/> or <see cref="TensorDType.Q4"/>.</param>
    /// <param name="groupSize">Elements per scale; must divide <c>values.Length</c>.</param>
    /// <exception cref="ArgumentException">Empty or non-finite values, a group size that does not divide
    /// the length, an unquantized dtype, or (q4) a scale beyond float16's range.</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorDType dtype, int groupSize)
    {
        int max = MaxLevel(dtype);
        if (values.Length == 0) throw new ArgumentException("nothing to quantize", nameof(values));
        if (groupSize <= 0 || values.Length % groupSize != 0)
            throw new ArgumentException($"group size {groupSize} does not divide {values.Length} elements", nameof(groupSize));
        int groups = values.Length / groupSize;
        var data = new byte[dtype.DataByteLength(values.Length)];
        var scales = new byte[dtype.ScaleByteLength(values.Length, groupSize)];
        for (int g = 0; g < groups; g++)
        {
            var group = values.Slice(g * groupSize, groupSize);
            float amax = 0;
            for (int j = 0; j < groupSize; j++)
            {
                if (!float.IsFinite(group[j])) throw new ArgumentException($"element {g * groupSize + j} is {group[j]}; only finite values quantize", nameof(values));
                amax = MathF.Max(amax, MathF.Abs(group[j]));
            }
            float scale = amax / max;
            if (dtype == TensorDType.Q8)
                BinaryPrimitives.WriteSingleLittleEndian(scales.AsSpan(4 * g), scale);
            else
            {
                // The stored scale is the float16 one, so the levels are computed from it.
                var h = (Half)scale;
                if (Half.IsInfinity(h)) throw new ArgumentException($"group {g}: max |w| = {amax} exceeds what a float16 scale can hold", nameof(values));
                BinaryPrimitives.WriteUInt16LittleEndian(scales.AsSpan(2 * g), BitConverter.HalfToUInt16Bits(h));
                scale = (float)h;
            }
            for (int j = 0; j < groupSize; j++)
            {
                int i = g * groupSize + j;
                // w / s lies in [-max, max] up to the rounding of s (q4), so the clamp only guards that edge.
                int q = (int)Math.Clamp(MathF.Round(scale == 0 ? 0 : group[j] / scale, MidpointRounding.ToEven), -max, max);
                if (dtype == TensorDType.Q8) data[i] = (byte)(sbyte)q;
                else data[i >> 1] |= (byte)((q + 8) << (4 * (i & 1)));
            }
        }
        return new QuantizedTensor(dtype, values.Length, groupSize, data, scales);
    }

    /// <summary>
    /// Packs levels and scales that a caller chose itself (the calibrated quantizer rounds with
    /// error feedback, so its levels are not <c>round(w / s)</c>) into the stored layout.
    /// </summary>
    /// <param name="dtype">q8 or q4.</param>
    /// <param name="groupSize">Elements per scale; divides the number of levels.</param>
    /// <param name="levels">One level per element, in [-MaxLevel, MaxLevel].</param>
    /// <param name="scales">One scale per group of <paramref name="groupSize"/>; finite, &gt;= 0, and for
    /// q4 exactly a float16 value (the levels were computed against the stored scale).</param>
    /// <exception cref="ArgumentException">A level out of range, a scale that is negative, non-finite or
    /// (q4) not a float16 value, or counts that disagree with the group size.</exception>
    internal static QuantizedTensor FromLevels(TensorDType dtype, int groupSize, ReadOnlySpan<sbyte> levels, ReadOnlySpan<float> scales)
    {
        int max = MaxLevel(dtype);
        if (levels.Length == 0) throw new ArgumentException("nothing to pack", nameof(levels));
        if (groupSize <= 0 || levels.Length % groupSize != 0)
            throw new ArgumentException($"group size {groupSize} does not divide {levels.Length} elements", nameof(groupSize));
        if (scales.Length != levels.Length / groupSize)
            throw new ArgumentException($"{scales.Length} scales for {levels.Length / groupSize} groups", nameof(scales));
        var data = new byte[dtype.DataByteLength(levels.Length)];
        var scaleBytes = new byte[dtype.ScaleByteLength(levels.Length, groupSize)];
        for (int g = 0; g < scales.Length; g++)
        {
            float s = scales[g];
            if (!(float.IsFinite(s) && s >= 0)) throw new ArgumentException($"scale {g} is {s}; scales must be finite and >= 0", nameof(scales));
            if (dtype == TensorDType.Q8) BinaryPrimitives.WriteSingleLittleEndian(scaleBytes.AsSpan(4 * g), s);
            else
            {
                var h = (Half)s;
                if ((float)h != s) throw new ArgumentException($"scale {g} ({s}) is not a float16 value", nameof(scales));
                BinaryPrimitives.WriteUInt16LittleEndian(scaleBytes.AsSpan(2 * g), BitConverter.HalfToUInt16Bits(h));
            }
        }
        for (int i = 0; i < levels.Length; i++)
        {
            int q = levels[i];
            if (q < -max || q > max) throw new ArgumentException($"level {q} at element {i} is outside [-{max}, {max}]", nameof(levels));
            if (dtype == TensorDType.Q8) data[i] = (byte)(sbyte)q;
            else data[i >> 1] |= (byte)((q + 8) << (4 * (i & 1)));
        }
        return new QuantizedTensor(dtype, levels.Length, groupSize, data, scaleBytes);
    }

    /// <summary>
    /// Wraps stored bytes (not copied) after checking them: lengths exactly as the layout says, a group
    /// size dividing the length, and scales finite and &gt;= 0.
    /// </summary>
    /// <exception cref="ArgumentException">The bytes break a layout rule; the message says which.</exception>
    public static QuantizedTensor FromBytes(TensorDType dtype, int length, int groupSize, byte[] data, byte[] scales)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(scales);
        MaxLevel(dtype);
        if (length <= 0) throw new ArgumentException($"length {length} must be > 0", nameof(length));
        if (groupSize <= 0 || length % groupSize != 0)
            throw new ArgumentException($"group_size {groupSize} does not divide {length} elements", nameof(groupSize));
        long dataBytes = dtype.DataByteLength(length), scaleBytes = dtype.ScaleByteLength(length, groupSize);
        if (data.Length != dataBytes)
            throw new ArgumentException($"data holds {data.Length} bytes but {length} {dtype.SpecName()} elements need {dataBytes}", nameof(data));
        if (scales.Length != scaleBytes)
            throw new ArgumentException($"scales holds {scales.Length} bytes but {length / groupSize} groups of {groupSize} need {scaleBytes}", nameof(scales));
        var t = new QuantizedTensor(dtype, length, groupSize, data, scales);
        for (int g = 0; g < t.Groups; g++)
        {
            float s = t.GetScale(g);
            if (!(float.IsFinite(s) && s >= 0)) throw new ArgumentException($"scales[{g}] is {s}; scales must be finite and >= 0", nameof(scales));
        }
        return t;
    }

    /// <summary>The integer level of element <paramref name="i"/>: q8 in [-128, 127], q4 in [-8, 7].</summary>
    public int GetLevel(int i)
    {
        if ((uint)i >= (uint)Length) throw new ArgumentOutOfRangeException(nameof(i));
        return DType == TensorDType.Q8
            ? (sbyte)_data[i]
            : ((_data[i >> 1] >> (4 * (i & 1))) & 0xF) - 8;
    }

    /// <summary>The scale of group <paramref name="g"/> (a float16 value widened, for q4).</summary>
    public float GetScale(int g)
    {
        if ((uint)g >= (uint)Groups) throw new ArgumentOutOfRangeException(nameof(g));
        return DType == TensorDType.Q8
            ? BinaryPrimitives.ReadSingleLittleEndian(_scales.AsSpan(4 * g))
            : (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(_scales.AsSpan(2 * g)));
    }

    /// <summary>Writes <c>q[i] * s[i / GroupSize]</c> for every element into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is not <see cref="Length"/> long.</exception>
    public void Dequantize(Span<float> destination)
    {
        if (destination.Length != Length) throw new ArgumentException($"destination holds {destination.Length} elements, the tensor {Length}", nameof(destination));
        for (int g = 0; g < Groups; g++)
        {
            float s = GetScale(g);
            for (int i = g * GroupSize, end = i + GroupSize; i < end; i++) destination[i] = Level(i) * s;
        }
    }

    /// <summary>A new float32 array of the dequantized elements.</summary>
    public float[] Dequantize()
    {
        var a = new float[Length];
        Dequantize(a);
        return a;
    }

    /// <summary>
    /// y(M, N) = x(M, K) · Wᵀ with this tensor as W (N, K), dequantizing on the fly: per group, the
    /// levels are summed against x and the sum is scaled once. No float copy of W is made.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes that disagree with the spans or the tensor, or a group
    /// that straddles two rows.</exception>
    public void MatMul(ReadOnlySpan<float> x, int M, int N, int K, Span<float> y)
    {
        if (M < 0 || N <= 0 || K <= 0 || (long)N * K != Length) throw new ArgumentException($"W ({N}, {K}) does not hold {Length} elements");
        if (K % GroupSize != 0) throw new ArgumentException($"group size {GroupSize} does not divide K = {K}");
        if (x.Length != M * K || y.Length != M * N) throw new ArgumentException($"x holds {x.Length} (expected {M * K}), y {y.Length} (expected {M * N})");
        int perRow = K / GroupSize;
        for (int m = 0; m < M; m++)
        {
            var xr = x.Slice(m * K, K);
            for (int n = 0; n < N; n++)
            {
                float acc = 0;
                for (int gk = 0; gk < perRow; gk++)
                {
                    int g = n * perRow + gk, i0 = g * GroupSize, k0 = gk * GroupSize;
                    float partial = 0;
                    for (int j = 0; j < GroupSize; j++) partial += Level(i0 + j) * xr[k0 + j];
                    acc += partial * GetScale(g);
                }
                y[m * N + n] = acc;
            }
        }
    }

    // Unchecked GetLevel for the loops above (i is in range by construction).
    internal int Level(int i) => DType == TensorDType.Q8
        ? (sbyte)_data[i]
        : ((_data[i >> 1] >> (4 * (i & 1))) & 0xF) - 8;
}
