// The weights as the fast CPU path (FastCpuModel, FastCpuDecoder) computes with them: every matrix
// is either float32 (a PalmParameters array, shared and not copied, so a trainer's in-place updates
// show; or, for inference, a 64-byte-aligned copy: CpuWeights.Aligned) or q8/q4 exactly as stored
// (a QuantizedTensor, read in place by Cpu/QuantizedMatVec and never expanded). Each product
// branches on the storage once per call, never per element, and the float32 branch is the same
// kernel call the decoder made before quantized weights existed.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Quantization;

namespace Palm.Inference.Cpu;

/// <summary>A row-major (Rows, Cols) weight matrix held as float32 or as q8/q4.</summary>
internal sealed class CpuMatrix
{
    private readonly float[]? _f32;
    // Where the matrix starts in _f32: 0 for a shared array, else the pad that puts element 0 of a
    // pinned copy on a 64-byte boundary (Aligned; _copy marks such a copy, ours alone).
    private readonly int _off;
    private readonly bool _copy;
    private readonly QuantizedTensor? _q;

    /// <summary>Wraps float32 data (not copied).</summary>
    /// <exception cref="ArgumentException">The data does not hold rows * cols floats.</exception>
    public CpuMatrix(string name, int rows, int cols, float[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        CheckShape(name, rows, cols, data.Length);
        (Name, Rows, Cols, _f32) = (name, rows, cols, data);
    }

    /// <summary>Wraps quantized weights (not copied, never dequantized as a whole).</summary>
    /// <exception cref="ArgumentException">The tensor does not hold rows * cols elements, or its groups straddle rows.</exception>
    public CpuMatrix(string name, int rows, int cols, QuantizedTensor quantized)
    {
        ArgumentNullException.ThrowIfNull(quantized);
        CheckShape(name, rows, cols, quantized.Length);
        if (cols % quantized.GroupSize != 0)
            throw new ArgumentException($"{name}: group size {quantized.GroupSize} does not divide the row length {cols}");
        (Name, Rows, Cols, _q) = (name, rows, cols, quantized);
    }

    private static void CheckShape(string name, int rows, int cols, long length)
    {
        if (rows <= 0 || cols <= 0 || (long)rows * cols != length)
            throw new ArgumentException($"{name}: shape ({rows}, {cols}) does not hold the {length} elements given");
    }

    public static CpuMatrix From(ParamTensor t) => new(t.Name, t.Rows, t.Cols, t.Data);

    private CpuMatrix(string name, int rows, int cols, float[] data, int off) =>
        (Name, Rows, Cols, _f32, _off, _copy) = (name, rows, cols, data, off, true);

    /// <summary>Quantized (shared as it is: an aligned copy measured no faster, the q8/q4 kernels being
    /// compute-bound) or already an aligned copy: <see cref="Aligned"/> returns this matrix.</summary>
    internal bool NeedsNoCopy => _f32 is null || _copy;

    /// <summary>True when the float32 data starts on a 64-byte boundary (so, when Cols is a
    /// multiple of 16, no 64-byte load of a row spans two cache lines).</summary>
    internal unsafe bool IsAligned64
    {
        get
        {
            if (_f32 is null) return false;
            fixed (float* p = _f32) return ((nint)(p + _off) & 63) == 0;
        }
    }

    /// <summary>
    /// A float32 matrix copied into a pinned array at a 64-byte boundary (this matrix when it is
    /// quantized or already such a copy; a shared array is always copied, so later changes to it
    /// are never seen, whatever its address). Why: a .NET float[] starts 16 bytes past an 8-byte-aligned
    /// header, so with rows of whole cache lines nearly every 64-byte load of a decode product
    /// spans two lines; measured on the development VM (Zen 5, weights streaming from L3), the
    /// rank-64 matrix-vector kernel moved 67 GB/s from an unaligned array and 87 from an aligned
    /// copy. The copy is pinned (never moved by the GC), so the offset stays valid.
    /// </summary>
    public CpuMatrix Aligned()
    {
        if (NeedsNoCopy) return this;
        int n = Rows * Cols;
        var a = GC.AllocateUninitializedArray<float>(n + 15, pinned: true);
        int off;
        unsafe { fixed (float* p = a) off = (int)((64 - ((nint)p & 63)) & 63) / 4; }
        Float32Span.CopyTo(a.AsSpan(off, n));
        return new CpuMatrix(Name, Rows, Cols, a, off);
    }

    public string Name { get; }
    public int Rows { get; }
    public int Cols { get; }
    /// <summary>True when the matrix is float32 (<see cref="Float32Span"/> holds it).</summary>
    public bool IsFloat32 => _f32 is not null;
    /// <summary>The float32 data (Rows * Cols), or empty when the matrix is quantized.</summary>
    public ReadOnlySpan<float> Float32Span => _f32 is null ? default : _f32.AsSpan(_off, Rows * Cols);
    /// <summary>The quantized data, or null when the matrix is float32.</summary>
    public QuantizedTensor? Quantized => _q;
    /// <summary>Bytes held: 4 per element, or the stored levels plus scales.</summary>
    public long Bytes => _q is null ? 4L * Rows * Cols : (long)_q.Data.Length + _q.Scales.Length;
    /// <summary>f32, q8 or q4.</summary>
    public string StorageName => _q is null ? "f32" : _q.DType.SpecName();

    /// <summary>y (Rows) = W · x (Cols).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void MatVec(ReadOnlySpan<float> x, Span<float> y) => MatVecRows(0, Rows, x, y);

    /// <summary>y (n) = rows [row0, row0 + n) of W times x (Cols).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void MatVecRows(int row0, int n, ReadOnlySpan<float> x, Span<float> y)
    {
        if (n == 0) return;
        if (_f32 is { } w)
        {
            // Unchecked in release, as before: the decoder's shapes are fixed by the config.
            Debug.Assert(x.Length >= Cols && y.Length >= n && row0 >= 0 && row0 + n <= Rows);
            fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
                FloatMatVec.MatVec(pw + _off + (long)row0 * Cols, Cols, n, Cols, px, py);
        }
        else QuantizedMatVec.MatVecRows(_q!, Rows, Cols, row0, n, x[..Cols], y[..n]);
    }

    /// <summary>
    /// y (Rows) = W[:, col0 .. col0 + k) · x (k): a partial sum over a slice of the input. The
    /// result depends only on (col0, k) and the values, never on the thread that computes it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void MatVecCols(int col0, int k, ReadOnlySpan<float> x, Span<float> y)
    {
        if (k == 0) { y[..Rows].Clear(); return; }
        if (_f32 is { } w)
        {
            Debug.Assert(x.Length >= k && col0 >= 0 && col0 + k <= Cols && y.Length >= Rows);
            fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
                FloatMatVec.MatVec(pw + _off + col0, Cols, Rows, k, px, py);
        }
        else QuantizedMatVec.MatVecCols(_q!, Rows, Cols, col0, k, x[..k], y[..Rows]);
    }

    /// <summary>
    /// y (n) = W[row0 .. row0 + n, col0 .. col0 + k) · x (k): rows of <see cref="MatVecCols"/>, each
    /// row's sum formed as there when the blocks are whole 16-row blocks of it (the batched decode
    /// step's block-by-block order).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void MatVecBlock(int row0, int n, int col0, int k, ReadOnlySpan<float> x, Span<float> y)
    {
        if (n == 0) return;
        if (k == 0) { y[..n].Clear(); return; }
        if (_f32 is { } w)
        {
            Debug.Assert(x.Length >= k && col0 >= 0 && col0 + k <= Cols && row0 >= 0 && row0 + n <= Rows && y.Length >= n);
            fixed (float* pw = w) fixed (float* px = x) fixed (float* py = y)
                FloatMatVec.MatVec(pw + _off + (long)row0 * Cols + col0, Cols, n, k, px, py);
        }
        else QuantizedMatVec.MatVecBlock(_q!, Rows, Cols, row0, n, col0, k, x[..k], y[..n]);
    }

    /// <summary>y (m, Rows) = x (m, Cols) · Wᵀ, or y += that with <paramref name="accumulate"/> (prefill).</summary>
    public void MatMul(ReadOnlySpan<float> x, int m, Span<float> y, bool accumulate = false)
    {
        if (_f32 is not null) CpuOps.MatMulABt(x, Float32Span, m, Rows, Cols, y, accumulate);
        else QuantizedMatVec.MatMul(QuantizedMatVec.Best, _q!, x[..(m * Cols)], m, Rows, Cols, y[..(m * Rows)], parallel: true, rowsPerBlock: 0, accumulate);
    }

    /// <summary>
    /// Row <paramref name="row"/> of W (an embedding gather): a view of the float32 data, or the row
    /// decoded exactly (level · scale per element) into <paramref name="scratch"/> (at least Cols floats).
    /// </summary>
    public ReadOnlySpan<float> Row(int row, Span<float> scratch)
    {
        if (_f32 is { } w) return w.AsSpan(_off + row * Cols, Cols);
        var dst = scratch[..Cols];
        QuantizedMatVec.DequantizeRows(QuantizedMatVec.Best, _q!, Cols, row, 1, dst);
        return dst;
    }
}

/// <summary>A factorized or full-rank linear: <c>W</c> alone, or <c>W2 (act(W1 x))</c> (as <see cref="LinearParams"/>).</summary>
internal sealed record CpuLinear(CpuMatrix? W, CpuMatrix? W1, CpuMatrix? W2)
{
    public bool Factorized => W1 is not null;
    public int Out => Factorized ? W2!.Rows : W!.Rows;
    public int In => Factorized ? W1!.Cols : W!.Cols;
}

/// <summary>The weights of one block (as <see cref="BlockParams"/>).</summary>
internal sealed record CpuBlock(CpuLinear Qkv, CpuLinear Proj, CpuLinear? Up, CpuLinear? Down);

/// <summary>All weights of a model for the fast CPU path, in <see cref="PalmParameters"/>' structure.</summary>
internal sealed class CpuWeights
{
    private readonly Dictionary<string, CpuMatrix> _byName = new(StringComparer.Ordinal);

    /// <summary>
    /// Builds the weights from one matrix per parameter of <paramref name="config"/>, asked for in
    /// canonical order.
    /// </summary>
    /// <exception cref="ArgumentException">A matrix whose name or shape is not the expected parameter's.</exception>
    public CpuWeights(PalmConfig config, Func<ExpectedTensor, CpuMatrix> matrix)
    {
        Config = config;
        var all = new List<CpuMatrix>();
        foreach (var e in ParameterLayout.Expected(config))
        {
            var m = matrix(e);
            if (m.Name != e.Name || m.Rows != e.Rows || m.Cols != e.Cols)
                throw new ArgumentException($"expected '{e.Name}' {e.ShapeText}, got '{m.Name}' [{m.Rows}, {m.Cols}]");
            _byName.Add(m.Name, m);
            all.Add(m);
        }
        All = all;
        Embed = _byName["embed.weight"];
        EmbedProj = _byName.GetValueOrDefault("embed.proj.w");
        var blocks = new List<CpuBlock>();
        for (int l = 0; l < config.NLayer; l++)
        {
            bool ffn = config.DFfn > 0;
            blocks.Add(new CpuBlock(Linear($"blocks.{l}.qkv"), Linear($"blocks.{l}.proj"),
                ffn ? Linear($"blocks.{l}.ffn.up") : null, ffn ? Linear($"blocks.{l}.ffn.down") : null));
        }
        Blocks = blocks;
        Unembed = Linear("unembed");
    }

    /// <summary>Float32 parameters, arrays shared (not copied).</summary>
    public static CpuWeights From(PalmParameters parameters) =>
        new(parameters.Config, e => CpuMatrix.From(parameters[e.Name]));

    /// <summary>
    /// These weights with every float32 matrix copied to a 64-byte boundary (<see cref="CpuMatrix.Aligned"/>;
    /// quantized ones shared): for inference, where nothing updates the weights in place afterwards.
    /// Costs one copy of the float32 matrices; the originals can be dropped.
    /// </summary>
    public CpuWeights Aligned() =>
        All.All(m => m.NeedsNoCopy) ? this : new(Config, e => _byName[e.Name].Aligned());

    private CpuLinear Linear(string prefix) => Config.DRank == 0
        ? new CpuLinear(_byName[prefix + ".w"], null, null)
        : new CpuLinear(null, _byName[prefix + ".w1"], _byName[prefix + ".w2"]);

    public PalmConfig Config { get; }
    public CpuMatrix Embed { get; }
    public CpuMatrix? EmbedProj { get; }
    public IReadOnlyList<CpuBlock> Blocks { get; }
    public CpuLinear Unembed { get; }
    /// <summary>Every matrix in canonical order.</summary>
    public IReadOnlyList<CpuMatrix> All { get; }

    /// <summary>Bytes of all matrices as held (float32 4 per element; q8/q4 levels plus scales).</summary>
    public long Bytes => All.Sum(m => m.Bytes);

    /// <summary>How the weights are stored, for a backend description: "float32", or e.g. "q4 linears, f32 embedding".</summary>
    public string StorageText
    {
        get
        {
            if (All.All(m => m.Quantized is null)) return "float32";
            var linears = string.Join("/", All.Where(m => m != Embed).Select(m => m.StorageName).Distinct());
            return $"{linears} linears, {Embed.StorageName} embedding";
        }
    }
}
