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
/// boundary in a pinned array) for <see cref="SparseMatVec"/>: float32, or the int8 levels of a q8
/// or q4 tensor with its scales laid out by group ([group][row]; a q8 tensor with one scale per
/// row, the default, keeps its own scales), applied once per group of inputs.
/// </summary>
internal sealed class TransposedMatrix
{
    private readonly float[]? _f32;
    private readonly sbyte[]? _levels;
    private readonly ReadOnlyMemory<byte> _scales;   // quantized: float32 [group][row]
    private readonly int _off, _groupSize;
    private readonly bool _ownScales;

    /// <summary>Whether <paramref name="w"/> can be held transposed: float32 anywhere; q8 or q4 where
    /// AVX-512 runs (elsewhere the dense quantized kernels beat a scalar sparse one).</summary>
    public static bool Supports(CpuMatrix w) =>
        w.IsFloat32 || (Avx512F.IsSupported && w.Quantized is { DType: TensorDType.Q8 or TensorDType.Q4 });

    /// <summary>Copies and transposes <paramref name="w"/>.</summary>
    /// <exception cref="ArgumentException">A quantized type other than q8 and q4.</exception>
    public TransposedMatrix(CpuMatrix w)
    {
        (Rows, Cols) = (w.Rows, w.Cols);
        if (w.IsFloat32)
        {
            _f32 = GC.AllocateUninitializedArray<float>(Rows * Cols + 15, pinned: true);
            unsafe { fixed (float* p = _f32) _off = (int)((64 - ((nint)p & 63)) & 63) / 4; }
            Transpose(w.Float32Span, _f32.AsSpan(_off, Rows * Cols));
        }
        else if (w.Quantized is { DType: TensorDType.Q8 or TensorDType.Q4 } q)
        {
            _groupSize = q.GroupSize;
            _levels = GC.AllocateUninitializedArray<sbyte>(Rows * Cols + 63, pinned: true);
            unsafe { fixed (sbyte* p = _levels) _off = (int)((64 - ((nint)p & 63)) & 63); }
            var dst = _levels.AsSpan(_off, Rows * Cols);
            for (int i = 0; i < Rows; i++)
                for (int j = 0; j < Cols; j++)
                    dst[j * Rows + i] = (sbyte)q.Level(i * Cols + j);
            int groups = Cols / _groupSize;
            if (q.DType == TensorDType.Q8 && groups == 1) _scales = q.Scales;   // already [0][row]
            else
            {
                var sc = new float[groups * Rows];
                for (int i = 0; i < Rows; i++)
                    for (int g = 0; g < groups; g++) sc[g * Rows + i] = q.GetScale(i * groups + g);
                _scales = MemoryMarshal.AsBytes(sc.AsSpan()).ToArray();
                _ownScales = true;
            }
        }
        else throw new ArgumentException($"{w.Name}: only float32, q8 and q4 matrices are held transposed", nameof(w));
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
    /// <summary>Bytes this copy adds: 4 an element; quantized 1 an element plus the scales by group
    /// (none for q8 with one scale per row: its own are shared).</summary>
    public long Bytes => _f32 is not null ? 4L * Rows * Cols
        : Rows * (long)Cols + (_ownScales ? _scales.Length : 0);

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
                fixed (sbyte* pt = _levels) fixed (byte* ps = _scales.Span)
                    SparseMatVec.AccumulateQuantized(pt + _off + (long)col0 * Rows + row0, Rows, px, pi, nonzero.Length, n,
                        (float*)ps + row0, Rows, col0, _groupSize, py);
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
    /// As <see cref="Accumulate"/> for int8 levels with scales by group of <paramref name="groupSize"/>
    /// inputs (input idx[t] is column col0 + idx[t] of W): per group, the levels times x are one
    /// chain per output in t order; each group's sum times its scale is added to the output's
    /// total (one FMA) in group order. scale[g * scaleStride + o] is output o's scale in group g.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void AccumulateQuantized(sbyte* qt, long ld, float* x, int* idx, int nnz, int n,
        float* scale, long scaleStride, int col0, int groupSize, float* y)
    {
        int o = 0;
        if (Avx512F.IsSupported)
        {
            for (; o + 64 <= n; o += 64)
            {
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (int t = 0; t < nnz;)
                {
                    int g = (col0 + idx[t]) / groupSize, end = (g + 1) * groupSize - col0;
                    Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    for (; t < nnz && idx[t] < end; t++)
                    {
                        int j = idx[t];
                        var xv = Vector512.Create(x[j]);
                        sbyte* r = qt + j * ld + o;
                        a0 = Avx512F.FusedMultiplyAdd(Levels(r), xv, a0);
                        a1 = Avx512F.FusedMultiplyAdd(Levels(r + 16), xv, a1);
                        a2 = Avx512F.FusedMultiplyAdd(Levels(r + 32), xv, a2);
                        a3 = Avx512F.FusedMultiplyAdd(Levels(r + 48), xv, a3);
                    }
                    float* sc = scale + g * scaleStride + o;
                    s0 = Avx512F.FusedMultiplyAdd(a0, Vector512.Load(sc), s0);
                    s1 = Avx512F.FusedMultiplyAdd(a1, Vector512.Load(sc + 16), s1);
                    s2 = Avx512F.FusedMultiplyAdd(a2, Vector512.Load(sc + 32), s2);
                    s3 = Avx512F.FusedMultiplyAdd(a3, Vector512.Load(sc + 48), s3);
                }
                s0.Store(y + o); s1.Store(y + o + 16); s2.Store(y + o + 32); s3.Store(y + o + 48);
            }
            for (; o + 16 <= n; o += 16)
            {
                var s0 = Vector512<float>.Zero;
                for (int t = 0; t < nnz;)
                {
                    int g = (col0 + idx[t]) / groupSize, end = (g + 1) * groupSize - col0;
                    var a = Vector512<float>.Zero;
                    for (; t < nnz && idx[t] < end; t++)
                        a = Avx512F.FusedMultiplyAdd(Levels(qt + idx[t] * ld + o), Vector512.Create(x[idx[t]]), a);
                    s0 = Avx512F.FusedMultiplyAdd(a, Vector512.Load(scale + g * scaleStride + o), s0);
                }
                s0.Store(y + o);
            }
        }
        for (; o < n; o++)
        {
            float total = 0f;
            for (int t = 0; t < nnz;)
            {
                int g = (col0 + idx[t]) / groupSize, end = (g + 1) * groupSize - col0;
                float a = 0f;
                for (; t < nnz && idx[t] < end; t++) a = MathF.FusedMultiplyAdd(qt[idx[t] * ld + o], x[idx[t]], a);
                total = MathF.FusedMultiplyAdd(a, scale[g * scaleStride + o], total);
            }
            y[o] = total;
        }

        // Sixteen levels widened to int32 and converted (exact: |level| <= 127).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Levels(sbyte* p) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));
    }
}
