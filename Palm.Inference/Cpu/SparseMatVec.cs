// Matrix-vector products that skip the zeros of their input, for decoding (batch 1). Two of a
// block's products take inputs that are exactly zero about half the time: the QKV linear's second
// factor reads relu2(w1 x) and the projection reads relu(q)·S (the AoD mix). A product in the
// usual row-major form reads every weight whatever x holds; stored transposed (one row per input
// element), the rows whose input is zero are never read. Decoding streams its weights from cache
// (a `small` token's 7 MB do not fit a core's L2), so the bytes not read are the time saved.
// The result is the sum over the nonzero inputs in ascending order, one chain per output: a
// zero input contributes exactly +0 in the dense form, so the two differ only by rounding order.
// (A NaN or infinite weight times a zero input is skipped here, where the dense form gives NaN.)
using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

using Palm.Inference.Checkpoint;

namespace Palm.Inference.Cpu;

/// <summary>
/// A matrix W (rows, cols) stored transposed (cols rows of <c>rows</c> elements, at a 64-byte
/// boundary in a pinned array) for <see cref="SparseMatVec"/>: float32, or q8 with one scale per
/// row of W (the q8 default), kept as int8 levels with the scales applied once per output.
/// </summary>
internal sealed class TransposedMatrix
{
    private readonly float[]? _f32;
    private readonly sbyte[]? _q8;
    private readonly ReadOnlyMemory<byte> _scales;   // q8: the tensor's own float32 scales, one per row of W
    private readonly int _off;

    /// <summary>Whether <paramref name="w"/> can be held transposed: float32, or q8 with one scale per
    /// row where AVX-512 runs (elsewhere the dense q8 kernels are faster than a scalar sparse one).</summary>
    public static bool Supports(CpuMatrix w) =>
        w.IsFloat32 || (Avx512F.IsSupported && w.Quantized is { DType: TensorDType.Q8 } q && q.GroupSize == w.Cols);

    /// <summary>Copies and transposes <paramref name="w"/>.</summary>
    /// <exception cref="ArgumentException">q4, or q8 with more than one scale per row.</exception>
    public TransposedMatrix(CpuMatrix w)
    {
        (Rows, Cols) = (w.Rows, w.Cols);
        if (w.IsFloat32)
        {
            _f32 = GC.AllocateUninitializedArray<float>(Rows * Cols + 15, pinned: true);
            unsafe { fixed (float* p = _f32) _off = (int)((64 - ((nint)p & 63)) & 63) / 4; }
            Transpose(w.Float32Span, _f32.AsSpan(_off, Rows * Cols));
        }
        else if (w.Quantized is { DType: TensorDType.Q8 } q && q.GroupSize == w.Cols)
        {
            _q8 = GC.AllocateUninitializedArray<sbyte>(Rows * Cols + 63, pinned: true);
            unsafe { fixed (sbyte* p = _q8) _off = (int)((64 - ((nint)p & 63)) & 63); }
            Transpose(MemoryMarshal.Cast<byte, sbyte>(q.Data.Span), _q8.AsSpan(_off, Rows * Cols));
            _scales = q.Scales;
        }
        else throw new ArgumentException($"{w.Name}: only float32 and q8 with one scale per row are held transposed", nameof(w));
    }

    private void Transpose<T>(ReadOnlySpan<T> src, Span<T> dst)
    {
        for (int i = 0; i < Rows; i++)
            for (int j = 0; j < Cols; j++)
                dst[j * Rows + i] = src[i * Cols + j];
    }

    /// <summary>Rows of the original matrix (outputs).</summary>
    public int Rows { get; }
    /// <summary>Columns of the original matrix (inputs).</summary>
    public int Cols { get; }
    /// <summary>Bytes this copy adds: 4 an element, or 1 for q8 (whose scales are the tensor's own, shared).</summary>
    public long Bytes => (_f32 is not null ? 4L : 1L) * Rows * Cols;

    /// <summary>
    /// y (n) = W[row0 .. row0 + n, col0 .. col0 + k) · x (k), reading only the weights of the
    /// inputs listed in <paramref name="nonzero"/> (indices into x, ascending, each &lt; k; any
    /// input not listed must be zero).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void MatVec(int row0, int n, int col0, ReadOnlySpan<float> x, ReadOnlySpan<int> nonzero, Span<float> y)
    {
        if (n == 0) return;
        if (row0 < 0 || n < 0 || row0 + n > Rows || col0 < 0 || y.Length < n)
            throw new ArgumentException("sparse matrix-vector shapes do not match");
        if (nonzero.Length > 0 && (nonzero[^1] >= x.Length || col0 + nonzero[^1] >= Cols))
            throw new ArgumentException("a nonzero index lies outside the input");
        fixed (float* px = x) fixed (int* pi = nonzero) fixed (float* py = y)
        {
            if (_f32 is not null)
                fixed (float* pt = _f32) SparseMatVec.Accumulate(pt + _off + (long)col0 * Rows + row0, Rows, px, pi, nonzero.Length, n, py);
            else
                fixed (sbyte* pt = _q8) fixed (byte* ps = _scales.Span)
                    SparseMatVec.AccumulateQ8(pt + _off + (long)col0 * Rows + row0, Rows, px, pi, nonzero.Length, n, (float*)ps + row0, py);
        }
    }
}

internal static class SparseMatVec
{
    /// <summary>
    /// Writes into <paramref name="nonzero"/> the indices of the nonzero (or NaN) elements of x, in
    /// ascending order, and returns how many there are. <paramref name="nonzero"/> must hold
    /// x.Length + <see cref="Slack"/> ints (whole vectors of indices are stored past the count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe int Nonzero(ReadOnlySpan<float> x, Span<int> nonzero)
    {
        if (nonzero.Length < x.Length + Slack) throw new ArgumentException("the index buffer is shorter than the input plus the slack", nameof(nonzero));
        int n = 0, i = 0;
        fixed (float* px = x) fixed (int* pn = nonzero)
        {
            // The zeros come in no pattern, so a branch per input mispredicts on about half of
            // them (measured: 13 % of a `small` token). AVX-512 packs the indices of a 16-input
            // mask with one compress; elsewhere each input stores its index and counts itself.
            if (Avx512F.IsSupported)
            {
                var iota = Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                for (; i + 16 <= x.Length; i += 16)
                {
                    var keep = ~Vector512.Equals(Vector512.Load(px + i), Vector512<float>.Zero).AsInt32();
                    Avx512F.Compress(Vector512<int>.Zero, keep, iota + Vector512.Create(i)).Store(pn + n);
                    n += BitOperations.PopCount((uint)keep.ExtractMostSignificantBits());
                }
            }
            for (; i < x.Length; i++)
            {
                pn[n] = i;
                n += px[i] != 0f ? 1 : 0;
            }
        }
        return n;
    }

    /// <summary>Ints past x.Length that <see cref="Nonzero"/> may write (a vector of indices).</summary>
    public const int Slack = 16;

    /// <summary>
    /// y (n) = Σ over t &lt; nnz of x[idx[t]] · wt[idx[t] * ld + 0 .. n), each output one chain in
    /// t order (so the bits do not depend on n, on where y is cut, or on the vector width's chunks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void Accumulate(float* wt, long ld, float* x, int* idx, int nnz, int n, float* y)
    {
        int o = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; o + 128 <= n; o += 128) Chunk512x8(wt + o, ld, x, idx, nnz, y + o);
            // 64 outputs (the projection's rank-64 factor): four independent chains, not one.
            if (o + 64 <= n) { Chunk512x4(wt + o, ld, x, idx, nnz, y + o); o += 64; }
            for (; o + 16 <= n; o += 16)
            {
                var a = Vector512<float>.Zero;
                for (int t = 0; t < nnz; t++)
                    a = Vector512.FusedMultiplyAdd(Vector512.Create(x[idx[t]]), Vector512.Load(wt + idx[t] * ld + o), a);
                a.Store(y + o);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; o + 64 <= n; o += 64) Chunk256x8(wt + o, ld, x, idx, nnz, y + o);
            for (; o + 8 <= n; o += 8)
            {
                var a = Vector256<float>.Zero;
                for (int t = 0; t < nnz; t++)
                    a = Vector256.FusedMultiplyAdd(Vector256.Create(x[idx[t]]), Vector256.Load(wt + idx[t] * ld + o), a);
                a.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float a = 0f;
            for (int t = 0; t < nnz; t++) a = MathF.FusedMultiplyAdd(x[idx[t]], wt[idx[t] * ld + o], a);
            y[o] = a;
        }
    }

    // 128 outputs in eight registers; each listed row's 512 bytes are read front to back.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Chunk512x8(float* wt, long ld, float* x, int* idx, int nnz, float* y)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int t = 0; t < nnz; t++)
        {
            int j = idx[t];
            var s = Vector512.Create(x[j]);
            float* r = wt + j * ld;
            a0 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r), a0);
            a1 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 32), a2);
            a3 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 48), a3);
            a4 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 64), a4);
            a5 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 80), a5);
            a6 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 96), a6);
            a7 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 112), a7);
        }
        a0.Store(y); a1.Store(y + 16); a2.Store(y + 32); a3.Store(y + 48);
        a4.Store(y + 64); a5.Store(y + 80); a6.Store(y + 96); a7.Store(y + 112);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Chunk512x4(float* wt, long ld, float* x, int* idx, int nnz, float* y)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int t = 0; t < nnz; t++)
        {
            int j = idx[t];
            var s = Vector512.Create(x[j]);
            float* r = wt + j * ld;
            a0 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r), a0);
            a1 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 32), a2);
            a3 = Vector512.FusedMultiplyAdd(s, Vector512.Load(r + 48), a3);
        }
        a0.Store(y); a1.Store(y + 16); a2.Store(y + 32); a3.Store(y + 48);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Chunk256x8(float* wt, long ld, float* x, int* idx, int nnz, float* y)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int t = 0; t < nnz; t++)
        {
            int j = idx[t];
            var s = Vector256.Create(x[j]);
            float* r = wt + j * ld;
            a0 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r), a0);
            a1 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 8), a1);
            a2 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 16), a2);
            a3 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 24), a3);
            a4 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 32), a4);
            a5 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 40), a5);
            a6 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 48), a6);
            a7 = Vector256.FusedMultiplyAdd(s, Vector256.Load(r + 56), a7);
        }
        a0.Store(y); a1.Store(y + 8); a2.Store(y + 16); a3.Store(y + 24);
        a4.Store(y + 32); a5.Store(y + 40); a6.Store(y + 48); a7.Store(y + 56);
    }

    /// <summary>
    /// As <see cref="Accumulate"/> for int8 levels: y[o] = scale[o] · Σ over t of x[idx[t]] ·
    /// level[idx[t] * ld + o], the sum one chain per output in t order, scaled once at the end.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void AccumulateQ8(sbyte* qt, long ld, float* x, int* idx, int nnz, int n, float* scale, float* y)
    {
        int o = 0;
        if (Avx512F.IsSupported)
        {
            for (; o + 64 <= n; o += 64)
            {
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int t = 0; t < nnz; t++)
                {
                    int j = idx[t];
                    var s = Vector512.Create(x[j]);
                    sbyte* r = qt + j * ld + o;
                    a0 = Avx512F.FusedMultiplyAdd(Levels(r), s, a0);
                    a1 = Avx512F.FusedMultiplyAdd(Levels(r + 16), s, a1);
                    a2 = Avx512F.FusedMultiplyAdd(Levels(r + 32), s, a2);
                    a3 = Avx512F.FusedMultiplyAdd(Levels(r + 48), s, a3);
                }
                Avx512F.Multiply(a0, Vector512.Load(scale + o)).Store(y + o);
                Avx512F.Multiply(a1, Vector512.Load(scale + o + 16)).Store(y + o + 16);
                Avx512F.Multiply(a2, Vector512.Load(scale + o + 32)).Store(y + o + 32);
                Avx512F.Multiply(a3, Vector512.Load(scale + o + 48)).Store(y + o + 48);
            }
            for (; o + 16 <= n; o += 16)
            {
                var a = Vector512<float>.Zero;
                for (int t = 0; t < nnz; t++)
                    a = Avx512F.FusedMultiplyAdd(Levels(qt + idx[t] * ld + o), Vector512.Create(x[idx[t]]), a);
                Avx512F.Multiply(a, Vector512.Load(scale + o)).Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float a = 0f;
            for (int t = 0; t < nnz; t++) a = MathF.FusedMultiplyAdd(qt[idx[t] * ld + o], x[idx[t]], a);
            y[o] = a * scale[o];
        }

        // Sixteen levels widened to int32 and converted (exact: |level| <= 127).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Levels(sbyte* p) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));
    }
}
