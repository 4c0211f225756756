// Float exp and sigmoid on vectors for the fast CPU path's element-wise glue (the decoder's
// gate, state update and residual, the forward's SwiGLU). Why not TensorPrimitives.Sigmoid or
// Vector256.Exp: those go through VectorMath's generic helpers, called (not inlined) per vector
// and compiled unoptimised until a later background batch (see Palm.Gpu's SampleWeights); at
// decode's sizes (256 to 512 channels a call, ~50 calls a token) the calls cost more than the
// arithmetic: measured 5 us of an 80 us `small` token for the residual gate alone. These inline.
//
// exp: x = n·ln2 + r with |r| <= ln2/2 (n rounded to nearest with the 1.5·2^23 trick, ln2 in two
// parts so n·ln2hi is exact), e^r by its Taylor series to r^7 (truncation < 6e-9 relative),
// times 2^n built in the exponent bits. Within 2 ulp of the correctly rounded e^x on [-87, 88]
// (tested); the input is clamped to that range, so e^x never overflows to inf nor underflows to
// a subnormal: below -87 the result is ~1.6e-38 instead of smaller, which no caller here can
// tell from 0. NaN stays NaN.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Inference.Cpu.Fast;

internal static class FastMath
{
    private const float Lo = -87f, Hi = 88f;
    private const float Log2E = 1.44269504f;
    private const float Ln2Hi = 0.693359375f;          // 355/512: n·Ln2Hi is exact for |n| < 2^15
    private const float Ln2Lo = -2.12194440e-4f;       // ln 2 − Ln2Hi
    private const float Magic = 12582912f;             // 1.5·2^23: adding it rounds to an integer

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        x = Vector512.Min(Vector512.Max(x, Vector512.Create(Lo)), Vector512.Create(Hi));
        var t = Vector512.FusedMultiplyAdd(x, Vector512.Create(Log2E), Vector512.Create(Magic));
        var n = t - Vector512.Create(Magic);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.Create(1f / 5040);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 720));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 120));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 24));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1f / 6));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(0.5f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        // t's low mantissa bits hold n + 0x400000 (n is in [-126, 127]): 2^n = (n + 127) << 23.
        var e = (t.AsInt32() - Vector512.Create(0x4B400000 - 127)) << 23;
        return p * e.AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        x = Vector256.Min(Vector256.Max(x, Vector256.Create(Lo)), Vector256.Create(Hi));
        var t = Vector256.FusedMultiplyAdd(x, Vector256.Create(Log2E), Vector256.Create(Magic));
        var n = t - Vector256.Create(Magic);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.Create(1f / 5040);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 720));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 120));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 24));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1f / 6));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(0.5f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256<float>.One);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256<float>.One);
        var e = (t.AsInt32() - Vector256.Create(0x4B400000 - 127)) << 23;
        return p * e.AsSingle();
    }

    /// <summary>The same arithmetic on one float (tails and machines without vectors): the same bits as a lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x)
    {
        x = MathF.Min(MathF.Max(x, Lo), Hi);
        float t = MathF.FusedMultiplyAdd(x, Log2E, Magic);
        float n = t - Magic;
        float r = MathF.FusedMultiplyAdd(n, -Ln2Hi, x);
        r = MathF.FusedMultiplyAdd(n, -Ln2Lo, r);
        float p = 1f / 5040;
        p = MathF.FusedMultiplyAdd(p, r, 1f / 720);
        p = MathF.FusedMultiplyAdd(p, r, 1f / 120);
        p = MathF.FusedMultiplyAdd(p, r, 1f / 24);
        p = MathF.FusedMultiplyAdd(p, r, 1f / 6);
        p = MathF.FusedMultiplyAdd(p, r, 0.5f);
        p = MathF.FusedMultiplyAdd(p, r, 1f);
        p = MathF.FusedMultiplyAdd(p, r, 1f);
        int e = (BitConverter.SingleToInt32Bits(t) - (0x4B400000 - 127)) << 23;
        return p * BitConverter.Int32BitsToSingle(e);
    }

    /// <summary>σ(x) = 1 / (1 + e^-x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sigmoid(Vector512<float> x) => Vector512<float>.One / (Vector512<float>.One + Exp(-x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sigmoid(Vector256<float> x) => Vector256<float>.One / (Vector256<float>.One + Exp(-x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sigmoid(float x) => 1f / (1f + Exp(-x));

    /// <summary>y (n) = σ(x); y may be x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Sigmoid(float* x, float* y, int n)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; j + 16 <= n; j += 16) Sigmoid(Vector512.Load(x + j)).Store(y + j);
        else if (Vector256.IsHardwareAccelerated)
            for (; j + 8 <= n; j += 8) Sigmoid(Vector256.Load(x + j)).Store(y + j);
        for (; j < n; j++) y[j] = Sigmoid(x[j]);
    }

    /// <summary>
    /// dst (n) = a ⊙ silu(g), or acc + a ⊙ silu(g) (one fused multiply-add) when <paramref name="acc"/> is not null: one pass for the
    /// SwiGLU gates (CpuOps.SwiGlu's arithmetic, with this exp). dst may be acc.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void SwiGlu(float* a, float* g, float* acc, float* dst, int n)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; j + 16 <= n; j += 16)
            {
                var gv = Vector512.Load(g + j);
                var s = gv * Sigmoid(gv);
                var v = acc != null ? Vector512.FusedMultiplyAdd(Vector512.Load(a + j), s, Vector512.Load(acc + j)) : Vector512.Load(a + j) * s;
                v.Store(dst + j);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; j + 8 <= n; j += 8)
            {
                var gv = Vector256.Load(g + j);
                var s = gv * Sigmoid(gv);
                var v = acc != null ? Vector256.FusedMultiplyAdd(Vector256.Load(a + j), s, Vector256.Load(acc + j)) : Vector256.Load(a + j) * s;
                v.Store(dst + j);
            }
        }
        for (; j < n; j++)
        {
            float s = g[j] * Sigmoid(g[j]);
            dst[j] = acc != null ? MathF.FusedMultiplyAdd(a[j], s, acc[j]) : a[j] * s;
        }
    }
}
