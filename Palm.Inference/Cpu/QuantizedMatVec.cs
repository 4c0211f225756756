// Quantized linears on the CPU with W kept in its stored q8/q4 layout (QuantizedTensor: q8 one
// int8 per element + f32 scale per group; q4 nibble q+8, element 2i in the low nibble of byte i,
// + f16 scale per group; groups of G consecutive elements never straddle rows).
//
// MatVec (decoding, y = W x): per group, levels are widened to float in registers and multiplied
// into a group accumulator; the scale multiplies that accumulator once per group (vector-wise,
// no horizontal sum per group). W is read once at 1 or 1/2 byte per element, which is what makes
// quantized decoding faster than float32 on a machine bound by memory bandwidth.
//
// q4 rows (and groups, when G is odd) can start on the high nibble of a byte: a segment starting
// at flat element s has parity s & 1, and lane j of a 16-element step takes nibble (s + j) of the
// data, i.e. byte (p + j) >> 1 of the segment's first byte with shift 4 * ((p + j) & 1). One byte
// shuffle + one variable shift per step covers both parities.
//
// MatVecRows and MatVecCols are the same products over a range of W's rows or a slice of its
// columns (the two-core decoder's fixed parts); a column slice may cut a group, and q4 slices may
// start on a high nibble: the loops run over segments (a group clipped to the slice), each scaled
// once, in a fixed order.
//
// MatMul (prefill, y = x Wᵀ for many rows): dequantizes a block of W's rows at a time into
// per-thread scratch and hands it to the packed Gemm; the whole matrix never exists as floats.
//
// Kernels are chosen at run time (AVX-512, AVX2+FMA, scalar); an explicit choice is accepted so
// tests run each one the machine supports. Nothing allocates in MatVec.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;

namespace Palm.Inference.Cpu;

/// <summary>Kernel families of <see cref="QuantizedMatVec"/>.</summary>
internal enum QuantIsa
{
    /// <summary>Portable scalar code.</summary>
    Scalar,
    /// <summary>Vector256 with AVX2 + FMA, 8 elements per step.</summary>
    Avx2,
    /// <summary>Vector512 with AVX-512F, 16 elements per step.</summary>
    Avx512,
}

internal static unsafe class QuantizedMatVec
{
    /// <summary>The fastest kernel family this machine runs.</summary>
    public static QuantIsa Best { get; } = Supported(QuantIsa.Avx512) ? QuantIsa.Avx512 : Supported(QuantIsa.Avx2) ? QuantIsa.Avx2 : QuantIsa.Scalar;

    /// <summary>Whether this machine runs <paramref name="isa"/>.</summary>
    public static bool Supported(QuantIsa isa) => isa switch
    {
        QuantIsa.Avx512 => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && Ssse3.IsSupported,
        QuantIsa.Avx2 => Vector256.IsHardwareAccelerated && Avx2.IsSupported && Fma.IsSupported,
        _ => true,
    };

    /// <summary>y (n) = W (n, k) · x (k), W quantized. Allocates nothing.</summary>
    /// <exception cref="ArgumentException">Sizes that disagree with the tensor or the spans, or a group
    /// size that does not divide k.</exception>
    public static void MatVec(QuantizedTensor w, int n, int k, ReadOnlySpan<float> x, Span<float> y) => MatVec(Best, w, n, k, x, y);

    /// <summary>As <see cref="MatVec(QuantizedTensor, int, int, ReadOnlySpan{float}, Span{float})"/> with an explicit
    /// kernel family (one the machine lacks falls back to the next one down).</summary>
    public static void MatVec(QuantIsa isa, QuantizedTensor w, int n, int k, ReadOnlySpan<float> x, Span<float> y)
    {
        ArgumentNullException.ThrowIfNull(w);
        CheckShape(w, n, k);
        if (x.Length != k || y.Length != n)
            throw new ArgumentException($"x holds {x.Length} (expected k = {k}), y {y.Length} (expected n = {n})");
        Product(isa, w, k, 0, n, 0, k, x, y);
    }

    /// <summary>y (rows) = W[row0 .. row0 + rows, :] · x (k), W (n, k) quantized: a range of output rows
    /// (the decoder's per-part vocabulary or channel rows). Each row's sum is formed exactly as
    /// <see cref="MatVec(QuantizedTensor, int, int, ReadOnlySpan{float}, Span{float})"/> forms it, up
    /// to which rows share a four-row pass. Allocates nothing.</summary>
    /// <exception cref="ArgumentException">Sizes that disagree with the tensor or the spans.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The row range leaves [0, n).</exception>
    public static void MatVecRows(QuantizedTensor w, int n, int k, int row0, int rows, ReadOnlySpan<float> x, Span<float> y) =>
        MatVecRows(Best, w, n, k, row0, rows, x, y);

    /// <summary>As <see cref="MatVecRows(QuantizedTensor, int, int, int, int, ReadOnlySpan{float}, Span{float})"/> with an explicit kernel family.</summary>
    public static void MatVecRows(QuantIsa isa, QuantizedTensor w, int n, int k, int row0, int rows, ReadOnlySpan<float> x, Span<float> y)
    {
        ArgumentNullException.ThrowIfNull(w);
        CheckShape(w, n, k);
        if (row0 < 0 || rows < 0 || (long)row0 + rows > n) throw new ArgumentOutOfRangeException(nameof(rows), $"rows [{row0}, {(long)row0 + rows}) outside [0, {n})");
        if (x.Length != k || y.Length != rows)
            throw new ArgumentException($"x holds {x.Length} (expected k = {k}), y {y.Length} (expected rows = {rows})");
        if (rows == 0) return;
        Product(isa, w, k, row0, rows, 0, k, x, y);
    }

    /// <summary>
    /// y (n) = W[:, col0 .. col0 + cols) · x (cols), W (n, k) quantized: a partial sum over a slice of
    /// the input (the decoder's per-part heads or FFN channels). The slice may start and end inside
    /// a group and, for q4, on the high nibble of a byte: per group it covers, the levels in the slice
    /// times x are summed and multiplied by that group's scale once, always in the same order, so a
    /// given (col0, cols) gives the same bits on any thread. <paramref name="cols"/> = 0 writes zeros.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes that disagree with the tensor or the spans.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The column range leaves [0, k).</exception>
    public static void MatVecCols(QuantizedTensor w, int n, int k, int col0, int cols, ReadOnlySpan<float> x, Span<float> y) =>
        MatVecCols(Best, w, n, k, col0, cols, x, y);

    /// <summary>As <see cref="MatVecCols(QuantizedTensor, int, int, int, int, ReadOnlySpan{float}, Span{float})"/> with an explicit kernel family.</summary>
    public static void MatVecCols(QuantIsa isa, QuantizedTensor w, int n, int k, int col0, int cols, ReadOnlySpan<float> x, Span<float> y)
    {
        ArgumentNullException.ThrowIfNull(w);
        CheckShape(w, n, k);
        if (col0 < 0 || cols < 0 || (long)col0 + cols > k) throw new ArgumentOutOfRangeException(nameof(cols), $"columns [{col0}, {(long)col0 + cols}) outside [0, {k})");
        if (x.Length != cols || y.Length != n)
            throw new ArgumentException($"x holds {x.Length} (expected cols = {cols}), y {y.Length} (expected n = {n})");
        if (cols == 0) { y.Clear(); return; }
        Product(isa, w, k, 0, n, col0, col0 + cols, x, y);
    }

    /// <summary>
    /// y (rows) = W[row0 .. row0 + rows, col0 .. col0 + cols) · x (cols): a block of rows of
    /// <see cref="MatVecCols(QuantizedTensor, int, int, int, int, ReadOnlySpan{float}, Span{float})"/>,
    /// each row's sum formed as there.
    /// </summary>
    public static void MatVecBlock(QuantizedTensor w, int n, int k, int row0, int rows, int col0, int cols, ReadOnlySpan<float> x, Span<float> y)
    {
        ArgumentNullException.ThrowIfNull(w);
        CheckShape(w, n, k);
        if (row0 < 0 || rows < 0 || (long)row0 + rows > n) throw new ArgumentOutOfRangeException(nameof(rows), $"rows [{row0}, {(long)row0 + rows}) outside [0, {n})");
        if (col0 < 0 || cols < 0 || (long)col0 + cols > k) throw new ArgumentOutOfRangeException(nameof(cols), $"columns [{col0}, {(long)col0 + cols}) outside [0, {k})");
        if (x.Length != cols || y.Length != rows)
            throw new ArgumentException($"x holds {x.Length} (expected cols = {cols}), y {y.Length} (expected rows = {rows})");
        if (rows == 0) return;
        if (cols == 0) { y.Clear(); return; }
        Product(Best, w, k, row0, rows, col0, col0 + cols, x, y);
    }

    // y[i] = Σ_{j in [c0, c1)} W[row0 + i, j] x[j - c0] for i in [0, rows): the one body of every
    // matrix-vector entry point (arguments already checked).
    private static void Product(QuantIsa isa, QuantizedTensor w, int k, int row0, int rows, int c0, int c1, ReadOnlySpan<float> x, Span<float> y)
    {
        isa = Usable(isa);
        var data = w.Data.Span;
        var scales = w.Scales.Span;
        fixed (byte* pd = data) fixed (byte* ps = scales) fixed (float* px = x) fixed (float* py = y)
        {
            var m = new Matrix(w.DType, pd, data.Length, ps, w.GroupSize, k);
            int i = 0;
            // The four-row passes need every segment (a group clipped to [c0, c1)) to be whole vector
            // steps, which for q4 also puts every segment on a byte boundary.
            // q8 rows whose slice lies inside one group (the default: one scale per row), sixteen
            // at a time with one transposing reduction (FloatMatVec.Reduce16), then the 4-row pass.
            if (isa == QuantIsa.Avx512 && m.Q8 && c1 > c0 && c0 / w.GroupSize == (c1 - 1) / w.GroupSize && c0 % 16 == 0 && c1 % 16 == 0)
                i = c1 - c0 == 64 ? Rows16Q8K64(m, row0, rows, c0, px, py) : Rows16Q8x512(m, row0, rows, c0, c1, px, py);
            // q4 segments of exactly 64 columns in whole groups of 32 or 64: sixteen rows per pass.
            else if (isa == QuantIsa.Avx512 && !m.Q8 && c1 - c0 == 64 && (w.GroupSize == 32 || w.GroupSize == 64) && c0 % w.GroupSize == 0)
                i = Rows16Q4K64(m, row0, rows, c0, px, py);
            // q4 segments of whole 32-element steps inside whole groups: the split-nibble kernel.
            else if (isa == QuantIsa.Avx512 && !m.Q8 && c1 > c0 && w.GroupSize % 32 == 0 && c0 % w.GroupSize == 0 && (c1 - c0) % w.GroupSize == 0 && c1 - c0 <= Q4SplitMaxCols)
                i = Rows4Q4Split512(m, row0, rows, c0, c1, px, py);
            if (isa == QuantIsa.Avx512 && w.GroupSize % 16 == 0 && c0 % 16 == 0 && c1 % 16 == 0) i += Rows4x512(m, row0 + i, rows - i, c0, c1, px, py + i);
            else if (isa == QuantIsa.Avx2 && w.GroupSize % 8 == 0 && c0 % 8 == 0 && c1 % 8 == 0) i = Rows4x256(m, row0, rows, c0, c1, px, py);
            for (; i < rows; i++) py[i] = RowDot(isa, m, row0 + i, c0, c1, px);
        }
    }

    /// <summary>
    /// y (m, n) = x (m, k) · Wᵀ with W (n, k) quantized: blocks of W's rows are dequantized into
    /// per-thread scratch and multiplied by <see cref="Gemm"/>; a single row goes through
    /// <see cref="MatVec(QuantizedTensor, int, int, ReadOnlySpan{float}, Span{float})"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes that disagree with the tensor or the spans.</exception>
    public static void MatMul(QuantizedTensor w, ReadOnlySpan<float> x, int m, int n, int k, Span<float> y, bool parallel = true) =>
        MatMul(Best, w, x, m, n, k, y, parallel, rowsPerBlock: 0);

    /// <summary>The block size <see cref="MatMul(QuantizedTensor, ReadOnlySpan{float}, int, int, int, Span{float}, bool)"/>
    /// uses: about 64 KiB of floats per block (L2-resident with its packed copy), a multiple of 32 rows.</summary>
    public static int DefaultRowsPerBlock(int k) => Math.Max(32, 16384 / Math.Max(k, 1) / 32 * 32);

    /// <summary>As <see cref="MatMul(QuantizedTensor, ReadOnlySpan{float}, int, int, int, Span{float}, bool)"/> with an
    /// explicit kernel family and block size (0: <see cref="DefaultRowsPerBlock"/>; tests use small blocks);
    /// <paramref name="accumulate"/> adds the product onto y (y += x Wᵀ: the FFN down linear onto the residual).</summary>
    public static void MatMul(QuantIsa isa, QuantizedTensor w, ReadOnlySpan<float> x, int m, int n, int k, Span<float> y, bool parallel, int rowsPerBlock, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(w);
        CheckShape(w, n, k);
        if (m <= 0 || (long)x.Length != (long)m * k || (long)y.Length != (long)m * n)
            throw new ArgumentException($"x holds {x.Length} (expected m*k = {(long)m * k}), y {y.Length} (expected m*n = {(long)m * n}) for m = {m}");
        if (rowsPerBlock < 0) throw new ArgumentOutOfRangeException(nameof(rowsPerBlock), rowsPerBlock, "must be >= 0");
        if (m == 1 && !accumulate)
        {
            MatVec(isa, w, n, k, x, y);
            return;
        }
        if (m == 1)
        {
            // The product into this thread's scratch, then added: still no allocation.
            var t = new Span<float>(Scratch.Current.C(n), n);
            MatVec(isa, w, n, k, x, t);
            TensorPrimitives.Add(y, t, y);
            return;
        }
        isa = Usable(isa);
        int nb = Math.Min(n, rowsPerBlock > 0 ? rowsPerBlock : DefaultRowsPerBlock(k));
        int blocks = (n + nb - 1) / nb;
        var data = w.Data.Span;
        var scales = w.Scales.Span;
        fixed (byte* pd = data) fixed (byte* ps = scales) fixed (float* px = x) fixed (float* py = y)
        {
            var job = new BlockJob
            {
                Isa = isa, W = new Matrix(w.DType, pd, data.Length, ps, w.GroupSize, k),
                X = px, Y = py, M = m, N = n, K = k, Nb = nb, Accumulate = accumulate,
            };
            // A worker per block when there is enough work to pay for the hand-off (Gemm's own threshold).
            if (parallel && blocks > 1 && Environment.ProcessorCount > 1 && (long)m * n * k >= 1L << 19)
                Parallel.For(0, blocks, job.Run);
            else
                for (int b = 0; b < blocks; b++) job.Run(b);
        }
    }

    /// <summary>Dequantizes rows [row0, row0 + rows) of W (n, k) into <paramref name="destination"/> (rows * k floats).</summary>
    public static void DequantizeRows(QuantIsa isa, QuantizedTensor w, int k, int row0, int rows, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(w);
        if (k <= 0 || w.Length % k != 0) throw new ArgumentException($"k = {k} does not divide the tensor's {w.Length} elements");
        CheckShape(w, w.Length / k, k);
        if (row0 < 0 || rows < 0 || (long)row0 + rows > w.Length / k) throw new ArgumentOutOfRangeException(nameof(rows), $"rows [{row0}, {row0 + rows}) outside [0, {w.Length / k})");
        if ((long)destination.Length != (long)rows * k) throw new ArgumentException($"destination holds {destination.Length}, expected {(long)rows * k}", nameof(destination));
        isa = Usable(isa);
        var data = w.Data.Span;
        var scales = w.Scales.Span;
        fixed (byte* pd = data) fixed (byte* ps = scales) fixed (float* dst = destination)
        {
            var m = new Matrix(w.DType, pd, data.Length, ps, w.GroupSize, k);
            for (int r = 0; r < rows; r++) DequantizeRow(isa, m, row0 + r, dst + (long)r * k);
        }
    }

    private static void CheckShape(QuantizedTensor w, int n, int k)
    {
        if (n <= 0 || k <= 0 || (long)n * k != w.Length) throw new ArgumentException($"W ({n}, {k}) does not hold the tensor's {w.Length} elements");
        if (k % w.GroupSize != 0) throw new ArgumentException($"group size {w.GroupSize} does not divide k = {k}: a group would straddle two rows");
    }

    private static QuantIsa Usable(QuantIsa isa)
    {
        if (isa == QuantIsa.Avx512 && !Supported(QuantIsa.Avx512)) isa = QuantIsa.Avx2;
        if (isa == QuantIsa.Avx2 && !Supported(QuantIsa.Avx2)) isa = QuantIsa.Scalar;
        return isa;
    }

    // The stored bytes of a (rows, K) matrix, pinned for the duration of a call.
    private readonly struct Matrix(TensorDType dtype, byte* data, int dataBytes, byte* scales, int group, int k)
    {
        public readonly bool Q8 = dtype == TensorDType.Q8;
        public readonly byte* Data = data;
        public readonly int DataBytes = dataBytes;
        public readonly byte* Scales = scales;
        public readonly int G = group;
        public readonly int K = k;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float Scale(long g) => Q8 ? ((float*)Scales)[g] : HalfToSingle(((ushort*)Scales)[g]);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public int Level(long i) => Q8 ? (sbyte)Data[i] : ((Data[i >> 1] >> (int)(4 * (i & 1))) & 0xF) - 8;
    }

    // float16 bits -> float32, exactly, for every finite value: the half's exponent and mantissa
    // placed in a float's fields are the value times 2^-112 (subnormal halves land on float
    // subnormals with the same digits), so one multiply by 2^112 rescales. Beats the Half cast,
    // which runs once per group here.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfToSingle(ushort h)
    {
        float magnitude = BitConverter.Int32BitsToSingle((h & 0x7FFF) << 13) * 5.192296858534828e33f; // 2^112
        return (h & 0x8000) != 0 ? -magnitude : magnitude;
    }

    // Lane j of a q4 step reads byte (p + j) >> 1 and shifts it by 4 * ((p + j) & 1), p the parity
    // of the step's first element.
    private static readonly Vector128<byte> s_nibbleBytesEven = Vector128.Create((byte)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    private static readonly Vector128<byte> s_nibbleBytesOdd = Vector128.Create((byte)0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8);
    private static readonly Vector512<uint> s_shift512Even = Vector512.Create(0u, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    private static readonly Vector512<uint> s_shift512Odd = Vector512.Create(4u, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    private static readonly Vector256<uint> s_shift256Even = Vector256.Create(0u, 4, 0, 4, 0, 4, 0, 4);
    private static readonly Vector256<uint> s_shift256Odd = Vector256.Create(4u, 0, 4, 0, 4, 0, 4, 0);

    // 16 q8 levels at p as floats (reads exactly 16 bytes).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Q8x16(byte* p) =>
        Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)p)));

    // 16 q4 levels starting at nibble parity `odd` of byte p as floats (reads 16 bytes: the caller
    // guarantees they exist).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Q4x16(byte* p, Vector128<byte> pick, Vector512<uint> shift)
    {
        var bytes = Ssse3.Shuffle(Vector128.Load(p), pick);
        var wide = Avx512F.ConvertToVector512Int32(bytes).AsUInt32();
        var nib = Avx512F.ShiftRightLogicalVariable(wide, shift) & Vector512.Create(0xFu);
        return Avx512F.ConvertToVector512Single(nib.AsInt32() - Vector512.Create(8));
    }

    // 8 q8 levels at p as floats (reads exactly 8 bytes).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q8x8(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)p));

    // 8 q4 levels starting at nibble parity `odd` of byte p as floats (reads 8 bytes: the caller
    // guarantees they exist).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q4x8(byte* p, Vector128<byte> pick, Vector256<uint> shift)
    {
        var bytes = Ssse3.Shuffle(Vector128.CreateScalar(*(ulong*)p).AsByte(), pick);
        var wide = Avx2.ConvertToVector256Int32(bytes).AsUInt32();
        var nib = Avx2.ShiftRightLogicalVariable(wide, shift) & Vector256.Create(0xFu);
        return Avx.ConvertToVector256Single(nib.AsInt32() - Vector256.Create(8));
    }

    // Four rows at a time when every segment (a group clipped to the columns [c0, c1)) is whole
    // vector steps (G, c0 and c1 multiples of 16; for q4 this also makes every segment start on a
    // byte): x is loaded once for four rows, and the four accumulator chains are independent, which
    // short rows (k = 64: four steps) need to keep the FMA units busy. Rows row0 + i for i in
    // [0, n), x indexed from c0. Returns the first i left for the single-row path (the last rows
    // when a q4 step would read past the data). With [c0, c1) = [0, K) the segments are the groups.
    private static int Rows4x512(in Matrix w, int row0, int n, int c0, int c1, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G;
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            long r = row0 + i, e0 = r * K;
            if (!w.Q8 && (e0 + 4L * K) / 2 + 8 > w.DataBytes) break;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            float* s0 = null; ushort* h0 = null;
            if (w.Q8) s0 = (float*)w.Scales + r * gpr; else h0 = (ushort*)w.Scales + r * gpr;
            for (int a = c0; a < c1;)
            {
                int gk = a / G, len = Math.Min((gk + 1) * G, c1) - a;
                var g0 = Vector512<float>.Zero; var g1 = g0; var g2 = g0; var g3 = g0;
                float* xg = x + (a - c0);
                if (w.Q8)
                {
                    byte* p = w.Data + e0 + a;
                    for (int j = 0; j < len; j += 16)
                    {
                        var xv = Vector512.Load(xg + j);
                        g0 = Vector512.FusedMultiplyAdd(Q8x16(p + j), xv, g0);
                        g1 = Vector512.FusedMultiplyAdd(Q8x16(p + K + j), xv, g1);
                        g2 = Vector512.FusedMultiplyAdd(Q8x16(p + 2 * K + j), xv, g2);
                        g3 = Vector512.FusedMultiplyAdd(Q8x16(p + 3 * K + j), xv, g3);
                    }
                    a0 = Vector512.FusedMultiplyAdd(g0, Vector512.Create(s0[gk]), a0);
                    a1 = Vector512.FusedMultiplyAdd(g1, Vector512.Create(s0[gpr + gk]), a1);
                    a2 = Vector512.FusedMultiplyAdd(g2, Vector512.Create(s0[2 * gpr + gk]), a2);
                    a3 = Vector512.FusedMultiplyAdd(g3, Vector512.Create(s0[3 * gpr + gk]), a3);
                }
                else
                {
                    byte* p = w.Data + (e0 + a) / 2;
                    int rb = K / 2;   // bytes per row (K is even here)
                    for (int j = 0; j < len; j += 16)
                    {
                        var xv = Vector512.Load(xg + j);
                        g0 = Vector512.FusedMultiplyAdd(Q4x16(p + j / 2, s_nibbleBytesEven, s_shift512Even), xv, g0);
                        g1 = Vector512.FusedMultiplyAdd(Q4x16(p + rb + j / 2, s_nibbleBytesEven, s_shift512Even), xv, g1);
                        g2 = Vector512.FusedMultiplyAdd(Q4x16(p + 2 * rb + j / 2, s_nibbleBytesEven, s_shift512Even), xv, g2);
                        g3 = Vector512.FusedMultiplyAdd(Q4x16(p + 3 * rb + j / 2, s_nibbleBytesEven, s_shift512Even), xv, g3);
                    }
                    a0 = Vector512.FusedMultiplyAdd(g0, Vector512.Create(HalfToSingle(h0[gk])), a0);
                    a1 = Vector512.FusedMultiplyAdd(g1, Vector512.Create(HalfToSingle(h0[gpr + gk])), a1);
                    a2 = Vector512.FusedMultiplyAdd(g2, Vector512.Create(HalfToSingle(h0[2 * gpr + gk])), a2);
                    a3 = Vector512.FusedMultiplyAdd(g3, Vector512.Create(HalfToSingle(h0[3 * gpr + gk])), a3);
                }
                a += len;
            }
            y[i] = Vector512.Sum(a0); y[i + 1] = Vector512.Sum(a1); y[i + 2] = Vector512.Sum(a2); y[i + 3] = Vector512.Sum(a3);
        }
        return i;
    }

    private const int Q4SplitMaxCols = 4096;

    // q4, four rows per pass, over whole groups of a multiple of 32 elements. 16 bytes hold 32
    // levels, element 2j in the low nibble of byte j: one zero-extension of the 16 bytes to 16
    // lanes gives the even elements (& 0xF) and the odd ones (>> 4), multiplied by x split into
    // its even and odd elements once per call. The level offset is folded out: Σ (n - 8) x =
    // Σ n x - 8 Σ x, with Σ x per group also computed once. Per 32 weights and row that is 8
    // vector operations, one of them a shuffle, against 14 (four shuffles) for two Q4x16 steps.
    private static int Rows4Q4Split512(in Matrix w, int row0, int n, int c0, int c1, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G, len = c1 - c0, groups = len / G;
        float* xe = stackalloc float[len / 2];
        float* xo = stackalloc float[len / 2];
        float* gsum = stackalloc float[groups];
        for (int c = 0; c < len; c += 32)
        {
            // Lane l of chunk c: elements c + 2l (even) and c + 2l + 1 (odd).
            var lo = Vector512.Load(x + c); var hi = Vector512.Load(x + c + 16);
            Avx512F.PermuteVar16x32x2(lo, s_evenIdx, hi).Store(xe + c / 2);
            Avx512F.PermuteVar16x32x2(lo, s_oddIdx, hi).Store(xo + c / 2);
        }
        for (int g = 0; g < groups; g++) gsum[g] = TensorPrimitives.Sum(new ReadOnlySpan<float>(x + g * G, G));
        var mask = Vector512.Create(0xFu);
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            long r = row0 + i;
            ushort* h0 = (ushort*)w.Scales + r * gpr;
            byte* p0 = w.Data + (r * K + c0) / 2;
            long rb = K / 2;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            float k0 = 0, k1 = 0, k2 = 0, k3 = 0;
            for (int g = 0; g < groups; g++)
            {
                var g0 = Vector512<float>.Zero; var g1 = g0; var g2 = g0; var g3 = g0;
                for (int c = g * G; c < (g + 1) * G; c += 32)
                {
                    var ve = Vector512.Load(xe + c / 2); var vo = Vector512.Load(xo + c / 2);
                    byte* p = p0 + c / 2;
                    g0 = Nibbles(p, ve, vo, mask, g0);
                    g1 = Nibbles(p + rb, ve, vo, mask, g1);
                    g2 = Nibbles(p + 2 * rb, ve, vo, mask, g2);
                    g3 = Nibbles(p + 3 * rb, ve, vo, mask, g3);
                }
                int gk = c0 / G + g;
                float s0 = HalfToSingle(h0[gk]), s1 = HalfToSingle(h0[gpr + gk]), s2 = HalfToSingle(h0[2 * gpr + gk]), s3 = HalfToSingle(h0[3 * gpr + gk]);
                a0 = Vector512.FusedMultiplyAdd(g0, Vector512.Create(s0), a0);
                a1 = Vector512.FusedMultiplyAdd(g1, Vector512.Create(s1), a1);
                a2 = Vector512.FusedMultiplyAdd(g2, Vector512.Create(s2), a2);
                a3 = Vector512.FusedMultiplyAdd(g3, Vector512.Create(s3), a3);
                float off = 8 * gsum[g];
                k0 += s0 * off; k1 += s1 * off; k2 += s2 * off; k3 += s3 * off;
            }
            y[i] = Vector512.Sum(a0) - k0; y[i + 1] = Vector512.Sum(a1) - k1; y[i + 2] = Vector512.Sum(a2) - k2; y[i + 3] = Vector512.Sum(a3) - k3;
        }
        return i;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Nibbles(byte* p, Vector512<float> ve, Vector512<float> vo, Vector512<uint> mask, Vector512<float> acc)
        {
            var v = Avx512F.ConvertToVector512Int32(Vector128.Load(p)).AsUInt32();
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single((v & mask).AsInt32()), ve, acc);
            return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ShiftRightLogical(v, 4).AsInt32()), vo, acc);
        }
    }

    // Rows4Q4Split512 for segments of exactly 64 columns in whole groups of 32 or 64 (the rank-64
    // second factors: most of a `small` q4 token), sixteen rows per pass: x split into even and
    // odd elements once and kept in four registers, each row's 32 bytes read front to back, the
    // sixteen row vectors (each group's sum times its scale) reduced at once (FloatMatVec.Reduce16)
    // instead of a horizontal sum per row, and the level offset (8 · scale · Σx per group) taken
    // off the sixteen sums as one vector.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Rows16Q4K64(in Matrix w, int row0, int n, int c0, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G, gk = c0 / G;
        bool two = G == 32;
        var l0 = Vector512.Load(x); var h0 = Vector512.Load(x + 16); var l1 = Vector512.Load(x + 32); var h1 = Vector512.Load(x + 48);
        var xe0 = Avx512F.PermuteVar16x32x2(l0, s_evenIdx, h0); var xo0 = Avx512F.PermuteVar16x32x2(l0, s_oddIdx, h0);
        var xe1 = Avx512F.PermuteVar16x32x2(l1, s_evenIdx, h1); var xo1 = Avx512F.PermuteVar16x32x2(l1, s_oddIdx, h1);
        float gs0 = TensorPrimitives.Sum(new ReadOnlySpan<float>(x, 32)), gs1 = TensorPrimitives.Sum(new ReadOnlySpan<float>(x + 32, 32));
        var mask = Vector512.Create(0xFu);
        var X = new Q4Row(xe0, xo0, xe1, xo1, mask, gs0, gs1, two);
        float* off = stackalloc float[16];
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            long r = row0 + i;
            byte* b = w.Data + (r * K + c0) / 2;
            ushort* h = (ushort*)w.Scales + r * gpr + gk;
            long rb = K / 2;
            // Accumulator s takes row 4 * (s % 4) + s / 4 (see Reduce16).
            var sums = FloatMatVec.Reduce16(
                X.Row(b, h, 0, rb, gpr, off), X.Row(b, h, 4, rb, gpr, off), X.Row(b, h, 8, rb, gpr, off), X.Row(b, h, 12, rb, gpr, off),
                X.Row(b, h, 1, rb, gpr, off), X.Row(b, h, 5, rb, gpr, off), X.Row(b, h, 9, rb, gpr, off), X.Row(b, h, 13, rb, gpr, off),
                X.Row(b, h, 2, rb, gpr, off), X.Row(b, h, 6, rb, gpr, off), X.Row(b, h, 10, rb, gpr, off), X.Row(b, h, 14, rb, gpr, off),
                X.Row(b, h, 3, rb, gpr, off), X.Row(b, h, 7, rb, gpr, off), X.Row(b, h, 11, rb, gpr, off), X.Row(b, h, 15, rb, gpr, off));
            Avx512F.Subtract(sums, Vector512.Load(off)).Store(y + i);
        }
        return i;
    }

    private readonly struct Q4Row(Vector512<float> xe0, Vector512<float> xo0, Vector512<float> xe1, Vector512<float> xo1,
        Vector512<uint> mask, float gs0, float gs1, bool two)
    {
        // Row q of the block at b: Σ_group scale · Σ level · x as a vector (lanes still to be summed);
        // off[q] gets the row's offset 8 · Σ_group scale · Σx.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<float> Row(byte* b, ushort* h, int q, long rb, int gpr, float* off)
        {
            byte* p = b + q * rb;
            var v0 = Avx512F.ConvertToVector512Int32(Vector128.Load(p)).AsUInt32();
            var v1 = Avx512F.ConvertToVector512Int32(Vector128.Load(p + 16)).AsUInt32();
            var g0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ShiftRightLogical(v0, 4).AsInt32()), xo0,
                Avx512F.Multiply(Avx512F.ConvertToVector512Single((v0 & mask).AsInt32()), xe0));
            var g1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ShiftRightLogical(v1, 4).AsInt32()), xo1,
                Avx512F.Multiply(Avx512F.ConvertToVector512Single((v1 & mask).AsInt32()), xe1));
            float s0 = HalfToSingle(h[(long)q * gpr]);
            if (two)
            {
                float s1 = HalfToSingle(h[(long)q * gpr + 1]);
                off[q] = 8 * (s0 * gs0 + s1 * gs1);
                return Avx512F.FusedMultiplyAdd(g1, Vector512.Create(s1), Avx512F.Multiply(g0, Vector512.Create(s0)));
            }
            off[q] = 8 * s0 * (gs0 + gs1);
            return Avx512F.Multiply(Avx512F.Add(g0, g1), Vector512.Create(s0));
        }
    }

    private static readonly Vector512<int> s_evenIdx = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> s_oddIdx = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);

    // Sixteen q8 rows per pass over one segment [c0, c1) inside a single group (so one scale per
    // row applies to the whole sum): sixteen accumulators of level * x, one transposing reduction
    // to the sixteen row sums (rows fed in the order Reduce16 puts back in natural order), then
    // times the rows' scales. Short rows (k = 64) are dominated by horizontal sums otherwise.
    private static int Rows16Q8x512(in Matrix w, int row0, int n, int c0, int c1, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G, gk = c0 / G, len = c1 - c0;
        float* scales = (float*)w.Scales;
        var sc = stackalloc float[16];
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            long r = row0 + i;
            byte* b = w.Data + r * K + c0;
            // Accumulator s takes row 4 * (s % 4) + s / 4 (see Reduce16).
            byte* p0 = b, p1 = b + 4L * K, p2 = b + 8L * K, p3 = b + 12L * K;
            byte* p4 = b + 1L * K, p5 = b + 5L * K, p6 = b + 9L * K, p7 = b + 13L * K;
            byte* p8 = b + 2L * K, p9 = b + 6L * K, p10 = b + 10L * K, p11 = b + 14L * K;
            byte* p12 = b + 3L * K, p13 = b + 7L * K, p14 = b + 11L * K, p15 = b + 15L * K;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0; var a4 = a0; var a5 = a0; var a6 = a0; var a7 = a0;
            var a8 = a0; var a9 = a0; var a10 = a0; var a11 = a0; var a12 = a0; var a13 = a0; var a14 = a0; var a15 = a0;
            for (int j = 0; j < len; j += 16)
            {
                var xv = Vector512.Load(x + j);
                a0 = Avx512F.FusedMultiplyAdd(Q8x16(p0 + j), xv, a0);
                a1 = Avx512F.FusedMultiplyAdd(Q8x16(p1 + j), xv, a1);
                a2 = Avx512F.FusedMultiplyAdd(Q8x16(p2 + j), xv, a2);
                a3 = Avx512F.FusedMultiplyAdd(Q8x16(p3 + j), xv, a3);
                a4 = Avx512F.FusedMultiplyAdd(Q8x16(p4 + j), xv, a4);
                a5 = Avx512F.FusedMultiplyAdd(Q8x16(p5 + j), xv, a5);
                a6 = Avx512F.FusedMultiplyAdd(Q8x16(p6 + j), xv, a6);
                a7 = Avx512F.FusedMultiplyAdd(Q8x16(p7 + j), xv, a7);
                a8 = Avx512F.FusedMultiplyAdd(Q8x16(p8 + j), xv, a8);
                a9 = Avx512F.FusedMultiplyAdd(Q8x16(p9 + j), xv, a9);
                a10 = Avx512F.FusedMultiplyAdd(Q8x16(p10 + j), xv, a10);
                a11 = Avx512F.FusedMultiplyAdd(Q8x16(p11 + j), xv, a11);
                a12 = Avx512F.FusedMultiplyAdd(Q8x16(p12 + j), xv, a12);
                a13 = Avx512F.FusedMultiplyAdd(Q8x16(p13 + j), xv, a13);
                a14 = Avx512F.FusedMultiplyAdd(Q8x16(p14 + j), xv, a14);
                a15 = Avx512F.FusedMultiplyAdd(Q8x16(p15 + j), xv, a15);
            }
            var sums = FloatMatVec.Reduce16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15);
            for (int q = 0; q < 16; q++) sc[q] = scales[(r + q) * gpr + gk];
            Avx512F.Multiply(sums, Vector512.Load(sc)).Store(y + i);
        }
        return i;
    }

    // Rows16Q8x512 for segments of exactly 64 columns (the rank-64 second factors: most of a
    // `small` q8 token): x stays in four registers, each row's four 16-level loads are consecutive,
    // and with one group per row the sixteen scales are one vector load. The general kernel spends
    // ~40 % of such a block setting up sixteen row pointers (spilled to the stack) for only four
    // steps. Each row's sum is the general kernel's, bit for bit: w0·x0 (an FMA onto zero rounds
    // the product alone), then FMAs of w1·x1, w2·x2, w3·x3 in that order.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Rows16Q8K64(in Matrix w, int row0, int n, int c0, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G, gk = c0 / G;
        float* scales = (float*)w.Scales;
        var x0 = Vector512.Load(x); var x1 = Vector512.Load(x + 16); var x2 = Vector512.Load(x + 32); var x3 = Vector512.Load(x + 48);
        var sc = stackalloc float[16];
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            long r = row0 + i;
            byte* b = w.Data + r * K + c0;
            // Accumulator s takes row 4 * (s % 4) + s / 4 (see Reduce16).
            var sums = FloatMatVec.Reduce16(
                Row(b, K, 0, x0, x1, x2, x3), Row(b, K, 4, x0, x1, x2, x3), Row(b, K, 8, x0, x1, x2, x3), Row(b, K, 12, x0, x1, x2, x3),
                Row(b, K, 1, x0, x1, x2, x3), Row(b, K, 5, x0, x1, x2, x3), Row(b, K, 9, x0, x1, x2, x3), Row(b, K, 13, x0, x1, x2, x3),
                Row(b, K, 2, x0, x1, x2, x3), Row(b, K, 6, x0, x1, x2, x3), Row(b, K, 10, x0, x1, x2, x3), Row(b, K, 14, x0, x1, x2, x3),
                Row(b, K, 3, x0, x1, x2, x3), Row(b, K, 7, x0, x1, x2, x3), Row(b, K, 11, x0, x1, x2, x3), Row(b, K, 15, x0, x1, x2, x3));
            Vector512<float> sv;
            if (gpr == 1) sv = Vector512.Load(scales + r);
            else
            {
                for (int q = 0; q < 16; q++) sc[q] = scales[(r + q) * gpr + gk];
                sv = Vector512.Load(sc);
            }
            Avx512F.Multiply(sums, sv).Store(y + i);
        }
        return i;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Row(byte* b, int K, int q, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2, Vector512<float> x3)
        {
            byte* p = b + (long)q * K;
            return Avx512F.FusedMultiplyAdd(Q8x16(p + 48), x3,
                Avx512F.FusedMultiplyAdd(Q8x16(p + 32), x2,
                    Avx512F.FusedMultiplyAdd(Q8x16(p + 16), x1,
                        Avx512F.FusedMultiplyAdd(Q8x16(p), x0, Vector512<float>.Zero))));
        }
    }

    // Rows4x512 with 8-wide steps (G, c0 and c1 multiples of 8).
    private static int Rows4x256(in Matrix w, int row0, int n, int c0, int c1, float* x, float* y)
    {
        int G = w.G, K = w.K, gpr = K / G;
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            long r = row0 + i, e0 = r * K;
            if (!w.Q8 && (e0 + 4L * K) / 2 + 4 > w.DataBytes) break;
            var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            float* s0 = null; ushort* h0 = null;
            if (w.Q8) s0 = (float*)w.Scales + r * gpr; else h0 = (ushort*)w.Scales + r * gpr;
            for (int a = c0; a < c1;)
            {
                int gk = a / G, len = Math.Min((gk + 1) * G, c1) - a;
                var g0 = Vector256<float>.Zero; var g1 = g0; var g2 = g0; var g3 = g0;
                float* xg = x + (a - c0);
                if (w.Q8)
                {
                    byte* p = w.Data + e0 + a;
                    for (int j = 0; j < len; j += 8)
                    {
                        var xv = Vector256.Load(xg + j);
                        g0 = Fma.MultiplyAdd(Q8x8(p + j), xv, g0);
                        g1 = Fma.MultiplyAdd(Q8x8(p + K + j), xv, g1);
                        g2 = Fma.MultiplyAdd(Q8x8(p + 2 * K + j), xv, g2);
                        g3 = Fma.MultiplyAdd(Q8x8(p + 3 * K + j), xv, g3);
                    }
                    a0 = Fma.MultiplyAdd(g0, Vector256.Create(s0[gk]), a0);
                    a1 = Fma.MultiplyAdd(g1, Vector256.Create(s0[gpr + gk]), a1);
                    a2 = Fma.MultiplyAdd(g2, Vector256.Create(s0[2 * gpr + gk]), a2);
                    a3 = Fma.MultiplyAdd(g3, Vector256.Create(s0[3 * gpr + gk]), a3);
                }
                else
                {
                    byte* p = w.Data + (e0 + a) / 2;
                    int rb = K / 2;
                    for (int j = 0; j < len; j += 8)
                    {
                        var xv = Vector256.Load(xg + j);
                        g0 = Fma.MultiplyAdd(Q4x8(p + j / 2, s_nibbleBytesEven, s_shift256Even), xv, g0);
                        g1 = Fma.MultiplyAdd(Q4x8(p + rb + j / 2, s_nibbleBytesEven, s_shift256Even), xv, g1);
                        g2 = Fma.MultiplyAdd(Q4x8(p + 2 * rb + j / 2, s_nibbleBytesEven, s_shift256Even), xv, g2);
                        g3 = Fma.MultiplyAdd(Q4x8(p + 3 * rb + j / 2, s_nibbleBytesEven, s_shift256Even), xv, g3);
                    }
                    a0 = Fma.MultiplyAdd(g0, Vector256.Create(HalfToSingle(h0[gk])), a0);
                    a1 = Fma.MultiplyAdd(g1, Vector256.Create(HalfToSingle(h0[gpr + gk])), a1);
                    a2 = Fma.MultiplyAdd(g2, Vector256.Create(HalfToSingle(h0[2 * gpr + gk])), a2);
                    a3 = Fma.MultiplyAdd(g3, Vector256.Create(HalfToSingle(h0[3 * gpr + gk])), a3);
                }
                a += len;
            }
            y[i] = Vector256.Sum(a0); y[i + 1] = Vector256.Sum(a1); y[i + 2] = Vector256.Sum(a2); y[i + 3] = Vector256.Sum(a3);
        }
        return i;
    }

    // Σ_{j in [c0, c1)} W[row, j] x[j - c0], one segment (a group clipped to the range) at a time:
    // the segment's levels times x are summed, then scaled once by its group's scale. A segment
    // may start anywhere, including on a high nibble (q4).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RowDot(QuantIsa isa, in Matrix w, int row, int c0, int c1, float* x) => isa switch
    {
        QuantIsa.Avx512 => RowDot512(w, row, c0, c1, x),
        QuantIsa.Avx2 => RowDot256(w, row, c0, c1, x),
        _ => RowDotScalar(w, row, c0, c1, x),
    };

    private static float RowDot512(in Matrix w, int row, int c0, int c1, float* x)
    {
        int G = w.G;
        long e0 = (long)row * w.K;             // flat index of the row's first element
        long g0 = e0 / G;                      // its first group
        var acc = Vector512<float>.Zero;
        float tail = 0;
        for (int a = c0; a < c1;)
        {
            int gk = a / G, len = Math.Min((gk + 1) * G, c1) - a;
            long s = e0 + a;
            float* xg = x + (a - c0);
            var ga = Vector512<float>.Zero;
            var gb = Vector512<float>.Zero;
            int j = 0;
            if (w.Q8)
            {
                byte* p = w.Data + s;
                // Two accumulators: consecutive FMAs of one group do not wait on each other.
                for (; j + 32 <= len; j += 32)
                {
                    ga = Vector512.FusedMultiplyAdd(Q8x16(p + j), Vector512.Load(xg + j), ga);
                    gb = Vector512.FusedMultiplyAdd(Q8x16(p + j + 16), Vector512.Load(xg + j + 16), gb);
                }
                for (; j + 16 <= len; j += 16) ga = Vector512.FusedMultiplyAdd(Q8x16(p + j), Vector512.Load(xg + j), ga);
            }
            else
            {
                bool odd = (s & 1) != 0;
                var pick = odd ? s_nibbleBytesOdd : s_nibbleBytesEven;
                var shift = odd ? s_shift512Odd : s_shift512Even;
                byte* p = w.Data + (s >> 1);
                // A step reads 16 bytes from p + j/2; near the end of the data the rest goes scalar.
                long safe = w.DataBytes - 16 - (s >> 1);
                for (; j + 32 <= len && j / 2 + 8 <= safe; j += 32)
                {
                    ga = Vector512.FusedMultiplyAdd(Q4x16(p + j / 2, pick, shift), Vector512.Load(xg + j), ga);
                    gb = Vector512.FusedMultiplyAdd(Q4x16(p + j / 2 + 8, pick, shift), Vector512.Load(xg + j + 16), gb);
                }
                for (; j + 16 <= len && j / 2 <= safe; j += 16) ga = Vector512.FusedMultiplyAdd(Q4x16(p + j / 2, pick, shift), Vector512.Load(xg + j), ga);
            }
            float partial = 0;
            for (; j < len; j++) partial += w.Level(s + j) * xg[j];
            float scale = w.Scale(g0 + gk);
            acc = Vector512.FusedMultiplyAdd(ga + gb, Vector512.Create(scale), acc);
            tail += partial * scale;
            a += len;
        }
        return Vector512.Sum(acc) + tail;
    }

    private static float RowDot256(in Matrix w, int row, int c0, int c1, float* x)
    {
        int G = w.G;
        long e0 = (long)row * w.K;
        long g0 = e0 / G;
        var acc = Vector256<float>.Zero;
        float tail = 0;
        for (int a = c0; a < c1;)
        {
            int gk = a / G, len = Math.Min((gk + 1) * G, c1) - a;
            long s = e0 + a;
            float* xg = x + (a - c0);
            var ga = Vector256<float>.Zero;
            var gb = Vector256<float>.Zero;
            int j = 0;
            if (w.Q8)
            {
                byte* p = w.Data + s;
                for (; j + 16 <= len; j += 16)
                {
                    ga = Fma.MultiplyAdd(Q8x8(p + j), Vector256.Load(xg + j), ga);
                    gb = Fma.MultiplyAdd(Q8x8(p + j + 8), Vector256.Load(xg + j + 8), gb);
                }
                for (; j + 8 <= len; j += 8) ga = Fma.MultiplyAdd(Q8x8(p + j), Vector256.Load(xg + j), ga);
            }
            else
            {
                bool odd = (s & 1) != 0;
                var pick = odd ? s_nibbleBytesOdd : s_nibbleBytesEven;
                var shift = odd ? s_shift256Odd : s_shift256Even;
                byte* p = w.Data + (s >> 1);
                // A step reads 8 bytes from p + j/2; near the end of the data the rest goes scalar.
                long safe = w.DataBytes - 8 - (s >> 1);
                for (; j + 16 <= len && j / 2 + 4 <= safe; j += 16)
                {
                    ga = Fma.MultiplyAdd(Q4x8(p + j / 2, pick, shift), Vector256.Load(xg + j), ga);
                    gb = Fma.MultiplyAdd(Q4x8(p + j / 2 + 4, pick, shift), Vector256.Load(xg + j + 8), gb);
                }
                for (; j + 8 <= len && j / 2 <= safe; j += 8) ga = Fma.MultiplyAdd(Q4x8(p + j / 2, pick, shift), Vector256.Load(xg + j), ga);
            }
            float partial = 0;
            for (; j < len; j++) partial += w.Level(s + j) * xg[j];
            float scale = w.Scale(g0 + gk);
            acc = Fma.MultiplyAdd(ga + gb, Vector256.Create(scale), acc);
            tail += partial * scale;
            a += len;
        }
        return Vector256.Sum(acc) + tail;
    }

    private static float RowDotScalar(in Matrix w, int row, int c0, int c1, float* x)
    {
        int G = w.G;
        long e0 = (long)row * w.K;
        long g0 = e0 / G;
        float acc = 0;
        for (int a = c0; a < c1;)
        {
            int gk = a / G, len = Math.Min((gk + 1) * G, c1) - a;
            long s = e0 + a;
            float* xg = x + (a - c0);
            float partial = 0;
            for (int j = 0; j < len; j++) partial += w.Level(s + j) * xg[j];
            acc += partial * w.Scale(g0 + gk);
            a += len;
        }
        return acc;
    }

    // dst[j] = W[row, j] for the K elements of a row.
    private static void DequantizeRow(QuantIsa isa, in Matrix w, int row, float* dst)
    {
        int G = w.G, groups = w.K / G;
        long e0 = (long)row * w.K;
        long g0 = e0 / G;
        for (int gk = 0; gk < groups; gk++)
        {
            long s = e0 + (long)gk * G;
            float* d = dst + gk * G;
            float scale = w.Scale(g0 + gk);
            int j = 0;
            if (isa == QuantIsa.Avx512)
            {
                var sv = Vector512.Create(scale);
                if (w.Q8) for (; j + 16 <= G; j += 16) (Q8x16(w.Data + s + j) * sv).Store(d + j);
                else
                {
                    bool odd = (s & 1) != 0;
                    var pick = odd ? s_nibbleBytesOdd : s_nibbleBytesEven;
                    var shift = odd ? s_shift512Odd : s_shift512Even;
                    byte* p = w.Data + (s >> 1);
                    long safe = w.DataBytes - 16 - (s >> 1);
                    for (; j + 16 <= G && j / 2 <= safe; j += 16) (Q4x16(p + j / 2, pick, shift) * sv).Store(d + j);
                }
            }
            else if (isa == QuantIsa.Avx2)
            {
                var sv = Vector256.Create(scale);
                if (w.Q8) for (; j + 8 <= G; j += 8) (Q8x8(w.Data + s + j) * sv).Store(d + j);
                else
                {
                    bool odd = (s & 1) != 0;
                    var pick = odd ? s_nibbleBytesOdd : s_nibbleBytesEven;
                    var shift = odd ? s_shift256Odd : s_shift256Even;
                    byte* p = w.Data + (s >> 1);
                    long safe = w.DataBytes - 8 - (s >> 1);
                    for (; j + 8 <= G && j / 2 <= safe; j += 8) (Q4x8(p + j / 2, pick, shift) * sv).Store(d + j);
                }
            }
            for (; j < G; j++) d[j] = w.Level(s + j) * scale;
        }
    }

    // Per-thread 64-byte-aligned scratch (a dequantized block of W, and the block's output), grown
    // on demand and kept: no allocation per call once warm.
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? s_current;
        public static Scratch Current => s_current ??= new Scratch();

        private float* _w, _c;
        private long _wLen, _cLen;

        public float* W(long floats) => Grow(ref _w, ref _wLen, floats);
        public float* C(long floats) => Grow(ref _c, ref _cLen, floats);

        private static float* Grow(ref float* p, ref long len, long floats)
        {
            if (floats <= len) return p;
            if (p != null) NativeMemory.AlignedFree(p);
            len = Math.Max(floats, len * 2);
            p = (float*)NativeMemory.AlignedAlloc((nuint)(len * sizeof(float)), 64);
            return p;
        }

        ~Scratch()
        {
            if (_w != null) NativeMemory.AlignedFree(_w);
            if (_c != null) NativeMemory.AlignedFree(_c);
        }
    }

    // One block of W's rows: dequantize into the running thread's scratch, C = x · blockᵀ by the
    // packed Gemm (serial inside: the blocks are the parallel work), then scatter C's columns into y.
    private sealed class BlockJob
    {
        public QuantIsa Isa;
        public Matrix W;
        public float* X, Y;
        public int M, N, K, Nb;
        public bool Accumulate;

        public void Run(int block)
        {
            int n0 = block * Nb, nb = Math.Min(Nb, N - n0), k = K;
            var scratch = Scratch.Current;
            float* wb = scratch.W((long)nb * k), cb = scratch.C((long)M * nb);
            for (int r = 0; r < nb; r++) DequantizeRow(Isa, W, n0 + r, wb + (long)r * k);
            Gemm.MatMulABt(X, wb, cb, M, nb, k, acc: false, parallel: false);
            for (int i = 0; i < M; i++)
            {
                var src = new ReadOnlySpan<float>(cb + (long)i * nb, nb);
                var dst = new Span<float>(Y + (long)i * N + n0, nb);
                if (Accumulate) TensorPrimitives.Add(dst, src, dst);
                else src.CopyTo(dst);
            }
        }
    }
}
