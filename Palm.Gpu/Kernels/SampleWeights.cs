// The sampling weights exp((l - max) / T) in double, shared by the host sampler (TokenSampler)
// and the GPU sampler's CPU reference (Sample.Reference), which must pick the same token.
// Why our own exp: the library one (TensorPrimitives.Exp, Vector512.Exp) runs in VectorMath's
// generic helpers, which the runtime compiles unoptimised first and recompiles only in a later
// background batch; a generation whose weights went through them in that window ran ~5x slower
// per token (measured: the first replies after WarmUpAsync took ~100 ms instead of ~20 in about
// one process in six). Everything here is inlined into one AggressiveOptimization method.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Gpu.Kernels;

internal static class SampleWeights
{
    private const double Ln2Hi = 6.93147180369123816490e-01;   // high bits of ln 2 (exact times n)
    private const double Ln2Lo = 1.90821492927058770002e-10;   // ln 2 - Ln2Hi
    private const double InvLn2 = 1.44269504088896338700e+00;
    // Below this exp underflows to 0 (the smallest subnormal is 2^-1074 ~ 4.9e-324).
    private const double Underflow = -745.2;

    /// <summary>
    /// w[i] = exp((l[i] - max) / temperature) in double: the difference and the quotient correctly
    /// rounded (the float widens exactly), the exp within 2 ulp of the true value for normal
    /// results (tested against Math.Exp). -inf logits give 0, NaN gives NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Compute(ReadOnlySpan<float> l, double max, double temperature, Span<double> w)
    {
        if (w.Length < l.Length) throw new ArgumentException("the weights span is shorter than the logits", nameof(w));
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vmax = Vector512.Create(max);
            var vt = Vector512.Create(temperature);
            for (; i + 8 <= l.Length; i += 8)
                Exp(Vector512.WidenLower(Vector256.Create(l.Slice(i, 8)).ToVector512()) - vmax, vt).CopyTo(w.Slice(i, 8));
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var vmax = Vector256.Create(max);
            var vt = Vector256.Create(temperature);
            for (; i + 4 <= l.Length; i += 4)
                Exp(Vector256.WidenLower(Vector128.Create(l.Slice(i, 4)).ToVector256()) - vmax, vt).CopyTo(w.Slice(i, 4));
        }
        for (; i < l.Length; i++) w[i] = Exp(((double)l[i] - max) / temperature);
    }

    /// <summary>
    /// The largest logit as TensorPrimitives.Max defines it (NaN if any is NaN, +0 above -0), in
    /// inlined vector code for the same reason as the weights.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Max(ReadOnlySpan<float> l)
    {
        if (l.IsEmpty) throw new ArgumentException("no logits", nameof(l));
        int i = 0;
        float m = l[0];
        if (Vector512.IsHardwareAccelerated && l.Length >= 16)
        {
            var v = Vector512.Create(l[..16]);
            for (i = 16; i + 16 <= l.Length; i += 16) v = Vector512.Max(v, Vector512.Create(l.Slice(i, 16)));
            m = v[0];
            for (int k = 1; k < 16; k++) m = MathF.Max(m, v[k]);
        }
        for (; i < l.Length; i++) m = MathF.Max(m, l[i]);
        return m;
    }

    /// <summary>exp(x) for one double: the vector forms' arithmetic, lane for lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Exp(double x)
    {
        if (double.IsNaN(x)) return x;
        if (x < Underflow) return 0;
        double n = Math.Round(x * InvLn2);
        double r = Math.FusedMultiplyAdd(n, -Ln2Hi, x);
        r = Math.FusedMultiplyAdd(n, -Ln2Lo, r);
        double p = C[0];
        for (int k = 1; k < C.Length; k++) p = Math.FusedMultiplyAdd(p, r, C[k]);
        long ni = (long)n, h1 = ni >> 1, h2 = ni - h1;
        return p * BitConverter.Int64BitsToDouble((h1 + 1023) << 52) * BitConverter.Int64BitsToDouble((h2 + 1023) << 52);
    }

    // The Taylor coefficients 1/13! .. 1/0!, highest first (Horner).
    private static ReadOnlySpan<double> C =>
    [
        1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
        1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0,
    ];

    // exp(d / t) (d / t correctly rounded first). exp(x) = 2^n · exp(r), n = round(x / ln 2),
    // r = x - n ln 2 (two-part ln 2, so r is exact to ~2^-60 over the range), |r| <= ln2 / 2;
    // exp(r) by its Taylor series to r^13 (truncation below 4e-18 relative), Horner with FMAs.
    // 2^n is applied in two halves so that results down in the subnormals round once.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<double> Exp(Vector512<double> d, Vector512<double> t)
    {
        var x = d / t;
        var clamped = Vector512.Max(x, Vector512.Create(Underflow - 1));
        var n = Vector512.Round(clamped * InvLn2);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), clamped);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.Create(C[0]);
        for (int k = 1; k < C.Length; k++) p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(C[k]));
        var ni = Vector512.ConvertToInt64(n);
        var h1 = ni >> 1;
        var h2 = ni - h1;
        var e = p * Vector512.ShiftLeft(h1 + Vector512.Create(1023L), 52).AsDouble() * Vector512.ShiftLeft(h2 + Vector512.Create(1023L), 52).AsDouble();
        // Below the underflow threshold (and -inf) exactly 0; NaN stays NaN (it fails both compares).
        e = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(Underflow)), Vector512<double>.Zero, e);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), e, x);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> Exp(Vector256<double> d, Vector256<double> t)
    {
        var x = d / t;
        var clamped = Vector256.Max(x, Vector256.Create(Underflow - 1));
        var n = Vector256.Round(clamped * InvLn2);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), clamped);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.Create(C[0]);
        for (int k = 1; k < C.Length; k++) p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(C[k]));
        var ni = Vector256.ConvertToInt64(n);
        var h1 = ni >> 1;
        var h2 = ni - h1;
        var e = p * Vector256.ShiftLeft(h1 + Vector256.Create(1023L), 52).AsDouble() * Vector256.ShiftLeft(h2 + Vector256.Create(1023L), 52).AsDouble();
        e = Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256.Create(Underflow)), Vector256<double>.Zero, e);
        return Vector256.ConditionalSelect(Vector256.Equals(x, x), e, x);
    }
}
