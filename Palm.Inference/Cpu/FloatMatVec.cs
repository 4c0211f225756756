// Float32 matrix-vector products for decoding (batch 1): register-blocked, four or sixteen rows
// per pass sharing each load of x. Row i of W starts at w + i * ld, so the same kernel serves
// whole matrices, row ranges (a part's vocabulary rows) and column slices (a part's heads of the
// projection input). Its quantized counterpart is QuantizedMatVec; CpuMatrix picks between them.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Palm.Inference.Cpu;

internal static class FloatMatVec
{
    /// <summary>y (n) = W (n, k) · x (k), W row-major with rows of k floats.</summary>
    public static unsafe void MatVec(float[] w, int n, int k, ReadOnlySpan<float> x, Span<float> y)
    {
        if (w.Length < (long)n * k || x.Length < k || y.Length < n) throw new ArgumentException("matrix-vector shapes do not match");
        fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
            MatVec(pw, k, n, k, px, py);
    }

    /// <summary>
    /// y (n) = W · x (k) where row i of W starts at w + i * ld: four rows per pass share each
    /// load of x (16 lanes where AVX-512 runs, else 8). Each row's sum is formed the same way
    /// whatever n is, up to which rows fall in the last n % 4.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void MatVec(float* pw, long ld, int n, int k, float* px, float* py)
    {
        int i = 0;
        if (Avx512F.IsSupported && k % 16 == 0) i = MatVec16Rows(pw, ld, n, k, px, py);
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            int k16 = k & ~15;
            for (; i + 4 <= n; i += 4)
            {
                float* r0 = pw + i * ld, r1 = r0 + ld, r2 = r1 + ld, r3 = r2 + ld;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int p = 0; p < k16; p += 16)
                {
                    var xv = Vector512.Load(px + p);
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Load(r0 + p), xv, a0);
                    a1 = Vector512.FusedMultiplyAdd(Vector512.Load(r1 + p), xv, a1);
                    a2 = Vector512.FusedMultiplyAdd(Vector512.Load(r2 + p), xv, a2);
                    a3 = Vector512.FusedMultiplyAdd(Vector512.Load(r3 + p), xv, a3);
                }
                float s0 = Vector512.Sum(a0), s1 = Vector512.Sum(a1), s2 = Vector512.Sum(a2), s3 = Vector512.Sum(a3);
                for (int p = k16; p < k; p++) { float xp = px[p]; s0 += r0[p] * xp; s1 += r1[p] * xp; s2 += r2[p] * xp; s3 += r3[p] * xp; }
                py[i] = s0; py[i + 1] = s1; py[i + 2] = s2; py[i + 3] = s3;
            }
        }
        else if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            int k8 = k & ~7;
            for (; i + 4 <= n; i += 4)
            {
                float* r0 = pw + i * ld, r1 = r0 + ld, r2 = r1 + ld, r3 = r2 + ld;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int p = 0; p < k8; p += 8)
                {
                    var xv = Vector256.Load(px + p);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(r0 + p), xv, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Load(r1 + p), xv, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Load(r2 + p), xv, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Load(r3 + p), xv, a3);
                }
                float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
                for (int p = k8; p < k; p++) { float xp = px[p]; s0 += r0[p] * xp; s1 += r1[p] * xp; s2 += r2[p] * xp; s3 += r3[p] * xp; }
                py[i] = s0; py[i + 1] = s1; py[i + 2] = s2; py[i + 3] = s3;
            }
        }
        for (; i < n; i++) py[i] = TensorPrimitives.Dot(new ReadOnlySpan<float>(pw + i * ld, k), new ReadOnlySpan<float>(px, k));
    }


    /// <summary>
    /// Sixteen rows per pass (k a multiple of 16, AVX-512): sixteen accumulators, then one
    /// transposing reduction (15 shuffle-add pairs) instead of sixteen horizontal sums, which
    /// dominate short rows (k = 64 for the factorized linears' second factors). Returns the rows done.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe int MatVec16Rows(float* pw, long ld, int n, int k, float* px, float* py)
    {
        if (k == 64) return MatVec16RowsK64(pw, ld, n, px, py);
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            // Accumulator s holds row 4*(s%4) + s/4: the reduction below transposes 4x4 blocks,
            // so feeding rows in that order makes its result come out in natural row order.
            float* b = pw + i * ld;
            float* r0 = b, r1 = b + ld, r2 = b + 2 * ld, r3 = b + 3 * ld;
            float* r4 = b + 4 * ld, r5 = b + 5 * ld, r6 = b + 6 * ld, r7 = b + 7 * ld;
            float* r8 = b + 8 * ld, r9 = b + 9 * ld, r10 = b + 10 * ld, r11 = b + 11 * ld;
            float* r12 = b + 12 * ld, r13 = b + 13 * ld, r14 = b + 14 * ld, r15 = b + 15 * ld;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            Vector512<float> a8 = default, a9 = default, a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
            for (int p = 0; p < k; p += 16)
            {
                var xv = Vector512.Load(px + p);
                a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(r0 + p), xv, a0);
                a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(r4 + p), xv, a1);
                a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(r8 + p), xv, a2);
                a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(r12 + p), xv, a3);
                a4 = Avx512F.FusedMultiplyAdd(Vector512.Load(r1 + p), xv, a4);
                a5 = Avx512F.FusedMultiplyAdd(Vector512.Load(r5 + p), xv, a5);
                a6 = Avx512F.FusedMultiplyAdd(Vector512.Load(r9 + p), xv, a6);
                a7 = Avx512F.FusedMultiplyAdd(Vector512.Load(r13 + p), xv, a7);
                a8 = Avx512F.FusedMultiplyAdd(Vector512.Load(r2 + p), xv, a8);
                a9 = Avx512F.FusedMultiplyAdd(Vector512.Load(r6 + p), xv, a9);
                a10 = Avx512F.FusedMultiplyAdd(Vector512.Load(r10 + p), xv, a10);
                a11 = Avx512F.FusedMultiplyAdd(Vector512.Load(r14 + p), xv, a11);
                a12 = Avx512F.FusedMultiplyAdd(Vector512.Load(r3 + p), xv, a12);
                a13 = Avx512F.FusedMultiplyAdd(Vector512.Load(r7 + p), xv, a13);
                a14 = Avx512F.FusedMultiplyAdd(Vector512.Load(r11 + p), xv, a14);
                a15 = Avx512F.FusedMultiplyAdd(Vector512.Load(r15 + p), xv, a15);
            }
            Reduce16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15).Store(py + i);
        }
        return i;
    }

    /// <summary>
    /// MatVec16Rows for rows of exactly 64 floats (the factorized linears' second factors at rank
    /// 64, most of a `small` token's work): x stays in four registers and each row's four loads
    /// are consecutive, so a 16-row block is read front to back (the general loop's order, one
    /// 64-byte line from each of 16 rows in turn, measured ~6% slower on decode's weight stream).
    /// Each row's sum is ((w0·x0 + w1·x1) + w2·x2) + w3·x3 lane-wise, as in the general loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe int MatVec16RowsK64(float* pw, long ld, int n, float* px, float* py)
    {
        var x0 = Vector512.Load(px); var x1 = Vector512.Load(px + 16); var x2 = Vector512.Load(px + 32); var x3 = Vector512.Load(px + 48);
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            float* b = pw + i * ld;
            // Accumulator s holds row 4*(s%4) + s/4, as in MatVec16Rows (Reduce16's order).
            var a0 = Row(b, x0, x1, x2, x3); var a4 = Row(b + ld, x0, x1, x2, x3); var a8 = Row(b + 2 * ld, x0, x1, x2, x3); var a12 = Row(b + 3 * ld, x0, x1, x2, x3);
            var a1 = Row(b + 4 * ld, x0, x1, x2, x3); var a5 = Row(b + 5 * ld, x0, x1, x2, x3); var a9 = Row(b + 6 * ld, x0, x1, x2, x3); var a13 = Row(b + 7 * ld, x0, x1, x2, x3);
            var a2 = Row(b + 8 * ld, x0, x1, x2, x3); var a6 = Row(b + 9 * ld, x0, x1, x2, x3); var a10 = Row(b + 10 * ld, x0, x1, x2, x3); var a14 = Row(b + 11 * ld, x0, x1, x2, x3);
            var a3 = Row(b + 12 * ld, x0, x1, x2, x3); var a7 = Row(b + 13 * ld, x0, x1, x2, x3); var a11 = Row(b + 14 * ld, x0, x1, x2, x3); var a15 = Row(b + 15 * ld, x0, x1, x2, x3);
            Reduce16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15).Store(py + i);
        }
        return i;

        // The general loop's chain (zero accumulator first), so both give the same bits.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Row(float* r, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2, Vector512<float> x3) =>
            Avx512F.FusedMultiplyAdd(Vector512.Load(r + 48), x3,
                Avx512F.FusedMultiplyAdd(Vector512.Load(r + 32), x2,
                    Avx512F.FusedMultiplyAdd(Vector512.Load(r + 16), x1,
                        Avx512F.FusedMultiplyAdd(Vector512.Load(r), x0, Vector512<float>.Zero))));
    }

    /// <summary>
    /// Sixteen accumulators to their sixteen lane sums in one vector: lane 4j + m holds the sum
    /// of accumulator 4m + j (a 4x4 transpose of the natural order), so a caller that feeds row
    /// 4*(s%4) + s/4 into accumulator s gets the rows' sums in natural order. 15 shuffle-add pairs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Reduce16(
        Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> a4, Vector512<float> a5, Vector512<float> a6, Vector512<float> a7,
        Vector512<float> a8, Vector512<float> a9, Vector512<float> a10, Vector512<float> a11,
        Vector512<float> a12, Vector512<float> a13, Vector512<float> a14, Vector512<float> a15)
    {
        // 256-bit halves: [a.q0+a.q2, a.q1+a.q3, b.q0+b.q2, b.q1+b.q3] (q = 128-bit quarter).
        var s01 = Half256(a0, a1); var s23 = Half256(a2, a3); var s45 = Half256(a4, a5); var s67 = Half256(a6, a7);
        var s89 = Half256(a8, a9); var sAB = Half256(a10, a11); var sCD = Half256(a12, a13); var sEF = Half256(a14, a15);
        // 128-bit quarters: quarter j of t holds accumulator (4 group + j)'s four partials.
        var t0 = Quarter128(s01, s23); var t1 = Quarter128(s45, s67); var t2 = Quarter128(s89, sAB); var t3 = Quarter128(sCD, sEF);
        // Within quarters: quarter j = [acc j, acc 4+j, acc 8+j, acc 12+j] totals.
        var u0 = Pairs(t0, t1);
        var u1 = Pairs(t2, t3);
        return Avx512F.Add(Avx512F.Shuffle(u0, u1, 0x88), Avx512F.Shuffle(u0, u1, 0xDD));

        static Vector512<float> Half256(Vector512<float> a, Vector512<float> b) =>
            Avx512F.Add(Avx512F.Shuffle4x128(a, b, 0x44), Avx512F.Shuffle4x128(a, b, 0xEE));
        static Vector512<float> Quarter128(Vector512<float> a, Vector512<float> b) =>
            Avx512F.Add(Avx512F.Shuffle4x128(a, b, 0x88), Avx512F.Shuffle4x128(a, b, 0xDD));
        static Vector512<float> Pairs(Vector512<float> a, Vector512<float> b) =>
            Avx512F.Add(Avx512F.Shuffle(a, b, 0x44), Avx512F.Shuffle(a, b, 0xEE));
    }
}
