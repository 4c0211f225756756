// Calibration for GPTQ: runs the float model (the CPU reference, with its training tape) over sample
// windows and accumulates, for every linear weight, H = Σ x xᵀ over the inputs x it multiplies.
// A block's weights act in every application of the block (n_recur > 1 reuses them), so their H sums
// the inputs of all of those applications, as the weight's squared output error does.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Inference.Quantization;

internal sealed class LayerInputHessians
{
    private readonly Dictionary<string, double[]> _byName = new(StringComparer.Ordinal);

    /// <summary>Windows of tokens run per forward pass (bounds the tape's memory: the logits are B*T*V floats).</summary>
    public const int WindowsPerPass = 8;

    /// <summary>Token positions seen (windows × their length).</summary>
    public long Tokens { get; private set; }

    /// <summary>H (K, K) of tensor <paramref name="name"/>, K its input features; false when the tensor
    /// is not a linear weight of the model (the embedding table is a lookup).</summary>
    public bool TryGet(string name, out double[] hessian) => _byName.TryGetValue(name, out hessian!);

    /// <summary>
    /// Runs <paramref name="parameters"/> over <paramref name="windows"/> (each window a sequence
    /// started fresh at position 0) and accumulates every linear weight's H.
    /// </summary>
    /// <param name="parameters">The model whose activations are recorded (float32 weights).</param>
    /// <param name="windows">Token windows, all of one length &gt; 0, ids in [0, V).</param>
    /// <exception cref="ArgumentException">No windows, windows of different or bad lengths, or an id out of range.</exception>
    public static LayerInputHessians Collect(PalmParameters parameters, IReadOnlyList<int[]> windows)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Count == 0) throw new ArgumentException("no calibration windows", nameof(windows));
        int t = windows[0].Length;
        if (t <= 0) throw new ArgumentException("calibration windows must hold at least one token", nameof(windows));
        foreach (var w in windows)
            if (w.Length != t) throw new ArgumentException($"calibration windows must share one length, got {t} and {w.Length}", nameof(windows));

        var result = new LayerInputHessians();
        var model = new CpuReferenceModel(parameters);
        for (int first = 0; first < windows.Count; first += WindowsPerPass)
        {
            int b = Math.Min(WindowsPerPass, windows.Count - first);
            var tokens = new int[b * t];
            for (int i = 0; i < b; i++) windows[first + i].CopyTo(tokens, i * t);
            var tape = new ForwardTape();
            model.Forward(tokens, b, t, state: null, tape);
            int rows = b * t;
            foreach (var (name, x, k) in Inputs(parameters, tape)) result.Add(name, x, rows, k);
            result.Tokens += rows;
        }
        if (parameters.EmbedProj is { } proj) result.AddEmbedding(proj);
        return result;
    }

    // The embedding table is a lookup: a rounding error δ in row E[id] reaches the model only as
    // embed.proj.w · δ, so its squared output error is δᵀ (Winᵀ Win) δ for every row. With that H,
    // GPTQ rounds each row of E the way it rounds a linear's row against its inputs.
    private void AddEmbedding(ParamTensor proj)
    {
        int k = proj.Cols, c = proj.Rows;
        var h = new double[k * k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                double s = 0;
                for (int n = 0; n < c; n++) s += (double)proj.Data[n * k + i] * proj.Data[n * k + j];
                h[i * k + j] = s;
            }
        _byName[CheckpointQuantizer.EmbeddingName] = h;
    }

    /// <summary>Every linear weight and the rows (B*T, K) it multiplied in this forward pass.</summary>
    private static IEnumerable<(string Name, float[] X, int K)> Inputs(PalmParameters p, ForwardTape tape)
    {
        if (p.EmbedProj is { } proj) yield return (proj.Name, tape.E, proj.Cols);
        foreach (var at in tape.Apps)
        {
            var bp = p.Blocks[at.Block];
            foreach (var e in Linear(bp.Qkv, at.H, at.Qkv)) yield return e;
            foreach (var e in Linear(bp.Proj, at.Y, at.Proj)) yield return e;
            if (bp.Up is not null)
            {
                foreach (var e in Linear(bp.Up, at.H, at.Up!)) yield return e;
                foreach (var e in Linear(bp.Down!, at.Gated!, at.Down!)) yield return e;
            }
        }
        foreach (var e in Linear(p.Unembed, tape.XF, tape.Unembed)) yield return e;
    }

    // A full linear sees x; a factorized one's W1 sees x and its W2 sees act(W1 x), which the tape kept.
    private static IEnumerable<(string, float[], int)> Linear(LinearParams lp, float[] x, LinearTape tape)
    {
        if (!lp.Factorized) { yield return (lp.W!.Name, x, lp.W.Cols); yield break; }
        yield return (lp.W1!.Name, x, lp.W1.Cols);
        yield return (lp.W2!.Name, tape.A!, lp.W2.Cols);
    }

    private void Add(string name, float[] x, int rows, int k)
    {
        if (!_byName.TryGetValue(name, out var h)) _byName[name] = h = new double[k * k];
        // Xᵀ X through the float GEMM on the transposed rows: one pass of at most
        // WindowsPerPass * T rows in float32, then accumulated across passes in float64.
        var xt = new float[k * rows];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < k; c++) xt[c * rows + r] = x[r * k + c];
        var g = new float[k * k];
        CpuOps.MatMulABt(xt, xt, k, k, rows, g);
        for (int i = 0; i < g.Length; i++) h[i] += g[i];
    }
}
