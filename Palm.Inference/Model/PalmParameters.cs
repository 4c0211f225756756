// The model's named weights, in the spec's names and shapes. Every backend, checkpoint and
// optimizer addresses weights by these names, so this file is the single source of them.
namespace Palm.Inference.Model;

/// <summary>A named, row-major float32 matrix: (Rows, Cols) as the spec's table.</summary>
public sealed class ParamTensor
{
    /// <summary>Creates a zero tensor.</summary>
    public ParamTensor(string name, int rows, int cols)
    {
        if (rows <= 0 || cols <= 0) throw new ArgumentException($"{name}: shape ({rows}, {cols}) must be positive");
        Name = name; Rows = rows; Cols = cols; Data = new float[checked(rows * cols)];
    }

    /// <summary>Checkpoint key, e.g. <c>blocks.0.qkv.w1</c>.</summary>
    public string Name { get; }
    /// <summary>Output features (rows).</summary>
    public int Rows { get; }
    /// <summary>Input features (columns).</summary>
    public int Cols { get; }
    /// <summary>Row-major data, Rows * Cols floats.</summary>
    public float[] Data { get; }
    /// <summary>Rows * Cols.</summary>
    public int Length => Data.Length;
    /// <summary>True for the block matrices that Muon updates; embeddings and unembed use AdamW.</summary>
    public bool IsMuon => Name.StartsWith("blocks.", StringComparison.Ordinal);
}

/// <summary>A factorized or full-rank linear: <c>W</c> alone, or <c>W2 (act(W1 x))</c>.</summary>
public sealed record LinearParams(ParamTensor? W, ParamTensor? W1, ParamTensor? W2)
{
    /// <summary>True when the linear has two factors (d_rank &gt; 0).</summary>
    public bool Factorized => W1 is not null;
    /// <summary>Output features.</summary>
    public int Out => Factorized ? W2!.Rows : W!.Rows;
    /// <summary>Input features.</summary>
    public int In => Factorized ? W1!.Cols : W!.Cols;
}

/// <summary>The weights of one block.</summary>
public sealed record BlockParams(LinearParams Qkv, LinearParams Proj, LinearParams? Up, LinearParams? Down);

/// <summary>All weights of a Palm model, in canonical order (the order of the spec's table).</summary>
public sealed class PalmParameters
{
    private readonly Dictionary<string, ParamTensor> _byName = new(StringComparer.Ordinal);
    private readonly List<ParamTensor> _all = [];

    /// <summary>The config these weights were shaped for.</summary>
    public PalmConfig Config { get; }
    /// <summary><c>embed.weight</c>: (V, r) or (V, C).</summary>
    public ParamTensor Embed { get; }
    /// <summary><c>embed.proj.w</c>: (C, r), only when d_rank &gt; 0.</summary>
    public ParamTensor? EmbedProj { get; }
    /// <summary>Per-block weights, L entries.</summary>
    public IReadOnlyList<BlockParams> Blocks { get; }
    /// <summary><c>unembed</c>: Linear(C, V).</summary>
    public LinearParams Unembed { get; }
    /// <summary>Every tensor in canonical order.</summary>
    public IReadOnlyList<ParamTensor> All => _all;

    /// <summary>Allocates zeroed weights for <paramref name="config"/>.</summary>
    public PalmParameters(PalmConfig config)
    {
        config.Validate();
        Config = config;
        foreach (var e in ParameterLayout.Expected(config)) Add(e.Name, e.Rows, e.Cols);
        Embed = _byName["embed.weight"];
        EmbedProj = _byName.GetValueOrDefault("embed.proj.w");
        var blocks = new List<BlockParams>();
        for (int l = 0; l < config.NLayer; l++)
        {
            bool ffn = config.DFfn > 0;
            blocks.Add(new BlockParams(Linear($"blocks.{l}.qkv"), Linear($"blocks.{l}.proj"),
                ffn ? Linear($"blocks.{l}.ffn.up") : null, ffn ? Linear($"blocks.{l}.ffn.down") : null));
        }
        Blocks = blocks;
        Unembed = Linear("unembed");
    }

    private void Add(string name, int rows, int cols)
    {
        var t = new ParamTensor(name, rows, cols);
        _byName.Add(name, t);
        _all.Add(t);
    }

    private LinearParams Linear(string prefix) => Config.DRank == 0
        ? new LinearParams(_byName[prefix + ".w"], null, null)
        : new LinearParams(null, _byName[prefix + ".w1"], _byName[prefix + ".w2"]);

    /// <summary>Looks up a tensor by checkpoint name.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name in this config.</exception>
    public ParamTensor this[string name] =>
        _byName.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"no parameter named '{name}' in this config");

    /// <summary>Tries to look up a tensor by name.</summary>
    public bool TryGet(string name, out ParamTensor tensor) => _byName.TryGetValue(name, out tensor!);

    /// <summary>Total number of floats.</summary>
    public long Count => _all.Sum(t => (long)t.Length);

    /// <summary>
    /// The spec's training initialisation: embed.weight ~ N(0,1); every linear factor ~ U(-b, b)
    /// with b = sqrt(3) * 0.5 / sqrt(fan_in of that factor).
    /// </summary>
    public void InitTraining(Rng rng)
    {
        foreach (var t in _all)
        {
            if (t == Embed)
            {
                for (int i = 0; i < t.Length; i++) t.Data[i] = (float)rng.NextGaussian();
                continue;
            }
            double b = Math.Sqrt(3) * 0.5 / Math.Sqrt(t.Cols);
            for (int i = 0; i < t.Length; i++) t.Data[i] = (float)((2 * rng.NextDouble() - 1) * b);
        }
    }

    /// <summary>A deep copy (same config, copied data).</summary>
    public PalmParameters Clone()
    {
        var c = new PalmParameters(Config);
        for (int i = 0; i < _all.Count; i++) _all[i].Data.CopyTo(c._all[i].Data, 0);
        return c;
    }
}
