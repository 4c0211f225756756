// The single source of parameter names and shapes a config implies, computed without allocating
// any weights: PalmParameters is built from it, and the checkpoint loader uses it to check an
// untrusted file (n_layer = 65536, say) before allocating anything.
using System.Globalization;

namespace Palm.Inference.Model;

/// <summary>One expected parameter: name and (rows, cols).</summary>
internal readonly record struct ExpectedTensor(string Name, int Rows, int Cols)
{
    public string ShapeText => $"[{Rows}, {Cols}]";
}

internal static class ParameterLayout
{
    /// <summary>Names and shapes in <see cref="PalmParameters.All"/> order, lazily; config must be valid.</summary>
    public static IEnumerable<ExpectedTensor> Expected(PalmConfig config)
    {
        int V = config.VocabSize, C = config.NEmbd, r = config.DRank;
        yield return new("embed.weight", V, r > 0 ? r : C);
        if (r > 0) yield return new("embed.proj.w", C, r);
        for (int l = 0; l < config.NLayer; l++)
        {
            foreach (var t in Linear(config, $"blocks.{l}.qkv")) yield return t;
            foreach (var t in Linear(config, $"blocks.{l}.proj")) yield return t;
            if (config.DFfn > 0)
            {
                foreach (var t in Linear(config, $"blocks.{l}.ffn.up")) yield return t;
                foreach (var t in Linear(config, $"blocks.{l}.ffn.down")) yield return t;
            }
        }
        foreach (var t in Linear(config, "unembed")) yield return t;
    }

    /// <summary>Number of parameter tensors the config implies.</summary>
    public static long ExpectedCount(PalmConfig config)
    {
        long perLinear = config.DRank > 0 ? 2 : 1;
        long linearsPerBlock = config.DFfn > 0 ? 4 : 2;
        return 1 + (config.DRank > 0 ? 1 : 0) + config.NLayer * linearsPerBlock * perLinear + perLinear;
    }

    /// <summary>The shape of parameter <paramref name="name"/>, or false when the config has no such parameter.</summary>
    public static bool TryGetShape(PalmConfig config, string name, out int rows, out int cols)
    {
        rows = cols = 0;
        int V = config.VocabSize, C = config.NEmbd, r = config.DRank;
        if (name == "embed.weight") { (rows, cols) = (V, r > 0 ? r : C); return true; }
        if (name == "embed.proj.w") { (rows, cols) = (C, r); return r > 0; }
        int dot = name.LastIndexOf('.');
        if (dot < 0) return false;
        string prefix = name[..dot], factor = name[(dot + 1)..];
        if (!TryLinearDims(config, prefix, out int inF, out int outF)) return false;
        switch (factor)
        {
            case "w" when r == 0: (rows, cols) = (outF, inF); return true;
            case "w1" when r > 0: (rows, cols) = (r, inF); return true;
            case "w2" when r > 0: (rows, cols) = (outF, r); return true;
            default: return false;
        }
    }

    private static IEnumerable<ExpectedTensor> Linear(PalmConfig config, string prefix)
    {
        TryLinearDims(config, prefix, out int inF, out int outF);
        int r = config.DRank;
        if (r == 0) { yield return new(prefix + ".w", outF, inF); yield break; }
        yield return new(prefix + ".w1", r, inF);
        yield return new(prefix + ".w2", outF, r);
    }

    // (in, out) features of the linear called `prefix`, following PalmParameters' constructor.
    private static bool TryLinearDims(PalmConfig config, string prefix, out int inF, out int outF)
    {
        int V = config.VocabSize, C = config.NEmbd, D = config.DQkv, F = config.DFfn;
        inF = outF = 0;
        if (prefix == "unembed") { (inF, outF) = (C, V); return true; }
        const string Blocks = "blocks.";
        if (!prefix.StartsWith(Blocks, StringComparison.Ordinal)) return false;
        int dot = prefix.IndexOf('.', Blocks.Length);
        if (dot < 0) return false;
        string index = prefix[Blocks.Length..dot];
        // Only the canonical spelling ("3", not "03" or "+3") names a block, so names stay unique.
        if (!int.TryParse(index, NumberStyles.None, CultureInfo.InvariantCulture, out int l)
            || l.ToString(CultureInfo.InvariantCulture) != index || l >= config.NLayer) return false;
        switch (prefix[(dot + 1)..])
        {
            case "qkv": (inF, outF) = (C, 3 * D); return true;
            case "proj": (inF, outF) = (D, 2 * C); return true;
            case "ffn.up" when F > 0: (inF, outF) = (C, 2 * F); return true;
            case "ffn.down" when F > 0: (inF, outF) = (F, C); return true;
            default: return false;
        }
    }
}
