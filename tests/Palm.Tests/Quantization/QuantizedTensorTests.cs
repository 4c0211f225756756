// The quantized math on the CPU: round-trip error bounds, the exact byte layout of q8 and q4,
// rejection of bad stored bytes, and the on-the-fly quantized matmul against dequantize + fp32.
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;

namespace Palm.Tests.Quantization;

public sealed class QuantizedTensorTests
{
    private static float[] Uniform(Random rnd, int n, double scale)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rnd.NextDouble() * 2 - 1) * scale);
        return a;
    }

    [Theory]
    [InlineData("q8", 7, 13, 13, 1.0)]      // per row
    [InlineData("q8", 5, 64, 16, 0.05)]     // groups of 16
    [InlineData("q8", 1, 1, 1, 3.0)]        // one element: q = ±127 exactly
    [InlineData("q8", 3, 90, 30, 1e3)]
    [InlineData("q4", 4, 64, 32, 1.0)]
    [InlineData("q4", 7, 33, 11, 0.02)]     // odd row: nibbles straddle rows
    [InlineData("q4", 1, 5, 5, 1e-2)]       // odd total: a padding nibble
    public void Round_trip_error_is_at_most_half_a_step(string dtypeName, int rows, int cols, int group, double scale)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        var rnd = new Random((int)(TestSeed.Next() & 0x7FFFFFFF));
        var w = Uniform(rnd, rows * cols, scale);
        var q = QuantizedTensor.Quantize(w, dtype, group);
        Assert.Equal(rows * cols / group, q.Groups);
        var back = q.Dequantize();
        int max = QuantizedTensor.MaxLevel(dtype);
        for (int g = 0; g < q.Groups; g++)
        {
            float s = q.GetScale(g);
            float amax = 0;
            for (int j = 0; j < group; j++) amax = MathF.Max(amax, MathF.Abs(w[g * group + j]));
            // q8 keeps the exact f32 scale; q4 keeps it rounded to f16 (relative error <= 2^-11).
            double scaleTol = dtype == TensorDType.Q8 ? 1e-7 : 1.0 / 2048;
            Assert.True(Math.Abs(s - amax / max) <= scaleTol * amax / max, $"group {g}: scale {s}, max|w|/{max} = {amax / max}");
            for (int j = 0; j < group; j++)
            {
                int i = g * group + j;
                int level = q.GetLevel(i);
                Assert.InRange(level, -max, max);
                // Half a step, plus the float rounding of w/s and q*s.
                double err = Math.Abs(w[i] - back[i]);
                Assert.True(err <= s / 2 * (1 + 1e-5) + 1e-7 * Math.Abs(w[i]), $"{dtypeName} element {i}: w {w[i]}, dequantized {back[i]}, scale {s}, error {err}");
                Assert.Equal(level * s, back[i]);
            }
        }
    }

    [Fact]
    public void Q8_layout_is_int8_values_and_f32_scales()
    {
        // max 127 gives scale 1; 0.5 and -2.5 are ties (to even: 0 and -2), 1.5 rounds to 2.
        var q = QuantizedTensor.Quantize([127f, -127f, 0f, 64f, 0.5f, 1.5f, -2.5f, 3f], TensorDType.Q8, 8);
        Assert.Equal(new byte[] { 0x7F, 0x81, 0x00, 0x40, 0x00, 0x02, 0xFE, 0x03 }, q.Data.ToArray());
        Assert.Equal(new byte[] { 0x00, 0x00, 0x80, 0x3F }, q.Scales.ToArray());   // 1.0f little-endian
        Assert.Equal([127f, -127f, 0f, 64f, 0f, 2f, -2f, 3f], q.Dequantize());
    }

    [Fact]
    public void Q4_layout_is_nibbles_low_first_and_f16_scales()
    {
        // Two groups of 3: max 7 (scale 1) and max 14 (scale 2); an odd total leaves a padding nibble.
        var q = QuantizedTensor.Quantize([1f, -2f, 7f, -14f, 0f, 6f, 0f, 0f, 0f], TensorDType.Q4, 3);
        // Levels + 8: 9, 6, 15 | 1, 8, 11 | 8, 8, 8 (zero group: scale 0, level 0).
        Assert.Equal(new byte[] { 0x69, 0x1F, 0xB8, 0x88, 0x08 }, q.Data.ToArray());
        Assert.Equal(new byte[] { 0x00, 0x3C, 0x00, 0x40, 0x00, 0x00 }, q.Scales.ToArray()); // f16 1.0, 2.0, 0.0
        Assert.Equal([1f, -2f, 7f, -14f, 0f, 6f, 0f, 0f, 0f], q.Dequantize());
        Assert.Equal(0f, q.GetScale(2));
    }

    [Fact]
    public void Stored_level_minus_8_decodes()
    {
        // The quantizer never writes nibble 0 (level -8), but the format admits it.
        var q = QuantizedTensor.FromBytes(TensorDType.Q4, 2, 2, [0x80], [0x00, 0x3C]);
        Assert.Equal([-8f, 0f], q.Dequantize());
        var q8 = QuantizedTensor.FromBytes(TensorDType.Q8, 1, 1, [0x80], [0, 0, 0x80, 0x3F]);
        Assert.Equal(-128f, q8.Dequantize()[0]);
    }

    [Fact]
    public void Bad_bytes_and_arguments_are_rejected()
    {
        byte[] one = [0, 0, 0x80, 0x3F];
        Assert.Contains("data holds 3 bytes", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromBytes(TensorDType.Q8, 4, 4, new byte[3], one)).Message);
        Assert.Contains("scales holds 4 bytes", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromBytes(TensorDType.Q8, 4, 2, new byte[4], one)).Message);
        Assert.Contains("does not divide", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromBytes(TensorDType.Q4, 4, 3, new byte[2], new byte[4])).Message);
        Assert.Contains("finite", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromBytes(TensorDType.Q8, 1, 1, new byte[1], [0, 0, 0xC0, 0x7F])).Message); // NaN
        Assert.Contains("finite", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromBytes(TensorDType.Q4, 1, 1, new byte[1], [0x00, 0xBC])).Message);         // -1.0
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedTensor.FromBytes(TensorDType.F16, 1, 1, new byte[2], []));
        Assert.Contains("finite", Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize([1f, float.NaN], TensorDType.Q8, 2)).Message);
        Assert.Contains("float16", Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize([1e6f], TensorDType.Q4, 1)).Message);
        Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize([1f, 2f, 3f], TensorDType.Q8, 2));
    }

    [Theory]
    [InlineData("q8", 1, 7, 13, 13)]
    [InlineData("q8", 5, 31, 64, 16)]
    [InlineData("q4", 1, 257, 64, 32)]
    [InlineData("q4", 3, 5, 33, 11)]
    [InlineData("q4", 2, 3, 1, 1)]
    public void MatMul_equals_dequantize_then_fp32_linear(string dtypeName, int M, int N, int K, int group)
    {
        Assert.True(TensorDTypes.TryParse(dtypeName, out var dtype));
        var rnd = new Random((int)(TestSeed.Next() & 0x7FFFFFFF));
        var q = QuantizedTensor.Quantize(Uniform(rnd, N * K, 0.5), dtype, group);
        var x = Uniform(rnd, M * K, 1.0);
        var y = new float[M * N];
        Array.Fill(y, float.NaN);
        q.MatMul(x, M, N, K, y);
        var w = q.Dequantize();
        var expected = new float[M * N];
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
            {
                double acc = 0;
                for (int k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
                expected[m * N + n] = (float)acc;
            }
        // Summing levels per group and scaling once reorders the float sums: fp32 reduction tolerance.
        Numerics.AssertClose(y, expected, 1e-5 * Math.Sqrt(K), 1e-4, $"{dtypeName} matmul M={M} N={N} K={K} G={group}");
    }

    [Fact]
    public void MatMul_rejects_groups_that_straddle_rows()
    {
        var q = QuantizedTensor.Quantize(new float[12], TensorDType.Q8, 4);
        Assert.Throws<ArgumentException>(() => q.MatMul(new float[6], 1, 2, 6, new float[2]));
    }
}
